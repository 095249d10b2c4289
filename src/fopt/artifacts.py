"""The artifact card, atomic writes and hashing.

Every file fopt writes as a model artifact (checkpoint, TorchScript, ONNX, TensorRT engine) gets a
sidecar card ``<file name>.json`` (``model.onnx`` -> ``model.onnx.json``) that says what it is and
how to feed it: kind, format, precision, parent and its sha256, class names, input spec, opset,
library versions and the metrics measured on it. Any command can take any artifact and know how
to run it. ONNX files also carry the card in ``metadata_props`` (key ``fopt_card``), TorchScript
files in ``_extra_files`` and checkpoints inside the checkpoint dict.

Writes are atomic: data goes to a temporary file in the target folder and is renamed over the
target only when complete, so a killed run never leaves a file that looks valid but is not.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from fopt import __version__
from fopt.errors import InputError, OutputExistsError

CARD_SCHEMA = 1
# Runner registry keys; also the "format" field of a card.
FORMATS = ("checkpoint", "torchscript", "onnx", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8", "mixed")


@dataclass(frozen=True)
class InputSpec:
    """How to feed a model: NCHW float32, square `size`, normalised with mean/std."""

    size: int
    channels: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "channels": self.channels,
                "mean": list(self.mean), "std": list(self.std), "layout": "NCHW"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputSpec":
        return cls(size=int(d["size"]), channels=int(d.get("channels", 3)),
                   mean=tuple(float(x) for x in d["mean"]), std=tuple(float(x) for x in d["std"]))


# ----------------------------------------------------------------------------- hashing, writes

def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` if the block succeeds.

    For libraries that insist on writing files themselves (torch.save, onnx.save, TensorRT).
    On any exception the temporary file is removed and `target` is untouched.
    """
    target = Path(target)
    if not overwrite and target.exists():
        raise OutputExistsError(f"{target} exists (pass --force to overwrite)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if not tmp_path.exists() or tmp_path.stat().st_size == 0:
            raise OSError(f"nothing was written for {target}")
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text_atomic(target: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(target: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):  # numpy scalars / arrays
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ----------------------------------------------------------------------------- versions

def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape an artifact; only those already importable."""
    import importlib.metadata as md

    out = {"fopt": __version__, "python": platform.python_version()}
    for dist in ("torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxsim",
                 "onnxconverter-common", "tensorrt", "numpy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


# ----------------------------------------------------------------------------- the card

def card_path(artifact: str | os.PathLike) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def make_card(*, kind: str, format: str, precision: str, input_spec: InputSpec | dict,
              class_names: list[str], parent: str | os.PathLike | None = None,
              model: dict[str, Any] | None = None, opset: int | None = None,
              metrics: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Build a card dict. `parent` is hashed now, so a later change to it is detectable."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    spec = input_spec.to_dict() if isinstance(input_spec, InputSpec) else dict(input_spec)
    parent_info = None
    if parent is not None:
        p = Path(parent)
        parent_info = {"path": str(p.resolve()), "sha256": sha256_file(p) if p.exists() else None}
    card = {
        "schema": CARD_SCHEMA,
        "kind": kind,
        "format": format,
        "precision": precision,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "parent": parent_info,
        "model": model,
        "class_names": list(class_names),
        "input_spec": spec,
        "opset": opset,
        "versions": library_versions(),
        "metrics": dict(metrics or {}),
    }
    card.update(extra)
    return card


def write_card(artifact: str | os.PathLike, card: dict[str, Any]) -> Path:
    """Write the sidecar card; records the artifact's own sha256 and size."""
    artifact = Path(artifact)
    card = dict(card)
    if artifact.exists():
        card["sha256"] = sha256_file(artifact)
        card["size_bytes"] = artifact.stat().st_size
    return write_json_atomic(card_path(artifact), card)


def read_card(artifact: str | os.PathLike, *, required: bool = True) -> dict[str, Any] | None:
    path = card_path(artifact)
    if not path.exists():
        if required:
            raise InputError(f"{artifact}: no artifact card ({path.name}) beside it")
        return None
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: unreadable artifact card ({e})") from None
    if not isinstance(card, dict) or "format" not in card:
        raise InputError(f"{path}: not a fopt artifact card")
    return card


def update_card_metrics(artifact: str | os.PathLike, metrics: dict[str, Any]) -> dict[str, Any]:
    """Merge measured metrics into an artifact's card (the artifact itself is not touched)."""
    card = read_card(artifact)
    assert card is not None
    card.setdefault("metrics", {}).update(metrics)
    write_json_atomic(card_path(artifact), card)
    return card


def detect_format(path: str | os.PathLike) -> str:
    """The runner format of an artifact: from its card when present, else from its content."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a model file")
    card = read_card(path, required=False)
    if card is not None:
        return card["format"]
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".engine", ".plan", ".trt"):
        return "tensorrt"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any(n.endswith("/constants.pkl") or n.startswith("code/") or "/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "checkpoint"
    raise InputError(f"{path}: unknown artifact format (expected a fopt checkpoint, TorchScript, "
                     f".onnx or TensorRT engine)")


# ----------------------------------------------------------------------------- card inside ONNX

ONNX_CARD_KEY = "fopt_card"  # metadata_props key holding the card in every ONNX file fopt writes


def onnx_card_from_proto(proto: Any) -> dict[str, Any] | None:
    """The card embedded in an `onnx.ModelProto`'s metadata_props, or None."""
    for prop in proto.metadata_props:
        if prop.key == ONNX_CARD_KEY:
            try:
                return json.loads(prop.value)
            except json.JSONDecodeError:
                return None
    return None


def set_onnx_card(proto: Any, card: dict[str, Any]) -> None:
    """Store `card` in metadata_props, replacing an earlier (e.g. inherited parent) card."""
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key != ONNX_CARD_KEY]
    del proto.metadata_props[:]
    for k, v in keep:
        proto.metadata_props.add(key=k, value=v)
    proto.metadata_props.add(key=ONNX_CARD_KEY, value=json.dumps(card, default=_json_default))


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move a completely written folder `tmp` onto `final`, replacing any previous one.

    The old folder is renamed aside first, so `final` is never a half-written tree.
    """
    import shutil

    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.old.{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
