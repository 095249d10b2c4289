"""Kernel classes, the calibrated cost model, and its wiring into bench rows."""

from __future__ import annotations

import numpy as np
import pytest

from fopt.bench.costmodel.fit import fit_joint
from fopt.bench.costmodel.kernels import classify
from fopt.bench.costmodel.predict import (
    GEMM_PEAK_MARGIN,
    calibrated_estimate,
    error_pct,
    fit_key,
)
from fopt.bench.measure.profile import ExecGraph, ExecNode


def conv(x, w, out, group=1, dtypes=("float", "float"), weight_in_inputs=True, op="Conv"):
    ins = [x, w] if weight_in_inputs else [x]
    return ExecNode(name="c", op=op, input_shapes=ins, input_dtypes=list(dtypes[: len(ins)]),
                    output_shapes=[out], output_dtypes=[dtypes[0]], attrs={"group": group},
                    weight_shape=w, weight_dtype=dtypes[1])


@pytest.mark.parametrize("node, cls, macs", [
    # dense 3x3, 64->64 at 56x56: 56*56*64 outputs x 64 x 9
    (conv([1, 64, 56, 56], [64, 64, 3, 3], [1, 64, 56, 56]), "conv_dense", 56 * 56 * 64 * 64 * 9),
    # pointwise 24->144 at 56x56
    (conv([1, 24, 56, 56], [144, 24, 1, 1], [1, 144, 56, 56]), "conv_pw", 56 * 56 * 144 * 24),
    # depthwise 3x3 stride 2, 96 channels, 112 -> 56
    (conv([1, 96, 112, 112], [96, 1, 3, 3], [1, 96, 56, 56], group=96), "conv_dw", 56 * 56 * 96 * 9),
    # grouped 128 channels in groups of 8
    (conv([1, 128, 28, 28], [128, 8, 3, 3], [1, 128, 28, 28], group=16), "conv_grouped", 28 * 28 * 128 * 8 * 9),
    # SE "fully connected" 1x1 conv on a pooled 1x1 map
    (conv([1, 96, 1, 1], [4, 96, 1, 1], [1, 4, 1, 1]), "conv_se", 4 * 96),
    # RGB stem, 7x7 stride 2, at batch 8
    (conv([8, 3, 224, 224], [64, 3, 7, 7], [8, 64, 112, 112]), "conv_stem", 8 * 112 * 112 * 64 * 3 * 49),
    # QLinearConv in NHWC with its pre-packed weight absent from the profiled inputs
    (conv([1, 56, 56, 64], [64, 64, 3, 3], [1, 56, 56, 64], dtypes=("uint8", "int8"), weight_in_inputs=False,
          op="QLinearConv"), "conv_dense", 56 * 56 * 64 * 64 * 9),
])
def test_conv_classes_and_macs(node, cls, macs):
    nw = classify(node)
    assert nw.kernel_class == cls
    assert nw.macs == macs and nw.work == macs
    assert not nw.unknown


def test_bytes_count_prepacked_weights_once():
    with_w = classify(conv([1, 8, 4, 4], [8, 8, 1, 1], [1, 8, 4, 4]))
    prepacked = classify(conv([1, 8, 4, 4], [8, 8, 1, 1], [1, 8, 4, 4], weight_in_inputs=False))
    assert with_w.bytes_moved == prepacked.bytes_moved == (128 + 64 + 128) * 4
    int8 = classify(conv([1, 4, 4, 8], [8, 8, 1, 1], [1, 4, 4, 8], dtypes=("uint8", "int8"), weight_in_inputs=False,
                         op="QLinearConv"))
    assert int8.bytes_moved == 128 + 64 + 128


