"""ONNX export: the one function that turns an nn.Module into an ONNX graph.

Default opset 17: accepted by onnxruntime (1.18+), TensorRT 10 and 11, and onnxruntime's QDQ
quantizer (per-channel needs >= 13). The TorchScript-based exporter (``dynamo=False``) is used
because in torch 2.14 it exports these CNNs in ~0.2 s with a dynamic batch axis at any opset,
while the dynamo exporter takes ~6 s per model and cannot down-convert below opset 18.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

from fopt.errors import ExportError, UsageError

DEFAULT_OPSET = 17
MIN_OPSET = 13
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def max_supported_opset() -> int:
    import onnx.defs
    import torch.onnx._constants as c  # noqa: PLC2701 - no public constant for the legacy exporter

    return min(onnx.defs.onnx_opset_version(), getattr(c, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))


def model_to_onnx(model, img_size: int, *, channels: int = 3, opset: int = DEFAULT_OPSET,
                  dynamic_batch: bool = True, batch: int = 1) -> Any:
    """Export `model` (eval mode, CPU) to an in-memory `onnx.ModelProto` named input/logits."""
    import onnx
    import torch

    top = max_supported_opset()
    if not MIN_OPSET <= opset <= top:
        raise UsageError(f"opset {opset} cannot be produced here (supported {MIN_OPSET}..{top})")
    model = model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dummy = torch.randn(batch, channels, img_size, img_size, device=device)
    buf = io.BytesIO()
    dyn = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad():
                torch.onnx.export(model, (dummy,), buf, input_names=[INPUT_NAME],
                                  output_names=[OUTPUT_NAME], opset_version=opset,
                                  dynamic_axes=dyn, do_constant_folding=True, dynamo=False)
    except Exception as e:  # exporter failures come in many types; report one line, keep the cause
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {first}") from e
    return onnx.load_from_string(buf.getvalue())
