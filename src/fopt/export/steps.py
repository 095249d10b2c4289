"""The one wrapper around every export step, and `export_checkpoint` over several formats.

An export function (``checkpoint_to_onnx``, ``checkpoint_to_torchscript``) only converts: it gets
the loaded checkpoint and returns a `Built` (how to save the artifact with its card embedded).
`export_step` does everything the formats share, in one place:

1. checks options and the output path before any work (existing output without ``force``,
   a folder that cannot be written) and loads the checkpoint (one-line `CheckpointError`);
2. picks the parity inputs (real images of the checkpoint's dataset, else random) once;
3. calls the format function, times it, saves the artifact with its card into a staging folder
   beside the target, checks the file exists and is non-empty;
4. runs parity against the checkpoint through the runtime runners (`fopt.export.validate`);
5. records the parity metrics in the card, saves again, moves the file into place and writes the
   sidecar card; logs one success line, or one failure line and re-raises.

Nothing is left behind on failure: the staging folder is removed, and an existing output that
``force`` would replace stays untouched until the new file has passed parity.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fopt.artifacts import (
    InputSpec,
    atomic_paths,
    card_path,
    json_text,
    make_card,
    sealed_card,
    write_card,
)
from fopt.checkpoint import load_checkpoint
from fopt.errors import ExportError, OutputExistsError, UsageError
from fopt.export import validate as V
from fopt.models import count_params
from fopt.registry import Registry
from fopt.runtime import resolve_device
from fopt.workdir import scratch_dir

Log = Callable[[str], None]


@dataclass
class Built:
    """What a format function hands back: a saver and what it adds to the card."""
    save: Callable[[Path, dict[str, Any]], None]   # save(path, card): write the file, card embedded
    card_extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class ExportResult:
    format: str
    path: Path
    card_path: Path
    checkpoint: Path
    seconds: float
    size_bytes: int
    parity: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.parity.get("passed"))

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "path": str(self.path), "card": str(self.card_path),
                "checkpoint": str(self.checkpoint), "seconds": round(self.seconds, 3),
                "size_bytes": self.size_bytes, "parity": self.parity, "details": self.details,
                "notes": self.notes}

    def row(self) -> dict[str, Any]:
        p = self.parity
        return {"format": self.format, "file": self.path.name, "size_mb": self.size_bytes / 1e6,
                "inputs": f"{p.get('inputs_kind')} b{'/'.join(str(b) for b in p.get('batch_sizes', []))}",
                "max_abs_diff": p.get("max_abs_diff"), "top1_agree": p.get("top1_agreement"),
                "parity": "pass" if self.passed else "FAIL"}


EXPORTS: Registry[Callable[..., ExportResult]] = Registry("export format")
SUFFIXES: dict[str, str] = {}


def default_output(checkpoint: str | os.PathLike, fmt: str, out_dir: str | os.PathLike | None = None) -> Path:
    """``<out_dir or the checkpoint's folder>/<checkpoint stem><format suffix>``."""
    ckpt = Path(checkpoint)
    return Path(out_dir or ckpt.parent) / f"{ckpt.stem}{SUFFIXES[fmt]}"


def check_output(out_path: Path, *, force: bool, checkpoint: Path) -> None:
    """Refuse an existing output without force and a folder that cannot be written, up front."""
    if out_path.resolve() == checkpoint.resolve():
        raise UsageError(f"{out_path}: the output would overwrite the checkpoint itself")
    if out_path.is_dir():
        raise UsageError(f"{out_path}: is a folder; expected an output file path")
    if out_path.exists() and not force:
        raise OutputExistsError(f"{out_path} exists (pass --force to overwrite)")
    folder = out_path.parent
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"cannot write to {folder}: it is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".fopt-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"cannot write to {folder}: {e.strerror or type(e).__name__}") from None


def check_options(*, img_size: int | None, batch: int, parity_batch: int, atol: float, rtol: float) -> None:
    if img_size is not None and img_size < 8:
        raise UsageError(f"--img-size must be at least 8, got {img_size}")
    if batch < 1:
        raise UsageError(f"--batch must be 'dynamic' or a positive integer, got {batch}")
    if parity_batch < 2:
        raise UsageError(f"the parity batch must be at least 2 (it proves the dynamic axis), got {parity_batch}")
    if atol < 0 or rtol < 0:
        raise UsageError(f"--atol and --rtol must be >= 0, got {atol} and {rtol}")


_COMMON_DOC = """Arguments shared by every format (see `fopt.export.steps`):
    checkpoint: a fopt checkpoint; out_path: default ``<checkpoint folder>/<stem><suffix>``;
    img_size: default the checkpoint's; dynamic_batch / batch: a dynamic batch axis, else this
    fixed batch; atol / rtol: parity tolerances (default 1e-4 / 1e-3); device: where parity runs;
    force: replace an existing output; parity_batch: the larger parity batch (default 8);
    parity: `ParityInputs` to reuse; log: one-line messages (default: stderr).
    Returns an `ExportResult`; raises a `FoptError` and leaves no file on failure."""


