"""The card of an ONNX input and the dataset its lineage was trained on.

An exported ONNX file carries its card beside it (``model.onnx.json``) and inside it
(``metadata_props``). Its ``parent`` is the checkpoint, whose card records the training config
(``config.data`` = the dataset folder). Walking up the parents finds the dataset that calibration
(train split) and evaluation (val split) default to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fopt.artifacts import onnx_card_from_proto, read_card
from fopt.checkpoint import read_checkpoint
from fopt.errors import InputError
from fopt.onnxgraph import load_onnx

MAX_DEPTH = 6  # checkpoint -> onnx -> int8 -> engine is 3 hops; more means a cycle or junk


def onnx_card(path: str | Path, model=None) -> dict[str, Any]:
    """The card of an ONNX file: the sidecar if present, else the embedded copy."""
    card = read_card(path, required=False)
    if card is not None:
        return card
    model = model if model is not None else load_onnx(path, load_weights=False)
    card = onnx_card_from_proto(model)
    if card is None:
        raise InputError(f"{path}: ONNX file has no fopt card (neither {Path(path).name}.json beside "
                         f"it nor 'fopt_card' in its metadata); export it with `fopt export`")
    return card


def parent_card(card: dict[str, Any]) -> dict[str, Any] | None:
    """The card of `card`'s parent artifact, if the parent still exists."""
    parent = (card.get("parent") or {}).get("path")
    if not parent:
        return None
    p = Path(parent)
    if not p.is_file():
        return None
    found = read_card(p, required=False)
    if found is not None:
        return found
    if p.suffix == ".onnx":
        try:
            return onnx_card(p)
        except InputError:
            return None
    try:  # a checkpoint keeps its card inside

        return read_checkpoint(p)["card"]
    except Exception:  # not a checkpoint either: the lineage simply ends here
        return None


def lineage_dataset(card: dict[str, Any]) -> Path | None:
    """The dataset folder recorded by the nearest ancestor that has one (``config.data``)."""
    seen = 0
    current: dict[str, Any] | None = card
    while current is not None and seen < MAX_DEPTH:
        data = (current.get("config") or {}).get("data") or current.get("dataset")
        if isinstance(data, dict):
            data = data.get("dir") or data.get("path")
        if data:
            return Path(data)
        current = parent_card(current)
        seen += 1
    return None
