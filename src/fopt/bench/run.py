"""`bench_artifacts`: measure artifacts x batch sizes, put the estimates beside, one row each.

Rows are measured first (artifact by artifact, every batch size on one loaded runner, same input
and threads for all), then estimated, so estimation work (analysis, a short profiled run) never
overlaps timing. A row that fails (unloadable artifact, unsupported batch size, backend error)
is recorded with ``status: "error"`` and its message; the run goes on.

With ``processes=K > 1`` each artifact is measured in K fresh Python processes, in K rounds over
all artifacts (so the processes of one artifact are spread over the run), and the row pools their samples (`fopt.runtime.timing.combine`): ``process_p50_ms`` lists
each process's median and ``spread_pct`` their ``max/min - 1``. On shared virtual machines the
spread between processes is often far larger than within one (MEASURED.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fopt.analyze.devices import DEVICES
from fopt.analyze.roofline import estimate_latency
from fopt.analyze.run import analyze
from fopt.artifacts import read_card
from fopt.bench.costmodel import predict as est
from fopt.bench.costmodel.cache import load_machine_calibration
from fopt.bench.costmodel.kernels import classify
from fopt.bench.costmodel.predict import error_pct
from fopt.bench.measure.faults import faults_per_run
from fopt.bench.measure.machine import (
    busy_warning,
    cpus_busy,
    default_threads,
    machine_record,
)
from fopt.bench.measure.profile import torch_op_times
from fopt.errors import UsageError, one_line
from fopt.runtime import open_runner, resolve_device
from fopt.runtime.timing import (
    Clock,
    CudaEventTimer,
    StopRule,
    WallTimer,
    check_clock,
    combine,
    get_clock,
    measure,
    summarize,
    throughput_ips,
)

ESTIMATE_KEYS = ("naive", "roofline", "calibrated")
PER_LAYER_RUNS = 10   # profiled runs per row for --per-layer (median per node)
INPUT_SEED = 0


def make_input(channels: int, size: int, batch: int, seed: int = INPUT_SEED) -> np.ndarray:
    """The one input every backend gets for this (size, batch): standard normal, fixed seed."""
    return np.random.default_rng(seed).standard_normal((batch, channels, size, size), dtype=np.float32)




@dataclass
class BenchRow:
    """One artifact x batch size. ``to_dict`` gives the JSON keys scripts rely on first."""
    artifact: str
    batch_size: int
    backend: str | None = None
    precision: str | None = None
    device: str = "cpu"
    threads: int | None = None
    status: str = "ok"
    error: str | None = None
    stats: Any = None                      # LatencyStats
    h2d_ms: float | None = None            # CUDA: host-to-device copy of the batch, timed apart
    page_faults: float | None = None       # CPU: minor page faults per call (median; `fopt.bench.measure.faults`)
    timer: str = "wall"
    processes: int = 1
    estimate_ms: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(ESTIMATE_KEYS))
    estimate_notes: list[str] = field(default_factory=list)
    estimate_detail: dict[str, Any] = field(default_factory=dict)
    layers: list[dict[str, Any]] | None = None

    @property
    def p50(self) -> float | None:
        return self.stats.p50 if self.stats is not None else None

    def error_pct(self) -> dict[str, float | None]:
        return {k: error_pct(self.estimate_ms.get(k), self.p50) for k in ESTIMATE_KEYS}

    def fail(self, e: BaseException | str) -> "BenchRow":
        self.status = "error"
        self.error = e if isinstance(e, str) else one_line(e)
        return self

    def to_dict(self) -> dict[str, Any]:
        s = self.stats
        d: dict[str, Any] = {
            "artifact": self.artifact, "backend": self.backend, "precision": self.precision,
            "batch_size": self.batch_size,
            "latency_ms": s.latency_ms() if s is not None else None,
            "throughput_ips": throughput_ips(self.batch_size, s.p50) if s is not None else None,
            "estimate_ms": dict(self.estimate_ms), "error_pct": self.error_pct(),
            "status": self.status, "error": self.error,
            "device": self.device, "threads": self.threads, "timer": self.timer,
            "h2d_ms": self.h2d_ms, "processes": self.processes, "page_faults_per_run": self.page_faults,
        }
        if s is not None:
            d.update({"min_ms": s.min, "max_ms": s.max, "n_samples": s.n, "n_clipped": s.n_clipped,
                      "stop_reason": s.stop_reason, "warmup_iters": s.warmup_iters,
                      "process_p50_ms": s.process_p50 or None, "spread_pct": s.spread_pct})
        d["estimate_notes"] = list(self.estimate_notes)
        if self.estimate_detail:
            d["estimate_detail"] = self.estimate_detail
        if self.layers is not None:
            d["layers"] = self.layers
        return d


@dataclass
class BenchResult:
    machine: dict[str, Any]
    settings: dict[str, Any]
    results: list[BenchRow]
    calibration: dict[str, Any] | None = None

    @property
    def failed(self) -> list[BenchRow]:
        return [r for r in self.results if r.status != "ok"]

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "settings": self.settings, "calibration": self.calibration,
                "results": [r.to_dict() for r in self.results]}


# ----------------------------------------------------------------------------- measuring

def _rule_dict(rule: StopRule) -> dict[str, Any]:
    return dict(rule.__dict__)


def measure_artifact(path: str | Path, *, device: str, batch_sizes: Sequence[int], threads: int,
                     rule: StopRule, clock: Clock | str = "wall") -> list[dict[str, Any]]:
    """Measure one artifact at every batch size in this process; one dict per batch size.

    Each dict has ``batch_size``, ``status``, ``error`` and, when it worked, ``samples_s``,
    ``stop_reason``, ``warmup_iters``, ``timer``, ``h2d_ms``, ``backend``, ``precision``.
    """

    clock_label = clock if isinstance(clock, str) else "custom-clock"
    clock = get_clock(clock)
    meta: dict[str, Any] = {}
    try:
        runner = open_runner(path, device=device, threads=threads)
        meta = {"backend": runner.backend, "precision": runner.precision}
        runner.load()
    except Exception as e:  # recorded in every row of this artifact; the run goes on
        return [{"batch_size": b, "status": "error", "error": one_line(e), **meta} for b in batch_sizes]
    out = []
    try:
        spec = runner.input_spec
        for b in batch_sizes:
            row: dict[str, Any] = {"batch_size": b, **meta}
            try:
                host = make_input(spec.channels, spec.size, b)
                h2d_ms = None
                if runner.device == "cuda":
                    h2d_ms = _h2d_ms(runner, host, clock)
                prepared = runner.prepare(host)
                step = lambda: runner.run_prepared(prepared)  # noqa: E731 - the timed call
                if runner.device == "cuda" and runner.backend in ("torch-eager", "torchscript", "tensorrt"):
                    timer, timer_name = CudaEventTimer(step), "cuda-events"
                else:
                    timer, timer_name = WallTimer(step, runner.synchronize, clock), clock_label
                loop = measure(timer, rule, clock)
                faults = faults_per_run(step) if runner.device == "cpu" else None
                row.update(status="ok", error=None, samples_s=loop.samples_s, stop_reason=loop.stop_reason,
                           warmup_iters=loop.warmup_iters, timer=timer_name, h2d_ms=h2d_ms, page_faults=faults)
            except Exception as e:  # one failing row is recorded; the others still run
                row.update(status="error", error=one_line(e))
            out.append(row)
    finally:
        runner.close()
    return out


def _h2d_ms(runner: Any, host: np.ndarray, clock: Clock, iters: int = 20) -> float:
    """Median time of runner.prepare (host -> device copy) + synchronize, in ms."""
    times = []
    for _ in range(iters):
        t0 = clock()
        runner.prepare(host)
        runner.synchronize()
        times.append(clock() - t0)
    return summarize(times).p50


def _measure_in_subprocess(path: str, *, device: str, batch_sizes: Sequence[int], threads: int,
                           rule: StopRule, clock: str = "wall") -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="fopt-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps({"path": str(path), "device": device, "batch_sizes": list(batch_sizes),
                                         "threads": threads, "rule": _rule_dict(rule), "clock": clock}))
        proc = subprocess.run([sys.executable, "-m", "fopt.bench.run", "--worker", str(spec_path), str(out_path)],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not out_path.exists():
            lines = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
            msg = lines[-1] if lines else f"worker exited with status {proc.returncode}"
            return [{"batch_size": b, "status": "error", "error": f"measuring process failed: {msg}"}
                    for b in batch_sizes]
        return json.loads(out_path.read_text())


def _worker_main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    rows = measure_artifact(spec["path"], device=spec["device"], batch_sizes=spec["batch_sizes"],
                            threads=spec["threads"], rule=StopRule(**spec["rule"]), clock=spec.get("clock", "wall"))
    Path(out_path).write_text(json.dumps(rows))
    return 0


def _rows_from_measurements(path: str, device: str, threads: int, runs: list[list[dict[str, Any]]],
                            batch_sizes: Sequence[int]) -> list[BenchRow]:
    rows = []
    for i, b in enumerate(batch_sizes):
        per_proc = [r[i] for r in runs]
        row = BenchRow(artifact=str(path), batch_size=b, device=device, threads=threads, processes=len(runs))
        first_meta = next((p for p in per_proc if p.get("backend")), {})
        row.backend, row.precision = first_meta.get("backend"), first_meta.get("precision")
        ok = [p for p in per_proc if p.get("status") == "ok"]
        if len(ok) < len(per_proc):
            bad = next(p for p in per_proc if p.get("status") != "ok")
            rows.append(row.fail(bad.get("error") or "measurement failed"))
            continue
        row.timer = ok[0].get("timer", "wall")
        h2d = [p["h2d_ms"] for p in ok if p.get("h2d_ms") is not None]
        row.h2d_ms = float(np.median(h2d)) if h2d else None
        faults = [p["page_faults"] for p in ok if p.get("page_faults") is not None]
        row.page_faults = float(np.median(faults)) if faults else None
        if len(ok) == 1:
            row.stats = summarize(ok[0]["samples_s"], stop_reason=ok[0]["stop_reason"],
                                  warmup_iters=ok[0]["warmup_iters"])
        else:
            row.stats = combine([p["samples_s"] for p in ok], stop_reasons=[p["stop_reason"] for p in ok])
            row.stats.warmup_iters = ok[0]["warmup_iters"]
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- estimating

def _device_spec_for(device: str, cal: dict[str, Any] | None, machine: dict[str, Any]):
    """(DeviceSpec or None, note) for the naive/roofline estimates of rows on `device`."""
    if device == "cpu":
        if cal is None:
            return None, "no CPU calibration for these threads: run `fopt bench --calibrate`"
        return cal.to_device_spec(), None
    import re


    gpu = (machine.get("gpu") or {}).get("name", "")
    for name, spec in DEVICES.items():
        if re.search(rf"\b{re.escape(name.lower())}\b", gpu.lower()):
            return spec, None
    if cal is not None:
        return cal.to_device_spec(), None
    return None, f"GPU {gpu!r} is not in the device table and not calibrated: run `fopt bench --calibrate --device cuda`"


def _estimate_rows(rows: list[BenchRow], *, cal: dict[str, Any] | None, machine: dict[str, Any],
                   per_layer: bool, threads: int, clock: str = "wall",
                   on_row: Callable[[BenchRow], None] | None = None) -> None:
    by_artifact: dict[str, list[BenchRow]] = {}
    for r in rows:
        if r.status == "ok":
            by_artifact.setdefault(r.artifact, []).append(r)
    for path, arows in by_artifact.items():
        device = arows[0].device
        spec, note = _device_spec_for(device, cal, machine)
        analysis = None
        if spec is not None:
            try:
                target, via = _analysis_target(path)
                analysis = analyze(target, batch=arows[0].batch_size, precision=_analyze_precision(arows[0].precision),
                                   device_spec=spec)
                if via:
                    note = via
            except Exception as e:  # analysis cannot read every artifact: say why
                note = f"analyze: {one_line(e)}"
        runner = None
        try:
            runner = open_runner(path, device=device, threads=threads)
            runner.load()
        except Exception as e:
            for r in arows:
                r.estimate_notes.append(f"calibrated: cannot open artifact ({one_line(e)})")
        for r in arows:
            if note:
                r.estimate_notes.append(note)
            if analysis is not None:
                try:
                    le = estimate_latency(analysis, spec, precision=_analyze_precision(r.precision),
                                          batch=r.batch_size)
                    r.estimate_ms["naive"], r.estimate_ms["roofline"] = le.naive_ms, le.roofline_ms
                except Exception as e:
                    r.estimate_notes.append(f"roofline: {one_line(e)}")
            if device == "cuda":
                _cuda_calibrated(r, analysis, cal)
            if runner is not None and (device == "cpu" or per_layer):
                _calibrated_for_row(r, runner, cal if device == "cpu" else None, per_layer,
                                    get_clock(clock) if clock == "thread-cpu" else None)
            if on_row:
                on_row(r)
        if runner is not None:
            runner.close()


def _analysis_target(path: str) -> tuple[str, str | None]:
    """What `analyze` counts for an artifact: itself, or for TorchScript files and TensorRT
    engines (not ONNX graphs) the checkpoint/ONNX parent their card names."""

    card = read_card(path, required=False) or {}
    if card.get("format") in ("torchscript", "tensorrt"):
        parent = (card.get("parent") or {}).get("path")
        if parent and Path(parent).exists():
            return parent, f"naive/roofline counted on its parent {Path(parent).name}"
    return path, None


def _cuda_calibrated(row: BenchRow, analysis: Any, cal: dict[str, Any] | None) -> None:
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


def _analyze_precision(precision: str | None) -> str:
    return precision if precision in ("fp32", "fp16", "int8") else "fp32"


def _calibrated_for_row(row: BenchRow, runner: Any, cal: dict[str, Any] | None, per_layer: bool,
                        cpu_clock: Any = None) -> None:
    key = est.fit_key(runner.backend, runner.precision)
    want_estimate = cal is not None and key is not None and key in cal.get("backends", {})
    if not want_estimate and not per_layer:
        if key is None or cal is None:
            row.estimate_notes.append(f"calibrated: not available for {runner.backend} on {row.device}")
        else:
            row.estimate_notes.append(f"calibrated: no calibration for {key}")
        return
    try:
        spec = runner.input_spec
        batch = make_input(spec.channels, spec.size, row.batch_size)
        graph = est.exec_graph_for(runner, batch, profile_runs=PER_LAYER_RUNS if per_layer else 1,
                                   cpu_clock=cpu_clock)
    except Exception as e:
        row.estimate_notes.append(f"calibrated: executed graph unavailable ({one_line(e)})")
        return
    if graph is None:
        row.estimate_notes.append(f"calibrated: executed graph not visible for {runner.backend} on {row.device}")
        return
    ce = None
    if want_estimate:
        ce = est.calibrated_estimate(graph, cal, key)
        row.estimate_ms["calibrated"] = ce.total_ms
        row.estimate_detail = ce.to_dict()
        row.estimate_notes += ce.notes
        _price_page_faults(row, cal)
    else:
        row.estimate_notes.append(f"calibrated: no calibration for {key}")
    if per_layer and runner.device != "cpu":
        row.estimate_notes.append("per-layer: only on CPU (GPU kernels run asynchronously)")
    elif per_layer:
        row.layers = _layers(row, runner, graph, ce, batch, clock=cpu_clock or time.perf_counter)


def _price_page_faults(row: BenchRow, cal: dict[str, Any]) -> None:
    """Add the page faults counted in the measured run, at the calibrated cost per fault.

    The count comes from the measuring processes (getrusage), not from a timing: which pages
    fault depends on the allocator's state over the whole forward pass (`fopt.bench.measure.faults`)."""
    per_fault = ((cal.get("probes") or {}).get("page_faults") or {}).get("seconds_per_fault")
    if row.page_faults is None or row.estimate_ms.get("calibrated") is None:
        return
    if per_fault is None:
        if row.page_faults > 0:
            row.estimate_notes.append("calibrated: page faults not priced (calibration predates it; "
                                      "run `fopt bench --calibrate` again)")
        return
    ms = row.page_faults * per_fault * 1e3
    row.estimate_ms["calibrated"] += ms
    row.estimate_detail.update(page_faults_per_run=row.page_faults, page_faults_ms=ms,
                               total_ms=row.estimate_ms["calibrated"])
    p50 = row.p50
    if p50 and ms > 0.1 * p50:
        row.estimate_notes.append(
            f"page faults: {row.page_faults:.0f} per run, about {ms:.3g} ms ({100 * ms / p50:.0f}% of the measured "
            f"p50): freed activations go back to the OS and are faulted in again (glibc malloc); "
            f"MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ or jemalloc avoid it")


