"""TensorBoard: event files under the run folder (``RUN/tensorboard``, or ``--track-uri DIR``).

A command's own run writes into that folder, each child (a model's training, an artifact) into a
subfolder named after it, which TensorBoard lists as runs. Per-epoch metrics are scalars at their
epoch; single measurements are scalars at step 0; params, tags and tables (the bench table) are
text. TensorBoard is not a file store: ``--track-artifacts copy`` copies nothing here.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"


def _markdown_table(d: dict[str, str]) -> str:
    rows = "\n".join(f"| {k} | {str(v).replace('|', '/')} |" for k, v in sorted(d.items()))
    return "| key | value |\n|---|---|\n" + rows


class TensorBoardBackend:
    name = "tensorboard"

    def __init__(self, uri: str | None, run_dir: Path):
        self.root = Path(uri) if uri else Path(run_dir) / "tensorboard"
        self._writers: dict[str, Any] = {}

    def guard(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def start_run(self, name: str, parent_id: str | None, tags: dict[str, str]) -> str:
        from torch.utils.tensorboard import SummaryWriter

        folder = self.root if parent_id is None else self.root / _slug(name)
        run_id = str(folder)
        self._writers[run_id] = SummaryWriter(log_dir=run_id)
        self._writers[run_id].add_text("tags", _markdown_table(tags), 0)
        return run_id

    def log(self, run_id: str, params: dict[str, str], metrics: dict[str, float],
            series: dict[str, list[tuple[int, float]]]) -> None:
        w = self._writers[run_id]
        if params:
            w.add_text("params", _markdown_table(params), 0)
        for k, v in metrics.items():
            w.add_scalar(k, v, 0)
        for k, points in series.items():
            for step, v in points:
                w.add_scalar(k, v, step)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        # Markdown renders as is (the bench table); anything else as a code block.
        body = text if name.endswith(".md") else "\n".join("    " + line for line in text.splitlines())
        self._writers[run_id].add_text(name, body, 0)

    def log_file(self, run_id: str, path: Path) -> None:
        return None

    def find_run(self, sha256: str) -> str | None:
        return None

    def end_run(self, run_id: str, failed: bool) -> None:
        w = self._writers.pop(run_id)
        if failed:
            w.add_text("status", "FAILED", 0)
        w.close()

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()
