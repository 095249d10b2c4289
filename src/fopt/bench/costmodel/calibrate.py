"""`fopt bench --calibrate`: measure this machine's effective rates once, fit, and cache them.

`calibrate` returns (and with `save`, caches: `fopt.bench.costmodel.cache`) one record per
device, thread count and clock. On the CPU it holds:

- ``summary``: GEMM rate per precision (the ``peak_flops`` a device spec needs), DRAM and
  cache-sized memory bandwidth, and the per-node dispatch overhead: what turns the ``cpu``
  device of `fopt analyze` into real numbers. ``stability`` records how much the GEMM rate
  changed between the start and the end (another process on the machine shows up there).
- ``backends``: for each of `BACKEND_KEYS`, ``equations`` (one per probe: the nodes it executes
  and its time; `fopt.bench.costmodel.probes` builds the probes), the per-kernel-class linear
  fits and the shared cost per byte beyond the cache (`fopt.bench.costmodel.fit`), the achieved
  rate of every probe convolution/GEMM with its shape features (``rate_points``), the fixed
  cost of one run (``run_fixed_s``) and, for torch eager, what a forward costs beyond its ATen
  calls (``gap``).
- ``probes``: the raw probe results, among them the price of one page fault, at which the bench
  adds the faults it counts in each measured row.

Nothing is fitted on registry models: the probes are synthetic networks with ordinary CNN layer
shapes, so the calibration is out of sample for every model it later estimates. On a GPU
(`calibrate_cuda`) only the summary is measured: there the calibrated estimate is the roofline
with measured peaks.
"""

from __future__ import annotations

import datetime as _dt
import math
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fopt.artifacts import atomic_path, sha256_file
from fopt.bench.costmodel import probes
from fopt.bench.costmodel.bands import bands_for, chain_spells
from fopt.bench.costmodel.cache import SCHEMA, cache_dir, save_calibration
from fopt.bench.costmodel.fit import (
    DEFAULT_CACHE_BYTES,
    fit_gap,
    fit_with_retiming,
    rate_points,
)
from fopt.bench.costmodel.kernels import classify, output_bytes
from fopt.bench.costmodel.predict import calibrated_estimate
from fopt.bench.costmodel.probes import (
    FULL_BRANCHES,
    QUICK_BRANCHES,
    branch_input,
    current_clock,
    probe_clock,
    time_callable,
)
from fopt.bench.measure.faults import faults_per_run, page_fault_probe
from fopt.bench.measure.machine import default_threads, machine_key, machine_record
from fopt.bench.measure.profile import (
    ort_exec_graphs,
    record_torch_calls,
    torch_op_times,
)
from fopt.errors import UsageError
from fopt.runtime import resolve_device
from fopt.runtime.onnxrt import ort_session
from fopt.runtime.timing import (
    CudaEventTimer,
    StopRule,
    check_clock,
    get_clock,
    measure,
)

UNSTABLE_PCT = 10.0                  # GEMM rate at the end vs the start: more than this -> suspect
BACKEND_KEYS = ("torch-eager/fp32", "onnxruntime/fp32", "onnxruntime/int8")


# ----------------------------------------------------------------------------- probes -> equations

def _lookup_only(spec) -> dict[str, bool]:
    """Small-input probes (`probes.SMALL_BRANCHES`) price layers of their own size through the
    similarity lookup only. In the per-class linear fits, which price every other node, their
    fixed costs moved the lines the 224 px layers use: in one calibration, refitted with and
    without them, they moved held-out INT8 estimates by up to 5% and the integer element-wise
    class to zero."""
    return {"lookup_only": True} if spec in probes.SMALL_BRANCHES else {}


