"""Estimates beside measured rows: naive, roofline and calibrated, artifact by artifact.

`estimate_rows` runs once every row is measured, so that its own work (the static analysis, a
short profiled run for the executed graph) never overlaps timing. For each artifact:

- ``naive`` and ``roofline``: `fopt.analyze` on the artifact (on the parent its card names, for
  TorchScript files and TensorRT engines), priced with a device spec: this CPU's calibration;
  on a GPU the datasheet of a GPU in the device table, else the GPU's calibration.
- ``calibrated``: on the CPU, the cost model on the graph the runtime executes
  (`fopt.bench.costmodel.predict`) plus the page faults counted in the measured run at the
  calibrated price per fault (`price_page_faults`); on a GPU, the roofline with the GPU's
  measured peaks.
- with ``per_layer``, the rows also get each executed node's profiled time beside its
  calibrated estimate (CPU only).
- on the CPU, ``estimate_band_ms``: the 80% band of the roofline and calibrated estimates, from
  the calibration's out-of-sample residuals (`fopt.bench.costmodel.bands`), widened, with a
  note, where the model does work the calibration did not measure.

An estimate that cannot be made stays None and a note on the row says why; nothing here raises
for one artifact, so one unreadable file never costs the other rows their estimates.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fopt.analyze.devices import DeviceSpec, spec_for_gpu
from fopt.analyze.roofline import estimate_latency
from fopt.analyze.run import analyze
from fopt.artifacts import read_card
from fopt.bench.costmodel.bands import bands_for, calibrated_band, roofline_band
from fopt.bench.costmodel.cache import Calibration, load_machine_calibration
from fopt.bench.costmodel.kernels import classify
from fopt.bench.costmodel.predict import (
    CalibratedEstimate,
    calibrated_estimate,
    exec_graph_for,
    fit_key,
)
from fopt.bench.measure.harness import INPUT_SEED
from fopt.bench.measure.profile import ExecGraph, torch_op_times
from fopt.bench.rows import BenchRow
from fopt.errors import one_line
from fopt.runtime import open_runner
from fopt.runtime.timing import get_clock

PER_LAYER_RUNS = 10   # profiled runs per row for --per-layer (median per node)
# A row's page faults get a note of their own once they cost more than this share of its p50.
FAULT_NOTE_SHARE = 0.1


def calibration_for(device: str, threads: int, clock: str) -> Calibration | None:
    """The cached calibration that prices rows measured on `device` with `threads` and `clock`.

    CPU calibrations are per thread count; a GPU's is not. Only the ``wall`` and ``thread-cpu``
    clocks have calibrations: any other clock (a test's) uses the wall-clock one."""
    return load_machine_calibration(device, threads if device == "cpu" else None,
                                    clock if clock in ("wall", "thread-cpu") else "wall")


def calibration_info(cal: Calibration | None) -> dict[str, Any] | None:
    """What a bench result records of the calibration its estimates used."""
    if cal is None:
        return None
    return {"path": cal.get("path"), "created": cal.get("created"), "threads": cal.get("threads"),
            "quick": cal.get("quick"), "summary": cal.get("summary")}


def estimate_rows(rows: list[BenchRow], *, cal: Calibration | None, machine: dict[str, Any], per_layer: bool,
                  threads: int, clock: str = "wall", cards: dict[str, dict[str, Any]] | None = None) -> None:
    """Fill ``estimate_ms``, ``estimate_notes``, ``estimate_detail`` (and ``layers`` with
    `per_layer`) of every ok row, in place. `cal` None leaves the calibrated estimate out (and,
    on the CPU, naive and roofline too: they need its rates); `machine` names the GPU. `clock`
    ``thread-cpu`` scales profiled node times by each run's CPU share (`fopt.bench.measure.profile`).
    `cards` are the cards given for models fopt did not make, by path (`fopt.describe`)."""
    by_artifact: dict[tuple[str, str | None], list[BenchRow]] = {}   # one runner per (artifact, runtime)
    for r in rows:
        if r.status == "ok":
            by_artifact.setdefault((r.artifact, r.runtime), []).append(r)
    cpu_clock = get_clock(clock) if clock == "thread-cpu" else None
    for (path, _), arows in by_artifact.items():
        _estimate_artifact(path, arows, cal=cal, machine=machine, per_layer=per_layer, threads=threads,
                           cpu_clock=cpu_clock, card=(cards or {}).get(path))


def _estimate_artifact(path: str, arows: list[BenchRow], *, cal: Calibration | None, machine: dict[str, Any],
                       per_layer: bool, threads: int, cpu_clock: Callable[[], float] | None,
                       card: dict[str, Any] | None = None) -> None:
    """The rows of one artifact (all on one device): one analysis, one loaded runner for all."""
    device = arows[0].device
    spec, note = device_spec_for(device, cal, machine)
    analysis = None
    if spec is not None:
        analysis, note = _analysis(path, arows[0], spec, note)
    runner = None
    try:
        runner = open_runner(path, device=device, threads=threads, card=card, runtime=arows[0].runtime)
        runner.load()
    except Exception as e:  # the analytical estimates may still work: note it and go on
        for r in arows:
            r.estimate_notes.append(f"calibrated: cannot open artifact ({one_line(e)})")
    try:
        for r in arows:
            if note:
                r.estimate_notes.append(note)
            if analysis is not None:
                _roofline(r, analysis, spec)
                if device == "cpu":
                    _roofline_band(r, cal)
            if device == "cuda":
                _cuda_calibrated(r, analysis, cal)
            if runner is not None and (device == "cpu" or per_layer):
                _calibrated_for_row(r, runner, cal if device == "cpu" else None, per_layer, cpu_clock)
    finally:
        if runner is not None:
            runner.close()


def device_spec_for(device: str, cal: Calibration | None,
                    machine: dict[str, Any]) -> tuple[DeviceSpec | None, str | None]:
    """(DeviceSpec or None, note) for the naive/roofline estimates of rows on `device`."""
    if device == "cpu":
        if cal is None:
            return None, "no CPU calibration for these threads: run `fopt bench --calibrate`"
        return cal.to_device_spec(), None
    gpu = (machine.get("gpu") or {}).get("name", "")
    spec, why = spec_for_gpu(gpu)   # the exact board variant, or none (never SXM figures for a PCIe card)
    if spec is not None:
        return spec, None
    if cal is not None:
        return cal.to_device_spec(), f"{why}; naive/roofline use this GPU's calibration"
    return None, f"{why}, and this GPU is not calibrated: run `fopt bench --calibrate --device cuda`"


def _analysis(path: str, row: BenchRow, spec: DeviceSpec, note: str | None) -> tuple[Any, str | None]:
    """(`analyze` result or None, the artifact's note: where the counts came from, or why none)."""
    try:
        target, via = analysis_target(path)
        analysis = analyze(target, batch=row.batch_size, precision=_analyze_precision(row.precision),
                           device_spec=spec)
    except Exception as e:  # analysis cannot read every artifact: say why
        return None, f"analyze: {one_line(e)}"
    return analysis, via or note


def analysis_target(path: str) -> tuple[str, str | None]:
    """What `analyze` counts for an artifact: itself, or for TorchScript files and TensorRT
    engines (not ONNX graphs) the checkpoint/ONNX parent their card names; and a note when it
    is the parent."""

    card = read_card(path, required=False) or {}
    if card.get("format") in ("torchscript", "tensorrt", "openvino"):
        parent = (card.get("parent") or {}).get("path")
        if parent and Path(parent).exists():
            return parent, f"naive/roofline counted on its parent {Path(parent).name}"
    return path, None


def _analyze_precision(precision: str | None) -> str:
    return precision if precision in ("fp32", "fp16", "int8") else "fp32"


def _roofline(row: BenchRow, analysis: Any, spec: DeviceSpec) -> None:
    try:
        le = estimate_latency(analysis, spec, precision=_analyze_precision(row.precision), batch=row.batch_size)
        row.estimate_ms["naive"], row.estimate_ms["roofline"] = le.naive_ms, le.roofline_ms
    except Exception as e:
        row.estimate_notes.append(f"roofline: {one_line(e)}")


def _cuda_calibrated(row: BenchRow, analysis: Any, cal: Calibration | None) -> None:
    """On a GPU the calibrated estimate is analyze's roofline with this GPU's measured peaks."""
    if cal is None or analysis is None:
        row.estimate_notes.append("calibrated: run `fopt bench --calibrate --device cuda` first"
                                  if cal is None else "calibrated: needs the analysis (see above)")
        return

    try:
        le = estimate_latency(analysis, cal.to_device_spec(), precision=_analyze_precision(row.precision),
                              batch=row.batch_size)
        row.estimate_ms["calibrated"] = le.roofline_ms
    except Exception as e:
        row.estimate_notes.append(f"calibrated: {one_line(e)}")


def _calibrated_for_row(row: BenchRow, runner: Any, cal: Calibration | None, per_layer: bool,
                        cpu_clock: Callable[[], float] | None = None) -> None:
    """The cost model on the graph `runner` executes at this row's batch (and its layers)."""
    if runner.runtime == "openvino":   # no cost-model fits for it yet; its own counters give layers
        row.estimate_notes.append("calibrated: not calibrated for openvino")
        if per_layer:
            try:
                row.layers = runner.layer_times(runner.feed.random(row.batch_size, INPUT_SEED), runs=PER_LAYER_RUNS)
            except Exception as e:
                row.estimate_notes.append(f"per-layer: {one_line(e)}")
        return
    key = fit_key(runner.backend, runner.precision)
    want_estimate = cal is not None and key is not None and key in cal.get("backends", {})
    if not want_estimate and not per_layer:
        if key is None or cal is None:
            row.estimate_notes.append(f"calibrated: not available for {runner.backend} on {row.device}")
        else:
            row.estimate_notes.append(f"calibrated: no calibration for {key}")
        return
    try:
        batch = runner.feed.random(row.batch_size, INPUT_SEED)
        graph = exec_graph_for(runner, batch, profile_runs=PER_LAYER_RUNS if per_layer else 1, cpu_clock=cpu_clock)
    except Exception as e:
        row.estimate_notes.append(f"calibrated: executed graph unavailable ({one_line(e)})")
        return
    if graph is None:
        row.estimate_notes.append(f"calibrated: executed graph not visible for {runner.backend} on {row.device}")
        return
    ce = None
    if want_estimate:
        ce = calibrated_estimate(graph, cal, key)
        row.estimate_ms["calibrated"] = ce.total_ms
        row.estimate_detail = ce.to_dict()
        row.estimate_notes += ce.notes
        price_page_faults(row, cal)
        _calibrated_band(row, ce, cal, key)
    else:
        row.estimate_notes.append(f"calibrated: no calibration for {key}")
    if per_layer and runner.device != "cpu":
        row.estimate_notes.append("per-layer: only on CPU (GPU kernels run asynchronously)")
    elif per_layer:
        row.layers = _layers(runner, graph, ce, batch, clock=cpu_clock or time.perf_counter)


def _roofline_band(row: BenchRow, cal: Calibration | None) -> None:
    """The roofline's 80% band: its spread over this backend's probes (ONNX Runtime's for a
    runtime the calibration has no probes for, with a note)."""
    if cal is None or row.estimate_ms.get("roofline") is None:
        return
    precision = _analyze_precision(row.precision)
    key = fit_key(row.backend or "", precision)
    if key is None or key not in (cal.get("backends") or {}):
        key = f"onnxruntime/{precision}"
        if key not in (cal.get("backends") or {}):
            return
        row.estimate_notes.append(f"roofline band: from the onnxruntime probes ({row.runtime or row.backend} has none)")
    bands = bands_for(cal, key)
    band = roofline_band(row.estimate_ms["roofline"], bands) if bands else None
    if band is not None:
        row.estimate_band_ms["roofline"] = list(band)


def _calibrated_band(row: BenchRow, ce: CalibratedEstimate, cal: Calibration, key: str) -> None:
    """The calibrated estimate's 80% band (plus the priced page faults, a count, at both ends)."""
    bands = bands_for(cal, key)
    if not bands:
        return
    band = calibrated_band(ce, bands, row.batch_size)
    if band is None:
        row.estimate_notes.append("calibrated: no band (the calibration holds no probe residuals; "
                                  "run `fopt bench --calibrate` again)")
        return
    lo, hi, notes = band
    faults = row.estimate_detail.get("page_faults_ms") or 0.0
    row.estimate_band_ms["calibrated"] = [lo + faults, hi + faults]
    row.estimate_notes += notes


def price_page_faults(row: BenchRow, cal: dict[str, Any]) -> None:
    """Add the page faults counted in the measured run, at the calibrated cost per fault.

    The count comes from the measuring processes (getrusage), not from a timing: which pages
    fault depends on the allocator's state over the whole forward pass (`fopt.bench.measure.faults`).
    A calibration without a price (its probe counted no fault) leaves the estimate as it is and
    says so when the row faulted."""
    per_fault = ((cal.get("probes") or {}).get("page_faults") or {}).get("seconds_per_fault")
    if row.page_faults is None or row.estimate_ms.get("calibrated") is None:
        return
    if per_fault is None:
        if row.page_faults > 0:
            row.estimate_notes.append("calibrated: page faults not priced (the calibration has no price per "
                                      "fault; run `fopt bench --calibrate` again)")
        return
    ms = row.page_faults * per_fault * 1e3
    row.estimate_ms["calibrated"] += ms
    row.estimate_detail.update(page_faults_per_run=row.page_faults, page_faults_ms=ms,
                               total_ms=row.estimate_ms["calibrated"])
    p50 = row.p50
    if p50 and ms > FAULT_NOTE_SHARE * p50:
        row.estimate_notes.append(
            f"page faults: {row.page_faults:.0f} per run, about {ms:.3g} ms ({100 * ms / p50:.0f}% of the measured "
            f"p50): freed activations go back to the OS and are faulted in again (glibc malloc); "
            f"MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ or jemalloc avoid it")


def _layers(runner: Any, graph: ExecGraph, ce: CalibratedEstimate | None, batch: np.ndarray,
            clock: Callable[[], float] = time.perf_counter) -> list[dict[str, Any]]:
    """One dict per executed node: its measured time and share, and its calibrated estimate.

    ONNX Runtime's times are the profile's; eager and TorchScript ATen calls are timed inside
    real forward passes (`fopt.bench.measure.profile.torch_op_times`)."""
    measured = [n.measured_ms for n in graph.nodes]
    source = "onnxruntime profiling" if runner.backend == "onnxruntime" else "timed ATen calls"
    if runner.backend in ("torch-eager", "torchscript"):
        import torch

        measured = torch_op_times(runner.model, torch.from_numpy(batch).to(runner.device), len(graph.nodes),
                                  runs=PER_LAYER_RUNS, clock=clock)
    total = sum(m for m in measured if m) or None
    out = []
    for i, node in enumerate(graph.nodes):
        m = measured[i]
        ne = ce.nodes[i] if ce is not None else None
        nw = classify(node)
        out.append({"name": node.name, "op": node.op, "class": nw.kernel_class,
                    "output_shape": node.output_shapes[0] if node.output_shapes else None,
                    "macs": nw.macs, "bytes": nw.bytes_moved,
                    "measured_ms": m, "estimate_ms": ne.estimate_ms if ne else None,
                    "share_pct": (m / total * 100.0) if (m is not None and total) else None,
                    "source": source})
    return out
