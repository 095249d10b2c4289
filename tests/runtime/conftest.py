"""Runner fixtures: the `tiny` checkpoint and TorchScript/ONNX copies of it, made here without
`fopt.export` so runner tests stay independent of the exporter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


def _card(ckpt_card: dict, fmt: str, parent: Path, opset=None) -> dict:
    from fopt.artifacts import make_card

    return make_card(kind=fmt, format=fmt, precision="fp32", input_spec=ckpt_card["input_spec"],
                     class_names=ckpt_card["class_names"], parent=parent,
                     model=ckpt_card["model"], opset=opset, config=ckpt_card.get("config", {}))


@pytest.fixture(scope="module")
def artifacts(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """{"checkpoint", "torchscript", "onnx"} paths, each with its sidecar card and embedded card."""
    import onnx
    import torch

    from fopt.artifacts import set_onnx_card, write_card
    from fopt.checkpoint import load_checkpoint
    from fopt.export.onnx import model_to_onnx

    folder = tmp_path_factory.mktemp("runners")
    ckpt_path = folder / "tiny.pt"
    shutil.copy(tiny_checkpoint, ckpt_path)
    shutil.copy(tiny_checkpoint.with_name(tiny_checkpoint.name + ".json"),
                ckpt_path.with_name(ckpt_path.name + ".json"))
    ckpt = load_checkpoint(ckpt_path)
    size = ckpt.input_spec.size

    ts_path = folder / "tiny.torchscript.pt"
    ts_card = _card(ckpt.card, "torchscript", ckpt_path)
    traced = torch.jit.trace(ckpt.model, torch.randn(2, 3, size, size))
    torch.jit.save(traced, str(ts_path), _extra_files={"fopt_card.json": json.dumps(ts_card)})
    write_card(ts_path, ts_card)

    onnx_path = folder / "tiny.onnx"
    onnx_card = _card(ckpt.card, "onnx", ckpt_path, opset=17)
    proto = model_to_onnx(ckpt.model, size)
    set_onnx_card(proto, onnx_card)
    onnx.save(proto, str(onnx_path))
    write_card(onnx_path, onnx_card)
    return {"checkpoint": ckpt_path, "torchscript": ts_path, "onnx": onnx_path}


@pytest.fixture
def without_sidecar(artifacts, tmp_path):
    """Copy an artifact to a fresh folder without its sidecar card (embedded card only)."""
    def copy(fmt: str) -> Path:
        src = artifacts[fmt]
        dst = tmp_path / src.name
        shutil.copy(src, dst)
        return dst
    return copy
