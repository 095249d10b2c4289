"""FP16 weights and compute for GPU targets, with FP32 inputs and outputs.

onnxconverter-common converts every float tensor to FP16 and, with ``keep_io_types``, inserts a
Cast at the graph input and output, so callers keep feeding FP32 and reading FP32 logits (and the
same runner code works). TensorRT 10/11 build strongly typed FP16 engines from this file.
On CPU, FP16 is not faster: ONNX Runtime's CPU kernels compute most FP16 ops by converting to
FP32, so the artifact is produced for GPUs and evaluated on CPU only to measure its accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

CPU_NOTE = ("FP16 targets GPUs (Tensor Cores, TensorRT); ONNX Runtime on this CPU computes FP16 "
            "through FP32 conversions, so it will not be faster here")


def onnx_to_fp16(src: str | Path, dst: str | Path, *, keep_io_types: bool = True,
                 op_block_list: Sequence[str] | None = None) -> dict[str, Any]:
    """Convert an FP32 ONNX file to FP16 (FP32 graph inputs/outputs when `keep_io_types`)."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    kwargs: dict[str, Any] = {"keep_io_types": keep_io_types}
    if op_block_list is not None:
        kwargs["op_block_list"] = list(op_block_list)
    converted = float16.convert_float_to_float16(model, **kwargs)
    onnx.save(converted, str(dst))
    return {"converter": "onnxconverter_common.float16", "keep_io_types": keep_io_types,
            "op_block_list": list(op_block_list) if op_block_list is not None else "default",
            "io_dtype": "float32" if keep_io_types else "float16"}
