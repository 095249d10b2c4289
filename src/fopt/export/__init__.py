"""Checkpoint -> TorchScript and ONNX, each checked and proven equal to the checkpoint.

One pure function per format (`checkpoint_to_onnx`, `checkpoint_to_torchscript`), all wrapped by
`fopt.export.steps.export_step`; `export_checkpoint` runs several formats for the CLI and the
pipeline; `fopt.export.validate` holds the parity check. torch/onnx load only when a function runs.
"""

from fopt.export.steps import EXPORTS, ExportResult, default_output, export_checkpoint
from fopt.export.onnx import checkpoint_to_onnx, model_to_onnx  # noqa: E402  (registers "onnx")
from fopt.export.torchscript import checkpoint_to_torchscript  # noqa: E402  (registers "torchscript")

__all__ = ["EXPORTS", "ExportResult", "checkpoint_to_onnx", "checkpoint_to_torchscript", "default_output",
           "export_checkpoint", "model_to_onnx"]