def _ort_backend(model_path: str, branches, batches, threads: int | None, budget_s: float,
                 chain_equations: list[dict[str, Any]], workdir: Path, passes: int = 1) -> dict[str, Any]:
    """One equation per probe branch and batch size: its executed nodes and its unprofiled time.

    Each branch is cut out of the probe network (`onnx.utils.Extractor`, saved in `workdir`)
    and run on its own: short profiled runs, one per batch size in one session, give the nodes
    ONNX Runtime executes for it (structure and shapes only) and unprofiled runs in another
    session give its time, so the profiler's cost per node never lands in the fit (see
    `fit_joint`)."""
    import onnx
    from onnx.utils import Extractor


    model = onnx.load(model_path)
    extractor = Extractor(model)
    equations: list[dict[str, Any]] = []
    tag = Path(model_path).stem
    for i, spec in enumerate(branches):
        path = workdir / f"{tag}.branch{i}.onnx"
        onnx.save(extractor.extract_model([f"x{i}"], [f"y{i}"]), str(path))
        graphs = ort_exec_graphs(path, [branch_input(spec, b, i) for b in batches], threads=threads, runs=1,
                                 input_name=f"x{i}")
        for b, graph in zip(batches, graphs):
            nodes = [classify(n) for n in graph.nodes]
            equations.append({"probe": f"{spec[0]} {spec[1]}->{spec[2]} @{spec[3]} k{spec[4]} s{spec[5]} g{spec[6]}",
                              "batch": b, "branch": i, "model": str(path),
                              "nodes": [nw.as_equation_node() for nw in nodes],
                              "ops": [n.op for n in graph.nodes], **_lookup_only(spec)})
    for _ in range(passes):  # whole passes, minutes apart: a burst of other work rarely hits both
        _retime_ort(equations, branches, threads, budget_s, whole_pass=True)
    return {"equations": equations + chain_equations}


def _retime_ort(equations: list[dict[str, Any]], branches, threads: int | None, budget_s: float,
                whole_pass: bool = False) -> None:
    """Time (again) each branch equation; keeps the fastest of all its timings. The timings of
    whole passes are also kept in order (``pass_s``): how much the same probe moves from one
    pass to the next is how far this machine's speed drifts (`fopt.bench.costmodel.bands`)."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for e in equations:
        if "model" in e:
            by_model.setdefault(e["model"], []).append(e)
    for path, eqs in by_model.items():
        sess = ort_session(path, threads=threads)
        for e in eqs:
            i = e["branch"]
            x = branch_input(branches[i], e["batch"], i)
            sec = time_callable(lambda: sess.run(None, {f"x{i}": x}), budget_s)
            e["seconds"] = min(sec, e.get("seconds", sec))
            e["timings"] = e.get("timings", 0) + 1
            if whole_pass:
                e.setdefault("pass_s", []).append(sec)
        sess = None   # released before the next session is built


def _torch_backend(net, branches, batches, budget_s: float, runs: int, overhead_every: int = 2,
                   fault_price_s: float | None = None) -> dict[str, Any]:
    """Time every ATen call of every probe block inside real forward passes of that block
    (`fopt.bench.measure.profile.torch_op_times`, median of `runs`). Every `overhead_every`-th block is
    also timed whole: what a forward costs beyond its ATen calls - nn.Module calls, and freeing
    the tensors the calls made - is fitted as ``gap``: a cost per op plus a cost per output byte."""
    import torch


    equations: list[dict[str, Any]] = []
    gaps = []   # (ops, output bytes, seconds beyond the ATen calls)
    clock = current_clock()
    with torch.inference_mode():
        for b in batches:
            for i, block in enumerate(net.blocks):
                # One input at a time, as a model holds only its live activations. Each call's
                # page faults are taken off its time at `fault_price_s` (`fopt.bench.measure.faults`).
                x = torch.relu(torch.tensor(branch_input(branches[i], b, i)))
                calls = record_torch_calls(block, x)
                times_ms = torch_op_times(block, x, len(calls), runs=runs, clock=clock, fault_price_s=fault_price_s)
                for j, (c, ms) in enumerate(zip(calls, times_ms)):
                    if ms is None:
                        continue
                    nw = classify(c.node)
                    equations.append({"probe": c.node.op, "batch": b, "seconds": ms / 1e3, "ops": [c.node.op],
                                      "branch": i, "call": j, "calls": len(calls), "timings": 1,
                                      "pass_s": [ms / 1e3],
                                      "nodes": [nw.as_equation_node()], **_lookup_only(branches[i])})
                if i % overhead_every == 0 and all(t is not None for t in times_ms):
                    block_s = time_callable(lambda: block(x), budget_s)
                    if fault_price_s:
                        block_s -= (faults_per_run(lambda: block(x)) or 0.0) * fault_price_s
                    gaps.append((len(calls), sum(output_bytes(c.node) for c in calls),
                                 block_s - sum(times_ms) / 1e3))
    return {"equations": equations, "gap": fit_gap(gaps), "gap_samples": gaps}


def _retime_torch(equations: list[dict[str, Any]], net, branches, runs: int,
                  fault_price_s: float | None = None, whole_pass: bool = False) -> None:
    """Time the blocks of these equations again in situ; keeps each call's fastest timing (and,
    for a whole pass, each timing in ``pass_s``, as `_retime_ort`)."""
    import torch


    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for e in equations:
        groups.setdefault((e["branch"], e["batch"]), []).append(e)
    with torch.inference_mode():
        for (i, b), eqs in groups.items():
            x = torch.relu(torch.tensor(branch_input(branches[i], b, i)))
            block = net.blocks[i]
            n = eqs[0].get("calls") or len(record_torch_calls(block, x))
            times_ms = torch_op_times(block, x, n, runs=runs, clock=current_clock(), fault_price_s=fault_price_s)
            for e in eqs:
                ms = times_ms[e["call"]] if e["call"] < len(times_ms) else None
                if ms is not None:
                    e["seconds"] = min(e["seconds"], ms / 1e3)
                    if whole_pass:
                        e.setdefault("pass_s", []).append(ms / 1e3)
                e["timings"] = e.get("timings", 1) + 1


# ----------------------------------------------------------------------------- orchestration

def _probe_config(quick: bool) -> dict[str, Any]:
    """Sizes, time budgets, probe branches and passes of the full or the quick calibration."""
    # ``ort_budget_s`` times each ONNX Runtime probe branch: 20 ms is 20 or more runs of every
    # branch below 1 ms (the slow ones run 3 times whatever the budget), and with 180 branch
    # timings per pass and backend 30 ms made each backend's step about 3 s longer (measured).
    if quick:
        return {"gemm_n": 256, "bw_small": 4 << 20, "bw_large": 64 << 20, "budget_s": 0.02, "ort_budget_s": 0.02, "torch_budget_s": 0.004, "torch_runs": 2, "delta_runs": 50, "passes": 1,
                "branches": QUICK_BRANCHES, "batches": (1, 2), "chain_sizes": (20_000, 80_000)}
    return {"gemm_n": 1024, "bw_small": 8 << 20, "bw_large": 256 << 20, "budget_s": 0.03, "ort_budget_s": 0.02, "torch_budget_s": 0.015, "torch_runs": 3, "delta_runs": 300, "passes": 2,
            "branches": FULL_BRANCHES, "batches": (1, 8), "chain_sizes": (50_000, 200_000)}


def calibrate(device: str = "cpu", threads: int | None = None, *, quick: bool = False, clock: str = "wall",
              save: bool = True, on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the micro-benchmarks, fit, cache (unless `save` is False) and return the calibration.

    `quick` runs a reduced probe set (seconds; for tests); the full set took 55-96 s on a 2-core
    VM (5-9 s less once the INT8 probe network is kept in the cache: `_int8_probe`).
    """

    device = resolve_device(device)
    if device == "cuda":
        cal = calibrate_cuda(quick=quick, on_step=on_step)
        if save:
            cal["path"] = str(save_calibration(cal))
        return cal
    import torch


    threads = int(threads or default_threads())
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    check_clock(clock, threads, device)
    torch.set_num_threads(threads)

    try:
        with probe_clock(get_clock(clock)):
            return _calibrate_cpu(threads, quick=quick, clock=clock, save=save, on_step=on_step)
    finally:
        branch_input.cache_clear()


