"""Models fopt did not make: plain `torch.onnx.export` and `torch.jit.script` files, no metadata."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest


def _plain_onnx(model, path: Path, size: int, *, dynamic: bool, nhwc: bool = False) -> Path:
    import torch

    x = torch.zeros(1, size, size, 3) if nhwc else torch.zeros(1, 3, size, size)
    wrapped = model
    if nhwc:
        class NHWC(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, t):
                return self.inner(t.permute(0, 3, 1, 2))
        wrapped = NHWC(model)
    axes = {"pixels": {0: "n"}, "scores": {0: "n"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped.eval(), (x,), str(path), input_names=["pixels"], output_names=["scores"],
                          dynamic_axes=axes, dynamo=False, opset_version=17)
    return path


@pytest.fixture(scope="session")
def foreign_dir(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The tiny checkpoint's network saved the ways other tools save models, in a folder of its own."""
    import torch

    from fopt.checkpoint import load_checkpoint

    ck = load_checkpoint(tiny_checkpoint)
    d = tmp_path_factory.mktemp("foreign")
    out = {
        "dynamic": _plain_onnx(ck.model, d / "dynamic.onnx", 32, dynamic=True),
        "fixed": _plain_onnx(ck.model, d / "fixed.onnx", 32, dynamic=False),
        "nhwc": _plain_onnx(ck.model, d / "nhwc.onnx", 32, dynamic=False, nhwc=True),
    }
    torch.jit.script(ck.model.eval()).save(str(d / "scripted.pt"))
    out["torchscript"] = d / "scripted.pt"
    (d / "classes.txt").write_text("\n".join(ck.class_names) + "\n")
    out["classes"] = d / "classes.txt"
    out["dir"] = d
    return out