def test_gemm_elementwise_noop_and_unknown():
    g = classify(ExecNode("fc", "Gemm", input_shapes=[[8, 1280], [22, 1280]], input_dtypes=["float"] * 2,
                          output_shapes=[[8, 22]], output_dtypes=["float"], attrs={"transB": 1}))
    assert (g.kernel_class, g.macs, g.work) == ("gemv", 8 * 22 * 1280, 22 * 1280)  # 8 rows: weight-bound
    lin = classify(ExecNode("l", "linear", input_shapes=[[32, 576], [1024, 576]], input_dtypes=["float"] * 2,
                            output_shapes=[[32, 1024]], output_dtypes=["float"]))
    assert (lin.kernel_class, lin.macs, lin.work) == ("gemm", 32 * 1024 * 576, 32 * 1024 * 576)
    sig = classify(ExecNode("s", "QLinearSigmoid", input_shapes=[[1, 112, 112, 32], []],
                            input_dtypes=["uint8", "float"], output_shapes=[[1, 112, 112, 32]], output_dtypes=["uint8"]))
    assert sig.kernel_class == "eltwise_transcendental" and sig.work == 112 * 112 * 32
    assert sig.bytes_moved == 2 * 112 * 112 * 32 + 4
    gap = classify(ExecNode("p", "GlobalAveragePool", input_shapes=[[1, 16, 56, 56]], input_dtypes=["float"],
                            output_shapes=[[1, 16, 1, 1]], output_dtypes=["float"]))
    assert gap.kernel_class == "global_pool" and gap.work == 16 * 56 * 56
    assert classify(ExecNode("f", "Flatten", input_shapes=[[1, 8, 1, 1]], input_dtypes=["float"],
                           output_shapes=[[1, 8]], output_dtypes=["float"])).kernel_class == "noop"
    # integer element-wise ops requantize every element: their own class, not float Relu/Add
    qadd = classify(ExecNode("a", "QLinearAdd", input_shapes=[[1, 24, 56, 56], [], [], [1, 24, 56, 56], [], []],
                             input_dtypes=["uint8", "float", "uint8", "uint8", "float", "uint8"],
                             output_shapes=[[1, 24, 56, 56]], output_dtypes=["uint8"]))
    fadd = classify(ExecNode("a", "Add", input_shapes=[[1, 24, 56, 56]] * 2, input_dtypes=["float"] * 2,
                             output_shapes=[[1, 24, 56, 56]], output_dtypes=["float"]))
    assert (qadd.kernel_class, fadd.kernel_class) == ("eltwise_q", "eltwise")
    assert qadd.work == fadd.work == 24 * 56 * 56
    odd = classify(ExecNode("o", "SomeNewOp", input_shapes=[[1, 10]], input_dtypes=["float"],
                           output_shapes=[[1, 10]], output_dtypes=["float"]))
    assert odd.unknown and odd.kernel_class == "eltwise"


def test_fit_joint_recovers_known_coefficients():
    """Equations generated from known per-class costs (two classes sharing probes) are solved exactly."""
    truth = {"conv_dense": (4e-6, 1e-11), "eltwise": (2e-6, 5e-10)}
    dram_s, cache = 1e-10, 1e6

    def t(nodes):
        return 1e-5 + sum(truth[c][0] + w * truth[c][1] + max(0, b - cache) * dram_s for c, w, b in nodes)

    shapes = [(1e6, 4e5), (8e6, 3e6), (3e7, 8e6), (1e8, 2e7)]
    eqs = []
    for macs, nbytes in shapes:
        nodes = [["eltwise", nbytes / 8, nbytes], ["conv_dense", macs, nbytes * 1.5], ["eltwise", nbytes / 8, nbytes]]
        eqs.append({"nodes": nodes, "seconds": t(nodes)})
    eqs += [{"nodes": [["eltwise", e, 8 * e]], "seconds": t([["eltwise", e, 8 * e]])} for e in (1e4, 2e5, 4e6)]
    fit = fit_joint(eqs, run_fixed_s=1e-5, cache_bytes=cache)
    for cls, (o, s) in truth.items():
        assert fit["classes"][cls]["overhead_s"] == pytest.approx(o, rel=1e-4, abs=1e-9)
        assert fit["classes"][cls]["sec_per_work"] == pytest.approx(s, rel=1e-4)
    assert fit["dram"]["sec_per_byte"] == pytest.approx(dram_s, rel=1e-4)
    assert max(abs(r) for r in fit["residuals"]) < 1e-6


