"""The calibrated estimate: every node of the graph a runtime executes, priced with this machine's fits.

`calibrated_estimate(graph, cal, key)` costs each node of an executed graph
(`fopt.bench.measure.profile`) with the fits of one backend and precision (`fit_key`), which
`fopt bench --calibrate` made on synthetic probes, never on the model being estimated:

- a convolution or GEMM: ``work / rate``, the rate the most similar probe layers of its kernel
  class achieved (`knn_rate`), never above `GEMM_PEAK_MARGIN` x the calibrated GEMM rate of its
  precision; with no similar probe layer, the linear fit below;
- any other node: ``overhead[class] + work / rate[class] + max(0, bytes - cache) * dram_cost``
  (`predict_node`; kernel classes from `fopt.bench.costmodel.kernels`);
- plus what reading its weights from DRAM adds, as the probes, timed in a loop, found theirs in
  the cache (`cold_weights_s`);
- plus, once per run, the backend's fixed cost: ONNX Runtime's ``session.run``, or in eager
  mode a cost per op and per allocated byte beyond the ATen calls.

In an INT8 graph, convolutions and GEMMs that compute in float use the FP32 fits. The executed
graph's profiled times are never read. `error_pct` is ``(estimate / measured - 1) * 100``:
positive means too high. How often the estimate lands within 25% is what
`benchmarks/bench_quality.py` measures (README, "Measuring honestly").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fopt.bench.costmodel.kernels import (
    CLASS_FALLBACK,
    COMPUTE_CLASSES,
    NodeWork,
    classify,
    output_bytes,
)
from fopt.bench.measure.profile import ExecGraph, ort_exec_graph, torch_exec_graph
from fopt.errors import UsageError
from fopt.onnxgraph import INTEGER_MAC_OPS

# Which calibrated backend a runner's rows use.
_BACKEND_FITS = {"torch-eager": "torch-eager", "torchscript": "torch-eager", "onnxruntime": "onnxruntime"}


def fit_key(backend: str, precision: str) -> str | None:
    """The calibration entry (``backend/precision``) whose fits price a runner's rows; None for a
    backend the cost model does not cover."""
    base = _BACKEND_FITS.get(backend)
    return f"{base}/{precision}" if base else None




@dataclass
class CalibratedNode:
    """One executed node's calibrated estimate, and the fit it came from."""
    name: str
    op: str
    kernel_class: str
    fit_class: str             # the class whose fit was used (differs when one was borrowed)
    work: float
    macs: float
    bytes_moved: float
    estimate_ms: float
    bound: str                 # "compute" (work/rate), "compute (GEMM peak)", "memory" (bytes/DRAM)
                               # or "overhead"
    measured_ms: float | None = None
    unknown_op: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CalibratedEstimate:
    total_ms: float
    nodes: list[CalibratedNode]
    fixed_ms: float                      # per-run constant (session.run) + per-op module calls
    notes: list[str] = field(default_factory=list)
    weights_ms: float = 0.0              # part of the nodes' estimates: weights read from memory

    def by_class(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for n in self.nodes:
            out[n.kernel_class] = out.get(n.kernel_class, 0.0) + n.estimate_ms
        return out

    def to_dict(self, with_nodes: bool = False) -> dict[str, Any]:
        d = {"total_ms": self.total_ms, "fixed_ms": self.fixed_ms, "weights_ms": self.weights_ms,
             "by_class_ms": self.by_class(),
             "nodes": len(self.nodes), "notes": self.notes}
        if with_nodes:
            d["layers"] = [n.to_dict() for n in self.nodes]
        return d


def _resolve_fit(fits: dict[str, dict], cls: str) -> tuple[str, dict | None]:
    seen = set()
    cur = cls
    while cur not in fits and cur in CLASS_FALLBACK and cur not in seen:
        seen.add(cur)
        cur = CLASS_FALLBACK[cur]
    return cur, fits.get(cur)


KNN_K = 3          # probe layers averaged per lookup
KNN_MAX_DIST = 4.0  # farther than this (log2 units: 16x in one size) a probe layer is not "similar"


def knn_rate(points: list[list[float]], features: tuple[float, ...], k: int = KNN_K) -> float | None:
    """Achieved rate (work/s) of the `k` probe layers most similar to `features`.

    Points are ``[*features, rate]``; similarity is Euclidean in the log2 feature space of
    `fopt.bench.costmodel.kernels.shape_features`; the rates are averaged in log space with 1/distance
    weights (an exact match dominates). None when no probe layer is within `KNN_MAX_DIST`."""
    if not points or not features:
        return None
    dim = len(features)
    scored = sorted((math.dist(features, p[:dim]), p[dim]) for p in points if len(p) == dim + 1 and p[dim] > 0)
    if not scored or scored[0][0] > KNN_MAX_DIST:
        return None
    near = scored[:k]
    weights = [1.0 / (d + 0.05) for d, _ in near]
    log_rate = sum(w * math.log(r) for w, (_, r) in zip(weights, near)) / sum(weights)
    return math.exp(log_rate)


# A probe layer may run a little faster than the calibration's GEMM timing (a slow spell of the
# machine makes that timing a lower bound); one many times faster is a profiling artefact.
GEMM_PEAK_MARGIN = 1.25


def peak_mac_rate(cal: dict[str, Any], precision: str) -> float | None:
    """The fastest GEMM of this precision the calibration measured, in MAC/s (None if none)."""
    rates = [g["ops_per_s"] / 2.0 for g in (cal.get("probes") or {}).get("gemm", [])
             if g.get("name", "").endswith("/" + precision) and g.get("ops_per_s")]
    return max(rates) if rates else None


def fused_act_s(nw: NodeWork, fits: dict[str, dict]) -> float:
    """Seconds of the activation fused into a convolution, at its class's per-element rate."""
    if not nw.fused_act:
        return 0.0
    cls, elements = nw.fused_act
    fit = fits.get(cls)
    return elements * fit["sec_per_work"] if fit else 0.0


def predict_node(nw: NodeWork, fits: dict[str, dict], dram: dict[str, float] | None = None,
                 points: dict[str, list] | None = None, max_rate: float | None = None) -> tuple[float, str, str]:
    """(seconds, class used, bound) of one node.

    Convolutions and GEMMs with probe layers of their class: work / the achieved rate of the
    most similar probe layers (`knn_rate`), never above `max_rate` (the machine's GEMM peak at
    this precision, with a margin: a probe layer timed far faster is a profiling artefact, such as a
    small node whose time the profiler gave to its neighbours). Everything else: overhead +
    work/rate + bytes beyond the cache at the fitted DRAM cost (`fopt.bench.costmodel.fit.fit_joint`)."""

    far = False
    if points and nw.kernel_class in COMPUTE_CLASSES and nw.work > 0 and len(points.get(nw.kernel_class) or []) >= 2:
        rate = knn_rate(points[nw.kernel_class], nw.features)
        if rate:
            act_s = fused_act_s(nw, fits)
            if max_rate and rate > max_rate:
                return nw.work / max_rate + act_s, nw.kernel_class, "compute (GEMM peak)"
            return nw.work / rate + act_s, nw.kernel_class, "compute"
        far = True
    used, fit = _resolve_fit(fits, nw.kernel_class)
    if far and fit is not None:
        used = f"{used} (linear: no similar probe layer)"
    if fit is None:
        return 0.0, "none", "overhead"
    work_s = nw.work * fit["sec_per_work"]
    dram_s = 0.0
    if dram:
        dram_s = max(0.0, nw.bytes_moved - dram["cache_bytes"]) * dram["sec_per_byte"]
    over_s = fit["overhead_s"]
    work_s += fused_act_s(nw, fits)
    if over_s >= work_s and over_s >= dram_s:
        bound = "overhead"
    elif dram_s > work_s:
        bound = "dram"
    else:
        bound = "compute" if nw.kernel_class in COMPUTE_CLASSES else "memory"
    return over_s + work_s + dram_s, used, bound


def cold_weights_s(nw: NodeWork, warm_s: float, dram_bps: float | None, cache_bps: float | None) -> float:
    """What reading a node's weights from DRAM adds to `warm_s`, its estimate from probes that
    found their weights in the cache: in a forward pass the other layers' weights and
    activations evict them before they are used again. A convolution pays the difference
    between the two bandwidths on its weights; a GEMM/GEMV, whose probe rate already is a
    weight-streaming rate, takes at least their DRAM time."""
    if not dram_bps or not nw.weight_bytes:
        return 0.0
    dram_s = nw.weight_bytes / dram_bps
    if nw.kernel_class in ("gemm", "gemv"):
        return max(0.0, dram_s - warm_s)
    cache_s = nw.weight_bytes / cache_bps if cache_bps and cache_bps > dram_bps else 0.0
    return dram_s - cache_s


def calibrated_estimate(graph: ExecGraph, cal: dict[str, Any], key: str) -> CalibratedEstimate:
    """The calibrated estimate of one executed graph with the fits of backend `key`."""
    backend = cal.get("backends", {}).get(key)
    if backend is None:
        raise UsageError(f"the calibration has no fits for {key} (it has "
                         f"{', '.join(cal.get('backends', {})) or 'none'}); rerun `fopt bench --calibrate`")

    base, precision = key.rsplit("/", 1)
    # Float convolutions/GEMMs of an INT8 graph cost what they cost in FP32.
    float_backend = cal["backends"].get(f"{base}/fp32") if precision == "int8" else None
    # No convolution faster than its precision's GEMM rate, with a margin (`GEMM_PEAK_MARGIN`).
    caps = {p: (r * GEMM_PEAK_MARGIN if r else None)
            for p, r in (("fp32", peak_mac_rate(cal, "fp32")), (precision, peak_mac_rate(cal, precision)))}
    summary = cal.get("summary") or {}
    dram_bps, cache_bps = summary.get("mem_bandwidth"), summary.get("cache_bandwidth")
    weights_s = 0.0
    nodes, notes = [], []
    borrowed: dict[str, str] = {}
    unknown: dict[str, int] = {}
    unlike: dict[str, int] = {}
    n_float = 0
    for node in graph.nodes:
        nw = classify(node)
        b, p = backend, precision
        # in an INT8 artifact every convolution or GEMM that is not an integer kernel runs in FP32
        # (dynamic quantization of MatMul/Gemm only; --exclude, --keep-fp32; unfused Q/DQ pairs)
        if float_backend is not None and nw.kernel_class in COMPUTE_CLASSES and node.op not in INTEGER_MAC_OPS:
            b, p = float_backend, "fp32"
            n_float += 1
        sec, used, bound = predict_node(nw, b["classes"], b.get("dram"), b.get("rate_points"), caps[p])
        cold_s = cold_weights_s(nw, sec, dram_bps, cache_bps)
        sec += cold_s
        weights_s += cold_s
        if used.endswith("no similar probe layer)"):
            unlike[nw.kernel_class] = unlike.get(nw.kernel_class, 0) + 1
        elif used != nw.kernel_class:
            borrowed[nw.kernel_class] = used
        if nw.unknown:
            unknown[node.op] = unknown.get(node.op, 0) + 1
        nodes.append(CalibratedNode(node.name, node.op, nw.kernel_class, used, nw.work, nw.macs,
                                  nw.bytes_moved, sec * 1e3, bound, node.measured_ms, nw.unknown))
    n = len(nodes)
    fixed_s = backend.get("run_fixed_s", 0.0)
    gap = backend.get("gap")
    if gap:  # eager: module calls and freeing what each op allocated (`calibrate._torch_backend`)
        fixed_s += n * gap["per_op_s"] + sum(output_bytes(node) for node in graph.nodes) * gap["per_byte_s"]
    total_ms = sum(x.estimate_ms for x in nodes) + fixed_s * 1e3
    for cls, used in sorted(borrowed.items()):
        notes.append(f"class {cls} not calibrated, used {used}")
    if unlike:
        notes.append("no similar probe layer (linear class fit used): "
                     + ", ".join(f"{k} x{v}" for k, v in sorted(unlike.items())))
    if n_float:
        notes.append(f"{n_float} convolution/GEMM node(s) of this INT8 graph compute in FP32: "
                     f"estimated with the FP32 rates")
    if unknown:
        notes.append("op types costed as element-wise: " + ", ".join(f"{k} x{v}" for k, v in sorted(unknown.items())))
    return CalibratedEstimate(total_ms=total_ms, nodes=nodes, fixed_ms=fixed_s * 1e3, notes=notes,
                              weights_ms=weights_s * 1e3)


# ----------------------------------------------------------------------------- executed graphs

def exec_graph_for(runner: Any, batch: np.ndarray, profile_runs: int = 1,
                   cpu_clock: Any = None) -> ExecGraph | None:
    """The executed graph of a loaded runner at this batch (None where fopt cannot see it).

    For ONNX Runtime this is a profiled session: `profile_runs` runs after a first one (their
    per-node median is kept as ``measured_ms``; the estimate itself never reads it)."""

    if runner.backend == "onnxruntime":
        if runner.device != "cpu":
            return None
        g = ort_exec_graph(runner.path, batch, threads=runner.threads, runs=profile_runs, cpu_clock=cpu_clock,
                           input_name=getattr(runner, "input_name", None))
    elif runner.backend in ("torch-eager", "torchscript"):
        import torch

        runner.load()
        x = torch.from_numpy(batch).to(runner.device)
        # TorchScript's first calls run its graph optimizer, which dispatches thousands of
        # `equal` checks; the graph it then settles on is what runs (measured: 2,632 calls on
        # the first pass of resnet18, 49 from the third on).
        for _ in range(3 if runner.backend == "torchscript" else 1):
            g = torch_exec_graph(runner.model, x, backend=runner.backend)
    else:
        return None
    g.precision = runner.precision
    return g


def error_pct(estimate_ms: float | None, measured_ms: float | None) -> float | None:
    """``(estimate / measured - 1) * 100`` (positive: the estimate is too high); None without both."""
    if estimate_ms is None or not measured_ms:
        return None
    return (estimate_ms / measured_ms - 1.0) * 100.0