def _calibrate_cpu(threads: int, *, quick: bool, clock: str, save: bool,
                   on_step: Callable[[str], None] | None) -> dict[str, Any]:
    cfg = _probe_config(quick)
    t_start = time.perf_counter()
    steps: list[list[Any]] = []   # [step, seconds since the start]: where a calibration's time goes

    def step(msg: str) -> None:
        steps.append([msg, round(time.perf_counter() - t_start, 2)])
        if on_step:
            on_step(f"{msg} ({steps[-1][1]:.0f} s in)")

    rec = machine_record()
    rates = _machine_rates(cfg, threads, step)
    net = probes.build_probenet(cfg["branches"])
    probe_cache = cache_dir() / "probes" if save else None
    # The GEMM is timed three times (start, here, end), the fastest kept: on a shared machine
    # one slow spell can take 25% off a single timing (measured: 354 against 485 GFLOP/s).
    step("GEMM rates, second timing")
    mid_gemms = _gemm_rates(cfg, threads)
    with tempfile.TemporaryDirectory(prefix="fopt-chain-") as tmp:
        step("a whole network of probe layers, first timing")
        chain = _Chain(cfg, threads, quick, Path(tmp), probe_cache)
        chain.time()
        backends = _probe_backends(net, cfg, threads, rates, _cache_bytes(rec), step, probe_cache=probe_cache,
                                   between=chain.time)
        # The same GEMM at the end as at the start: if the machine's speed changed in between
        # (another process, frequency), the calibration is suspect and says so.
        step("GEMM rates, last timing")
        end_gemms = _gemm_rates(cfg, threads)
        cal = _cpu_record(rec, threads, clock=clock, quick=quick, cfg=cfg, rates=rates,
                          gemm_timings=(rates.gemms, mid_gemms, end_gemms), backends=backends)
        step("a whole network of probe layers, last timing and estimate")
        chain.time()
        chain.store(cal)
    step("estimate bands")
    for key in backends:   # the estimate bands (out-of-sample residuals), stored for every later estimate
        bands_for(cal, key)
    cal["duration_s"] = time.perf_counter() - t_start
    cal["steps_started_s"] = steps
    if save:
        cal["path"] = str(save_calibration(cal))
    return cal