def test_fit_joint_never_goes_negative():
    # time falls as work grows: a negative rate is refused
    eqs = [{"nodes": [["eltwise", w, 4 * w]], "seconds": s} for w, s in ((1.0, 3e-6), (2.0, 2e-6), (3.0, 1e-6))]
    fit = fit_joint(eqs, cache_bytes=1e9)
    assert fit["classes"]["eltwise"]["sec_per_work"] >= 0 and fit["classes"]["eltwise"]["overhead_s"] > 0
    noop = fit_joint([{"nodes": [["noop", 0.0, 0.0]], "seconds": 2e-6}], cache_bytes=1e9)
    assert noop["classes"]["noop"]["overhead_s"] == pytest.approx(2e-6)
    with pytest.raises(ValueError):
        fit_joint([{"nodes": [["noop", 0.0, 0.0]], "seconds": 1e-6}], run_fixed_s=2e-6)


def _graph(nodes):
    return ExecGraph(backend="onnxruntime", precision="fp32", batch_size=1, nodes=nodes)


def test_calibrated_estimate_is_the_sum_of_its_parts():
    from bench_testutil import synthetic_calibration

    cal = synthetic_calibration()
    a = conv([1, 64, 56, 56], [64, 64, 3, 3], [1, 64, 56, 56])
    b = ExecNode("r", "Relu", input_shapes=[[1, 64, 56, 56]], input_dtypes=["float"],
                 output_shapes=[[1, 64, 56, 56]], output_dtypes=["float"])
    est = calibrated_estimate(_graph([a, b]), cal, "onnxruntime/fp32")
    macs = 56 * 56 * 64 * 64 * 9
    elems = 56 * 56 * 64
    excess = [max(0.0, classify(n).bytes_moved - 1e6) * 1e-10 for n in (a, b)]   # bytes beyond the cache
    # the conv's FP32 weights come from DRAM, where its probes found theirs in the cache
    weights_s = 64 * 64 * 9 * 4 * (1 / 2e10 - 1 / 6e10)
    conv_s = 5e-6 + macs * 1e-11 + excess[0] + weights_s
    relu_s = 5e-6 + elems * 2e-10 + excess[1]
    expected_ms = (conv_s + relu_s + 1e-5) * 1e3   # + the run's fixed cost
    assert est.total_ms == pytest.approx(expected_ms)
    assert est.weights_ms == pytest.approx(weights_s * 1e3) and est.to_dict()["weights_ms"] == est.weights_ms
    assert [n.bound for n in est.nodes] == ["compute", "dram"]  # the Relu pays more for its bytes
    assert excess[0] > 0 and excess[1] > 0  # both move more than the (synthetic) 1 MB cache
    eager = calibrated_estimate(_graph([a, b]), cal, "torch-eager/fp32")
    assert eager.total_ms == pytest.approx((conv_s + relu_s + 2 * 2e-6) * 1e3)   # + the gap per op
    cal["backends"]["torch-eager/fp32"]["gap"]["per_byte_s"] = 1e-11
    eager2 = calibrated_estimate(_graph([a, b]), cal, "torch-eager/fp32")
    allocated = 2 * 56 * 56 * 64 * 4   # both outputs (neither is an in-place ATen op)
    assert eager2.total_ms - eager.total_ms == pytest.approx(allocated * 1e-11 * 1e3)


