"""The model registry: torchvision classifiers with their last Linear resized, plus tiny test nets.

With ``num_classes=1000`` and default dropout a registry model is exactly torchvision's, so its
parameter and MAC counts compare with published ones. ``dropout`` replaces the classifier dropout
probability where torchvision has one; for ResNets (no dropout in torchvision) it is applied to the
input of ``fc`` during training only, keeping the state-dict keys and the exported graph identical.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fopt.errors import CheckpointError, InputError, MissingDependency, UsageError, first_line
from fopt.registry import Registry


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., Any]  # builder(num_classes, dropout) -> nn.Module
    default_size: int            # the resolution the architecture was designed for
    torchvision_weights: str | None = None  # torchvision weights enum name, for --pretrained imagenet
    description: str = ""


class ModelRegistry(Registry[ModelEntry]):
    """fopt's short names, plus three open families resolved on demand:

    - ``torchvision:NAME``: any torchvision classification model (``torchvision.models.get_model``);
    - ``timm:NAME``: any timm model (``pip install fopt[timm]``);
    - ``module:package.module:factory``: the user's own ``nn.Module``, from ``factory(num_classes=N)``
      imported from the current environment.

    None of them downloads weights: ``--weights FILE`` (export) or ``--pretrained FILE`` (train) loads them.
    """

    PREFIXES = ("torchvision", "timm", "module")

    def get(self, name: str) -> ModelEntry:
        prefix, _, rest = name.partition(":")
        if rest and prefix in self.PREFIXES:
            return _RESOLVERS[prefix](rest, name)
        return super().get(name)

    def __contains__(self, name: object) -> bool:
        """Known short names, and any well-formed prefixed name (`get` says if it resolves)."""
        if isinstance(name, str):
            prefix, _, rest = name.partition(":")
            if rest and prefix in self.PREFIXES:
                return prefix != "module" or rest.count(":") == 1
        return super().__contains__(name)


MODELS = ModelRegistry("model")


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


# ----------------------------------------------------------------------------- open families

def _torchvision_entry(rest: str, name: str) -> ModelEntry:
    import torchvision.models as tvm

    known = tvm.list_models(module=tvm)   # classification models only
    if rest not in known:
        close = difflib.get_close_matches(rest, known, n=1)
        raise UsageError(f"unknown model {name!r}: torchvision has no classification model {rest!r}"
                         f"{f'; did you mean torchvision:{close[0]}?' if close else ''}")

    def build(num_classes: int, dropout: float | None):
        kwargs: dict[str, Any] = {"num_classes": num_classes}
        if dropout is not None:
            kwargs["dropout"] = dropout
        try:
            return tvm.get_model(rest, **kwargs)
        except TypeError:  # an architecture without a dropout argument
            kwargs.pop("dropout", None)
            return tvm.get_model(rest, **kwargs)

    return ModelEntry(name, build, 224, None, f"torchvision {rest}")


def _timm_entry(rest: str, name: str) -> ModelEntry:
    try:
        import timm
    except ImportError:
        raise MissingDependency(f"model {name!r} needs timm: pip install fopt[timm]") from None
    if not timm.is_model(rest):
        close = difflib.get_close_matches(rest, timm.list_models(), n=1)
        raise UsageError(f"unknown model {name!r}: timm has no model {rest!r}"
                         f"{f'; did you mean timm:{close[0]}?' if close else ''}")

    def build(num_classes: int, dropout: float | None):
        kwargs: dict[str, Any] = {"pretrained": False, "num_classes": num_classes}
        if dropout is not None:
            kwargs["drop_rate"] = dropout
        return timm.create_model(rest, **kwargs)

    cfg = timm.get_pretrained_cfg(rest)
    size = int(cfg.input_size[-1]) if cfg is not None and getattr(cfg, "input_size", None) else 224
    return ModelEntry(name, build, size, None, f"timm {rest}")


def _module_entry(rest: str, name: str) -> ModelEntry:
    import importlib

    module_name, sep, attr = rest.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--module {rest!r}: expected package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the module failing as it runs
        raise InputError(f"--module {rest}: cannot import {module_name} ({type(e).__name__}: "
                         f"{first_line(e)})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InputError(f"--module {rest}: {module_name} has no callable {attr!r}")

    def build(num_classes: int, dropout: float | None):
        import torch.nn as nn

        try:
            model = factory(num_classes=num_classes)
        except Exception as e:
            raise InputError(f"--module {rest}: {attr}(num_classes={num_classes}) failed "
                             f"({type(e).__name__}: {first_line(e)})") from None
        if not isinstance(model, nn.Module):
            raise InputError(f"--module {rest}: {attr}(num_classes={num_classes}) returned "
                             f"{type(model).__name__}, not a torch.nn.Module")
        return model

    return ModelEntry(name, build, 224, None, f"{rest} (your module)")


_RESOLVERS = {"torchvision": _torchvision_entry, "timm": _timm_entry, "module": _module_entry}


def folder_name(name: str) -> str:
    """A model name as a file-system name: timm:resnet18 -> timm-resnet18."""
    return name.replace(":", "-").replace("/", "_")


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


# ----------------------------------------------------------------------------- listing

def list_models(num_classes: int = 1000) -> list[dict[str, Any]]:
    """One row per registry model: params at `num_classes`, default size, local ImageNet weights."""
    import torch

    rows = []
    for name, entry in MODELS.items():
        weights = imagenet_weights_file(name) if entry.torchvision_weights else None
        with torch.device("meta"):  # shapes only: no memory, no random init (VGG-16 is 138M)
            params = count_params(build_model(name, num_classes))
        rows.append({"name": name, "params": params,
                     "default_size": entry.default_size,
                     "imagenet": ("local" if weights and weights.exists()
                                  else "absent" if weights else "-"),
                     "description": entry.description})
    return rows


# ----------------------------------------------------------------------------- heads, freezing

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet weights expect these stats
IMAGENET_STD = (0.229, 0.224, 0.225)


def head_name(model) -> str:
    """The top-level child holding the last Linear: ``classifier`` (VGG, EfficientNet, MobileNet),
    ``fc`` (ResNet) or the final index of a Sequential (tiny)."""
    import torch.nn as nn

    head = None
    for child_name, child in model.named_children():
        if isinstance(child, nn.Linear) or any(isinstance(m, nn.Linear) for m in child.modules()):
            head = child_name
    if head is None:
        raise UsageError(f"{type(model).__name__} has no Linear classifier head to keep trainable")
    return head


def freeze_backbone(model) -> int:
    """Freeze every parameter outside the classifier head; returns the trainable parameter count."""
    head = head_name(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".", 1)[0] == head)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def frozen_norm_eval(model) -> None:
    """Put BatchNorm layers whose parameters are all frozen into eval mode (call after .train()).

    A frozen backbone must not drift: in train mode BatchNorm would still update its running
    statistics (and normalise with batch statistics) even though its weights never change.
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    for m in model.modules():
        if isinstance(m, _BatchNorm):
            params = list(m.parameters())
            if params and not any(p.requires_grad for p in params):
                m.eval()


