"""The card of any model file: fopt's own, or one inferred from a foreign file and the user's hints.

A foreign card says what fopt read from the file (``input``: name, shape with None for dynamic
dims, element type; ``num_classes``: the output width when static) and, under ``foreign``, the
file's sha256 and every assumption it rests on. When the input is an NCHW float image batch with
square static height and width, the card also has the usual ``input_spec`` (size, channels,
mean, std), with mean/std None until the user states them: timing needs only the shape, while
evaluation and calibration need the normalisation and say so (`fopt.artifacts.image_spec`).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from fopt.artifacts import CARD_SCHEMA, detect_format, library_versions, read_card, sha256_file
from fopt.checkpoint import read_checkpoint
from fopt.describe.hints import ModelHints
from fopt.errors import InputError
from fopt.onnxgraph import load_onnx, precision_of
from fopt.runtime.onnxrt import embedded_card
from fopt.runtime.pytorch import embedded_torchscript_card

FOREIGN_FORMATS = ("onnx", "torchscript")
# ONNX TensorProto element types -> numpy names (the ones a classifier input can have).
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "float64"}


def own_card(path: str | Path, fmt: str | None = None) -> dict[str, Any] | None:
    """The card fopt (or `fopt card`) stored for `path`: beside it, else inside it; None if none."""
    path = Path(path)
    card = read_card(path, required=False)
    if card is not None:
        return card
    fmt = fmt or detect_format(path)
    if fmt == "onnx":
        return embedded_card(path)
    if fmt == "torchscript":
        return embedded_torchscript_card(path)
    if fmt == "checkpoint":
        return read_checkpoint(path)["card"]
    return None


def describe_model(path: str | Path, hints: ModelHints | None = None) -> dict[str, Any]:
    """The card to feed `path` with: its own card, or a foreign one; `hints` override either."""
    path = Path(path)
    hints = hints or ModelHints()
    fmt = detect_format(path)
    card = own_card(path, fmt)
    if card is None:
        return _foreign_card(path, fmt, hints)
    return _apply_hints(card, hints, path) if not hints.empty else card


# ----------------------------------------------------------------------------- foreign files

def describe_foreign(path: str | Path, hints: ModelHints | None = None) -> dict[str, Any]:
    """The card of a file fopt did not make, from the file and `hints` alone (any sidecar ignored)."""
    path = Path(path)
    fmt = detect_format(path)
    return _foreign_card(path, fmt, hints or ModelHints())


def _foreign_card(path: Path, fmt: str, hints: ModelHints) -> dict[str, Any]:
    if fmt not in FOREIGN_FORMATS:
        raise InputError(f"{path}: a {fmt} file without its fopt card; only ONNX and TorchScript files "
                         f"from elsewhere can be described")
    assumed: list[str] = []
    if fmt == "onnx":
        model = load_onnx(path, load_weights=False)
        name, shape, dtype = _onnx_input(path, model)
        num_classes = _onnx_output_width(model)
        precision, opset = precision_of(model), _opset(model)
    else:
        name, shape, dtype, num_classes, precision, opset = "input", None, None, None, "fp32", None
        if hints.input_shape is None:
            raise InputError(f"{path}: a TorchScript file declares no input shape; pass --input-shape, "
                             f"e.g. 1x3x224x224")
    shape = _merge_shape(path, name, shape, hints, assumed)
    if hints.dtype is not None and dtype is not None and hints.dtype != dtype:
        raise InputError(f"{path}: --dtype {hints.dtype} but its input {name!r} is {dtype}")
    if dtype is None:
        dtype = hints.dtype or "float32"
        if hints.dtype is None:
            assumed.append("input element type float32 (a TorchScript file does not declare it)")
    class_names = hints.class_names
    if class_names is not None:
        _check_class_count(path, class_names, num_classes, hints)
        num_classes = num_classes or len(class_names)
        assumed.append(f"class names from --classes {hints.classes}")
    else:
        assumed.append("no class names: output index i is the dataset's class i")
    sha = sha256_file(path)
    card: dict[str, Any] = {
        "schema": CARD_SCHEMA, "kind": "foreign", "format": fmt, "precision": precision,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "parent": None, "model": {"name": path.stem, "source": "foreign"},
        "class_names": class_names, "num_classes": num_classes,
        "input": {"name": name, "shape": shape, "dtype": dtype},
        "input_spec": None, "opset": opset, "versions": library_versions(), "metrics": {},
        "foreign": {"path": str(path.resolve()), "sha256": sha, "assumed": assumed,
                    "hints": hints.to_dict()},
        "sha256": sha, "size_bytes": path.stat().st_size,
    }
    card["input_spec"], why_not = _image_spec(name, shape, dtype, hints, assumed)
    if why_not:
        card["input"]["not_images"] = why_not
    return card


def _onnx_input(path: Path, model) -> tuple[str, list[int | None], str]:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    described = ", ".join(f"{i.name!r} {_shape_text(_dims(i))} {_elem(i)}" for i in inputs)
    if len(inputs) != 1:
        raise InputError(f"{path}: a model fopt cannot feed: it has {len(inputs)} inputs ({described}); "
                         f"fopt feeds one image batch")
    inp = inputs[0]
    return inp.name, _dims(inp), _elem(inp)


def _dims(value_info) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in value_info.type.tensor_type.shape.dim]


def _elem(value_info) -> str:
    t = value_info.type.tensor_type.elem_type
    return _ONNX_DTYPES.get(t, f"onnx-type-{t}")


def _onnx_output_width(model) -> int | None:
    out = model.graph.output[0]
    dims = _dims(out)
    return dims[-1] if len(dims) == 2 and dims[-1] else None


def _opset(model) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _shape_text(shape: list[int | None] | None) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in (shape or [])) + ")"


def _merge_shape(path: Path, name: str, declared: list[int | None] | None, hints: ModelHints,
                 assumed: list[str]) -> list[int | None]:
    """The declared input shape with the user's --input-shape filled in; the batch dim (0) is
    None when it is dynamic (any batch runs)."""
    given = hints.input_shape
    if declared is None:  # TorchScript: the hint is the whole story
        assert given is not None
        assumed.append(f"input shape {'x'.join(map(str, given))} from --input-shape (batch dim free)")
        return [None, *given[1:]]
    if given is None:
        return list(declared)
    if len(given) != len(declared):
        raise InputError(f"--input-shape {'x'.join(map(str, given))} has rank {len(given)}; the model's "
                         f"input {name!r} is {_shape_text(declared)}, rank {len(declared)}")
    for axis, (want, got) in enumerate(zip(declared, given)):
        if axis > 0 and want is not None and want != got:
            raise InputError(f"--input-shape {'x'.join(map(str, given))}: dim {axis} is fixed at {want} in "
                             f"the model's input {name!r} {_shape_text(declared)}")
    assumed.append(f"input shape {'x'.join(map(str, given))} from --input-shape")
    return [declared[0], *given[1:]]


def _image_spec(name: str, shape: list[int | None], dtype: str, hints: ModelHints,
                assumed: list[str]) -> tuple[dict[str, Any] | None, str | None]:
    """fopt's image `input_spec` for an NCHW float input with square static H, W; else why not."""
    text = f"{name!r} {_shape_text(shape)}"
    if len(shape) != 4:
        return None, f"its input {text} has rank {len(shape)}, not an NCHW image batch"
    if dtype != "float32":
        return None, f"its input {text} is {dtype}, not float32"
    channels, h, w = shape[1:]
    if channels not in (1, 3) and shape[3] in (1, 3):
        return None, f"its input {text} looks channels-last (NHWC); fopt feeds NCHW"
    if channels not in (1, 3):
        return None, f"its input {text} has {channels} channels, not an image (1 or 3)"
    if h is None or w is None:
        return None, f"its input {text} has dynamic height/width; pass --input-shape"
    if h != w:
        return None, f"its input {text} is not square; fopt's datasets feed square images"
    norm = hints.normalisation(channels)
    spec = {"size": h, "channels": channels, "layout": "NCHW",
            "mean": list(norm[0]) if norm else None, "std": list(norm[1]) if norm else None}
    if norm:
        assumed.append(f"normalisation mean {spec['mean']} std {spec['std']} from {norm[2]}")
    return spec, None


