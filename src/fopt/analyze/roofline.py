"""Latency estimates from counts and a device: the naive FLOPs/peak figure and a per-node roofline.

Per executed node::
    time = max(flops / peak, bytes_moved / bandwidth) + node_overhead

``peak`` is the device's rate at the node's precision for MAC ops (Conv, Gemm, MatMul: tensor
cores / integer dot products; FP32 ones at the TF32 rate where the device has one,
`DeviceSpec.mac_peak`) and its FP32 rate for everything else (element-wise work runs on the
vector units and is memory-bound anyway). ``bytes_moved`` = weights + input activations + outputs at
the node's precision: every tensor goes through memory once per node, i.e. no cache reuse between
nodes and no fusion beyond the Conv+BatchNorm folding the analysis already models. Nodes that no
runtime executes (ignored, folded, fused) cost nothing. The model estimate is the sum over nodes.

The naive figure, ``total flops / peak(precision)``, is printed beside it because it is what one
gets from a FLOP count alone: it ignores memory traffic and per-kernel overhead, which dominate
small CNNs at batch 1, so it is typically several times too low. Neither is a measurement: the
README's "Measuring honestly" section, from `benchmarks/bench_quality.py`, says how far the naive
figure lands from measured latencies, beside `fopt bench`'s calibrated estimate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from fopt.analyze.counting import MAC_KINDS, Layer
from fopt.analyze.devices import DeviceSpec, get_device_spec
from fopt.artifacts import atomic_path


@dataclass
class NodeEstimate:
    name: str
    op_type: str
    kind: str
    precision: str
    flops: int
    bytes_moved: int
    compute_ms: float
    memory_ms: float
    overhead_ms: float

    @property
    def time_ms(self) -> float:
        return max(self.compute_ms, self.memory_ms) + self.overhead_ms

    @property
    def bound(self) -> str:
        if self.compute_ms == 0 and self.memory_ms == 0:
            return "overhead"
        return "compute" if self.compute_ms >= self.memory_ms else "memory"

    @property
    def intensity(self) -> float | None:
        return self.flops / self.bytes_moved if self.bytes_moved else None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op_type": self.op_type, "kind": self.kind,
                "precision": self.precision, "flops": self.flops, "bytes_moved": self.bytes_moved,
                "intensity": self.intensity, "compute_ms": self.compute_ms,
                "memory_ms": self.memory_ms, "overhead_ms": self.overhead_ms,
                "time_ms": self.time_ms, "bound": self.bound}


@dataclass
class LatencyEstimate:
    device: str
    precision: str
    batch: int
    naive_ms: float
    roofline_ms: float
    nodes: list[NodeEstimate] = field(default_factory=list)

    @property
    def compute_ms(self) -> float:
        return sum(n.compute_ms for n in self.nodes)

    @property
    def memory_ms(self) -> float:
        return sum(n.memory_ms for n in self.nodes)

    @property
    def overhead_ms(self) -> float:
        return sum(n.overhead_ms for n in self.nodes)

    def bound_counts(self) -> dict[str, int]:
        out: dict[str, int] = {"compute": 0, "memory": 0, "overhead": 0}
        for n in self.nodes:
            out[n.bound] += 1
        return out

    def summary(self) -> dict[str, Any]:
        return {"device": self.device, "precision": self.precision, "batch": self.batch,
                "naive_ms": self.naive_ms, "roofline_ms": self.roofline_ms,
                "roofline_over_naive": self.roofline_ms / self.naive_ms if self.naive_ms else None,
                "nodes_executed": len(self.nodes), "overhead_ms": self.overhead_ms,
                "bound_counts": self.bound_counts()}

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "nodes": [n.to_dict() for n in self.nodes]}


def node_peak(device: DeviceSpec, layer: Layer) -> float:
    """The compute ceiling a node can reach: tensor/integer units for MAC ops (TF32 for FP32 ones
    where the device has it), FP32 otherwise."""
    return device.mac_peak(layer.precision) if layer.kind in MAC_KINDS else device.peak("fp32")


def estimate_layers(layers: Iterable[Layer], device: DeviceSpec | str, precision: str,
                    batch: int) -> LatencyEstimate:
    """Naive and roofline estimates for already counted layers (bytes at their precision)."""
    device = get_device_spec(device)
    layers = list(layers)
    total_flops = sum(layer.flops for layer in layers)
    nodes = []
    for layer in layers:
        if not layer.executes:
            continue
        nodes.append(NodeEstimate(
            layer.name, layer.op_type, layer.kind, layer.precision, layer.flops, layer.bytes_moved,
            compute_ms=1e3 * layer.flops / node_peak(device, layer),
            memory_ms=1e3 * layer.bytes_moved / device.bandwidth_bytes_per_s,
            overhead_ms=1e3 * device.node_overhead_s))
    return LatencyEstimate(device.name, precision, batch,
                           naive_ms=1e3 * total_flops / device.mac_peak(precision),
                           roofline_ms=sum(n.time_ms for n in nodes), nodes=nodes)


def estimate_latency(analysis, device: DeviceSpec | str, precision: str | None = None,
                     batch: int | None = None) -> LatencyEstimate:
    """Estimate one artifact at one batch size and precision on one device.

    `analysis` is an `AnalysisResult` (recounted at `batch`/`precision` when they differ from its
    own; the graph is kept, so this costs milliseconds, not a re-export) or a list of `Layer` (then
    `precision` and `batch` only label the result: the layers' bytes are used as they are).
    """
    if isinstance(analysis, (list, tuple)):
        return estimate_layers(analysis, device, precision or "fp32", batch or 1)
    result = analysis.at(batch=batch, precision=precision)
    return estimate_layers(result.layers, device, result.precision, result.batch)


def plot_roofline(estimate: LatencyEstimate, device: DeviceSpec | str, path, *, title: str | None = None) -> None:
    """A log-log roofline: the device's compute and bandwidth roofs, every node at its intensity.

    x = arithmetic intensity (FLOPs per byte moved), y = attained rate if the node ran in its
    roofline time without overhead (= min(peak, intensity x bandwidth)), so every point sits on a
    roof; marker size grows with the node's estimated time, colour says its op class.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    device = get_device_spec(device)
    bw = device.bandwidth_bytes_per_s
    peaks = {p: device.peak(p) for p in ("fp32", "fp16", "int8") if device.peak_flops.get(p)}
    points = [n for n in estimate.nodes if n.intensity and n.flops > 0]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    lo = min([n.intensity for n in points] + [0.01]) / 2
    hi = max([n.intensity for n in points] + [max(peaks.values()) / bw * 2]) * 2
    x = np.logspace(np.log10(lo), np.log10(hi), 200)
    styles = {"fp32": "-", "fp16": "--", "int8": ":"}
    for p, peak in peaks.items():
        ax.plot(x, np.minimum(peak, x * bw), styles[p], color="black", lw=1.2,
                label=f"{p} roof {peak / 1e12:g} T/s", alpha=1.0 if p == estimate.precision else 0.45)
        ax.axvline(peak / bw, color="grey", lw=0.5, ls=styles[p], alpha=0.4)
    classes = {"conv": "tab:blue", "conv_pointwise": "tab:cyan", "conv_depthwise": "tab:orange",
               "conv_grouped": "tab:brown", "gemm": "tab:purple", "matmul": "tab:purple"}
    t_max = max([n.time_ms for n in points] + [1e-12])
    ax.plot([], [], " ", label="marker area ~ estimated time")
    for label, kinds, color in [("conv kxk", ("conv",), "tab:blue"),
                                ("conv 1x1", ("conv_pointwise",), "tab:cyan"),
                                ("depthwise", ("conv_depthwise",), "tab:orange"),
                                ("grouped", ("conv_grouped", "conv_transpose"), "tab:brown"),
                                ("gemm/matmul", ("gemm", "matmul"), "tab:purple"),
                                ("other", None, "tab:green")]:
        sel = [n for n in points if (n.kind in kinds if kinds else n.kind not in classes)]
        if not sel:
            continue
        xs = [n.intensity for n in sel]
        ys = [n.flops / (max(n.compute_ms, n.memory_ms) / 1e3) for n in sel]
        sizes = [12 + 300 * (n.time_ms / t_max) ** 0.5 for n in sel]
        ax.scatter(xs, ys, s=sizes, c=color, alpha=0.6, edgecolors="none", label=f"{label} ({len(sel)})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOPs / byte moved)")
    ax.set_ylabel("attainable FLOP/s")
    ax.set_title(title or f"roofline on {device.name} ({estimate.precision}, batch {estimate.batch}): "
                 f"{estimate.roofline_ms:.3g} ms vs naive {estimate.naive_ms:.3g} ms", fontsize=9)
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    legend = ax.legend(fontsize=7, loc="lower right")
    for handle in getattr(legend, "legend_handles", getattr(legend, "legendHandles", [])):
        if hasattr(handle, "set_sizes"):
            handle.set_sizes([25])     # legend dots at one size; the plot's sizes encode time
    fig.tight_layout()
    suffix = str(path).rsplit(".", 1)[-1].lower() if "." in str(path) else "png"
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=suffix if suffix in ("png", "pdf", "svg") else "png")
    finally:
        plt.close(fig)
