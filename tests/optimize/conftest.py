"""Fixtures for the optimize tests: small FP32 ONNX exports with their cards.

`tiny_onnx` is the `tiny` checkpoint (4 Conv + Gemm, Relu) exported at 32 px; `silu_onnx` is a
small residual net with SiLU, so the SiLU fusion and Add quantization are exercised. Both record
the synthetic dataset in their lineage, so calibration/evaluation defaults resolve.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def write_onnx_with_card(model, path: Path, img_size: int, class_names: list[str], *,
                         parent: Path | None = None, config: dict | None = None,
                         model_info: dict | None = None) -> Path:
    import onnx

    from fopt.artifacts import InputSpec, make_card, set_onnx_card, write_card
    from fopt.export.onnx import model_to_onnx

    proto = model_to_onnx(model.eval(), img_size)
    extra = {"config": config} if config else {}
    card = make_card(kind="export", format="onnx", precision="fp32", input_spec=InputSpec(size=img_size),
                     class_names=class_names, parent=parent, model=model_info, opset=17, **extra)
    set_onnx_card(proto, card)
    onnx.save(proto, str(path))
    write_card(path, card)
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint, tmp_path_factory) -> Path:
    from fopt.checkpoint import load_checkpoint

    ck = load_checkpoint(tiny_checkpoint)
    out = tmp_path_factory.mktemp("tiny_onnx") / "tiny.onnx"
    return write_onnx_with_card(ck.model, out, ck.input_spec.size, ck.class_names,
                                parent=tiny_checkpoint, model_info=ck.card["model"])


@pytest.fixture(scope="session")
def silu_onnx(synth_dataset, tmp_path_factory) -> Path:
    import torch
    import torch.nn as nn

    from fopt.data.datasets import DatasetTable

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(c)
            self.act = nn.SiLU()

        def forward(self, x):
            return x + self.act(self.bn(self.conv(x)))

    names = DatasetTable.load(synth_dataset).class_names
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.SiLU(), Block(16), Block(16),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, len(names)))
    for m in net.modules():  # trained-looking BatchNorm statistics, so folded biases differ
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.normal_(0, 0.1)
    out = tmp_path_factory.mktemp("silu_onnx") / "silu.onnx"
    return write_onnx_with_card(net, out, 32, names, config={"data": str(synth_dataset)})


@pytest.fixture
def model_copy(tmp_path):
    """Copy an ONNX file and its card into this test's folder (outputs land beside it)."""
    def copy(src: Path) -> Path:
        dst = tmp_path / src.name
        shutil.copy(src, dst)
        shutil.copy(src.with_name(src.name + ".json"), dst.with_name(dst.name + ".json"))
        return dst

    return copy