def _check_class_count(path: Path, names: list[str], width: int | None, hints: ModelHints) -> None:
    if width is not None and len(names) != width:
        raise InputError(f"--classes {hints.classes}: {len(names)} names, but {path.name} outputs "
                         f"{width} scores")


# ----------------------------------------------------------------------------- hints on a card

def _apply_hints(card: dict[str, Any], hints: ModelHints, path: Path) -> dict[str, Any]:
    """`card` with what the user stated replacing what it says (recorded under ``hints``)."""
    card = dict(card)
    spec = dict(card.get("input_spec") or {})
    notes = list(card.get("hints_applied") or [])
    if hints.input_shape is not None:
        shape = list(hints.input_shape)
        if spec and (len(shape) != 4 or shape[1] != spec.get("channels")):
            raise InputError(f"--input-shape {'x'.join(map(str, shape))}: {path.name} takes NCHW batches "
                             f"with {spec.get('channels')} channels")
        card["input"] = {**(card.get("input") or {"name": "input"}), "shape": [None, *shape[1:]],
                         "dtype": hints.dtype or (card.get("input") or {}).get("dtype", "float32")}
        if spec and shape[2] == shape[3]:
            spec["size"] = shape[2]
        notes.append(f"input shape {'x'.join(map(str, shape))} from --input-shape")
    if spec:
        norm = hints.normalisation(int(spec.get("channels", 3)))
        if norm:
            spec["mean"], spec["std"] = list(norm[0]), list(norm[1])
            notes.append(f"normalisation from {norm[2]}")
        card["input_spec"] = spec
    if hints.class_names is not None:
        width = card.get("num_classes") or (len(card["class_names"]) if card.get("class_names") else None)
        _check_class_count(path, hints.class_names, width, hints)
        card["class_names"] = hints.class_names
        notes.append(f"class names from --classes {hints.classes}")
    card["hints_applied"] = notes
    return card


def cards_for(paths, hints: ModelHints | None = None, *, foreign_only: bool = False) -> dict[str, dict[str, Any]]:
    """The cards to hand runners for `paths`: every file's when the user gave hints (they override
    what a card says), else, or with `foreign_only`, only the files fopt did not make (fopt's own
    are read by their runners). Without hints, a file that cannot be described (e.g. a corrupt ONNX)
    is left out, so that its runner reports the failure in its own row; a file of no known format
    is an InputError."""
    hints = hints or ModelHints()
    out: dict[str, dict[str, Any]] = {}
    for p in paths:
        if not Path(p).exists():
            continue             # its runner says so in its rows
        fmt = detect_format(p)   # a file of no known format stops the run here
        try:
            if (hints.empty or foreign_only) and own_card(p, fmt) is not None:
                continue
            out[str(p)] = describe_model(p, hints)
        except InputError:
            if not hints.empty:
                raise
    return out
