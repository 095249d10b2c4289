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
import functools
import hashlib
import json
import os
import platform
import re
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from fopt import __version__
from fopt.errors import InputError, OutputExistsError

CARD_SCHEMA = 1
# Runner registry keys; also the "format" field of a card.
FORMATS = ("checkpoint", "torchscript", "onnx", "tensorrt", "openvino")  # openvino: IR .xml + .bin
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


def image_spec(card: dict[str, Any], path: str | os.PathLike) -> InputSpec:
    """How to feed `card`'s model normalised NCHW images, or one line saying what is missing.

    Cards fopt writes always have it. A foreign model's card (`fopt.describe`) lacks it when its
    input is not an image batch, and lacks mean/std until the user states them."""
    spec = card.get("input_spec")
    name = Path(path).name
    if not spec:
        why = (card.get("input") or {}).get("not_images") or "its card has no input_spec"
        raise InputError(f"{name}: fopt cannot feed it images: {why}")
    if spec.get("mean") is None or spec.get("std") is None:
        raise InputError(f"{name}: its normalisation is unknown; pass --preset imagenet|inception|none "
                         f"or --mean/--std (or store them once with `fopt card {name} --preset ...`)")
    return InputSpec.from_dict(spec)


@dataclass(frozen=True)
class Feed:
    """The tensor a model takes: shape with None where any size runs (the batch), element type."""

    shape: tuple[int | None, ...]
    dtype: str = "float32"

    def at_batch(self, batch: int) -> tuple[int, ...]:
        """The concrete shape at `batch`; a dynamic non-batch dim is an error naming it."""
        if any(d is None for d in self.shape[1:]):
            dims = "x".join("?" if d is None else str(d) for d in self.shape)
            raise InputError(f"the model's input has dynamic dims ({dims}); pass --input-shape")
        return (batch, *self.shape[1:])  # type: ignore[return-value]

    def random(self, batch: int, seed: int = 0):
        """The one input every backend gets for this (shape, batch) when timed: standard normal
        with a fixed seed for float inputs, uniform 0..127 for integer ones."""
        import numpy as np

        shape, rng = self.at_batch(batch), np.random.default_rng(seed)
        if np.issubdtype(np.dtype(self.dtype), np.integer):
            return rng.integers(0, 128, size=shape).astype(self.dtype)
        return rng.standard_normal(shape, dtype=np.float32).astype(self.dtype, copy=False)


def feed_of(card: dict[str, Any]) -> Feed:
    """The input tensor of `card`'s model: ``input`` (foreign cards) or the image spec (NCHW float32)."""
    given = card.get("input")
    if given and given.get("shape"):
        return Feed(tuple(None if d is None else int(d) for d in given["shape"]), given.get("dtype") or "float32")
    spec = card["input_spec"]
    return Feed((None, int(spec.get("channels", 3)), int(spec["size"]), int(spec["size"])))


# ----------------------------------------------------------------------------- hashing, writes

def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc), else by
    the set-and-restore dance under a lock (os.umask has no read-only form)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


