"""TorchScript export: a fopt checkpoint to a traced (or scripted), optionally frozen archive.

Tracing records the ops one example input runs through; it is wrong for models whose control
flow or shapes depend on the input. So the traced module is checked against the eager model on
the parity inputs at every batch size, which were not the tracing input (tracing uses a fresh
random batch); when it fails or differs, `torch.jit.script` is tried and checked the same way.

Freezing (`torch.jit.freeze`) inlines weights as constants and folds Conv+BatchNorm, which
usually makes CPU inference faster but not always. Measured here (224 px, batch 1, one thread,
a shared and noisy 2-core VM; frozen / unfrozen time): tiny 0.82, MobileNetV3-Small 0.83,
EfficientNet-B0 0.91, ResNet-50 0.95, ResNet-18 1.03. So with ``freeze=None`` both are timed
briefly on the export machine's CPU and the faster is kept (a tie within 5% keeps the frozen
one, which also sheds the BatchNorm ops); ``freeze=True/False`` forces
it. The decision and both timings are recorded in the card. The card is embedded in the archive
(``_extra_files["fopt_card.json"]``, read by `fopt.runtime.pytorch.TorchScriptRunner`) and written
beside it.
"""

from __future__ import annotations

import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fopt.artifacts import _json_default
from fopt.errors import ExportError, first_line
from fopt.export.steps import Built, export_step
from fopt.export.validate import ShapeMismatch, compare_outputs

CARD_FILE = "fopt_card.json"  # the _extra_files key TorchScriptRunner reads
FREEZE_TIE = 1.05             # frozen is kept unless it is more than 5% slower
TIMING_BUDGET_S = 0.5         # both variants together, at least MIN_TIMED_RUNS runs each
MIN_TIMED_RUNS = 3


def _max_diff(module, model, inputs: list[np.ndarray], atol: float, rtol: float) -> tuple[bool, float, str]:
    """(within tolerance, max abs diff, problem) of `module` vs eager `model` on `inputs`.

    Same rule as the parity check (`fopt.export.validate.compare_outputs`), so a module kept here
    is not rejected later for fp32 rounding.
    """
    import torch


    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            t = torch.from_numpy(x)
            try:
                got = module(t)
            except Exception as e:  # a traced graph that cannot run another batch is a wrong trace
                first = first_line(e)
                return False, float("inf"), f"fails at batch {len(x)}: {first[:160]}"
            ref = model(t)
            try:
                c = compare_outputs(got.numpy(), ref.numpy(), atol=atol, rtol=rtol)
            except ShapeMismatch:
                return False, float("inf"), (f"output shape {tuple(got.shape)} at batch {len(x)}, "
                                             f"eager gives {tuple(ref.shape)}")
            worst = max(worst, c.max_abs_diff)
            if not c.within_tolerance:
                return False, worst, f"differs from eager at batch {len(x)} (max abs diff {worst:.3g})"
    return True, worst, ""


def trace_or_script(model, example, inputs: list[np.ndarray], *, atol: float, rtol: float,
                    log: Callable[[str], None]) -> tuple[Any, str, list[str]]:
    """A TorchScript module equal to `model` on `inputs`: traced, else scripted. Returns (module, method, notes)."""
    import torch

    notes: list[str] = []
    problem = ""
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(model, example, check_trace=False)
        tracer_warnings = sorted({str(w.message).splitlines()[0][:120] for w in caught
                                  if issubclass(w.category, torch.jit.TracerWarning)})
        ok, _, problem = _max_diff(traced, model, inputs, atol, rtol)
        if ok:
            notes.extend(f"tracer warning (output checked, equal): {w}" for w in tracer_warnings)
            return traced, "trace", notes
    except Exception as e:  # tracing failures have many types; scripting is the fallback
        problem = f"tracing failed: {first_line(e)[:160]}"
    log(f"torchscript: trace is wrong ({problem}); trying torch.jit.script")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.script(model)
    except Exception as e:
        first = first_line(e)
        raise ExportError(f"TorchScript: the trace is wrong ({problem}) and scripting failed: {first}") from e
    ok, _, script_problem = _max_diff(scripted, model, inputs, atol, rtol)
    if not ok:
        raise ExportError(f"TorchScript: the trace is wrong ({problem}) and the scripted module "
                          f"{script_problem}")
    notes.append(f"scripted instead of traced: the trace {problem}")
    return scripted, "script", notes