def export_step(fmt: str, *, suffix: str) -> Callable[[Callable[..., Built]], Callable[..., ExportResult]]:
    """Register `fn(ckpt, **options) -> Built` as format `fmt`, wrapped as described above.

    The wrapped function's signature is
    ``(checkpoint, out_path=None, *, img_size=None, dynamic_batch=True, batch=1, atol, rtol,
    device="cpu", force=False, parity_batch=8, parity=None, log=note, **format_options)``.
    """

    def deco(fn: Callable[..., Built]) -> Callable[..., ExportResult]:
        @functools.wraps(fn, assigned=("__module__", "__name__", "__qualname__"))
        def wrapper(checkpoint: str | os.PathLike, out_path: str | os.PathLike | None = None, *,
                    img_size: int | None = None, dynamic_batch: bool = True, batch: int = 1,
                    atol: float | None = None, rtol: float | None = None, device: str = "cpu",
                    force: bool = False, parity_batch: int | None = None, parity=None,
                    log: Log | None = None, **options: Any) -> ExportResult:
            log = log or _note
            atol = V.DEFAULT_ATOL if atol is None else float(atol)
            rtol = V.DEFAULT_RTOL if rtol is None else float(rtol)
            parity_batch = V.PARITY_BATCH if parity_batch is None else int(parity_batch)
            check_options(img_size=img_size, batch=batch, parity_batch=parity_batch, atol=atol, rtol=rtol)
            checkpoint = Path(checkpoint)
            out = Path(out_path) if out_path is not None else default_output(checkpoint, fmt)
            t0 = time.perf_counter()
            try:
                return _run_step(fn, fmt, checkpoint, out, t0=t0, img_size=img_size,
                                 dynamic_batch=dynamic_batch, batch=batch, atol=atol, rtol=rtol,
                                 device=device, force=force, parity_batch=parity_batch,
                                 parity=parity, log=log, options=options)
            except Exception as e:  # one failure line for every cause, then the error itself
                log(f"{fmt}: FAILED after {time.perf_counter() - t0:.1f} s: "
                    f"{' '.join(str(e).split()) or type(e).__name__}")
                raise

        # the public signature is the wrapper's (checkpoint, out_path, ...), not the inner one
        del wrapper.__wrapped__
        wrapper.__doc__ = f"{fn.__doc__ or ''}\n\n{_COMMON_DOC}"
        EXPORTS.add(fmt, wrapper)
        SUFFIXES[fmt] = suffix
        return wrapper

    return deco


def _note(message: str) -> None:
    import click

    # plain echo, not rich: one step = one unwrapped, greppable line on stderr
    click.echo(message, err=True)


def _run_step(fn, fmt: str, checkpoint: Path, out: Path, *, t0: float, img_size: int | None,
              dynamic_batch: bool, batch: int, atol: float, rtol: float, device: str, force: bool,
              parity_batch: int, parity, log: Log, options: dict[str, Any]) -> ExportResult:
    resolve_device(device)  # --device cuda without a GPU fails before any work
    ckpt = load_checkpoint(checkpoint, device="cpu")  # export on CPU; parity runs on `device`
    check_output(out, force=force, checkpoint=checkpoint)
    spec = ckpt.input_spec
    size = int(img_size or spec.size)
    spec = InputSpec(size=size, channels=spec.channels, mean=spec.mean, std=spec.std)
    batch_sizes = (1, parity_batch) if dynamic_batch else (batch,)
    if parity is None:
        parity = V.parity_inputs(ckpt.card, spec, batch_sizes)
    elif tuple(parity.batch_sizes) != batch_sizes or parity.img_size != size:
        raise ValueError("parity inputs were made for other batch sizes or another image size")

    built = fn(ckpt, img_size=size, batch_sizes=batch_sizes, sample_inputs=parity.batches,
               dynamic_batch=dynamic_batch, batch=batch, atol=atol, rtol=rtol, log=log, **options)
    extra = dict(built.card_extra)
    opset = extra.pop("opset", None)
    model_info = dict(ckpt.card.get("model") or {})
    model_info["params"] = count_params(ckpt.model)
    dataset = (ckpt.card.get("config") or {}).get("data")
    card = make_card(kind=fmt, format=fmt, precision="fp32", input_spec=spec,
                     class_names=ckpt.class_names, parent=checkpoint, model=model_info, opset=opset,
                     dataset=dataset, notes=list(built.notes), **extra)

    staging = scratch_dir(out.parent, "export")
    try:
        staged = staging / out.name
        _save(built, staged, card)
        report = V.validate_artifact(staged, checkpoint, inputs=parity, atol=atol, rtol=rtol,
                                     device=device)
        card["metrics"]["parity"] = report.to_dict()
        _save(built, staged, card)
        try:  # the artifact and its card are replaced together, or neither is
            with atomic_paths(out, card_path(out)) as (tmp_out, tmp_card):
                os.replace(staged, tmp_out)
                tmp_card.write_text(json_text(sealed_card(tmp_out, card)))
            card_file = card_path(out)
        except OSError as e:
            raise ExportError(f"cannot write {out}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    seconds = time.perf_counter() - t0
    size_bytes = out.stat().st_size
    for n in built.notes:
        log(f"{fmt}: note: {n}")
    log(f"{fmt}: wrote {out} ({size_bytes / 1e6:.2f} MB, {seconds:.1f} s); {report.line()}")
    return ExportResult(fmt, out, card_file, checkpoint, seconds, size_bytes, report.to_dict(),
                        details=extra.get("export", {}), notes=list(built.notes))


def _save(built: Built, path: Path, card: dict[str, Any]) -> None:
    """Save through the format's saver; the file must exist and be non-empty afterwards."""
    try:
        built.save(path, card)
    except OSError as e:  # disk full, quota: the user's to fix, one line
        raise ExportError(f"cannot write {path.parent.parent / path.name}: {e.strerror or e}") from e
    if not path.is_file() or path.stat().st_size == 0:
        raise ExportError(f"the exporter wrote nothing for {path.name}")
    # the staged file is fopt's: its sealed sidecar lets the parity check's runner say so
    write_card(path, card)