# ----------------------------------------------------------------------------- pretrained weights

def imagenet_weights_file(name: str) -> Path | None:
    """Where torchvision's ImageNet weights for `name` live in the local torch hub cache."""
    entry = MODELS.get(name)
    if entry.torchvision_weights is None:
        return None
    import torch
    import torchvision.models as tvm

    url = getattr(tvm, entry.torchvision_weights).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _imagenet_url(name: str) -> str:
    import torchvision.models as tvm

    return getattr(tvm, MODELS.get(name).torchvision_weights).DEFAULT.url


def load_pretrained(model, name: str, source: str) -> dict[str, Any]:
    """Load `source` ("imagenet" or a state-dict file) into `model` (a registry `name`) in place.

    Classifier weights whose shape does not fit (1000 ImageNet classes vs ours) are skipped and
    stay randomly initialised; any other missing or unexpected key is an error, so a file for a
    different architecture never half-loads. Returns {"source", "file", "skipped"}.
    """

    if source == "imagenet":
        path = imagenet_weights_file(name)
        if path is None:
            raise UsageError(f"model {name!r} has no ImageNet weights; use --pretrained PATH or none")
        if not path.exists():
            raise InputError(f"ImageNet weights for {name} are not in the local torch hub cache and "
                             f"fopt does not download: put {path.name} (from {_imagenet_url(name)}) "
                             f"into {path.parent}/ or pass --pretrained PATH")
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"--pretrained {source}: no such file (expected a state-dict .pt/.pth, "
                             f"or 'imagenet')")
    state = read_state_dict(path)
    own = model.state_dict()
    head = head_name(model)
    skipped = [k for k, v in state.items()
               if k in own and k.split(".", 1)[0] == head and tuple(v.shape) != tuple(own[k].shape)]
    for k in skipped:
        del state[k]
    missing = [k for k in own if k not in state and k not in skipped]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:3]}" if missing else
                  f"unexpected {unexpected[:3]}" if unexpected else f"shape mismatch {wrong[:3]}")
        raise CheckpointError(f"{path}: weights do not fit {name} ({detail}"
                              f"{' ...' if max(len(missing), len(unexpected), len(wrong)) > 3 else ''})")
    model.load_state_dict(state, strict=False)
    return {"source": source, "file": str(path), "skipped": skipped}


# Where checkpoints written by common training code keep the weights (timm, torchvision references,
# Lightning-style dicts); fopt's own checkpoint uses "state_dict".
STATE_DICT_KEYS = ("state_dict", "model", "ema", "model_ema", "state_dict_ema", "model_state_dict")


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """The parameter tensors in a weights file: a bare state_dict, a checkpoint dict holding one
    under a usual key (`STATE_DICT_KEYS`), or fopt's checkpoint. Loaded ``weights_only=True`` (no
    code in the file runs); a DDP ``module.`` prefix is dropped."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such weights file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling/zip failure is the user's file, reported in one line
        raise CheckpointError(f"{path}: not a loadable state dict ({first_line(e)})") from None
    if isinstance(raw, dict) and not _is_tensor_map(raw):
        raw = next((raw[k] for k in STATE_DICT_KEYS if isinstance(raw.get(k), dict) and _is_tensor_map(raw[k])),
                   raw)
    if not isinstance(raw, dict) or not _is_tensor_map(raw):
        raise CheckpointError(f"{path}: no state dict in it (expected a mapping of parameter names to "
                              f"tensors, or one under {', '.join(STATE_DICT_KEYS)})")
    return {k.removeprefix("module."): v for k, v in raw.items()}


def _is_tensor_map(d: dict[str, Any]) -> bool:
    return bool(d) and all(isinstance(k, str) and hasattr(v, "shape") for k, v in d.items())


def load_weights(model, path: str | Path, name: str) -> dict[str, Any]:
    """Load every parameter of `model` from `path`, strictly: any missing, unexpected or misshapen
    key is one CheckpointError listing them (a file for another architecture never half-loads)."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{label} {len(keys)}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                 if keys]
        raise CheckpointError(f"{path}: weights do not fit {name} ({'; '.join(parts)})")
    model.load_state_dict(state)
    return {"file": str(Path(path).resolve()), "tensors": len(state)}