def _layers(row: BenchRow, runner: Any, graph: Any, ce: Any, batch: np.ndarray,
            clock: Any = time.perf_counter) -> list[dict[str, Any]]:
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


# ----------------------------------------------------------------------------- the library call

def bench_artifacts(paths: Sequence[str | Path], *, device: str = "cpu", batch_sizes: Sequence[int] = (1, 8),
                    threads: int | None = None, min_time_s: float = 1.0, processes: int = 1,
                    estimate: bool = True, per_layer: bool = False, rule: StopRule | None = None,
                    clock: Clock | str = "wall",
                    on_progress: Callable[[str], None] | None = None) -> BenchResult:
    """Measure every artifact at every batch size; estimates beside each row (see module doc).

    `threads` defaults to the physical cores this process may use, and is the same for every
    backend. `rule` overrides the stop rule built from `min_time_s`. `clock` is ``"wall"`` or
    ``"thread-cpu"`` (one thread only: CPU time of the calling thread, immune to other processes
    on a shared machine), or any callable for tests.
    """

    if not paths:
        raise UsageError("give at least one artifact to benchmark")
    batch_sizes = [int(b) for b in batch_sizes]
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise UsageError(f"batch sizes must be >= 1, got {batch_sizes}")
    if processes < 1:
        raise UsageError(f"--processes must be >= 1, got {processes}")
    device = resolve_device(device)
    threads = int(threads or default_threads())
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    rule = rule or StopRule(min_time_s=min_time_s)
    clock_name = clock if isinstance(clock, str) else "custom"
    if isinstance(clock, str):
        get_clock(clock)
        check_clock(clock, threads, device)
    elif processes > 1:
        raise UsageError("a custom clock cannot be sent to measuring processes; use processes=1")
    say = on_progress or (lambda msg: None)
    machine = machine_record(gpu=device == "cuda")
    busy = cpus_busy() if device == "cpu" else None
    busy_msg = busy_warning(threads, busy) if clock_name != "thread-cpu" else None

    # Rounds over all artifacts rather than K processes back to back: a slow spell of a shared
    # (or virtualised) machine then lands on one process of several artifacts, which the spread
    # column shows, instead of on every process of one artifact, which no statistic can detect.
    runs: list[list[list[dict[str, Any]]]] = [[] for _ in paths]
    for k in range(processes):
        for i, path in enumerate(paths):
            if processes == 1:
                say(f"measuring {path}")
                runs[i].append(measure_artifact(path, device=device, batch_sizes=batch_sizes, threads=threads,
                                                rule=rule, clock=clock))
            else:
                say(f"measuring {path} (process {k + 1}/{processes})")
                runs[i].append(_measure_in_subprocess(str(path), device=device, batch_sizes=batch_sizes,
                                                      threads=threads, rule=rule, clock=clock_name))
    rows = [row for path, r in zip(paths, runs)
            for row in _rows_from_measurements(str(path), device, threads, r, batch_sizes)]

    cal = None
    if estimate or per_layer:
        cal = load_machine_calibration(device, threads if device == "cpu" else None,
                               clock_name if clock_name in ("wall", "thread-cpu") else "wall")
        say("estimating")
        _estimate_rows(rows, cal=cal if estimate else None, machine=machine, per_layer=per_layer, threads=threads,
                       clock=clock_name)
    settings = {"device": device, "batch_sizes": batch_sizes, "threads": threads, "processes": processes,
                "clock": clock_name,
                "stop_rule": _rule_dict(rule), "input": f"standard normal, seed {INPUT_SEED}",
                "estimate": estimate, "per_layer": per_layer,
                "cpus_busy_at_start": busy, "busy_warning": busy_msg}
    cal_info = None
    if cal is not None:
        cal_info = {"path": cal.get("path"), "created": cal.get("created"), "threads": cal.get("threads"),
                    "quick": cal.get("quick"), "summary": cal.get("summary")}
    return BenchResult(machine=machine, settings=settings, results=rows, calibration=cal_info)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2], sys.argv[3]))
    print("usage: python -m fopt.bench.run --worker SPEC.json OUT.json", file=sys.stderr)
    sys.exit(2)
