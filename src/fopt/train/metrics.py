"""The plots and tables a training run writes (the metrics themselves: `fopt.evaluation`)."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fopt.artifacts import atomic_path, write_text_atomic
from fopt.errors import BusyError
from fopt.workdir import exclusive

APPEND_WAIT_S = 60.0  # how long an append waits for another process's append to the same CSV


def _save_figure(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(cm: Sequence[Sequence[int]], class_names: Sequence[str],
                          path: str | Path, title: str = "confusion matrix") -> Path:
    """Row-normalised colours (recall per true class) with raw counts written in the cells."""
    plt = _pyplot()
    cm = np.asarray(cm, dtype=np.int64)
    k = len(class_names)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    side = max(4.0, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), labels=class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(k), labels=class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    return _save_figure(fig, path)


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss and accuracy per epoch, train vs val."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(epochs, [h["val_loss"] for h in history], "o-", label="val")
    a.set_title("loss")
    b.plot(epochs, [h["train_acc"] for h in history], "o-", label="train acc")
    b.plot(epochs, [h["val_acc"] for h in history], "o-", label="val acc")
    b.plot(epochs, [h["val_macro_f1"] for h in history], "s--", label="val macro-F1")
    b.set_title("accuracy")
    b.set_ylim(0, 1)
    for ax in (a, b):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save_figure(fig, path)


def top_losses(paths: Sequence[str], labels: np.ndarray, preds: np.ndarray, losses: np.ndarray,
               class_names: Sequence[str], k: int) -> list[dict[str, Any]]:
    """The k samples with the highest loss: likely mislabelled or ambiguous images."""
    order = np.argsort(-np.asarray(losses), kind="stable")[:k]
    return [{"path": str(paths[i]), "true": class_names[int(labels[i])],
             "predicted": class_names[int(preds[i])], "loss": round(float(losses[i]), 6)}
            for i in order]


def write_rows_csv(path: str | Path, rows: Sequence[dict[str, Any]],
                   columns: Sequence[str] | None = None) -> Path:
    """Plain CSV, atomically (console.write_csv also prints a note, which workers must not)."""
    columns = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return write_text_atomic(path, buf.getvalue())


def append_row_csv(path: str | Path, row: dict[str, Any], *, wait_s: float = APPEND_WAIT_S) -> Path:
    """Append one row, widening the header when the row brings new columns (rewritten atomically).

    The read-modify-write holds the CSV's lock (`fopt.workdir.exclusive`), so two runs finishing
    at once both land their row; a writer waits up to `wait_s` for the other one's short turn."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with exclusive(path, what=f"experiments CSV {path}", folder=False):
                return _append_locked(path, row)
        except BusyError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _append_locked(path: Path, row: dict[str, Any]) -> Path:
    rows: list[dict[str, Any]] = []
    columns: list[str] = []
    if path.exists() and path.stat().st_size:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    columns += [c for c in row if c not in columns]
    rows.append(row)
    return write_rows_csv(path, rows, columns)