def test_a_gemv_takes_at_least_the_time_to_stream_its_weights_from_dram():
    from bench_testutil import synthetic_calibration

    cal = synthetic_calibration()
    cal["backends"]["onnxruntime/fp32"]["dram"]["sec_per_byte"] = 0.0   # the probe fit: 1e-11 s per weight

    def fc(k, n):
        return ExecNode("fc", "Gemm", input_shapes=[[1, k], [n, k]], input_dtypes=["float"] * 2,
                        output_shapes=[[1, n]], output_dtypes=["float"], weight_shape=[n, k], weight_dtype="float")

    big, small = fc(25088, 4096), fc(64, 22)
    big_ms = calibrated_estimate(_graph([big]), cal, "onnxruntime/fp32").nodes[0].estimate_ms
    assert big_ms == pytest.approx(25088 * 4096 * 4 / 2e10 * 1e3)   # 411 MB at 20 GB/s
    # a small one is slower than its weights' DRAM time: the probe fit alone
    small_fit_s = 5e-6 + 64 * 22 * 1e-11
    est = calibrated_estimate(_graph([small]), cal, "onnxruntime/fp32")
    assert est.nodes[0].estimate_ms == pytest.approx(small_fit_s * 1e3) and est.weights_ms == 0.0


def test_a_fused_activation_is_costed_at_its_own_class_rate():
    from bench_testutil import synthetic_calibration

    from fopt.bench.costmodel.fit import rate_points

    def stem(act):
        n = conv([8, 3, 224, 224], [16, 3, 3, 3], [8, 16, 112, 112])
        n.attrs["activation"] = act
        return n

    hs, relu = classify(stem("HardSwish")), classify(stem("Relu"))
    assert hs.fused_act == ("eltwise_hard", 8 * 16 * 112 * 112) and relu.fused_act is None
    assert hs.features == relu.features and hs.work == relu.work
    cal = synthetic_calibration()
    feats = hs.features
    cal["backends"]["onnxruntime/fp32"]["rate_points"] = {"conv_stem": [[*feats, 1e10], [*feats, 1e10]]}
    cal["backends"]["onnxruntime/fp32"]["classes"]["eltwise_hard"]["sec_per_work"] = 1e-10
    est = calibrated_estimate(_graph([stem("HardSwish"), stem("Relu")]), cal, "onnxruntime/fp32")
    extra = est.nodes[0].estimate_ms - est.nodes[1].estimate_ms
    assert extra == pytest.approx(8 * 16 * 112 * 112 * 1e-10 * 1e3)
    # calibration: a probe conv with HardSwish fused gives the same rate as one with Relu
    fit = {"classes": {"conv_stem": {"overhead_s": 0.0, "sec_per_work": 1e-10},
                       "eltwise_hard": {"overhead_s": 0.0, "sec_per_work": 1e-10}},
           "dram": {"cache_bytes": 1e12, "sec_per_byte": 0.0}}
    act_s = 8 * 16 * 112 * 112 * 1e-10
    conv_s = hs.work / 1e10
    eqs = [{"seconds": conv_s + act_s, "nodes": [hs.as_equation_node()]},
           {"seconds": conv_s, "nodes": [relu.as_equation_node()]}]
    pts = rate_points(eqs, fit)["conv_stem"]
    assert pts[0][-1] == pytest.approx(1e10) and pts[1][-1] == pytest.approx(1e10)


def test_weights_are_counted_at_their_stored_precision():
    fp32 = classify(conv([1, 64, 56, 56], [64, 64, 3, 3], [1, 64, 56, 56]))
    int8 = classify(conv([1, 56, 56, 64], [64, 64, 3, 3], [1, 56, 56, 64], dtypes=("uint8", "int8"),
                         weight_in_inputs=False, op="QLinearConv"))
    assert fp32.weight_bytes == 64 * 64 * 9 * 4 and int8.weight_bytes == 64 * 64 * 9
    fc = classify(ExecNode("fc", "Gemm", input_shapes=[[1, 576], [1024, 576]], input_dtypes=["float"] * 2,
                           output_shapes=[[1, 1024]], output_dtypes=["float"], weight_shape=[1024, 576],
                           weight_dtype="float"))
    assert fc.weight_bytes == 1024 * 576 * 4
    relu = classify(ExecNode("r", "Relu", input_shapes=[[1, 64]], input_dtypes=["float"],
                             output_shapes=[[1, 64]], output_dtypes=["float"]))
    assert relu.weight_bytes == 0.0


