"""The graph a runtime actually executes, node by node, with measured time where it can profile.

Estimates that work from the exported FP32 graph miss much of the time: layout reorders
(NCHWc), fused activations, QLinear element-wise ops, leftover Q/DQ, transposes (README,
"Measuring honestly"; `benchmarks/bench_quality.py` explains its misses per layer). So the
calibrated estimate and ``--per-layer`` both start from the executed graph:

- ONNX Runtime: one session with session profiling *and* ``optimized_model_filepath``. The
  profile gives every executed node with its input/output shapes and element types; the saved
  optimized model gives the same nodes' attributes (group, kernel shape) and the shapes of
  pre-packed weights, which the profile leaves out. Node times come from the profile's
  ``*_kernel_time`` events (median over the profiled runs after the first). Profiling inflates
  small nodes by several microseconds each, which the calibration measures and corrects
  (`fopt.bench.costmodel.calibrate`); profiled times are shown as measured per-layer times, not used for
  the estimate.
- PyTorch eager / TorchScript: a ``TorchDispatchMode`` records each top-level ATen call
  (``conv2d``, ``batch_norm``, ``relu_`` ...) with its argument shapes, which is what eager runs
  one module at a time. ``--per-layer`` times the same calls inside real forward passes.
"""

from __future__ import annotations

import bisect
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fopt.bench.measure.faults import minor_faults
from fopt.runtime.onnxrt import CPU, ort_session
from fopt.runtime.timing import percentile

# ONNX/ORT element type names (profile) and torch dtypes -> bytes per element.
DTYPE_BYTES = {"float": 4, "float32": 4, "float16": 2, "bfloat16": 2, "double": 8, "float64": 8,
               "uint8": 1, "int8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4,
               "int64": 8, "uint64": 8, "bool": 1}


@dataclass
class ExecNode:
    """One executed node/kernel call with the shapes it ran on."""
    name: str
    op: str                                    # "Conv", "QLinearConv", "ReorderInput", "conv2d", ...
    domain: str = ""                           # ONNX domain ("com.microsoft.nchwc") or "aten"
    input_shapes: list[list[int]] = field(default_factory=list)
    input_dtypes: list[str] = field(default_factory=list)
    output_shapes: list[list[int]] = field(default_factory=list)
    output_dtypes: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    weight_shape: list[int] | None = None      # conv/gemm weight, when known
    weight_dtype: str | None = None
    measured_ms: float | None = None           # profiled time per run (inflated by the profiler)


@dataclass
class ExecGraph:
    """The nodes one runtime executed for one batch, in execution order."""
    backend: str
    precision: str
    batch_size: int
    nodes: list[ExecNode]
    source: str = ""                           # how the graph was obtained


# ----------------------------------------------------------------------------- ONNX Runtime

def _shape_list(items: list[dict[str, list[int]]] | None) -> tuple[list[list[int]], list[str]]:
    shapes, dtypes = [], []
    for item in items or []:
        for dtype, shape in item.items():
            dtypes.append(dtype)
            shapes.append([int(d) for d in shape])
    return shapes, dtypes


def _onnx_attrs(node) -> dict[str, Any]:
    import onnx

    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else (list(v) if isinstance(v, (list, tuple)) else v)
    return out


# Which input holds the weight, per op type (for pre-packed weights the profile omits).
_WEIGHT_INPUT = {"Conv": 1, "FusedConv": 1, "ConvInteger": 1, "QLinearConv": 3, "Gemm": 1,
                 "FusedGemm": 1, "MatMul": 1, "QGemm": 3, "MatMulInteger": 1, "FusedMatMul": 1,
                 "MatMulIntegerToFloat": 1, "DynamicQuantizeMatMul": 1}


def _weight_info(node, inits: dict[str, Any]) -> tuple[list[int] | None, str | None]:
    import onnx

    idx = _WEIGHT_INPUT.get(node.op_type)
    if idx is None or idx >= len(node.input):
        return None, None
    init = inits.get(node.input[idx])
    if init is None:
        return None, None
    dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name
    return [int(d) for d in init.dims], dtype


def _model_runs(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The profile's session runs (``model_run`` events), in order."""
    return sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])


def parse_ort_profile(events: list[dict[str, Any]], skip_runs: int = 1, quantile: float | None = 50.0,
                      run_scale: list[float] | None = None) -> tuple[dict[str, dict], list[float]]:
    """Per node name: args of its first event and the `quantile` of its duration (ms) over the
    kept runs (None: the mean); and the kept runs' total times (ms).

    `run_scale` (one factor per run, first included) multiplies every node time of that run:
    CPU time / wall time of the run spreads time stolen by other processes back out of it."""

    runs = _model_runs(events)
    scales = list(run_scale or [])
    kept = runs[skip_runs:] if len(runs) > skip_runs else runs
    kept_scale = scales[skip_runs:] if len(scales) == len(runs) else [1.0] * len(kept)
    windows = [(r["ts"], r["ts"] + r["dur"], f) for r, f in zip(kept, kept_scale)]
    per_node: dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        rec = per_node.setdefault(name, {"args": e.get("args", {}), "durs": [], "order": len(per_node)})
        if not windows:
            rec["durs"].append(e["dur"] / 1e3)
            continue
        for lo, hi, factor in windows:
            if lo <= e["ts"] <= hi:
                rec["durs"].append(e["dur"] / 1e3 * factor)
                break
    for rec in per_node.values():
        if not rec["durs"]:
            rec["ms"] = None
        elif quantile is None:
            rec["ms"] = sum(rec["durs"]) / len(rec["durs"])
        else:
            rec["ms"] = percentile(sorted(rec["durs"]), quantile)
    return per_node, [r["dur"] / 1e3 for r in kept]