@dataclass
class _MachineRates:
    """What the CPU does outside any kernel class: GEMM, memory copies, dispatch, page faults."""
    gemms: list[probes.GemmResult]      # the first of the three GEMM timings
    bw_cache: float                     # bytes/s, cache-sized copy
    bw_dram: float                      # bytes/s, DRAM-sized copy
    overhead: dict[str, Any]            # `probes.overhead_probes`, plus the profiler's cost per node
    page_faults: dict[str, Any]         # `fopt.bench.measure.faults.page_fault_probe`

    @property
    def fault_price_s(self) -> float | None:
        return self.page_faults.get("seconds_per_fault")


def _gemm_rates(cfg: dict[str, Any], threads: int) -> list[probes.GemmResult]:
    return probes.gemm_probes(cfg["gemm_n"], threads, cfg["budget_s"] * 4)


def _machine_rates(cfg: dict[str, Any], threads: int, step: Callable[[str], None]) -> _MachineRates:
    step("GEMM rates")
    gemms = _gemm_rates(cfg, threads)
    step("memory bandwidth")
    bw_cache = probes.bandwidth_probe(cfg["bw_small"], cfg["budget_s"] * 4)
    bw_dram = probes.bandwidth_probe(cfg["bw_large"], cfg["budget_s"] * 8)
    step("dispatch overhead")
    over = probes.overhead_probes(threads, cfg["budget_s"] * 2, sizes=cfg["chain_sizes"])
    over["profiler"] = probes.profiler_delta_probe(threads, runs=cfg["delta_runs"])
    step("page fault cost")
    page_faults = page_fault_probe(threads, clock=probes.current_clock())
    return _MachineRates(gemms, bw_cache, bw_dram, over, page_faults)


class _Chain:
    """The composition probe: a whole network of probe-like layers (`probes.build_chain`), run as
    a model runs, against its calibrated estimate: measured / estimated per ONNX Runtime backend
    and batch, stored as the backend's ``composition``. Each probe branch is timed in its own
    loop; a model runs hundreds of nodes back to back, and there ONNX Runtime's INT8 nodes took
    1.5-2.5x what their branches did at batch 1 in one profile. `fopt.bench.costmodel.bands`
    widens bands by it.

    The chain is timed five times over the calibration (`time`) and its fastest timing kept, as
    each probe keeps its fastest pass: timed once, it measured this VM's slow spells rather
    than composition (the spread of its timings measures those: ``spells`` in
    `fopt.bench.costmodel.bands`). Re-timed in one process against one calibration, the FP32
    chain at batch 1 came out at 1.09, 1.42, 2.16 and 2.45x its estimate, and 1.1-1.3x in fresh
    processes; in the slow spells (seconds long, no steal time counted) two intra-op threads
    ran it no faster than one. The INT8 chain is kept with the INT8 probe network
    (`_int8_probe`)."""

    def __init__(self, cfg: dict[str, Any], threads: int, quick: bool, workdir: Path,
                 probe_cache: Path | None = None):
        self.cfg, self.threads = cfg, threads
        self.spec = probes.chain_spec(quick)
        fp32, int8 = str(workdir / "chain.onnx"), str(workdir / "chain.int8.onnx")
        Path(fp32).write_bytes(probes.probenet_to_onnx(probes.build_chain(quick), [self.spec]))
        _int8_probe(fp32, int8, [self.spec], probe_cache)
        self.paths = {"onnxruntime/fp32": fp32, "onnxruntime/int8": int8}
        self.timings_s: dict[str, dict[str, list[float]]] = {k: {} for k in self.paths}

    def time(self) -> None:
        """One timing of the chain per backend and batch (in a session of its own)."""
        for key, path in self.paths.items():
            sess = ort_session(path, threads=self.threads)
            for b in self.cfg["batches"]:
                x = branch_input(self.spec, b, 0)
                sec = time_callable(lambda: sess.run(None, {"x0": x}), self.cfg["budget_s"] * 4)
                self.timings_s[key].setdefault(str(b), []).append(sec)
            sess = None

    def store(self, cal: dict[str, Any]) -> None:
        """Each backend's ``composition`` ({batch: fastest timing / estimate}) and every timing
        (``composition_timings_s``), priced with `cal`'s fits."""
        for key, path in self.paths.items():
            backend = cal["backends"].get(key)
            if backend is None:
                continue
            xs = [branch_input(self.spec, b, 0) for b in self.cfg["batches"]]
            graphs = ort_exec_graphs(path, xs, threads=self.threads, runs=1, input_name="x0")
            ratios = {}
            for b, graph in zip(self.cfg["batches"], graphs):
                graph.precision = key.rsplit("/", 1)[1]
                est_s = calibrated_estimate(graph, cal, key).total_ms / 1e3
                if est_s > 0:
                    ratios[str(b)] = min(self.timings_s[key][str(b)]) / est_s
            backend["composition"] = ratios
            backend["composition_timings_s"] = self.timings_s[key]