def _median_ms(modules: list, x, budget_s: float) -> list[float]:
    """Median ms per call of each module on `x`, runs interleaved so load spikes hit all alike."""
    import torch

    times: list[list[float]] = [[] for _ in modules]
    with torch.no_grad():
        for m in modules:  # warm-up: the first calls of a TorchScript module run its optimisation passes
            m(x)
            m(x)
        end = time.perf_counter() + budget_s
        while len(times[0]) < MIN_TIMED_RUNS or (time.perf_counter() < end and len(times[0]) < 200):
            for m, t in zip(modules, times):
                t0 = time.perf_counter()
                m(x)
                t.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def choose_freeze(module, model, inputs: list[np.ndarray], *, freeze: bool | None, atol: float,
                  rtol: float) -> tuple[Any, dict[str, Any], list[str]]:
    """Freeze `module` if asked, or (freeze=None) if the frozen one is not measurably slower."""
    import torch

    record: dict[str, Any] = {"frozen": False, "decided_by": "--no-freeze" if freeze is False else None}
    if freeze is False:
        return module, record, []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates jit; it still works
            frozen = torch.jit.freeze(module.eval())
    except Exception as e:  # scripted modules with unusual attributes can refuse to freeze
        first = first_line(e)
        record["decided_by"] = "freeze failed"
        return module, record, [f"not frozen: torch.jit.freeze failed ({first[:160]})"]
    ok, diff, problem = _max_diff(frozen, model, inputs, atol, rtol)
    if not ok:
        record["decided_by"] = "frozen output differs"
        return module, record, [f"not frozen: the frozen module {problem}"]
    if freeze is True:
        record.update(frozen=True, decided_by="--freeze")
        return frozen, record, []
    x = torch.from_numpy(inputs[0])
    plain_ms, frozen_ms = _median_ms([module, frozen], x, TIMING_BUDGET_S)
    keep = frozen_ms <= plain_ms * FREEZE_TIE
    record.update(frozen=keep, decided_by="measured", unfrozen_ms=round(plain_ms, 4),
                  frozen_ms=round(frozen_ms, 4), timing_batch=int(x.shape[0]), timing_device="cpu",
                  timing_threads=torch.get_num_threads())
    return (frozen if keep else module), record, []


def _saver(module) -> Callable[[Path, dict[str, Any]], None]:
    import torch


    def save(path: Path, card: dict[str, Any]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(module, str(path),
                           _extra_files={CARD_FILE: json.dumps(card, default=_json_default)})

    return save


@export_step("torchscript", suffix=".torchscript.pt")
def checkpoint_to_torchscript(ckpt, *, img_size: int, batch_sizes: tuple[int, ...], sample_inputs: list,
                              dynamic_batch: bool = True, batch: int = 1, freeze: bool | None = None,
                              atol: float, rtol: float, log: Callable[[str], None]) -> Built:
    """Checkpoint -> TorchScript (traced, scripted when tracing is wrong; frozen when faster).

    Called through `export_step` (see `fopt.export.steps`), which loads the checkpoint, runs
    parity and writes the file and its card.
    """
    import torch

    model = ckpt.model.eval()
    gen = torch.Generator().manual_seed(1)  # not a parity input: the trace must generalise
    example = torch.randn(1 if dynamic_batch else batch, ckpt.input_spec.channels, img_size, img_size,
                          generator=gen)
    module, method, notes = trace_or_script(model, example, sample_inputs, atol=atol, rtol=rtol, log=log)
    module, freeze_record, freeze_notes = choose_freeze(module, model, sample_inputs, freeze=freeze,
                                                        atol=atol, rtol=rtol)
    notes += freeze_notes
    if freeze_record.get("decided_by") == "measured":
        log(f"torchscript: frozen {freeze_record['frozen_ms']:.3g} ms vs unfrozen "
            f"{freeze_record['unfrozen_ms']:.3g} ms per batch-{freeze_record['timing_batch']} call "
            f"on CPU -> {'frozen' if freeze_record['frozen'] else 'not frozen'}")
    details = {"method": method, "freeze": freeze_record, "dynamic_batch": dynamic_batch,
               "batch": None if dynamic_batch else batch, "torch": torch.__version__}
    return Built(save=_saver(module), card_extra={"export": details}, notes=notes)
