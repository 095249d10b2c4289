"""FP16 weights and compute for GPU targets, with FP32 inputs and outputs.

onnxconverter-common converts every float tensor to FP16 and, with ``keep_io_types``, inserts a
Cast at the graph input and output, so callers keep feeding FP32 and reading FP32 logits (and the
same runner code works). TensorRT 10/11 build strongly typed FP16 engines from this file.
On CPU, FP16 is not faster: ONNX Runtime's CPU kernels compute most FP16 ops by converting to
FP32, so the artifact is produced for GPUs and evaluated on CPU only to measure its accuracy.

Weights outside the range the converter keeps (non-zero magnitudes below `MIN_POSITIVE`, above
`MAX_FINITE`) are clamped to it. The converter warns once per tensor and extreme, dozens of lines
for a real network; fopt silences those and records one count in the result (``clamped_values``
and a one-line ``note``), which ends up in the artifact's card.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

CPU_NOTE = ("FP16 targets GPUs (Tensor Cores, TensorRT); ONNX Runtime on this CPU computes FP16 "
            "through FP32 conversions, so it will not be faster here")
MIN_POSITIVE = 1e-7   # onnxconverter-common's defaults, passed explicitly so the count below agrees
MAX_FINITE = 1e4
TRUNCATION_WARNING = r"the float32 number .* will be truncated to"


def onnx_to_fp16(src: str | Path, dst: str | Path, *, keep_io_types: bool = True,
                 op_block_list: Sequence[str] | None = None) -> dict[str, Any]:
    """Convert an FP32 ONNX file to FP16 (FP32 graph inputs/outputs when `keep_io_types`)."""
    import onnx
    from onnx import numpy_helper
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    before = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer
              if i.data_type == onnx.TensorProto.FLOAT}
    kwargs: dict[str, Any] = {"keep_io_types": keep_io_types, "min_positive_val": MIN_POSITIVE,
                              "max_finite_val": MAX_FINITE}
    if op_block_list is not None:
        kwargs["op_block_list"] = list(op_block_list)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TRUNCATION_WARNING, category=UserWarning)
        converted = float16.convert_float_to_float16(model, **kwargs)
    clamped, tensors = clamped_counts(before, converted)
    onnx.save(converted, str(dst))
    record: dict[str, Any] = {
        "converter": "onnxconverter_common.float16", "keep_io_types": keep_io_types,
        "op_block_list": list(op_block_list) if op_block_list is not None else "default",
        "io_dtype": "float32" if keep_io_types else "float16",
        "clamp_range": [MIN_POSITIVE, MAX_FINITE], "clamped_values": clamped,
        "clamped_tensors": tensors}
    if clamped:
        record["note"] = (f"{clamped} weight value(s) in {tensors} tensor(s) outside the FP16 range "
                          f"were clamped to magnitudes [{MIN_POSITIVE:g}, {MAX_FINITE:g}]")
    return record


def clamped_counts(before: dict[str, Any], converted) -> tuple[int, int]:
    """(values, tensors) among the FP32 initializers `before` that the conversion turned FP16 and
    that lay outside the kept range (0 < |x| < MIN_POSITIVE or MAX_FINITE < |x| < inf)."""
    import numpy as np
    import onnx

    now_fp16 = {i.name for i in converted.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    values = tensors = 0
    for name, arr in before.items():
        if name not in now_fp16:
            continue
        a = np.abs(arr)
        n = int(np.count_nonzero((a > 0) & (a < MIN_POSITIVE)) +
                np.count_nonzero((a > MAX_FINITE) & np.isfinite(a)))
        values += n
        tensors += bool(n)
    return values, tensors
