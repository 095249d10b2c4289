"""Checkpoints of registry models whose logits are O(1), so parity tests mean something.

A randomly initialised torchvision model with default BatchNorm running stats (mean 0, var 1)
produces vanishing activations in deep nets (MobileNetV3 logits ~1e-10): any exporter would
"pass" an absolute tolerance. Setting the running stats from one train-mode forward over real
images (momentum 1) makes every BatchNorm normalise its actual input, so logits are O(1) and a
wrong op, layout or dropped layer shows up far above tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def real_batch(dataset: Path, size: int, n: int = 8) -> np.ndarray:
    from fopt.data.calibration import calibration_batch

    return calibration_batch(dataset, n, size, split="train")


def make_checkpoint(folder: Path, name: str, size: int, dataset: Path, seed: int = 0) -> Path:
    """Save a fopt checkpoint of registry model `name` for `dataset`'s classes at `size` px."""
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

    from fopt.artifacts import InputSpec
    from fopt.data.datasets import DatasetTable
    from fopt.models import build_model
    from fopt.train.checkpoint import save_checkpoint

    classes = DatasetTable.load(dataset).class_names
    torch.manual_seed(seed)
    model = build_model(name, num_classes=len(classes))
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if bns:
        for m in bns:
            m.momentum = 1.0
        model.train()
        with torch.no_grad():
            model(torch.from_numpy(real_batch(dataset, size)))
    model.eval()
    path = Path(folder) / f"{name}_{size}.pt"
    save_checkpoint(path, model, model_name=name, model_kwargs={"num_classes": len(classes)},
                    class_names=classes, input_spec=InputSpec(size=size), config={"data": str(dataset)})
    return path


def logit_scale(ckpt: Path, dataset: Path, size: int) -> float:
    """Largest |logit| of the checkpoint on real images (the tests require it to be O(1))."""
    from fopt.runtime.base import open_runner

    with open_runner(ckpt) as runner:
        return float(np.abs(runner.infer(real_batch(dataset, size))).max())