def test_torch_trace_takes_the_weight_of_addmm_from_its_third_argument():
    import torch

    from fopt.bench.measure.profile import record_torch_calls

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(16, 10))
            self.b = torch.nn.Parameter(torch.randn(10))

        def forward(self, x):
            return torch.addmm(self.b, x, self.w)

    node = record_torch_calls(Head().eval(), torch.randn(2, 16))[0].node
    assert node.op == "addmm" and node.weight_shape == [16, 10]


def test_missing_class_borrows_and_says_so():
    from bench_testutil import synthetic_calibration

    cal = synthetic_calibration()
    del cal["backends"]["onnxruntime/int8"]["classes"]["conv_stem"]
    node = conv([1, 3, 32, 32], [8, 3, 3, 3], [1, 8, 16, 16], op="QLinearConv", weight_in_inputs=False,
                dtypes=("uint8", "int8"))
    est = calibrated_estimate(_graph([node]), cal, "onnxruntime/int8")
    assert est.nodes[0].fit_class == "conv_dense"
    assert any("conv_stem not calibrated" in n for n in est.notes)


def test_uncalibrated_integer_eltwise_borrows_the_float_eltwise_fit():
    from bench_testutil import synthetic_calibration

    cal = synthetic_calibration()
    del cal["backends"]["onnxruntime/int8"]["classes"]["eltwise_q"]
    node = ExecNode("m", "QLinearMul", input_shapes=[[1, 16, 28, 28], [], [], [1, 16, 1, 1], [], []],
                    input_dtypes=["uint8", "float", "uint8", "uint8", "float", "uint8"],
                    output_shapes=[[1, 16, 28, 28]], output_dtypes=["uint8"])
    est = calibrated_estimate(_graph([node]), cal, "onnxruntime/int8")
    assert est.nodes[0].kernel_class == "eltwise_q" and est.nodes[0].fit_class == "eltwise"
    assert any("eltwise_q not calibrated, used eltwise" in n for n in est.notes)


def test_unknown_backend_key_is_a_clear_error():
    from bench_testutil import synthetic_calibration

    from fopt.errors import UsageError

    with pytest.raises(UsageError, match="no fits for onnxruntime/fp16"):
        calibrated_estimate(_graph([]), synthetic_calibration(), "onnxruntime/fp16")


def test_fit_keys_and_error_pct():
    assert fit_key("torchscript", "fp32") == "torch-eager/fp32"
    assert fit_key("onnxruntime", "int8") == "onnxruntime/int8"
    assert fit_key("tensorrt", "fp16") is None
    assert error_pct(12.0, 10.0) == pytest.approx(20.0)
    assert error_pct(None, 10.0) is None and error_pct(1.0, None) is None


