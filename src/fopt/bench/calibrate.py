"""`fopt bench --calibrate`: measure this machine's effective rates once, fit, and cache them.

What is measured (`fopt.bench.probes`) and what is fitted:

- ``summary``: GEMM rate per precision (the ``peak_flops`` a device spec needs), DRAM and
  L3-sized memory bandwidth, and the per-node dispatch overhead of each backend. This is what
  turns the ``cpu`` device of `fopt analyze` into real numbers.
- ``backends``: for each backend/precision (``onnxruntime/fp32``, ``onnxruntime/int8``,
  ``torch-eager/fp32``), one fit per kernel class (`fopt.bench.kernels`):
  ``time = overhead_s + work * sec_per_work``, fitted on the probe network's executed nodes with
  relative (1/t) weights and non-negative coefficients. ONNX Runtime fits are made on profiled
  node times, so each backend also records ``node_delta_s``: how much a profiled node overstates
  its share of an unprofiled run (measured on the same probe network), and ``run_fixed_s``, the
  fixed cost of one ``session.run``. Eager fits are made on replayed ATen calls, so
  ``module_overhead_s`` adds what calling them through ``nn.Module`` costs.

Nothing here is fitted on registry models: the calibration is out of sample for every model it
is later used to estimate.

The cache is one JSON file per machine (`fopt.bench.machine.machine_key`: CPU model, CPU count,
torch/onnxruntime/numpy versions) under ``$FOPT_CACHE_DIR/calibration/`` (default
``~/.cache/fopt/calibration/``), holding one entry per device and thread count.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fopt.errors import InputError, UsageError

SCHEMA = 1
BACKEND_KEYS = ("torch-eager/fp32", "onnxruntime/fp32", "onnxruntime/int8")

# If a class has no probe points, borrow the fit of a similar class (recorded in the estimate).
CLASS_FALLBACK = {
    "conv_stem": "conv_dense", "conv_grouped": "conv_dw", "conv_se": "gemm",
    "conv_dw": "conv_dense", "conv_pw": "conv_dense", "gemm": "conv_pw",
    "eltwise_transcendental": "eltwise", "eltwise_hard": "eltwise", "norm": "eltwise", "pool": "eltwise",
    "global_pool": "eltwise", "layout": "eltwise", "quant": "eltwise", "noop": "eltwise",
}


# ----------------------------------------------------------------------------- cache

def cache_dir() -> Path:
    """Where calibrations live: $FOPT_CACHE_DIR, else $XDG_CACHE_HOME/fopt, else ~/.cache/fopt."""
    root = os.environ.get("FOPT_CACHE_DIR")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "fopt"
    return base / "calibration"


def cache_path(key: str | None = None) -> Path:
    from fopt.bench.machine import machine_key

    return cache_dir() / f"{key or machine_key()}.json"


def _entry_key(device: str, threads: int, clock: str = "wall") -> str:
    return f"{device}:threads={threads}" + ("" if clock == "wall" else f":clock={clock}")


def save_calibration(cal: dict[str, Any]) -> Path:
    from fopt.artifacts import write_json_atomic

    path = cache_path(cal["machine_key"])
    doc = _read_cache_file(path) or {"schema": SCHEMA, "machine_key": cal["machine_key"], "entries": {}}
    doc["entries"][_entry_key(cal["device"], cal["threads"], cal.get("clock", "wall"))] = cal
    write_json_atomic(path, doc)
    return path


def _read_cache_file(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: unreadable calibration cache ({e}); delete it and run "
                         f"`fopt bench --calibrate` again") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or "entries" not in doc:
        return None  # an older format: treated as absent, overwritten by the next calibration
    return doc


class Calibration(dict):
    """A cached calibration (a plain dict) that can also act as a `DeviceSpec` for `analyze`."""

    def to_device_spec(self):
        from fopt.bench.devices import DeviceSpec

        s = self["summary"]
        return DeviceSpec(name=s.get("name", self.get("device", "cpu")),
                          peak_flops={k: float(v) for k, v in s["peak_flops"].items() if v},
                          bandwidth_bytes_per_s=float(s["mem_bandwidth"]),
                          node_overhead_s=float(s["per_node_overhead_s"]), source=s.get("source", ""),
                          description=f"calibrated, {self.get('threads')} threads")


def load_calibration(device: str = "cpu", threads: int | None = None, clock: str = "wall") -> Calibration | None:
    """This machine's cached calibration for `device` (and `threads`, else the newest), or None.

    The dict has ``summary`` {``peak_flops`` {fp32, fp16, int8} in FLOP/s, ``mem_bandwidth``
    and ``cache_bandwidth`` in bytes/s, ``per_node_overhead_s``, ``source``} for device specs,
    and ``backends`` with the per-kernel-class fits for the calibrated estimate.
    """
    doc = _read_cache_file(cache_path())
    if not doc:
        return None
    entries = [e for e in doc["entries"].values()
               if e.get("device") == device and e.get("clock", "wall") == clock]
    if threads is not None:
        entries = [e for e in entries if e.get("threads") == threads]
    if not entries:
        return None
    cal = Calibration(max(entries, key=lambda e: e.get("created", "")))
    cal["path"] = str(cache_path())
    return cal


def require_calibration(device: str = "cpu", threads: int | None = None, clock: str = "wall") -> Calibration:
    cal = load_calibration(device, threads, clock)
    if cal is None:
        where = f" for {threads} threads" if threads is not None else ""
        raise UsageError(f"no calibration for device {device}{where} on this machine; run "
                         f"`fopt bench --calibrate --device {device}"
                         f"{f' --threads {threads}' if threads else ''}"
                         f"{f' --clock {clock}' if clock != 'wall' else ''}` first")
    return cal


# ----------------------------------------------------------------------------- fitting

def fit_line(work: list[float], seconds: list[float], *, with_slope: bool = True) -> dict[str, float]:
    """Fit seconds = overhead_s + work * sec_per_work, relative (1/t) weights, both >= 0."""
    w = np.asarray(work, dtype=float)
    t = np.asarray(seconds, dtype=float)
    keep = t > 0
    w, t = w[keep], t[keep]
    if len(t) == 0:
        raise ValueError("no positive times to fit")
    inv = 1.0 / t

    def rel_rmse(o: float, s: float) -> float:
        return float(np.sqrt(np.mean(((o + s * w - t) * inv) ** 2)))

    def const() -> float:  # weighted (relative-error) fit of a constant
        return float(np.sum(inv) / np.sum(inv ** 2))

    def slope_only() -> float:
        return float(np.sum(w * inv) / np.sum((w * inv) ** 2))

    if not with_slope or np.all(w == 0):
        o, s = const(), 0.0
    elif len(t) == 1:
        o, s = 0.0, slope_only()
    else:
        a = np.vstack([inv, w * inv]).T
        (o, s), *_ = np.linalg.lstsq(a, np.ones_like(t), rcond=None)
        if s <= 0:
            o, s = const(), 0.0
        elif o < 0:
            o, s = 0.0, slope_only()
    return {"overhead_s": float(o), "sec_per_work": float(s), "n": int(len(t)), "rel_rmse": rel_rmse(o, s)}


def fit_classes(points: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """One fit per kernel class from probe points {class, work, seconds}."""
    by_class: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        by_class.setdefault(p["class"], []).append(p)
    fits = {}
    for cls, pts in sorted(by_class.items()):
        fit = fit_line([p["work"] for p in pts], [p["seconds"] for p in pts], with_slope=cls != "noop")
        fits[cls] = fit
    return fits


# ----------------------------------------------------------------------------- probes -> points

def _graph_points(graph, batch: int) -> list[dict[str, Any]]:
    from fopt.bench.kernels import classify

    pts = []
    for node in graph.nodes:
        if node.measured_ms is None:
            continue
        nw = classify(node)
        pts.append({"class": nw.kernel_class, "work": nw.work, "bytes": nw.bytes_moved,
                    "seconds": node.measured_ms / 1e3, "op": node.op, "batch": batch,
                    "unknown": nw.unknown})
    return pts


def _ort_backend(model_path: str, branches, batches, threads: int | None, budget_s: float,
                 runs: int, cpu_clock: Callable[[], float] | None = None) -> dict[str, Any]:
    from fopt.bench.latency import percentile
    from fopt.bench.probes import PROBE_QUANTILE, ort_session, probe_inputs, time_samples
    from fopt.bench.profile import ort_exec_graph

    points: list[dict[str, Any]] = []
    deltas = []
    sess = ort_session(model_path, threads)
    for b in batches:
        feeds = {f"x{i}": x for i, x in enumerate(probe_inputs(branches, b))}
        graph = ort_exec_graph(model_path, None, threads=threads, runs=runs, feeds=feeds,
                               node_quantile=PROBE_QUANTILE, cpu_clock=cpu_clock)
        points += _graph_points(graph, b)
        samples = time_samples(lambda: sess.run(None, feeds), budget_s, min_iters=runs)
        # compare like with like: a CPU-time-scaled profile keeps node means, a wall one a low quantile
        unprof = (sum(samples) / len(samples)) if cpu_clock else percentile(sorted(samples), PROBE_QUANTILE)
        node_sum = sum(n.measured_ms for n in graph.nodes if n.measured_ms is not None) / 1e3
        n = sum(1 for n in graph.nodes if n.measured_ms is not None)
        # What a profiled node overstates per node: the sum of the nodes' typical profiled times
        # against the typical unprofiled run. The fits are made on profiled times, so an estimate
        # is (sum of node fits) - n * delta (+ the run's fixed cost). `busy_ratio` > 1 says runs
        # were disturbed by other processes: a profiled run took longer than its nodes' typical sum.
        deltas.append({"batch": b, "nodes": n, "node_sum_s": node_sum, "unprofiled_run_s": unprof,
                       "delta_s": (node_sum - unprof) / max(1, n),
                       "busy_ratio": (graph.run_ms or 0.0) / 1e3 / node_sum if node_sum else None})
    del sess
    return {"points": points, "delta": deltas}


def _torch_backend(net, branches, batches, budget_s: float, overhead_every: int = 4) -> dict[str, Any]:
    """Replay each probe block's ATen calls one by one; every `overhead_every`-th block is also
    timed whole at the first batch size, to measure what the nn.Module calls add per op."""
    import torch

    from fopt.bench.kernels import classify
    from fopt.bench.probes import probe_inputs, time_callable
    from fopt.bench.profile import record_torch_calls

    points: list[dict[str, Any]] = []
    module_over = []
    with torch.inference_mode():
        for b in batches:
            xs = [torch.relu(torch.from_numpy(x)) for x in probe_inputs(branches, b)]
            for i, (block, x) in enumerate(zip(net.blocks, xs)):
                calls = record_torch_calls(block, x.clone(), keep_args=True)
                replay_sum = 0.0
                for c in calls:
                    sec = time_callable(lambda c=c: c.func(*c.args, **c.kwargs), budget_s)
                    replay_sum += sec
                    nw = classify(c.node)
                    points.append({"class": nw.kernel_class, "work": nw.work, "bytes": nw.bytes_moved,
                                   "seconds": sec, "op": c.node.op, "batch": b, "unknown": nw.unknown})
                if b == batches[0] and i % overhead_every == 0:
                    xin = x.clone()
                    block_s = time_callable(lambda: block(xin), budget_s)
                    module_over.append((block_s - replay_sum) / max(1, len(calls)))
    return {"points": points, "module_overhead_s": max(0.0, statistics.median(module_over)) if module_over else 0.0,
            "module_overhead_samples_s": module_over}


# ----------------------------------------------------------------------------- orchestration

def _steps(quick: bool) -> dict[str, Any]:
    from fopt.bench.probes import FULL_BRANCHES, QUICK_BRANCHES

    if quick:
        return {"gemm_n": 256, "bw_small": 4 << 20, "bw_large": 64 << 20, "budget_s": 0.02, "torch_budget_s": 0.004, "delta_runs": 50,
                "branches": QUICK_BRANCHES, "batches": (1, 2), "runs": 3, "chain_sizes": (20_000, 80_000)}
    return {"gemm_n": 1024, "bw_small": 8 << 20, "bw_large": 256 << 20, "budget_s": 0.05, "torch_budget_s": 0.015, "delta_runs": 300,
            "branches": FULL_BRANCHES, "batches": (1, 8), "runs": 5, "chain_sizes": (50_000, 200_000)}


def calibrate(device: str = "cpu", threads: int | None = None, *, quick: bool = False, clock: str = "wall",
              save: bool = True, on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the micro-benchmarks, fit, cache (unless `save` is False) and return the calibration.

    `quick` runs a reduced probe set (seconds; for tests); the full set takes under about a
    minute on an idle 2-core machine.
    """
    from fopt.bench.machine import default_threads, machine_key, machine_record
    from fopt.runtime.base import resolve_device

    device = resolve_device(device)
    if device == "cuda":
        cal = calibrate_cuda(quick=quick, on_step=on_step)
        if save:
            cal["path"] = str(save_calibration(cal))
        return cal
    import torch

    from fopt.bench.latency import check_clock, get_clock

    threads = int(threads or default_threads())
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    check_clock(clock, threads, device)
    torch.set_num_threads(threads)
    from fopt.bench.probes import probe_clock

    with probe_clock(get_clock(clock)):
        return _calibrate_cpu(threads, quick=quick, clock=clock, save=save, on_step=on_step)


