"""Accuracy, macro-F1 and the per-class report of any artifact, through its runtime runner.

Metrics come from scikit-learn. ``macro_f1`` averages F1 over the classes that occur in the
labels or the predictions (scikit-learn's default), so a class absent from a small validation
split does not count as a zero; ``per_class`` still lists every class (support 0 where absent).

The loop only knows the `Runner` interface: checkpoints today, and TorchScript, ONNX and
TensorRT artifacts through the same call as soon as their runners are registered. The runner's
card says how to feed the model (input size, mean, std), so no training flag is needed.

A result also carries the per-image ``labels`` and ``predictions``, so two artifacts evaluated on
the same images can be compared pair-wise: `paired_delta` gives the change in accuracy or
macro-F1 with a 95% paired-bootstrap interval. On a small split one image is several points, and
the interval says so where a bare delta would not.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fopt.console import epoch_bar
from fopt.data.calibration import iter_batches
from fopt.data.datasets import DatasetTable
from fopt.errors import DataError
from fopt.runtime import open_runner


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int],
                           class_names: Sequence[str]) -> dict[str, Any]:
    """accuracy, macro_f1 (both in [0, 1]), n, per_class {name: precision, recall, f1, support},
    confusion_matrix (rows = true class, columns = predicted)."""
    from sklearn.metrics import (
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    n = int(y_true.size)
    if n == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "n": 0,
                "per_class": {}, "confusion_matrix": []}
    labels = list(range(len(class_names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                        "support": int(s[i])} for i, name in enumerate(class_names)}
    return {
        "accuracy": float((y_true == y_pred).mean()),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "n": n,
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def classification_report_text(y_true: Sequence[int], y_pred: Sequence[int],
                               class_names: Sequence[str]) -> str:
    from sklearn.metrics import classification_report

    return classification_report(y_true, y_pred, labels=list(range(len(class_names))),
                                 target_names=list(class_names), digits=4, zero_division=0)


def evaluate_runner(runner, dataset_dir: str | Path, split: str = "val", batch_size: int = 64,
                    show_progress: bool = False) -> dict[str, Any]:
    """Run `runner` over a dataset split; returns accuracy, macro_f1, n, per_class and more."""
    table = DatasetTable.load(dataset_dir)
    names = list(table.class_names)
    class_map = check_class_map(runner.card, names, dataset_dir, runner.path.name)
    n_total = len(table.split(split))
    if n_total == 0:
        raise DataError(f"{dataset_dir}: the {split!r} split is empty")
    spec = runner.input_spec
    labels, preds = [], []
    infer_s = 0.0
    t0 = time.perf_counter()
    runner.load()
    with epoch_bar(show_progress) as bar:
        task = bar.add_task(f"eval {runner.path.name} [{split}]", total=n_total, info="")
        for batch, y in iter_batches(dataset_dir, split, spec.size, spec.mean, spec.std, batch_size):
            logits = runner.infer(batch)
            infer_s += runner.last_infer_s or 0.0
            if np.ndim(logits) != 2 or np.shape(logits)[1] != len(names):
                raise DataError(f"{runner.path.name} outputs {tuple(np.shape(logits))[1:]} scores per image; "
                                f"{dataset_dir} has {len(names)} classes")
            preds.append(np.asarray(logits).argmax(axis=1))
            labels.append(np.asarray(y))
            bar.advance(task, len(y))
    y_true, y_pred = np.concatenate(labels), np.concatenate(preds)
    result = classification_metrics(y_true, y_pred, names)
    result.update({"labels": y_true.tolist(), "predictions": y_pred.tolist(),
                   "split": split, "class_map": class_map,
                   "artifact": str(runner.path), "format": runner.card.get("format"),
                   "backend": runner.backend, "runtime": runner.runtime, "precision": runner.precision,
                   "execution": runner.execution,
                   "device": runner.device, "batch_size": batch_size,
                   "seconds": round(time.perf_counter() - t0, 3),
                   "infer_seconds": round(infer_s, 3)})
    return result


def check_class_map(card: dict[str, Any], names: list[str], dataset_dir: str | Path, model: str) -> str:
    """How the model's outputs map to the dataset's classes: ``"names"`` (its card names them, in
    the dataset's order) or ``"index"`` (a foreign model without names: output i is class i).
    Anything else is one DataError, raised before any image is run."""
    own = card.get("class_names")
    if own is not None:
        if list(own) != names:
            raise DataError(f"{dataset_dir}: its classes {_short(names)} differ from the ones "
                            f"{model} was trained on {_short(list(own))}")
        return "names"
    width = card.get("num_classes")
    if width is not None and width != len(names):
        raise DataError(f"{model} outputs {width} scores; {dataset_dir} has {len(names)} classes "
                        f"(pass --classes FILE to name its outputs)")
    return "index"


INDEX_MAP_NOTE = "the model names no classes: output index i was scored as the dataset's class i"


def evaluate_artifact(path: str | Path, dataset_dir: str | Path, split: str = "val",
                      device: str = "cpu", batch_size: int = 64, threads: int | None = None,
                      show_progress: bool = False, card: dict[str, Any] | None = None,
                      runtime: str | None = None) -> dict[str, Any]:
    """Open any artifact with its runner and evaluate it on `split` of `dataset_dir` (`card`:
    a foreign model's, from `fopt.describe`; `runtime`: None = the format's default runtime)."""
    with open_runner(path, device=device, threads=threads, card=card, runtime=runtime) as runner:
        return evaluate_runner(runner, dataset_dir, split, batch_size, show_progress=show_progress)


def _short(names: list[str]) -> str:
    return f"[{', '.join(names[:4])}{', ...' if len(names) > 4 else ''}] ({len(names)})"


# ----------------------------------------------------------------------------- paired deltas

METRICS = ("accuracy", "macro_f1")
BOOTSTRAP_RESAMPLES = 2000   # percentile bootstrap: 2000 keeps the 2.5/97.5% ends stable to ~0.3 pt
BOOTSTRAP_SEED = 0           # seeded: the same predictions always give the same interval
_CHUNK = 200                 # resamples per matrix product: bounds memory at 200 x n counts


def paired_delta(y_true: Sequence[int], pred_a: Sequence[int], pred_b: Sequence[int],
                 metric: str = "accuracy", *, level: float = 0.95,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """metric(b) - metric(a) in percentage points, and its `level` interval: (point, low, high).

    Paired bootstrap: each resample draws images (with replacement) and scores *both* artifacts on
    the same draw, so the interval reflects the images on which they disagree, not the spread of
    each accuracy on its own. macro-F1 follows `classification_metrics` (average over the classes
    present in the labels or that artifact's predictions, in each resample).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if not 0 < level < 1:
        raise ValueError("level must be in (0, 1)")
    y = np.asarray(y_true, dtype=np.int64)
    a = np.asarray(pred_a, dtype=np.int64)
    b = np.asarray(pred_b, dtype=np.int64)
    if not (y.shape == a.shape == b.shape) or y.ndim != 1:
        raise ValueError(f"labels and both predictions need one entry per image; got {y.shape}, "
                         f"{a.shape}, {b.shape}")
    n = y.size
    if n == 0:
        return (float("nan"),) * 3
    score = _accuracy_counts if metric == "accuracy" else _macro_f1_counts
    point = 100.0 * float(score(np.ones((1, n)), y, b)[0] - score(np.ones((1, n)), y, a)[0])
    rng = np.random.default_rng(seed)
    deltas = []
    for start in range(0, resamples, _CHUNK):
        k = min(_CHUNK, resamples - start)
        # How often each image is drawn in each resample: one matrix product scores them all.
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=k).astype(np.float64)
        deltas.append(score(w, y, b) - score(w, y, a))
    d = 100.0 * np.concatenate(deltas)
    tail = 100.0 * (1.0 - level) / 2
    low, high = np.percentile(d, [tail, 100.0 - tail])
    # A percentile interval can miss the point when nearly every resample ties; keep it inside.
    return round(point, 4), round(min(float(low), point), 4), round(max(float(high), point), 4)


def paired_deltas(ref: dict[str, Any] | None, other: dict[str, Any] | None) -> dict[str, list[float] | None]:
    """{"accuracy": [low, high], "macro_f1": [low, high]} in points for `other` vs `ref`, two
    evaluation results (or eval.json entries) holding ``labels`` and ``predictions``; None for
    each when either lacks them or they were not made on the same images."""
    out: dict[str, list[float] | None] = dict.fromkeys(METRICS)
    if not ref or not other or ref.get("predictions") is None or other.get("predictions") is None:
        return out
    y = ref.get("labels")
    if y is None or other.get("labels") != y or len(ref["predictions"]) != len(other["predictions"]):
        return out
    for m in METRICS:
        _, lo, hi = paired_delta(y, ref["predictions"], other["predictions"], m)
        out[m] = [lo, hi]
    return out


def resolution_note(n: int | None, ci_pts: Sequence[float] | None, budget_pts: float) -> str | None:
    """Why an evaluation of `n` images cannot resolve a drop budget of `budget_pts`, or None when
    it can: one image is worth more than the budget, or the interval's half-width exceeds it."""
    if n:
        one = 100.0 / n
        if one > budget_pts:
            return f"one image is {one:.1f} pts of {n}, more than the {budget_pts:g} pt budget"
    if ci_pts is not None and None not in ci_pts:
        half = (ci_pts[1] - ci_pts[0]) / 2
        if half > budget_pts:
            return f"95% interval half-width {half:.1f} pts exceeds the {budget_pts:g} pt budget"
    return None


def _accuracy_counts(w: np.ndarray, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return w @ (y == p).astype(np.float64) / w.sum(axis=1)


def _macro_f1_counts(w: np.ndarray, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    classes = np.union1d(y, p)
    hit = (y[:, None] == classes) & (p[:, None] == classes)          # (n, C) true positives
    tp = w @ hit.astype(np.float64)
    support = w @ (y[:, None] == classes).astype(np.float64)         # true count per class
    predicted = w @ (p[:, None] == classes).astype(np.float64)
    denom = support + predicted
    present = denom > 0                                              # in this resample's labels or predictions
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=present)
    return f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)