def apply_umask_mode(path: str | os.PathLike, *, folder: bool = False) -> None:
    """Give `path` the mode a plain open()/mkdir() would have given it (mkstemp and mkdtemp make
    0600/0700 for privacy; a finished artifact should be as readable as any other file)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def pid_alive(pid: int) -> bool:
    """True if a process with this pid runs on this host (or we may not signal it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Every temporary fopt makes, and nothing a user would name so (the sweep deletes what matches):
# ".<target name>.fopt-<pid>.<random>.tmp" (files, `atomic_paths`) and ".fopt-<kind>.<pid>.<n>.tmp"
# (scratch folders, `fopt.workdir.scratch_dir`).
_TEMP_NAME = re.compile(r"\..+\.fopt-(\d+)\.[^./]+\.tmp|\.fopt-[\w-]+\.(\d+)\.\d+\.tmp")


def sweep_stale_temps(folder: str | os.PathLike) -> None:
    """Remove fopt's temporaries in `folder` whose writing process is gone: a killed run's
    leftovers. A temporary of a live process (another fopt run) is left alone."""
    import shutil

    folder = Path(folder)
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        m = _TEMP_NAME.fullmatch(entry.name)
        pid = int(m.group(1) or m.group(2)) if m else None
        if pid is not None and pid != os.getpid() and not pid_alive(pid):
            with contextlib.suppress(OSError):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()


def _temp_beside(target: Path) -> Path:
    """An empty temporary file in `target`'s folder (a rename across filesystems is not atomic),
    named after this process so the next run can tell a killed run's leftover (`sweep_stale_temps`)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.fopt-{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_paths(*targets: str | os.PathLike, overwrite: bool = True) -> Iterator[list[Path]]:
    """Yield one temporary path beside each target; if the block succeeds, rename them all onto
    their targets, only after every one is complete and on disk.

    Files that belong together (an artifact and its card, a table and its mapping) are committed
    together: a failure while writing (a full disk, a crash) leaves every target as it was. On any
    exception the temporary files are removed."""
    targets_ = [Path(t) for t in targets]
    if not overwrite:
        for target in targets_:
            if target.exists():
                raise OutputExistsError(f"{target} exists (pass --force to overwrite)")
    temps: list[Path] = []
    try:
        for target in targets_:
            temps.append(_temp_beside(target))
        yield temps
        for tmp, target in zip(temps, targets_):
            if not tmp.exists() or tmp.stat().st_size == 0:
                raise OSError(f"nothing was written for {target}")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            apply_umask_mode(tmp)
        for tmp, target in zip(temps, targets_):
            os.replace(tmp, target)
    finally:
        for tmp in temps:
            if tmp.exists():
                tmp.unlink()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` if the block succeeds.

    For libraries that insist on writing files themselves (torch.save, onnx.save, TensorRT).
    On any exception the temporary file is removed and `target` is untouched.
    """
    with atomic_paths(target, overwrite=overwrite) as (tmp,):
        yield tmp


def write_files_atomic(contents: dict[Path, bytes | str]) -> None:
    """Write several files so that either all of them are replaced or none (`atomic_paths`)."""
    with atomic_paths(*contents) as temps:
        for tmp, data in zip(temps, contents.values()):
            tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text_atomic(target: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(target, text.encode("utf-8"))


def json_text(obj: Any) -> str:
    """The one JSON encoding of fopt's files (cards, reports, ledgers): indented, paths and numpy
    values as plain JSON."""
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"


def write_json_atomic(target: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(target, json_text(obj))


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
                 "onnxconverter-common", "tensorrt", "openvino", "nncf", "numpy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


# ----------------------------------------------------------------------------- the card

def card_path(artifact: str | os.PathLike) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def make_card(*, kind: str, format: str, precision: str, input_spec: InputSpec | dict | None,
              class_names: list[str] | None, parent: str | os.PathLike | None = None,
              model: dict[str, Any] | None = None, opset: int | None = None,
              metrics: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Build a card dict. `parent` is hashed now, so a later change to it is detectable."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    spec = (input_spec.to_dict() if isinstance(input_spec, InputSpec)
            else None if input_spec is None else dict(input_spec))
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
        "class_names": None if class_names is None else list(class_names),
        "input_spec": spec,
        "opset": opset,
        "versions": library_versions(),
        "metrics": dict(metrics or {}),
    }
    card.update(extra)
    return card


def deployed_bytes(artifact: str | os.PathLike) -> int:
    """What shipping `artifact` costs on disk: the file, plus the weights file an OpenVINO IR
    ``.xml`` needs beside it (``.bin``)."""
    artifact = Path(artifact)
    total = artifact.stat().st_size
    weights = artifact.with_suffix(".bin")
    if artifact.suffix == ".xml" and weights.is_file():
        total += weights.stat().st_size
    return total


def sealed_card(artifact: str | os.PathLike, card: dict[str, Any]) -> dict[str, Any]:
    """`card` with the artifact's own sha256 and size (of the file as it is now)."""
    artifact = Path(artifact)
    card = dict(card)
    if artifact.exists():
        card["sha256"] = sha256_file(artifact)
        card["size_bytes"] = artifact.stat().st_size
    return card


def write_card(artifact: str | os.PathLike, card: dict[str, Any]) -> Path:
    """Write the sidecar card; records the artifact's own sha256 and size."""
    return write_text_atomic(card_path(artifact), json_text(sealed_card(artifact, card)))


def read_card(artifact: str | os.PathLike, *, required: bool = True, verify: bool = True) -> dict[str, Any] | None:
    """The sidecar card of `artifact` (None when absent and not `required`). A card `fopt card`
    wrote is checked against the file it describes unless `verify` is off (StaleCardError)."""
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
    if verify and card.get("kind") == "foreign":
        _check_still_describes(Path(artifact), card)
    return card


class StaleCardError(InputError):
    """A `fopt card` card whose model file has changed since it was written."""


def _check_still_describes(artifact: Path, card: dict[str, Any]) -> None:
    """A card `fopt card` wrote rests on assumptions about one file (its shape, normalisation,
    classes): refuse it for another one (the model was replaced or re-exported since) rather than
    feed the new file the old assumptions."""
    recorded = (card.get("foreign") or {}).get("sha256")
    if not recorded or not artifact.is_file():
        return
    st = artifact.stat()
    actual = _sha256_of(str(artifact.resolve()), st.st_mtime_ns, st.st_size)
    if actual != recorded:
        raise StaleCardError(f"{artifact.name}.json was written by `fopt card` for another version of "
                             f"{artifact.name} (sha256 {recorded[:12]}..., the file is now {actual[:12]}...); "
                             f"run `fopt card {artifact} --force` with its hints again")


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, mtime_ns: int, size: int) -> str:
    """sha256 of a file, once per (path, modification time, size) in a process: a command reads
    a card several times."""
    return sha256_file(path)


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
    card = read_card(path, required=False, verify=False)   # a stale card still names the format
    if card is not None:
        return card["format"]
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".engine", ".plan", ".trt"):
        return "tensorrt"
    if suffix == ".xml":
        return "openvino"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any(n.endswith("/constants.pkl") or n.startswith("code/") or "/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "checkpoint"
    raise InputError(f"{path}: unknown artifact format: neither an ONNX nor a TorchScript file (nor a "
                     f"fopt checkpoint, TensorRT engine or OpenVINO IR .xml)")


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

    The old folder is renamed aside first, so `final` is never a half-written tree. `tmp`
    (typically from `tempfile.mkdtemp`, mode 0700) gets the mode the umask gives a new folder.
    """
    import shutil

    tmp, final = Path(tmp), Path(final)
    apply_umask_mode(tmp, folder=True)
    if final.exists():
        old = final.with_name(f".{final.name}.old.{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