def _cache_bytes(rec: dict[str, Any]) -> float:
    """Bytes a node's tensors may take before it pays for DRAM: half the L3, when known."""
    l3 = rec["cpu"].get("l3_bytes")
    return l3 / 2 if l3 else DEFAULT_CACHE_BYTES


def _relu_chain_equations(over: dict[str, Any]) -> list[dict[str, Any]]:
    """Equations from the per-node times of the Relu chains: they pin ONNX Runtime's
    element-wise class (plus the run's fixed cost, which the fit takes off every equation)."""
    return [{"probe": f"Relu chain on {e} elements", "batch": 1, "seconds": sec + over["onnxruntime_run_fixed_s"],
             "nodes": [["eltwise", float(e), 8.0 * int(e)]], "ops": ["Relu"]}
            for e, sec in over["onnxruntime_node_s"].items() if int(e) >= 10_000]


def _probe_backends(net, cfg: dict[str, Any], threads: int, rates: _MachineRates, cache_bytes: float,
                    step: Callable[[str], None], probe_cache: Path | None = None,
                    between: Callable[[], None] | None = None) -> dict[str, Any]:
    """Per backend in `BACKEND_KEYS`: its probe equations, timed in whole passes, then fitted.
    The INT8 probe network is kept in `probe_cache` for the next calibration (`_int8_probe`).
    `between` runs after each backend's probes (the chain network's timings, `_Chain`)."""
    def timed_between() -> None:
        if between:
            step("a whole network of probe layers, timed again")
            between()

    branches, batches = cfg["branches"], cfg["batches"]
    fault_price = rates.fault_price_s
    backends: dict[str, Any] = {}
    step("kernel classes: torch eager")
    # Compute only: which pages a model faults depends on its whole allocation sequence, so the
    # bench counts them in the measured run and prices them apart (`page_faults` above); the
    # probes' own faults are taken off their timings at that price.
    backends["torch-eager/fp32"] = _torch_backend(net, branches, batches, cfg["torch_budget_s"], cfg["torch_runs"],
                                                  fault_price_s=fault_price)
    backends["torch-eager/fp32"]["run_fixed_s"] = 0.0
    timed_between()
    chain = _relu_chain_equations(rates.overhead)
    # The branch models cut out of the probe network live here until the fit has timed its
    # outliers again.
    with tempfile.TemporaryDirectory(prefix="fopt-calib-") as tmp:
        work = Path(tmp)
        fp32, int8 = str(work / "probe.onnx"), str(work / "probe.int8.onnx")
        Path(fp32).write_bytes(probes.probenet_to_onnx(net, branches))
        step("kernel classes: onnxruntime fp32")
        backends["onnxruntime/fp32"] = _ort_backend(fp32, branches, batches, threads, cfg["ort_budget_s"], chain, work,
                                                    cfg["passes"])
        timed_between()
        step("INT8 probe network")
        kept = _int8_probe(fp32, int8, branches, probe_cache)
        step("kernel classes: onnxruntime int8" + (" (INT8 probe network from the cache)" if kept else ""))
        backends["onnxruntime/int8"] = _ort_backend(int8, branches, batches, threads, cfg["ort_budget_s"], chain, work,
                                                    cfg["passes"])
        for key in ("onnxruntime/fp32", "onnxruntime/int8"):
            backends[key]["run_fixed_s"] = rates.overhead["onnxruntime_run_fixed_s"]
        timed_between()
        # As for ONNX Runtime: further whole passes, the fastest timing kept per ATen call.
        for k in range(1, cfg["passes"]):
            step(f"kernel classes: torch eager, pass {k + 1}")
            _retime_torch(backends["torch-eager/fp32"]["equations"], net, branches, cfg["torch_runs"], fault_price,
                          whole_pass=True)
        step("fitting (and timing outliers again)")
        retimers = {
            "torch-eager/fp32": lambda eqs: _retime_torch(eqs, net, branches, cfg["torch_runs"], fault_price),
            # (the Relu-chain equations have no branch model to run again; _retime_ort skips them)
            "onnxruntime/fp32": lambda eqs: _retime_ort(eqs, branches, threads, cfg["ort_budget_s"]),
            "onnxruntime/int8": lambda eqs: _retime_ort(eqs, branches, threads, cfg["ort_budget_s"]),
        }
        _fit_backends(backends, retimers, cache_bytes)
    return backends


