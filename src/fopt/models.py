"""The model registry: torchvision classifiers with their last Linear resized, plus tiny test nets.

With ``num_classes=1000`` and default dropout a registry model is exactly torchvision's, so its
parameter and MAC counts compare with published ones. ``dropout`` replaces the classifier dropout
probability where torchvision has one; for ResNets (no dropout in torchvision) it is applied to the
input of ``fc`` during training only, keeping the state-dict keys and the exported graph identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fopt.errors import CheckpointError, InputError, UsageError
from fopt.registry import Registry


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., Any]  # builder(num_classes, dropout) -> nn.Module
    default_size: int            # the resolution the architecture was designed for
    torchvision_weights: str | None = None  # torchvision weights enum name, for --pretrained imagenet
    description: str = ""


MODELS: Registry[ModelEntry] = Registry("model")


def _register(name: str, default_size: int, weights: str | None, description: str):
    def deco(fn):
        MODELS.add(name, ModelEntry(name, fn, default_size, weights, description))
        return fn
    return deco


def _dropout_linear(linear, p: float):
    """A Linear that applies dropout to its input in training mode (same params, same graph)."""
    import torch.nn as nn
    import torch.nn.functional as F

    class DropoutLinear(nn.Linear):
        def forward(self, x):  # noqa: D401
            return super().forward(F.dropout(x, self.p, self.training))

    new = DropoutLinear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    new.p = float(p)
    new.load_state_dict(linear.state_dict())
    return new


@_register("vgg16", 224, "VGG16_Weights", "VGG-16 (no BN), 138M params at 1000 classes")
def _vgg16(num_classes: int, dropout: float | None):
    from torchvision.models import vgg16
    return vgg16(num_classes=num_classes, dropout=0.5 if dropout is None else dropout)


def _resnet(fn, num_classes: int, dropout: float | None):
    m = fn(num_classes=num_classes)
    if dropout:
        m.fc = _dropout_linear(m.fc, dropout)
    return m


@_register("resnet18", 224, "ResNet18_Weights", "ResNet-18")
def _resnet18(num_classes: int, dropout: float | None):
    from torchvision.models import resnet18
    return _resnet(resnet18, num_classes, dropout)


@_register("resnet50", 224, "ResNet50_Weights", "ResNet-50")
def _resnet50(num_classes: int, dropout: float | None):
    from torchvision.models import resnet50
    return _resnet(resnet50, num_classes, dropout)


@_register("efficientnet_b0", 224, "EfficientNet_B0_Weights", "EfficientNet-B0 (SE blocks, SiLU)")
def _effb0(num_classes: int, dropout: float | None):
    from torchvision.models import efficientnet_b0
    return efficientnet_b0(num_classes=num_classes, dropout=0.2 if dropout is None else dropout)


@_register("efficientnet_b7", 600, "EfficientNet_B7_Weights", "EfficientNet-B7 (SE blocks, SiLU)")
def _effb7(num_classes: int, dropout: float | None):
    from torchvision.models import efficientnet_b7
    return efficientnet_b7(num_classes=num_classes, dropout=0.5 if dropout is None else dropout)


@_register("mobilenet_v3_small", 224, "MobileNet_V3_Small_Weights", "MobileNetV3-Small (SE, hardswish)")
def _mnv3s(num_classes: int, dropout: float | None):
    from torchvision.models import mobilenet_v3_small
    return mobilenet_v3_small(num_classes=num_classes, dropout=0.2 if dropout is None else dropout)


@_register("mobilenet_v3_large", 224, "MobileNet_V3_Large_Weights", "MobileNetV3-Large (SE, hardswish)")
def _mnv3l(num_classes: int, dropout: float | None):
    from torchvision.models import mobilenet_v3_large
    return mobilenet_v3_large(num_classes=num_classes, dropout=0.2 if dropout is None else dropout)


@_register("tiny", 64, None, "4-layer CNN for tests and quick demos (~0.1M params)")
def _tiny(num_classes: int, dropout: float | None):
    import torch.nn as nn

    def block(cin, cout, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True))

    return nn.Sequential(
        block(3, 16, 2), block(16, 32, 2), block(32, 64, 2), block(64, 128, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Dropout(0.2 if dropout is None else dropout), nn.Linear(128, num_classes))


def build_model(name: str, num_classes: int, dropout: float | None = None):
    """Instantiate a registry model with random weights."""
    if num_classes < 2:
        raise UsageError(f"num_classes must be >= 2, got {num_classes}")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise UsageError(f"dropout must be in [0, 1), got {dropout}")
    entry = MODELS.get(name)
    return entry.builder(num_classes, dropout)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
