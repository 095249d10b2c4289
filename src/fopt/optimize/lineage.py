"""The dataset an artifact's lineage was trained on.

An exported ONNX file carries its card beside it (``model.onnx.json``) and inside it
(``metadata_props``). Its ``parent`` is the checkpoint, whose card records the training config
(``config.data`` = the dataset folder). Walking up the parents finds the dataset that calibration
(train split) and evaluation (val split) default to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fopt.describe.infer import own_card
from fopt.errors import InputError

MAX_DEPTH = 6  # checkpoint -> onnx -> int8 -> engine is 3 hops; more means a cycle or junk


def parent_card(card: dict[str, Any]) -> dict[str, Any] | None:
    """The card of `card`'s parent artifact, if the parent still exists."""
    parent = (card.get("parent") or {}).get("path")
    if not parent:
        return None
    p = Path(parent)
    if not p.is_file():
        return None
    try:
        return own_card(p)
    except InputError:  # not a readable artifact any more: the lineage simply ends here
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