PROBE_QUANT_VERSION = 1   # bump when `probes.quantize_probe` makes a different INT8 probe


def _int8_probe(fp32: str, int8: str, branches, keep_in: Path | None) -> bool:
    """Write the INT8 probe network to `int8`: a copy of the one an earlier calibration kept in
    `keep_in` for the same FP32 probe bytes and onnxruntime version (True), else quantized now
    (`probes.quantize_probe`, about 14 of a calibration's 80 s on a 2-core VM) and kept there."""
    import onnxruntime

    if keep_in is None:
        probes.quantize_probe(fp32, int8, branches)
        return False
    digest = sha256_file(fp32)[:16]
    kept = keep_in / f"probe-{digest}-q{PROBE_QUANT_VERSION}-ort{onnxruntime.__version__}.int8.onnx"
    if kept.is_file():
        shutil.copyfile(kept, int8)
        return True
    probes.quantize_probe(fp32, int8, branches)
    kept.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(kept) as tmp:
        shutil.copyfile(int8, tmp)
    return False


def _fit_backends(backends: dict[str, Any], retimers: dict[str, Callable[[list[dict[str, Any]]], None]],
                  cache_bytes: float) -> None:
    """Fit each backend's equations in place: ``classes``, ``dram``, ``rate_points``, and each
    used equation's ``fit_error_pct``."""
    for key, b in backends.items():
        fit = fit_with_retiming(b["equations"], b["run_fixed_s"], cache_bytes, retimers[key])
        b["classes"], b["dram"] = fit["classes"], fit["dram"]
        for e, r in zip(fit["used"], fit["residuals"]):
            e["fit_error_pct"] = r * 100
        b["rate_points"] = rate_points(b["equations"], fit, b["run_fixed_s"])
        for e in b["equations"]:
            e.pop("model", None)  # a temporary file


def gemm_drift_pct(first: list[probes.GemmResult], last: list[probes.GemmResult]) -> float:
    """How far the machine's speed moved between two timings of the same GEMMs: the median over
    the GEMMs of |rate change| in %. A busy spell slows all of them; one short timing's noise
    moves one (on a quiet 2-core VM single GEMMs moved 15-40% between back-to-back timings, so
    the largest change flagged every calibration there as made on a busy machine)."""
    return float(statistics.median(abs(b.ops_per_s / a.ops_per_s - 1) for a, b in zip(first, last)) * 100)


def _cpu_record(rec: dict[str, Any], threads: int, *, clock: str, quick: bool, cfg: dict[str, Any],
                rates: _MachineRates, gemm_timings: tuple[list[probes.GemmResult], ...],
                backends: dict[str, Any]) -> dict[str, Any]:
    """The calibration record (module doc) from the measured parts; the fastest of the GEMM
    timings is kept, and how far the last moved from the first (`gemm_drift_pct`) is its
    ``stability``."""
    drift = gemm_drift_pct(gemm_timings[0], gemm_timings[-1])
    gemms = [max(timings, key=lambda g: g.ops_per_s) for timings in zip(*gemm_timings)]
    gemm = {g.name: g.ops_per_s for g in gemms}
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return {
        "schema": SCHEMA,
        "created": created,
        "device": "cpu",
        "threads": threads,
        "clock": clock,
        "quick": quick,
        "machine_key": machine_key(rec),
        "machine": rec,
        "summary": {
            "name": "cpu",
            "peak_flops": {"fp32": gemm["onnxruntime/fp32"], "fp16": None, "int8": gemm["onnxruntime/int8"]},
            "mem_bandwidth": rates.bw_dram,
            "cache_bandwidth": rates.bw_cache,
            "per_node_overhead_s": rates.overhead["onnxruntime_dispatch_s"],
            "source": f"fopt bench --calibrate on {rec['cpu'].get('model')} ({threads} threads), {created}",
        },
        "stability": {"gemm_change_pct": drift, "stable": drift <= UNSTABLE_PCT},
        "probes": {
            "gemm": [{"name": g.name, "n": g.n, "seconds": g.seconds, "ops_per_s": g.ops_per_s} for g in gemms],
            "gemm_ops_per_s_start_mid_end": [[g.ops_per_s for g in t] for t in gemm_timings],
            "bandwidth": {"cache_bytes": cfg["bw_small"], "cache_Bps": rates.bw_cache,
                          "dram_bytes": cfg["bw_large"], "dram_Bps": rates.bw_dram},
            "overhead": rates.overhead,
            "page_faults": rates.page_faults,
            "probe_branches": len(cfg["branches"]),
            "batches": list(cfg["batches"]),
        },
        "backends": backends,
    }