def test_bench_rows_carry_all_three_estimates(bench_dir, synthetic_cal):
    """Wiring: a synthetic calibration gives calibrated, naive and roofline beside every row."""
    from fopt.analyze.roofline import estimate_latency
    from fopt.analyze.run import analyze
    from fopt.bench.costmodel.cache import load_machine_calibration
    from fopt.bench.run import bench_artifacts
    from fopt.runtime.timing import StopRule

    res = bench_artifacts([bench_dir / "tiny.onnx", bench_dir / "tiny.pt"], batch_sizes=[1, 2], threads=1,
                          rule=StopRule(min_time_s=0.02, warmup_iters=1, warmup_s=0.0), per_layer=True)
    assert res.calibration["summary"]["source"] == "synthetic test calibration"
    spec = load_machine_calibration("cpu", 1).to_device_spec()
    for row in res.results:
        d = row.to_dict()
        assert d["status"] == "ok", d["error"]
        est = d["estimate_ms"]
        assert all(est[k] is not None and est[k] > 0 for k in ("naive", "roofline", "calibrated")), d
        for k in est:
            assert d["error_pct"][k] == pytest.approx((est[k] / d["latency_ms"]["p50"] - 1) * 100)
        # naive and roofline are analyze's own numbers for the calibrated cpu spec
        ref = estimate_latency(analyze(str(bench_dir / "tiny.onnx"), batch=row.batch_size, device_spec=spec),
                               spec, precision="fp32", batch=row.batch_size)
        assert est["naive"] == pytest.approx(ref.naive_ms, rel=1e-6)
        assert est["roofline"] == pytest.approx(ref.roofline_ms, rel=1e-6)
        # the calibrated total is the per-layer sum plus the backend's fixed terms
        det = d["estimate_detail"]
        layer_sum = sum(x["estimate_ms"] for x in d["layers"])
        assert est["calibrated"] == pytest.approx(layer_sum + det["fixed_ms"])
        assert any(x["class"] == "conv_stem" for x in d["layers"])
        assert all(x["measured_ms"] is not None for x in d["layers"] if x["op"] != "flatten")
        assert sum(x["share_pct"] or 0 for x in d["layers"]) == pytest.approx(100.0)


def test_without_calibration_rows_say_how_to_get_one(bench_dir, cache_dir):
    from fopt.bench.run import bench_artifacts
    from fopt.runtime.timing import StopRule

    res = bench_artifacts([bench_dir / "tiny.onnx"], batch_sizes=[1], threads=1,
                          rule=StopRule(min_time_s=0.02, warmup_iters=1, warmup_s=0.0))
    d = res.results[0].to_dict()
    assert d["status"] == "ok" and d["estimate_ms"] == {"naive": None, "roofline": None, "calibrated": None}
    assert any("fopt bench --calibrate" in n for n in d["estimate_notes"])
    assert res.calibration is None


def test_knn_rate_prefers_the_most_similar_probe_layers():
    from fopt.bench.costmodel.predict import knn_rate

    pts = [[0.0, 0.0, 1e9], [1.0, 0.0, 2e9], [5.0, 5.0, 1e12]]
    assert knn_rate(pts, (0.0, 0.0), k=1) == pytest.approx(1e9)
    mid = knn_rate(pts, (0.5, 0.0), k=2)   # halfway: geometric mean of the two neighbours
    assert mid == pytest.approx((1e9 * 2e9) ** 0.5)
    assert knn_rate([], (0.0,)) is None and knn_rate(pts, ()) is None


def test_compute_nodes_use_probe_rates_and_memory_nodes_the_linear_fit():
    from bench_testutil import synthetic_calibration

    cal = synthetic_calibration()
    a = conv([1, 64, 56, 56], [64, 64, 3, 3], [1, 64, 56, 56])
    feats = classify(a).features
    # one probe layer exactly like `a` at 50 GMAC/s, one far away at 500
    far = tuple(f + 4 for f in feats)
    cal["backends"]["onnxruntime/fp32"]["rate_points"] = {"conv_dense": [[*feats, 5e10], [*far, 5e11]]}
    est = calibrated_estimate(_graph([a]), cal, "onnxruntime/fp32")
    macs = 56 * 56 * 64 * 64 * 9
    w_near = 1 / 0.05
    dist_far = (7 * 16) ** 0.5
    w_far = 1 / (dist_far + 0.05)
    import math
    expected_rate = math.exp((w_near * math.log(5e10) + w_far * math.log(5e11)) / (w_near + w_far))
    assert est.nodes[0].estimate_ms == pytest.approx((macs / expected_rate + 64 * 64 * 9 * 4 * (1 / 2e10 - 1 / 6e10)) * 1e3)
    assert est.nodes[0].fit_class == "conv_dense"


