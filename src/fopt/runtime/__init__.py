"""Everything that executes a model: one `Runner` per artifact format, one way to open it.

Importing this package registers every backend (each import is cheap: torch, onnxruntime and
tensorrt load when a runner loads its artifact). `open_runner` picks the runner by the
artifact's card and the runtime asked for (each format has a default runtime; an ONNX file also
runs on OpenVINO); the timing loop (`fopt.runtime.timing`) times any runner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fopt.artifacts import detect_format
from fopt.runtime import (  # noqa: F401  (importing registers them)
    onnxrt,
    openvino,
    pytorch,
    tensorrt,
)
from fopt.runtime.base import (
    RUNNERS,
    RUNTIMES,
    Runner,
    resolve_device,
    runner_class,
    runtimes_for,
)

__all__ = ["RUNNERS", "RUNTIMES", "Runner", "open_runner", "resolve_device", "runner_class",
           "runtimes_for"]


def open_runner(path: str | Path, device: str = "cpu", threads: int | None = None,
                runtime: str | None = None, **options: Any) -> Runner:
    """The runner for any artifact, chosen by its card's format (or its content) and `runtime`
    (None: the format's default runtime; one that cannot run the format is a UsageError)."""
    return runner_class(detect_format(path), runtime)(path, device=device, threads=threads, **options)
