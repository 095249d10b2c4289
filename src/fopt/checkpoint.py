"""The checkpoint contract between training and every later stage.

A checkpoint is a dict saved with torch.save and loaded with ``weights_only=True``:
    {"fopt_checkpoint": 1,
     "card": {...artifact card: model {name, kwargs}, class_names, input_spec, config, metrics...},
     "state_dict": {...},
     "train_state": {...} | absent   # optimizer, scheduler, scaler, RNG states, epoch (last.pt)}

Export never needs the training CLI flags: the card says how to rebuild and feed the model.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fopt.artifacts import InputSpec, atomic_path, make_card, write_card
from fopt.errors import CheckpointError, UsageError, first_line
from fopt.models import MODELS, build_model

CHECKPOINT_SCHEMA = 1


@dataclass
class Checkpoint:
    path: Path
    model: Any            # nn.Module in eval mode, on the requested device
    card: dict[str, Any]
    train_state: dict[str, Any] | None

    @property
    def class_names(self) -> list[str]:
        return list(self.card["class_names"])

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec.from_dict(self.card["input_spec"])

    @property
    def model_name(self) -> str:
        return self.card["model"]["name"]


def save_checkpoint(path: str | Path, model, *, model_name: str, model_kwargs: dict[str, Any],
                    class_names: list[str], input_spec: InputSpec, config: dict[str, Any] | None = None,
                    metrics: dict[str, Any] | None = None, train_state: dict[str, Any] | None = None,
                    parent: str | Path | None = None, write_sidecar: bool = True) -> Path:
    """Atomically save a checkpoint (and its sidecar card unless `write_sidecar` is False)."""
    import torch

    card = make_card(kind="checkpoint", format="checkpoint", precision="fp32", input_spec=input_spec,
                     class_names=class_names, parent=parent,
                     model={"name": model_name, "kwargs": dict(model_kwargs)},
                     metrics=metrics, config=dict(config or {}))
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    payload: dict[str, Any] = {"fopt_checkpoint": CHECKPOINT_SCHEMA, "card": card, "state_dict": state}
    if train_state is not None:
        payload["train_state"] = train_state
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    if write_sidecar:
        write_card(path, card)
    return path


def _unwrap(model):
    return getattr(model, "module", model)  # DDP / DataParallel


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load the raw checkpoint dict safely; every failure is a one-line CheckpointError."""
    import torch

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a fopt checkpoint (not a torch zip archive; truncated?)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = first_line(e, "unpickling refused")
        raise CheckpointError(f"{path}: not a fopt checkpoint (weights-only load refused it: {first})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        first = first_line(e)
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({first})") from None
    if not isinstance(raw, dict) or raw.get("fopt_checkpoint") is None:
        raise CheckpointError(f"{path}: not a fopt checkpoint (missing 'fopt_checkpoint' key; a bare "
                              f"state_dict can be used with --pretrained PATH instead)")
    for key in ("card", "state_dict"):
        if key not in raw:
            raise CheckpointError(f"{path}: fopt checkpoint is missing {key!r}")
    return raw


def load_checkpoint(path: str | Path, device: str = "cpu") -> Checkpoint:
    """Rebuild the model from a checkpoint's card and load its weights (eval mode)."""
    raw = read_checkpoint(path)
    card = raw["card"]
    model_info = card.get("model") or {}
    name = model_info.get("name")
    if name not in MODELS:
        raise CheckpointError(f"{path}: checkpoint names model {name!r}, which is not in the registry "
                              f"(known: {', '.join(MODELS.names())})")
    kwargs = dict(model_info.get("kwargs") or {})
    try:
        model = build_model(name, **kwargs)
    except (TypeError, UsageError) as e:
        raise CheckpointError(f"{path}: cannot rebuild {name} from kwargs {kwargs}: {e}") from None
    try:
        model.load_state_dict(raw["state_dict"])
    except RuntimeError as e:
        first = first_line(e)
        raise CheckpointError(f"{path}: weights do not fit {name}: {first}") from None
    model.to(device).eval()
    return Checkpoint(Path(path), model, card, raw.get("train_state"))