def test_rate_points_attribute_the_unexplained_time_to_compute_nodes():
    from fopt.bench.costmodel.fit import rate_points

    fit = {"classes": {"conv_dense": {"overhead_s": 0.0, "sec_per_work": 1e-11},
                       "eltwise": {"overhead_s": 0.0, "sec_per_work": 1e-9}},
           "dram": {"cache_bytes": 1e12, "sec_per_byte": 0.0}}
    feats = [1.0] * 7
    # conv predicted 1 ms, relu 0.1 ms; measured 2.1 ms -> the extra 1 ms belongs to the conv
    eq = {"seconds": 2.1e-3, "nodes": [["eltwise", 1e5, 8e5, []], ["conv_dense", 1e8, 1e6, feats]]}
    pts = rate_points([eq], fit)
    assert list(pts) == ["conv_dense"]
    assert pts["conv_dense"][0][:7] == feats
    assert pts["conv_dense"][0][7] == pytest.approx(1e8 / 2e-3)


def test_a_layer_unlike_every_probe_uses_the_linear_fit_and_says_so():
    from bench_testutil import synthetic_calibration

    cal = synthetic_calibration()
    a = conv([1, 64, 56, 56], [64, 64, 3, 3], [1, 64, 56, 56])
    far = tuple(f + 10 for f in classify(a).features)
    cal["backends"]["onnxruntime/fp32"]["rate_points"] = {"conv_dense": [[*far, 1e12], [*far, 1e12]]}
    est = calibrated_estimate(_graph([a]), cal, "onnxruntime/fp32")
    macs = 56 * 56 * 64 * 64 * 9
    weights_s = 64 * 64 * 9 * 4 * (1 / 2e10 - 1 / 6e10)
    assert est.nodes[0].estimate_ms == pytest.approx(
        (5e-6 + macs * 1e-11 + max(0, classify(a).bytes_moved - 1e6) * 1e-10 + weights_s) * 1e3)
    assert any("no similar probe layer" in n for n in est.notes)


def test_fit_gap_separates_per_op_and_per_byte_costs():
    from fopt.bench.costmodel.fit import fit_gap
    from fopt.bench.costmodel.kernels import output_bytes

    samples = [(n, nb, n * 3e-6 + nb * 2e-12) for n, nb in ((3, 1e5), (3, 4e7), (9, 1e6), (6, 2e8))]
    gap = fit_gap(samples)
    assert gap["per_op_s"] == pytest.approx(3e-6, rel=1e-6)
    assert gap["per_byte_s"] == pytest.approx(2e-12, rel=1e-6)
    assert fit_gap([]) == {"per_op_s": 0.0, "per_byte_s": 0.0}
    inplace = ExecNode("r", "relu_", domain="aten", output_shapes=[[1, 8]], output_dtypes=["float"])
    assert output_bytes(inplace) == 0.0
    assert output_bytes(ExecNode("r", "relu", domain="aten", output_shapes=[[1, 8]], output_dtypes=["float"])) == 32.0


def test_float_convolutions_of_an_int8_graph_are_estimated_with_fp32_rates():
    from bench_testutil import synthetic_calibration

    cal = synthetic_calibration()
    for fit in cal["backends"]["onnxruntime/int8"]["classes"].values():
        fit["sec_per_work"] /= 10          # integer kernels ten times faster than FP32 ones
    body = conv([1, 64, 56, 56], [64, 64, 3, 3], [1, 64, 56, 56])
    qbody = conv([1, 56, 56, 64], [64, 64, 3, 3], [1, 56, 56, 64], dtypes=("uint8", "int8"),
                 weight_in_inputs=False, op="QLinearConv")
    head = ExecNode(name="fc", op="MatMulInteger", input_shapes=[[1, 512], [512, 10]], input_dtypes=["uint8", "int8"],
                    output_shapes=[[1, 10]], output_dtypes=["int32"], attrs={})
    fp32 = {n.op: n.estimate_ms for n in calibrated_estimate(_graph([body]), cal, "onnxruntime/fp32").nodes}
    int8 = {n.op: n.estimate_ms for n in calibrated_estimate(_graph([qbody, head]), cal, "onnxruntime/int8").nodes}
    # dynamic quantization of MatMul/Gemm: the convolution stays FP32, the head is integer
    dynamic = calibrated_estimate(_graph([body, head]), cal, "onnxruntime/int8")
    got = {n.op: n.estimate_ms for n in dynamic.nodes}
    assert got["Conv"] == pytest.approx(fp32["Conv"])
    assert got["MatMulInteger"] == pytest.approx(int8["MatMulInteger"])
    assert int8["QLinearConv"] == pytest.approx(fp32["Conv"] / 10, rel=0.05)  # same MACs, int8 fit
    assert any("1 convolution/GEMM node(s) of this INT8 graph compute in FP32" in n for n in dynamic.notes)
    assert not any("compute in FP32" in n
                   for n in calibrated_estimate(_graph([qbody, head]), cal, "onnxruntime/int8").notes)


