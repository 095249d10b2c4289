"""Checkpoints of registry models whose logits are O(1), so parity tests mean something.

A randomly initialised torchvision model with default BatchNorm running stats (mean 0, var 1)
produces vanishing activations in deep nets (MobileNetV3 logits ~1e-10): any exporter would
"pass" an absolute tolerance. Setting the running stats from one forward over real images
(BatchNorm alone in train mode, momentum 1) makes every BatchNorm normalise its actual input,
and scaling the classifier gives logits of unit spread, as a trained model has; a wrong op,
layout or dropped layer then shows up far above tolerance.
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
    from fopt.checkpoint import save_checkpoint
    from fopt.data.datasets import DatasetTable
    from fopt.models import build_model

    classes = DatasetTable.load(dataset).class_names
    torch.manual_seed(seed)
    model = build_model(name, num_classes=len(classes))
    x = torch.from_numpy(real_batch(dataset, size, n=32))
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    model.eval()  # dropout and stochastic depth off while the statistics are taken
    for m in bns:
        m.momentum = 1.0
        m.train()
    with torch.no_grad():
        model(x)
        model.eval()
        for m in bns:
            # A channel that is nearly constant over 32 images would be amplified up to
            # 1/sqrt(eps) ~ 30x and make the net chaotic on other images (EfficientNet-B0 logits
            # 5 -> 600, batch-1 vs batch-48 eager results 0.05 apart); flooring each variance at
            # its layer's median keeps the random net as well conditioned as a trained one.
            m.running_var.clamp_(min=float(m.running_var.median()))
        # Scale the classifier so logits have unit spread on real images: deep random nets give
        # anything from 1e-2 (MobileNetV3) to 1e4 (EfficientNet-B7), and a trained model's
        # logits are O(1), which is what the default tolerances are meant for.
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        spread = float(model(x).std())
        if spread > 0:
            head.weight /= spread
            head.bias /= spread
    path = Path(folder) / f"{name}_{size}.pt"
    save_checkpoint(path, model, model_name=name, model_kwargs={"num_classes": len(classes)},
                    class_names=classes, input_spec=InputSpec(size=size), config={"data": str(dataset)})
    return path


def logit_scale(ckpt: Path, dataset: Path, size: int) -> float:
    """Largest |logit| of the checkpoint on real images (O(1) by construction; tests check it)."""
    from fopt.runtime import open_runner

    with open_runner(ckpt) as runner:
        return float(np.abs(runner.infer(real_batch(dataset, size))).max())
