"""Checkpoint -> TorchScript and ONNX, each checked and proven equal to the checkpoint.

One pure function per format (`checkpoint_to_onnx`, `checkpoint_to_torchscript`), all wrapped by
`fopt.export.steps.export_step`; `fopt.export.run.export_checkpoint` runs several formats for the
CLI and the pipeline; `fopt.export.validate` holds the parity check. torch/onnx load only when a
function runs.
"""