def ort_exec_graph(path: str | Path, batch: np.ndarray, *, threads: int | None = None,
                   runs: int = 3, providers: list[str] | None = None,
                   input_name: str | None = None, node_quantile: float = 50.0,
                   cpu_clock: Callable[[], float] | None = None) -> ExecGraph:
    """Run `path` `runs`+1 times with profiling; return its executed nodes (first run dropped).

    Each node's ``measured_ms`` is the `node_quantile` of its time over the kept runs (a low
    quantile resists another process stealing the CPU during some runs). With `cpu_clock` (the
    thread's CPU time; one intra-op thread only) each run's node times are scaled by the run's
    CPU time over its wall time, which removes time the CPU spent on other processes."""
    return ort_exec_graphs(path, [batch], threads=threads, runs=runs,
                           providers=providers, input_name=input_name, node_quantile=node_quantile,
                           cpu_clock=cpu_clock)[0]


def ort_exec_graphs(path: str | Path, inputs: list[np.ndarray], *,
                    threads: int | None = None, runs: int = 3, providers: list[str] | None = None,
                    input_name: str | None = None, node_quantile: float = 50.0,
                    cpu_clock: Callable[[], float] | None = None) -> list[ExecGraph]:
    """`ort_exec_graph` for several inputs of `input_name` (batch sizes), one after another in
    one profiled session: one graph per input. A profiled session took about 20 ms to build on
    a 2-core VM, and the calibration needs the graphs of 90 probe branches at two batch sizes
    for each ONNX Runtime backend."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="fopt-ortprof-") as tmp:
        optimized_path = Path(tmp) / "optimized.onnx"
        sess = ort_session(path, threads=threads, providers=providers or CPU,
                           profile_prefix=str(Path(tmp) / "prof"), optimized_model_path=optimized_path)
        name = input_name or sess.get_inputs()[0].name
        scales: list[list[float]] = []
        for item in inputs:
            feeds = {name: item}
            scales.append([])
            for _ in range(runs + 1):
                w0 = time.perf_counter()
                c0 = cpu_clock() if cpu_clock else 0.0
                sess.run(None, feeds)
                if cpu_clock:
                    c1, w1 = cpu_clock(), time.perf_counter()
                    scales[-1].append(min(1.0, (c1 - c0) / (w1 - w0)) if w1 > w0 else 1.0)
        prof_file = sess.end_profiling()
        events = json.loads(Path(prof_file).read_text())
        optimized = onnx.load(str(optimized_path), load_external_data=False)
        del sess
    graph_nodes = {n.name: n for n in optimized.graph.node if n.name}
    inits = {i.name: i for i in optimized.graph.initializer}
    graphs = []
    for item, item_events, item_scales in zip(inputs, _split_runs(events, len(inputs), runs + 1), scales):
        # Scaled runs: the mean, whose sum over nodes is the runs' mean CPU time (a low quantile
        # would pick the nodes that the uniform scaling deflated).
        per_node, _ = parse_ort_profile(item_events, skip_runs=1, quantile=None if cpu_clock else node_quantile,
                                        run_scale=item_scales if cpu_clock else None)
        nodes = [_exec_node(name, rec, graph_nodes, inits)
                 for name, rec in sorted(per_node.items(), key=lambda kv: kv[1]["order"])]
        graphs.append(ExecGraph(backend="onnxruntime", precision="", batch_size=int(item.shape[0]),
                                nodes=nodes, source="onnxruntime profile + optimized model"))
    return graphs


def _split_runs(events: list[dict[str, Any]], groups: int, runs_per_group: int) -> list[list[dict[str, Any]]]:
    """The profile's events cut into `groups` consecutive groups of `runs_per_group` runs each:
    an event belongs to the group of the last run that started at or before it."""
    if groups == 1:
        return [events]
    runs = _model_runs(events)
    if len(runs) != groups * runs_per_group:
        raise RuntimeError(f"the ONNX Runtime profile holds {len(runs)} runs, expected {groups * runs_per_group}")
    starts = [r["ts"] for r in runs[::runs_per_group]]
    out: list[list[dict[str, Any]]] = [[] for _ in range(groups)]
    for e in events:   # (session set-up, before the first run, goes with the first group)
        out[max(bisect.bisect_right(starts, e.get("ts", 0)) - 1, 0)].append(e)
    return out


def _exec_node(name: str, rec: dict[str, Any], graph_nodes: dict[str, Any], inits: dict[str, Any]) -> ExecNode:
    args = rec["args"]
    in_shapes, in_dtypes = _shape_list(args.get("input_type_shape"))
    out_shapes, out_dtypes = _shape_list(args.get("output_type_shape"))
    onode = graph_nodes.get(name)
    attrs: dict[str, Any] = {}
    domain = ""
    wshape, wdtype = None, None
    if onode is not None:
        attrs = _onnx_attrs(onode)
        domain = onode.domain
        wshape, wdtype = _weight_info(onode, inits)
    return ExecNode(name=name, op=args.get("op_name", "?"), domain=domain,
                    input_shapes=in_shapes, input_dtypes=in_dtypes,
                    output_shapes=out_shapes, output_dtypes=out_dtypes, attrs=attrs,
                    weight_shape=wshape, weight_dtype=wdtype, measured_ms=rec["ms"])


# ----------------------------------------------------------------------------- PyTorch

_TORCH_DTYPE = {"torch.float32": "float", "torch.float16": "float16", "torch.bfloat16": "bfloat16",
                "torch.int8": "int8", "torch.uint8": "uint8", "torch.int32": "int32",
                "torch.int64": "int64", "torch.bool": "bool", "torch.float64": "double"}


def _tensors(obj: Any) -> list[Any]:
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    return []


@dataclass
class TorchCall:
    """A recorded top-level ATen call."""
    node: ExecNode


def _torch_attrs(op: str, args: tuple) -> dict[str, Any]:
    if op in ("conv2d", "convolution", "_convolution", "conv1d", "conv3d"):
        # conv2d(input, weight, bias, stride, padding, dilation, groups)
        names = ("stride", "padding", "dilation", "groups")
        vals = list(args[3:7]) if op == "conv2d" else []
        attrs = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in zip(names, vals)}
        if op != "conv2d" and len(args) > 8:
            attrs["groups"] = args[8]
        return {"group": int(attrs.get("groups", 1)), **attrs}
    return {}


def record_torch_calls(model: Any, batch: Any) -> list[TorchCall]:
    """The top-level ATen calls of one forward pass (inference mode)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    calls: list[TorchCall] = []

    class _Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            op = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)
            ins = _tensors(args)
            outs = _tensors(out)
            if op == "addmm":   # (bias, input, weight)
                weight = ins[2] if len(ins) > 2 else None
            else:
                weight = ins[1] if len(ins) > 1 and op in ("conv2d", "linear", "convolution", "_convolution",
                                                           "mm", "matmul") else None
            node = ExecNode(name=f"{op}_{len(calls)}", op=op, domain="aten",
                            input_shapes=[list(t.shape) for t in ins],
                            input_dtypes=[_TORCH_DTYPE.get(str(t.dtype), str(t.dtype)) for t in ins],
                            output_shapes=[list(t.shape) for t in outs],
                            output_dtypes=[_TORCH_DTYPE.get(str(t.dtype), str(t.dtype)) for t in outs],
                            attrs=_torch_attrs(op, args),
                            weight_shape=list(weight.shape) if weight is not None else None,
                            weight_dtype=_TORCH_DTYPE.get(str(weight.dtype)) if weight is not None else None)
            calls.append(TorchCall(node))
            return out

    with torch.inference_mode(), _Recorder():
        model(batch)
    return calls


