"""What a user tells fopt about a model it did not make, parsed and checked in one place.

`hint_options` adds the same six options to every command that takes a model file
(bench, eval, optimize, analyze, card) and hands the command one `ModelHints`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click

from fopt.errors import InputError
from fopt.models import IMAGENET_MEAN, IMAGENET_STD

# Named normalisations: x -> (x / 255 - mean) / std per channel.
PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
# Input element types bench can make random inputs of (numpy names).
DTYPES = ("float32", "float16", "uint8", "int8", "int32", "int64")


def parse_shape(text: str) -> tuple[int, ...]:
    """'1x3x224x224' (or '1,3,224,224') -> (1, 3, 224, 224); every dim a positive integer."""
    parts = [p.strip() for p in text.replace(",", "x").lower().split("x")]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(f"--input-shape {text!r}: expected positive integers joined by 'x', "
                         f"e.g. 1x3x224x224") from None
    if not dims or any(d < 1 for d in dims):
        raise InputError(f"--input-shape {text!r}: every dimension must be a positive integer")
    return dims


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(p) for p in text.replace(" ", "").split(",") if p)
    except ValueError:
        raise InputError(f"{option} {text!r}: expected comma-separated numbers, e.g. "
                         f"0.485,0.456,0.406") from None


@dataclass(frozen=True)
class ModelHints:
    """The user's statements about a model; every field optional."""

    input_shape: tuple[int, ...] | None = None
    dtype: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    preset: str | None = None
    classes: Path | None = None
    _class_names: list[str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in DTYPES:
            raise InputError(f"--dtype {self.dtype!r}: choose from {', '.join(DTYPES)}")
        if self.preset is not None and self.preset not in PRESETS:
            raise InputError(f"--preset {self.preset!r}: choose from {', '.join(PRESETS)}")
        if self.preset is not None and (self.mean is not None or self.std is not None):
            raise InputError("--preset and --mean/--std both given: use one")
        if (self.mean is None) != (self.std is None):
            raise InputError("--mean and --std go together: give both (or --preset)")
        if self.std is not None and any(s == 0 for s in self.std):
            raise InputError(f"--std {','.join(f'{s:g}' for s in self.std)}: a zero std divides by zero")
        if self.classes is not None:
            object.__setattr__(self, "_class_names", _read_classes(Path(self.classes)))

    @property
    def empty(self) -> bool:
        return all(v is None for v in (self.input_shape, self.dtype, self.mean, self.std, self.preset,
                                       self.classes))

    def normalisation(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...], str] | None:
        """(mean, std, where it came from) for `channels` channels, or None when not stated."""
        if self.preset is not None:
            mean, std = PRESETS[self.preset]
            if channels != 3:  # a preset is per-channel RGB; grey images take its first entry
                mean, std = mean[:1] * channels, std[:1] * channels
            return mean, std, f"--preset {self.preset}"
        if self.mean is None or self.std is None:
            return None
        for name, values in (("--mean", self.mean), ("--std", self.std)):
            if len(values) not in (1, channels):
                raise InputError(f"{name} has {len(values)} values; the model's input has {channels} "
                                 f"channel(s): give {channels} (or 1 for all)")
        mean = self.mean * channels if len(self.mean) == 1 else self.mean
        std = self.std * channels if len(self.std) == 1 else self.std
        return tuple(mean), tuple(std), "--mean/--std"

    @property
    def class_names(self) -> list[str] | None:
        return None if self._class_names is None else list(self._class_names)

    def to_dict(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape) if self.input_shape else None, "dtype": self.dtype,
                "mean": list(self.mean) if self.mean else None, "std": list(self.std) if self.std else None,
                "preset": self.preset, "classes": str(self.classes) if self.classes else None}


def _read_classes(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"--classes {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--classes {path}: unreadable ({type(e).__name__})") from None
    names = [ln.strip() for ln in lines if ln.strip()]
    if not names:
        raise InputError(f"--classes {path}: no class names (expected one per line, in output-index order)")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(f"--classes {path}: class {dup!r} appears twice")
    return names


def hints_from_options(input_shape: str | None, dtype: str | None, mean: str | None, std: str | None,
                       preset: str | None, classes: str | None) -> ModelHints:
    return ModelHints(input_shape=parse_shape(input_shape) if input_shape else None, dtype=dtype,
                      mean=parse_floats(mean, "--mean") if mean else None,
                      std=parse_floats(std, "--std") if std else None, preset=preset,
                      classes=Path(classes) if classes else None)


_OPTIONS = ("input_shape", "dtype", "mean", "std", "preset", "classes")


def hint_options(fn: Callable[..., Any] | None = None, *, only: tuple[str, ...] = _OPTIONS):
    """Click options describing a model fopt did not make; the command receives `hints`.

    ``@hint_options`` adds all six; ``@hint_options(only=("mean", "std", "preset", "classes"))``
    a subset (the others stay None)."""
    if fn is None:
        return lambda f: hint_options(f, only=only)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {k: kwargs.pop(k, None) for k in _OPTIONS}
        return fn(*args, hints=hints_from_options(**values), **kwargs)

    # the values are checked in the command body, so a bad one is one `error:` line (exit 2)
    options = {
        "input_shape": click.option("--input-shape", help="Input shape, e.g. 1x3x224x224, for a model whose "
                                                          "file leaves dims dynamic (or any dims, for bench)."),
        "dtype": click.option("--dtype", help=f"Input element type for bench ({', '.join(DTYPES)}); default: "
                                              f"the model's own, else float32."),
        "mean": click.option("--mean", help="Per-channel mean of the normalisation, e.g. 0.485,0.456,0.406 "
                                            "(images scaled to 0..1 first)."),
        "std": click.option("--std", help="Per-channel std of the normalisation, e.g. 0.229,0.224,0.225."),
        "preset": click.option("--preset", help="Named normalisation: imagenet, inception (0.5/0.5) or none."),
        "classes": click.option("--classes", type=click.Path(dir_okay=False),
                                help="Class names, one per line in output-index order."),
    }
    for name in reversed(_OPTIONS):
        if name in only:
            wrapper = options[name](wrapper)
    return wrapper
