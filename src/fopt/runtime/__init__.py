"""Everything that executes a model: one `Runner` per artifact format, one way to open it.

Importing this package registers every backend (each import is cheap: torch, onnxruntime and
tensorrt load when a runner loads its artifact). `open_runner` picks the runner by the
artifact's card; the timing loop (`fopt.runtime.timing`) times any runner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fopt.artifacts import detect_format
from fopt.runtime import onnxrt, pytorch, tensorrt  # noqa: F401  (importing registers them)
from fopt.runtime.base import RUNNERS, Runner, resolve_device

__all__ = ["RUNNERS", "Runner", "open_runner", "resolve_device"]


def open_runner(path: str | Path, device: str = "cpu", threads: int | None = None,
                **options: Any) -> Runner:
    """The runner for any artifact, chosen by its card's format (or its content)."""
    return RUNNERS.get(detect_format(path))(path, device=device, threads=threads, **options)