def _calibrate_cpu(threads: int, *, quick: bool, clock: str, save: bool,
                   on_step: Callable[[str], None] | None) -> dict[str, Any]:
    from fopt.bench.latency import get_clock
    from fopt.bench.machine import machine_key, machine_record

    step = on_step or (lambda msg: None)
    cfg = _steps(quick)
    t_start = time.perf_counter()
    rec = machine_record()

    from fopt.bench import probes

    step("GEMM rates")
    gemms = probes.gemm_probes(cfg["gemm_n"], threads, cfg["budget_s"] * 4)
    step("memory bandwidth")
    bw_cache = probes.bandwidth_probe(cfg["bw_small"], cfg["budget_s"] * 4)
    bw_dram = probes.bandwidth_probe(cfg["bw_large"], cfg["budget_s"] * 8)
    step("dispatch overhead")
    over = probes.overhead_probes(threads, cfg["budget_s"] * 2, sizes=cfg["chain_sizes"])
    over["profiler"] = probes.profiler_delta_probe(threads, runs=cfg["delta_runs"])

    branches, batches = cfg["branches"], cfg["batches"]
    net = probes.build_probenet(branches)
    backends: dict[str, Any] = {}
    step("kernel classes: torch eager")
    tb = _torch_backend(net, branches, batches, cfg["torch_budget_s"])
    backends["torch-eager/fp32"] = {"points": tb["points"], "module_overhead_s": tb["module_overhead_s"],
                                    "run_fixed_s": 0.0}
    with tempfile.TemporaryDirectory(prefix="fopt-calib-") as tmp:
        fp32 = str(Path(tmp) / "probe.onnx")
        Path(fp32).write_bytes(probes.probenet_to_onnx(net, branches))
        int8 = str(Path(tmp) / "probe.int8.onnx")
        step("kernel classes: onnxruntime fp32")
        # Profiled node times are wall time whatever the clock; with --clock thread-cpu (a shared
        # machine) each run's node times are scaled by its CPU/wall ratio.
        cpu_clock = get_clock("thread-cpu") if clock == "thread-cpu" else None
        runs = cfg["runs"] * (2 if cpu_clock else 1)
        ob = _ort_backend(fp32, branches, batches, threads, cfg["budget_s"] * 4, runs, cpu_clock)
        backends["onnxruntime/fp32"] = ob
        step("kernel classes: onnxruntime int8")
        probes.quantize_probe(fp32, int8, branches)
        backends["onnxruntime/int8"] = _ort_backend(int8, branches, batches, threads,
                                                    cfg["budget_s"] * 4, runs, cpu_clock)
    for key in ("onnxruntime/fp32", "onnxruntime/int8"):
        b = backends[key]
        # From the short Relu chain: the probe network's own comparison (kept in "delta" as a check)
        # is a difference of two long runs, which another process on the machine easily swamps.
        b["node_delta_s"] = over["profiler"]["delta_s"]
        b["run_fixed_s"] = over["onnxruntime_run_fixed_s"]
    for key, b in backends.items():
        b["classes"] = fit_classes(b["points"])

    gemm = {g.name: g.ops_per_s for g in gemms}
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    cal = {
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
            "mem_bandwidth": bw_dram,
            "cache_bandwidth": bw_cache,
            "per_node_overhead_s": over["onnxruntime_dispatch_s"],
            "source": f"fopt bench --calibrate on {rec['cpu'].get('model')} ({threads} threads), {created}",
        },
        "probes": {
            "gemm": [{"name": g.name, "n": g.n, "seconds": g.seconds, "ops_per_s": g.ops_per_s} for g in gemms],
            "bandwidth": {"cache_bytes": cfg["bw_small"], "cache_Bps": bw_cache,
                          "dram_bytes": cfg["bw_large"], "dram_Bps": bw_dram},
            "overhead": over,
            "probe_branches": len(branches),
            "batches": list(batches),
        },
        "backends": backends,
    }
    cal["duration_s"] = time.perf_counter() - t_start
    if save:
        cal["path"] = str(save_calibration(cal))
    return cal