# ----------------------------------------------------------------------------- CUDA

def calibrate_cuda(*, quick: bool = False, on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """GPU GEMM rate per precision, device-memory bandwidth and kernel launch gap (torch, CUDA events).

    No per-class fits: on a GPU the calibrated estimate is analyze's roofline with these measured
    figures in place of the datasheet's.
    """
    import torch


    step = on_step or (lambda msg: None)
    t_start = time.perf_counter()
    rec = machine_record(gpu=True)
    dev = torch.device("cuda")
    budget = 0.1 if quick else 0.5

    def timed(fn: Callable[[], Any]) -> float:
        res = measure(CudaEventTimer(fn), StopRule(min_time_s=budget, warmup_iters=3, warmup_s=0.05,
                                                   min_iters=5, first_check=10))
        return statistics.median(res.samples_s)

    n = 2048 if quick else 8192
    step("GEMM rates")
    peaks: dict[str, float | None] = {}
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the FP32 rate, not TF32 tensor cores
    try:
        for prec, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
            a = torch.randn(n, n, device=dev, dtype=dtype)
            b = torch.randn(n, n, device=dev, dtype=dtype)
            peaks[prec] = 2.0 * n ** 3 / timed(lambda: torch.mm(a, b))
            a = b = None
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32
    try:
        a8 = torch.randint(-127, 127, (n, n), device=dev, dtype=torch.int8)
        b8 = torch.randint(-127, 127, (n, n), device=dev, dtype=torch.int8)
        peaks["int8"] = 2.0 * n ** 3 / timed(lambda: torch._int_mm(a8, b8))
        a8 = b8 = None
    except (RuntimeError, AttributeError):
        peaks["int8"] = None  # no int8 GEMM in this torch build / GPU
    step("memory bandwidth")
    nbytes = (256 << 20) if quick else (2 << 30)
    src = torch.empty(nbytes // 4, device=dev, dtype=torch.float32)
    dst = torch.empty_like(src)
    bw = 2.0 * nbytes / timed(lambda: dst.copy_(src))
    src = dst = None
    step("launch overhead")
    x = torch.zeros(16, device=dev)
    chain = 200

    def many() -> None:
        for _ in range(chain):
            x.add_(1.0)

    per_kernel = timed(many) / chain
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    gpu = rec.get("gpu") or {}
    return {
        "schema": SCHEMA, "created": created, "device": "cuda", "threads": 0, "quick": quick,
        "machine_key": machine_key(rec), "machine": rec,
        "summary": {"name": f"cuda:{gpu.get('name', 'gpu')}", "peak_flops": peaks, "mem_bandwidth": bw,
                    "cache_bandwidth": None, "per_node_overhead_s": per_kernel,
                    "source": f"fopt bench --calibrate --device cuda on {gpu.get('name')}, {created}"},
        "probes": {"gemm_n": n, "bandwidth_bytes": nbytes, "launch_chain": chain},
        "backends": {},
        "duration_s": time.perf_counter() - t_start,
    }


# ----------------------------------------------------------------------------- show

def calibration_rows(cal: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(summary rows, per-class rows) for `--show-calibration`."""
    s = cal["summary"]
    over = cal.get("probes", {}).get("overhead", {})
    summary = [
        {"quantity": "GEMM fp32 (onnxruntime)", "value": _g(s["peak_flops"].get("fp32")), "unit": "GFLOP/s"},
        {"quantity": "GEMM int8 (onnxruntime)", "value": _g(s["peak_flops"].get("int8")), "unit": "GOP/s"},
    ]
    for g in cal.get("probes", {}).get("gemm", []):
        if g["name"].startswith("torch"):
            summary.append({"quantity": f"GEMM fp32 ({g['name'].split('/')[0]})", "value": _g(g["ops_per_s"]),
                            "unit": "GFLOP/s"})
    summary += [
        {"quantity": "bandwidth DRAM (copy)", "value": _g(s.get("mem_bandwidth")), "unit": "GB/s"},
        {"quantity": "bandwidth cache-sized (copy)", "value": _g(s.get("cache_bandwidth")), "unit": "GB/s"},
        {"quantity": "onnxruntime dispatch per node", "value": _us(over.get("onnxruntime_dispatch_s")), "unit": "us"},
        {"quantity": "onnxruntime session.run fixed", "value": _us(over.get("onnxruntime_run_fixed_s")), "unit": "us"},
        {"quantity": "torch eager dispatch per module", "value": _us(over.get("torch_dispatch_s")), "unit": "us"},
    ]
    pf = cal.get("probes", {}).get("page_faults") or {}
    if pf.get("seconds_per_fault") is not None:
        summary.append({"quantity": "page fault (first touch of a fresh 4 KiB page)",
                        "value": _us(pf["seconds_per_fault"]), "unit": "us"})
    if over.get("profiler"):
        summary.append({"quantity": "onnxruntime profiler cost per node", "value": _us(over["profiler"]["delta_s"]),
                        "unit": "us"})
    for key, b in cal.get("backends", {}).items():
        drift = (b.get("bands") or {}).get("drift")
        if drift:   # `fopt.bench.costmodel.bands.machine_drift`: every band is widened by it
            summary.append({"quantity": f"{key}: machine speed moved between timing passes",
                            "value": 100 * math.expm1(drift[1]), "unit": "%"})
        for batch, ratio in sorted((b.get("composition") or {}).items(), key=lambda kv: int(kv[0])):
            summary.append({"quantity": f"{key}: a whole network of probe layers, fastest timing / estimated, "
                                        f"batch {batch}", "value": ratio, "unit": "x"})
        for batch, ratio in (chain_spells(b) or {}).items():
            summary.append({"quantity": f"{key}: the same network, slowest / fastest of its timings (the "
                                        f"machine's slow spells), batch {batch}", "value": ratio, "unit": "x"})
        if "gap" in b:
            summary.append({"quantity": f"{key} cost per op beyond its ATen call", "value": _us(b["gap"]["per_op_s"]),
                            "unit": "us"})
            summary.append({"quantity": f"{key} cost per MB allocated (freeing, unmapping)",
                            "value": _us(b["gap"]["per_byte_s"] * 2 ** 20),
                            "unit": "us"})
    classes = []
    for key, b in cal.get("backends", {}).items():
        if b.get("dram"):
            d = b["dram"]
            classes.append({"backend": key, "class": f"bytes beyond {d['cache_bytes'] / 2 ** 20:.0f} MiB",
                            "rate": 1.0 / d["sec_per_byte"] / 1e9 if d["sec_per_byte"] > 0 else None,
                            "unit": "GB/s", "overhead_us": None, "points": None, "fit_rmse_pct": None,
                            "probe layer rates": None, "80% band": None})
        band = (b.get("bands") or {}).get("classes") or {}
        for cls, fit in b.get("classes", {}).items():
            unit = "GMAC/s" if cls.startswith(("conv", "gemm")) else "Gelem/s"
            rate = 1.0 / fit["sec_per_work"] / 1e9 if fit["sec_per_work"] > 0 else None
            pts = [p[-1] / 1e9 for p in (b.get("rate_points") or {}).get(cls, [])]
            classes.append({"backend": key, "class": cls, "rate": rate, "unit": unit,
                            "overhead_us": fit["overhead_s"] * 1e6, "points": fit["n"],
                            "fit_rmse_pct": fit["rel_rmse"] * 100,
                            "probe layer rates": f"{min(pts):.3g}-{max(pts):.3g} ({len(pts)})" if pts else None,
                            # leave-one-probe-out: x the estimate (`fopt.bench.costmodel.bands`)
                            "80% band": (f"x{math.exp(band[cls][0]):.2f}-{math.exp(band[cls][1]):.2f} ({band[cls][2]})"
                                         if band.get(cls) else None)})
    return summary, classes


def _g(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v / 1e9


def _us(v: float | None) -> float | None:
    return None if v is None else v * 1e6
