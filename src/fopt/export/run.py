"""Several formats from one checkpoint: what `fopt export` and the pipeline call.

Importing this module registers every format (`fopt.export.onnx`, `fopt.export.torchscript`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fopt.artifacts import InputSpec
from fopt.checkpoint import read_checkpoint
from fopt.errors import CheckpointError, UsageError
from fopt.export import torchscript  # noqa: F401  (importing registers "torchscript")
from fopt.export import validate as V
from fopt.export.onnx import check_opset  # importing registers "onnx"
from fopt.export.steps import (
    EXPORTS,
    ExportResult,
    Log,
    check_options,
    check_output,
    default_output,
)
from fopt.models import MODELS


def export_checkpoint(checkpoint: str | os.PathLike, formats: list[str] | tuple[str, ...] = ("torchscript", "onnx"),
                      out_dir: str | os.PathLike | None = None, *, img_size: int | None = None,
                      dynamic_batch: bool = True, batch: int = 1, atol: float | None = None,
                      rtol: float | None = None, device: str = "cpu", force: bool = False,
                      opset: int | None = None, simplify: bool = True, freeze: bool | None = None,
                      parity_batch: int | None = None, log: Log | None = None) -> list[ExportResult]:
    """Export `checkpoint` to each of `formats` into `out_dir` (default: the checkpoint's folder).

    Output names: ``<stem>.onnx`` and ``<stem>.torchscript.pt``, each with ``<name>.json`` beside
    it. Stops at the first failing format (earlier ones stay: they passed parity).
    """
    formats = list(dict.fromkeys(formats))
    if not formats:
        raise UsageError("choose at least one format (--onnx, --torchscript)")
    for f in formats:
        EXPORTS.get(f)  # unknown format: one line listing the valid ones
    checkpoint = Path(checkpoint)
    outs = {f: default_output(checkpoint, f, out_dir) for f in formats}
    raw = read_checkpoint(checkpoint)  # a bad checkpoint fails before any output check
    _check_model_name(checkpoint, raw["card"])
    for f in formats:  # refuse every existing output before writing the first one
        check_output(outs[f], force=force, checkpoint=checkpoint)
    per_format: dict[str, dict[str, Any]] = {
        "onnx": {"simplify": simplify, **({"opset": opset} if opset is not None else {})},
        "torchscript": {"freeze": freeze},
    }
    if "onnx" in formats and opset is not None:
        check_opset(opset)
    pb = V.PARITY_BATCH if parity_batch is None else int(parity_batch)
    check_options(img_size=img_size, batch=batch, parity_batch=pb,
                   atol=V.DEFAULT_ATOL if atol is None else atol, rtol=V.DEFAULT_RTOL if rtol is None else rtol)
    spec = InputSpec.from_dict(raw["card"]["input_spec"])
    spec = InputSpec(size=int(img_size or spec.size), channels=spec.channels, mean=spec.mean, std=spec.std)
    # one set of images and one run of the checkpoint serve every format's parity check
    shared = V.parity_inputs(raw["card"], spec, (1, pb) if dynamic_batch else (batch,))
    del raw
    return [EXPORTS.get(f)(checkpoint, outs[f], img_size=img_size, dynamic_batch=dynamic_batch,
                           batch=batch, atol=atol, rtol=rtol, device=device, force=force,
                           parity_batch=pb, parity=shared, log=log, **per_format.get(f, {}))
            for f in formats]


def _check_model_name(checkpoint: Path, card: dict[str, Any]) -> None:
    name = (card.get("model") or {}).get("name")
    if name not in MODELS:
        raise CheckpointError(f"{checkpoint}: checkpoint names model {name!r}, which is not in the "
                              f"registry (known: {', '.join(MODELS.names())})")