# ----------------------------------------------------------------------------- CUDA

def calibrate_cuda(*, quick: bool = False, on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """GPU GEMM rate per precision, device-memory bandwidth and kernel launch gap (torch, CUDA events).

    No per-class fits: on a GPU the calibrated estimate is analyze's roofline with these measured
    figures in place of the datasheet's.
    """
    import torch

    from fopt.bench.latency import CudaEventTimer
    from fopt.bench.latency import get_clock
    from fopt.bench.machine import machine_key, machine_record

    step = on_step or (lambda msg: None)
    t_start = time.perf_counter()
    rec = machine_record(gpu=True)
    dev = torch.device("cuda")
    budget = 0.1 if quick else 0.5

    def timed(fn: Callable[[], Any]) -> float:
        from fopt.bench.latency import StopRule, measure

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
            del a, b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32
    try:
        a8 = torch.randint(-127, 127, (n, n), device=dev, dtype=torch.int8)
        b8 = torch.randint(-127, 127, (n, n), device=dev, dtype=torch.int8)
        peaks["int8"] = 2.0 * n ** 3 / timed(lambda: torch._int_mm(a8, b8))
        del a8, b8
    except (RuntimeError, AttributeError):
        peaks["int8"] = None  # no int8 GEMM in this torch build / GPU
    step("memory bandwidth")
    nbytes = (256 << 20) if quick else (2 << 30)
    src = torch.empty(nbytes // 4, device=dev, dtype=torch.float32)
    dst = torch.empty_like(src)
    bw = 2.0 * nbytes / timed(lambda: dst.copy_(src))
    del src, dst
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
    for key, b in cal.get("backends", {}).items():
        if "node_delta_s" in b:
            summary.append({"quantity": f"{key} profiler inflation per node", "value": _us(b["node_delta_s"]),
                            "unit": "us"})
        if b.get("module_overhead_s"):
            summary.append({"quantity": f"{key} nn.Module call per op", "value": _us(b["module_overhead_s"]),
                            "unit": "us"})
    classes = []
    for key, b in cal.get("backends", {}).items():
        for cls, fit in b.get("classes", {}).items():
            unit = "GMAC/s" if cls.startswith(("conv", "gemm")) else "Gelem/s"
            rate = 1.0 / fit["sec_per_work"] / 1e9 if fit["sec_per_work"] > 0 else None
            classes.append({"backend": key, "class": cls, "rate": rate, "unit": unit,
                            "overhead_us": fit["overhead_s"] * 1e6, "points": fit["n"],
                            "fit_rmse_pct": fit["rel_rmse"] * 100})
    return summary, classes


def _g(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v / 1e9


def _us(v: float | None) -> float | None:
    return None if v is None else v * 1e6