def test_torchscript_graph_is_recorded_after_its_optimizer_settles(bench_dir, tmp_path):
    from fopt.bench.costmodel.predict import exec_graph_for
    from fopt.export.run import export_checkpoint
    from fopt.runtime import open_runner

    ts = export_checkpoint(bench_dir / "tiny.pt", ("torchscript",), tmp_path, log=lambda s: None)[0].path
    batch = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    graphs = {}
    for path in (bench_dir / "tiny.pt", ts):
        runner = open_runner(path, device="cpu", threads=1)
        runner.load()
        graphs[runner.backend] = exec_graph_for(runner, batch)
    ops = {k: [n.op for n in g.nodes] for k, g in graphs.items()}
    assert "equal" not in ops["torchscript"]
    assert len(ops["torchscript"]) <= len(ops["torch-eager"])


def test_no_convolution_is_estimated_faster_than_the_gemm_peak():
    from bench_testutil import synthetic_calibration

    from fopt.bench.costmodel.predict import peak_mac_rate

    cal = synthetic_calibration()
    a = conv([1, 64, 56, 56], [64, 64, 3, 3], [1, 64, 56, 56])
    feats = classify(a).features
    macs = 56 * 56 * 64 * 64 * 9
    # a probe layer "measured" at 1000 TMAC/s: a profiling artefact, far beyond any GEMM
    cal["backends"]["onnxruntime/fp32"]["rate_points"] = {"conv_dense": [[*feats, 1e15], [*feats, 1e15]]}
    cal.setdefault("probes", {})["gemm"] = [{"name": "onnxruntime/fp32", "n": 1024, "ops_per_s": 2e11},
                                             {"name": "onnxruntime/int8", "n": 1024, "ops_per_s": 8e11}]
    assert peak_mac_rate(cal, "fp32") == pytest.approx(1e11)
    assert peak_mac_rate(cal, "int8") == pytest.approx(4e11)
    del cal["summary"]["mem_bandwidth"]            # (no weight term: the compute part alone)
    est = calibrated_estimate(_graph([a]), cal, "onnxruntime/fp32")
    assert est.nodes[0].estimate_ms == pytest.approx(macs / (1e11 * GEMM_PEAK_MARGIN) * 1e3)
    assert est.nodes[0].bound == "compute (GEMM peak)"
    # a probe layer just above the timed GEMM rate (within the margin) is believed
    cal["backends"]["onnxruntime/fp32"]["rate_points"] = {"conv_dense": [[*feats, 1.1e11], [*feats, 1.1e11]]}
    assert calibrated_estimate(_graph([a]), cal, "onnxruntime/fp32").nodes[0].estimate_ms == pytest.approx(
        macs / 1.1e11 * 1e3)
    cal["backends"]["onnxruntime/fp32"]["rate_points"] = {"conv_dense": [[*feats, 1e15], [*feats, 1e15]]}
    del cal["probes"]["gemm"]                      # without a GEMM probe there is no cap
    assert calibrated_estimate(_graph([a]), cal, "onnxruntime/fp32").nodes[0].estimate_ms == pytest.approx(
        macs / 1e15 * 1e3)
