"""Roofline and naive estimates: arithmetic on known layers, batch/precision recount, the chart."""

from __future__ import annotations

import pytest
from analyze_helpers import GraphBuilder

from fopt.analyze.counting import Layer
from fopt.analyze.devices import DeviceSpec
from fopt.analyze.roofline import estimate_latency, estimate_layers, plot_roofline

DEV = DeviceSpec("test", {"fp32": 1e12, "fp16": 4e12, "int8": 8e12}, bandwidth_bytes_per_s=1e11,
                 node_overhead_s=2e-6, source="made up for tests")


def layer(name, kind, flops, read, written, precision="fp32", executes=True):
    return Layer(name, "Conv" if kind.startswith("conv") else "Relu", kind, "counted", precision, [1],
                 flops=flops, weight_bytes=read, output_bytes=written, executes=executes)


def test_per_node_roofline_arithmetic():
    layers = [
        layer("compute", "conv", flops=4_000_000, read=100_000, written=100_000),   # 4 us vs 2 us
        layer("memory", "elementwise", flops=10_000, read=500_000, written=500_000),  # 0.01 vs 10 us
        layer("int8", "conv", flops=8_000_000, read=10_000, written=10_000, precision="int8"),
        layer("fused", "fused", flops=0, read=0, written=0, executes=False),
    ]
    est = estimate_layers(layers, DEV, "fp32", 1)
    t = {n.name: n for n in est.nodes}
    assert set(t) == {"compute", "memory", "int8"}           # a node no runtime executes costs nothing
    assert t["compute"].time_ms == pytest.approx(1e3 * (4e6 / 1e12 + 2e-6))
    assert t["compute"].bound == "compute"
    assert t["memory"].time_ms == pytest.approx(1e3 * (1e6 / 1e11 + 2e-6))
    assert t["memory"].bound == "memory"
    assert t["int8"].compute_ms == pytest.approx(1e3 * 8e6 / 8e12)   # MAC ops use the int8 peak
    assert est.roofline_ms == pytest.approx(sum(n.time_ms for n in est.nodes))
    assert est.naive_ms == pytest.approx(1e3 * (4e6 + 1e4 + 8e6) / 1e12)
    assert est.bound_counts() == {"compute": 2, "memory": 1, "overhead": 0}
    assert est.summary()["roofline_over_naive"] == pytest.approx(est.roofline_ms / est.naive_ms)


def test_elementwise_uses_the_fp32_rate_even_in_int8():
    est = estimate_layers([layer("e", "elementwise", 1_000_000, 0, 0, precision="int8")], DEV, "int8", 1)
    assert est.nodes[0].compute_ms == pytest.approx(1e3 * 1e6 / 1e12)


@pytest.fixture(scope="module")
def small_analysis():
    from fopt.analyze.run import analyze

    g = GraphBuilder(("batch", 3, 32, 32))
    g.conv(16, 3, stride=2)
    g.op("Relu", [g.current])
    g.conv(32, 3)
    g.op("GlobalAveragePool", [g.current])
    model = g.build()
    result = analyze(model, device_spec=DEV)
    result.model = model
    return result


def test_estimate_latency_recounts_other_batches_and_precisions(small_analysis):
    from fopt.analyze.run import analyze

    b8 = estimate_latency(small_analysis, "t4", precision="fp16", batch=8)
    fresh = analyze(small_analysis.model, batch=8, precision="fp16", device_spec="t4")
    assert (b8.batch, b8.precision, b8.device) == (8, "fp16", "t4")
    assert b8.roofline_ms == pytest.approx(fresh.estimate.roofline_ms)
    assert b8.naive_ms == pytest.approx(8 * small_analysis.flops / 65e12 * 1e3)
    same = estimate_latency(small_analysis, DEV)
    assert same.roofline_ms == pytest.approx(small_analysis.estimate.roofline_ms)
    assert estimate_latency(small_analysis.layers, DEV).roofline_ms == pytest.approx(same.roofline_ms)


def test_plot_writes_a_png(small_analysis, tmp_path):
    out = tmp_path / "roof.png"
    plot_roofline(small_analysis.estimate, DEV, out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