def torch_exec_graph(model: Any, batch: Any, backend: str = "torch-eager") -> ExecGraph:
    calls = record_torch_calls(model, batch)
    return ExecGraph(backend=backend, precision="", batch_size=int(batch.shape[0]),
                     nodes=[c.node for c in calls], source="torch dispatch trace")


def torch_op_times(model: Any, batch: Any, n_calls: int, runs: int = 3,
                   clock: Callable[[], float] = time.perf_counter,
                   fault_price_s: float | None = None) -> list[float | None]:
    """Measured ms of each top-level ATen call (in execution order), median over `runs` passes.

    A dispatch mode times each call as it runs inside the real forward pass (same inputs, same
    cache state as in the model); its own bookkeeping happens outside the timed call. Returns
    `n_calls` values (None where a pass recorded a different number of calls). With
    `fault_price_s`, each call's page faults (counted around it) are taken off at that price:
    the compute time alone (`fopt.bench.measure.faults`)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode


    count = fault_price_s is not None and minor_faults() is not None

    class _Timer(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            f0 = minor_faults() if count else 0
            t0 = clock()
            out = func(*args, **(kwargs or {}))
            dt = clock() - t0
            if count:
                dt = max(0.0, dt - (minor_faults() - f0) * fault_price_s)  # type: ignore[operator]
            self.times.append(dt)
            return out

    per_run: list[list[float]] = []
    with torch.inference_mode():
        model(batch)  # warm-up
        for _ in range(runs):
            timer = _Timer()
            with timer:
                model(batch)
            per_run.append(timer.times)
    out: list[float | None] = []
    for i in range(n_calls):
        vals = [r[i] * 1e3 for r in per_run if len(r) == n_calls]
        out.append(statistics.median(vals) if vals else None)
    return out
