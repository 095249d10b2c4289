"""Per-op counting: MACs/FLOPs/bytes/params by arithmetic, against fvcore and ptflops, and on
quantized / FP16 / onnxruntime-optimized graphs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from analyze_helpers import (
    GraphBuilder,
    calibration_reader,
    export_preserving_bn,
    quiet_torch_export,
    save_onnx,
)

from fopt.analyze.counting import (
    ELEMENTWISE_FLOPS,
    HANDLERS,
    IGNORED_OPS,
    MAC_KINDS,
    count_graph,
    element_bytes,
)
from fopt.analyze.graph import concretize, prepare_graph, strip_weights
from fopt.errors import AnalysisIncomplete, UsageError
from fopt.onnxgraph import precision_of


def count(model, precision=None, **kw):
    return count_graph(prepare_graph(model, **kw), precision)


def out_size(n, k, s, p_begin, p_end, d):
    return (n + p_begin + p_end - d * (k - 1) - 1) // s + 1


# (cin, cout, kernel (h, w), stride (h, w), pads [t, l, b, r], group, dilation, input size)
CONV_CASES = [
    (3, 16, (3, 3), (1, 1), [1, 1, 1, 1], 1, 1, 32),      # dense 3x3
    (3, 16, (3, 3), (2, 2), [1, 1, 1, 1], 1, 1, 32),      # strided
    (16, 16, (3, 3), (1, 1), [1, 1, 1, 1], 16, 1, 32),    # depthwise
    (16, 32, (1, 1), (1, 1), [0, 0, 0, 0], 1, 1, 15),     # pointwise
    (16, 32, (5, 5), (2, 2), [2, 2, 2, 2], 4, 1, 33),     # grouped
    (8, 8, (3, 3), (1, 1), [2, 2, 2, 2], 1, 2, 20),       # dilated
    (4, 6, (3, 5), (1, 2), [1, 2, 0, 1], 2, 1, 24),       # non-square, asymmetric pads
]


@pytest.mark.parametrize("cin,cout,k,s,pads,group,d,n", CONV_CASES)
@pytest.mark.parametrize("batch", [1, 3])
def test_conv_macs_by_arithmetic(cin, cout, k, s, pads, group, d, n, batch):
    g = GraphBuilder(("batch", cin, n, n))
    g.conv(cout, k, stride=s, pads=pads, group=group, dilation=d)
    c = count(g.build(), batch=batch)
    oh = out_size(n, k[0], s[0], pads[0], pads[2], d)
    ow = out_size(n, k[1], s[1], pads[1], pads[3], d)
    macs = batch * cout * oh * ow * (cin // group) * k[0] * k[1]
    (layer,) = [x for x in c.layers if x.op_type == "Conv"]
    assert layer.output_shape == [batch, cout, oh, ow]
    assert (c.macs, c.flops) == (macs, 2 * macs)
    assert c.params == cout * (cin // group) * k[0] * k[1] + cout
    assert layer.kind in MAC_KINDS
    assert c.status == "complete"


def test_conv_kind_classes():
    kinds = []
    for cin, cout, k, group in [(8, 8, 3, 1), (8, 16, 1, 1), (8, 8, 3, 8), (8, 8, 3, 2)]:
        g = GraphBuilder(("batch", cin, 8, 8))
        g.conv(cout, k, group=group)
        kinds.append(count(g.build()).layers[0].kind)
    assert kinds == ["conv", "conv_pointwise", "conv_depthwise", "conv_grouped"]


def test_gemm_matmul_convtranspose_by_arithmetic():
    g = GraphBuilder(("batch", 64))
    w = g.init(np.random.rand(10, 64).astype(np.float32))
    b = g.init(np.random.rand(10).astype(np.float32))
    g.op("Gemm", ["x", w, b], transB=1)
    c = count(g.build(), batch=4)
    assert c.macs == 4 * 10 * 64 and c.params == 10 * 64 + 10
    assert c.layers[0].flops == 2 * c.layers[0].macs   # one multiply and one add per MAC

    g = GraphBuilder(("batch", 3, 4, 5))
    w = g.init(np.random.rand(5, 6).astype(np.float32))
    g.op("MatMul", ["x", w])
    c = count(g.build(), batch=2)
    assert c.macs == 2 * 3 * 4 * 6 * 5 and c.params == 30
    assert c.layers[0].flops == 2 * c.layers[0].macs

    g = GraphBuilder(("batch", 8, 8, 8))
    w = g.init(np.random.rand(8, 4, 3, 3).astype(np.float32))
    g.op("ConvTranspose", ["x", w], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])
    c = count(g.build())
    assert c.layers[0].output_shape == [1, 4, 16, 16]
    assert c.macs == 8 * 8 * 8 * 4 * 3 * 3   # every input element feeds C_out x k x k outputs


@pytest.mark.parametrize("op", ["Relu", "Sigmoid", "HardSwish", "HardSigmoid", "Clip", "Tanh"])
def test_elementwise_flops_per_output_element(op):
    g = GraphBuilder(("batch", 4, 8, 8))
    g.op(op, ["x"])
    c = count(g.build(), batch=2)
    assert c.macs == 0
    assert c.flops == ELEMENTWISE_FLOPS[op] * 2 * 4 * 8 * 8


def test_pooling_and_reductions():
    g = GraphBuilder(("batch", 6, 32, 32))
    g.op("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    g.op("GlobalAveragePool", [g.current])
    c = count(g.build())
    assert c.layers[0].output_shape == [1, 6, 16, 16]
    assert c.layers[0].flops == 9 * 6 * 16 * 16        # one op per window element per output
    assert c.layers[1].flops == 6 * 16 * 16            # one per input element


def test_bytes_at_each_precision():
    g = GraphBuilder(("batch", 3, 8, 8))
    g.conv(8, 3, bias=True)
    model = g.build()
    w, bias, x, y = 8 * 3 * 9, 8, 3 * 64, 8 * 64
    for precision, size, bias_size in [("fp32", 4, 4), ("fp16", 2, 2), ("int8", 1, 4)]:
        layer = count(model, precision).layers[0]
        assert layer.weight_bytes == w * size + bias * bias_size, precision
        assert layer.input_bytes == x * size
        assert layer.bytes_read == (w + x) * size + bias * bias_size
        assert layer.bytes_written == y * size
        assert layer.intensity == pytest.approx(layer.flops / (layer.bytes_read + layer.bytes_written))
    with pytest.raises(UsageError):
        count(model, "int4")
    from onnx import TensorProto as T
    assert element_bytes(T.INT64, "int8") == 8 and element_bytes(T.FLOAT, "real") == 4


def test_shared_weight_counts_once_identity_copies_count_each():
    g = GraphBuilder(("batch", 4, 8, 8))
    w = g.init(np.random.rand(4, 4, 3, 3).astype(np.float32))
    a = g.op("Conv", ["x", w], pads=[1, 1, 1, 1])
    b = g.op("Conv", [a, w], pads=[1, 1, 1, 1])            # weight tying: one parameter tensor
    w2 = g.op("Identity", [w])                             # exporter de-duplication: a copy
    g.op("Conv", [b, w2], pads=[1, 1, 1, 1])
    c = count(g.build())
    assert c.params == 2 * 4 * 4 * 9
    assert c.macs == 3 * 4 * 64 * 4 * 9
    assert c.ignored == {"Identity": 1}


def test_no_silent_zeros_unsupported_and_missing_shapes():
    g = GraphBuilder(("batch", 4, 8, 8))
    a = g.op("FooBar", ["x"], domain="my.domain")
    g.op("Relu", [a])
    g.op("FooBar", [g.current], domain="my.domain")
    model = g.build()
    c = count(model)
    assert c.status == "partial"
    assert c.unsupported == {"FooBar": 2}
    assert c.missing_shapes == {"Relu": 1}       # after an op of unknown shape nothing is guessed
    from fopt.analyze.run import analyze
    with pytest.raises(AnalysisIncomplete, match="FooBar x2"):
        analyze(model, strict=True)
    assert analyze(model).status == "partial"


def test_handlers_and_ignore_table_are_disjoint_and_explained():
    assert not set(HANDLERS) & set(IGNORED_OPS)
    assert all(len(reason) > 10 for reason in IGNORED_OPS.values())


def test_constant_foldable_nodes_cost_nothing():
    g = GraphBuilder(("batch", 4, 8, 8))
    wq = g.init(np.random.randint(-100, 100, (4, 4, 3, 3)).astype(np.int8), "wq")
    scale = g.init(np.array(0.02, dtype=np.float32), "s")
    w = g.op("DequantizeLinear", [wq, scale])
    g.op("Conv", ["x", w], pads=[1, 1, 1, 1])
    c = count(g.build())
    dq = c.layers[0]
    assert (dq.status, dq.executes, dq.flops) == ("folded", False, 0)
    assert c.params == 4 * 4 * 9


def test_batchnorm_after_conv_is_fused_elsewhere_counted():
    g = GraphBuilder(("batch", 4, 8, 8))
    ones, zeros = np.ones(8, np.float32), np.zeros(8, np.float32)
    g.conv(8, 3, bias=False)
    bn_in = [g.init(ones), g.init(zeros), g.init(zeros), g.init(ones)]
    g.op("BatchNormalization", [g.current, *bn_in])
    c = count(g.build())
    conv, bn = c.layers
    assert (bn.status, bn.flops, bn.bytes_moved, bn.executes) == ("fused", 0, 0, False)
    assert c.params == 8 * 4 * 9 + 2 * 8                   # scale and shift are params, stats are not
    assert conv.weight_bytes == (8 * 4 * 9 + 8) * 4       # the Conv reads the bias folding leaves

    g = GraphBuilder(("batch", 4, 8, 8))
    bn_in = [g.init(np.ones(4, np.float32)) for _ in range(4)]
    g.op("BatchNormalization", ["x", *bn_in])
    c = count(g.build())
    assert c.layers[0].status == "counted" and c.flops == 2 * 4 * 64
    assert c.weight_bytes == 4 * 4 * 4


def test_peak_activation_memory_liveness():
    n = 4 * 8 * 8
    g = GraphBuilder(("batch", 4, 8, 8))
    for _ in range(3):
        g.op("Relu", [g.current])
    c = count(g.build())
    assert c.peak_activation_bytes == 2 * n * 4           # only producer and consumer live
    assert c.activation_bytes == 4 * n * 4                # input + three outputs

    g = GraphBuilder(("batch", 4, 8, 8))
    a = g.op("Relu", ["x"])
    b = g.op("Relu", [a])
    shape = g.init(np.array([1, -1], dtype=np.int64), "shape")
    v = g.op("Reshape", [b, shape])                       # a view: no new buffer
    g.op("Add", ["x", g.op("Reshape", [v, g.init(np.array([1, 4, 8, 8], dtype=np.int64), "s")])])
    c = count(g.build())
    assert c.peak_activation_bytes == 3 * n * 4           # x is kept alive for the residual Add


def test_batch_and_image_size_substitution():
    g = GraphBuilder(("batch", 3, "h", "w"))
    g.conv(8, 3)
    model = g.build()
    with pytest.raises(UsageError, match="img-size"):
        prepare_graph(model)
    one = count(model, img_size=16)
    four = count(model, batch=4, img_size=16)
    assert four.macs == 4 * one.macs and one.input_shape == (1, 3, 16, 16)

    g = GraphBuilder((2, 3, 16, 16))
    g.conv(8, 3)
    static = g.build()
    assert count(static).batch == 2                       # the graph's own batch by default
    with pytest.raises(UsageError, match="fixed batch of 2"):
        prepare_graph(static, batch=8)
    with pytest.raises(UsageError, match="fixed at 16x16"):
        prepare_graph(static, img_size=32)


def test_inputs_sharing_a_symbolic_dim_get_the_same_value():
    g = GraphBuilder(("batch", 3, "h", "w"))
    g.conv(4, 3)
    model = g.build()
    from onnx import TensorProto, helper
    model.graph.input.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "h"]))
    prepared = prepare_graph(model, batch=2, img_size=8)
    dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in prepared.model.graph.input}
    assert dims["x"] == [2, 3, 8, 8] and dims["y"] == [2, 8] and prepared.input_shape == (2, 3, 8, 8)


def test_stripped_graph_recounts_at_other_batches():
    g = GraphBuilder(("batch", 3, 16, 16))
    g.conv(8, 3)
    stripped, consts = strip_weights(g.build())
    a = count_graph(concretize(stripped, consts, batch=1))
    b = count_graph(concretize(stripped, consts, batch=5))
    assert b.macs == 5 * a.macs and b.weight_bytes == a.weight_bytes
    kept = [t.name for t in stripped.graph.initializer]
    assert len(kept) == 1 and kept[0].startswith("b")    # only the 8-value bias keeps its data


# ----------------------------------------------------------------------------- torch models

LIGHT = ["tiny", "mobilenet_v3_small", "mobilenet_v3_large", "resnet18", "efficientnet_b0"]
HEAVY = ["resnet50", "vgg16", "efficientnet_b7"]
ALL_MODELS = [*LIGHT, *(pytest.param(m, marks=pytest.mark.slow) for m in HEAVY)]


def _registry_names():
    from fopt.models import MODELS
    return set(MODELS.names())


def test_model_lists_cover_the_registry():
    assert set(LIGHT) | set(HEAVY) == _registry_names()


def _reference_counts(model, size):
    """(fvcore conv+linear MACs, ptflops conv+linear MACs with biases) for the torch model."""
    import logging

    import torch
    import torch.nn as nn
    from fvcore.nn import FlopCountAnalysis
    from ptflops import get_model_complexity_info

    logging.getLogger("fvcore").setLevel(logging.ERROR)
    fa = FlopCountAnalysis(model, torch.randn(1, 3, size, size))
    fa.unsupported_ops_warnings(False)
    fa.uncalled_modules_warnings(False)
    ops = fa.by_operator()
    fv = sum(ops.get(k, 0) for k in ("conv", "linear", "addmm", "matmul", "bmm"))
    others = {type(m) for m in model.modules() if not list(m.children())} - {nn.Conv2d, nn.Linear}
    pt, _ = get_model_complexity_info(model, (3, size, size), as_strings=False, print_per_layer_stat=False,
                                      ignore_modules=list(others), backend="pytorch",
                                      backend_specific_config={"count_functional": False})
    return fv, pt


@pytest.mark.parametrize("name", ALL_MODELS)
def test_conv_gemm_macs_match_fvcore_and_ptflops(name):
    """MACs of Conv/Gemm equal fvcore's exactly; ptflops adds one op per output element of a biased
    layer (its bias add), which is the whole difference."""
    from fopt.models import build_model

    torch_model = build_model(name, 1000).eval()
    c = count(export_preserving_bn(torch_model, 224))
    mac_layers = [x for x in c.layers if x.kind in MAC_KINDS]
    ours = sum(x.macs for x in mac_layers)
    assert ours == c.macs            # no MACs outside Conv/Gemm in these CNNs
    biased_outputs = sum(math.prod(x.output_shape) for x in mac_layers if _has_bias(x))
    fv, pt = _reference_counts(torch_model, 224)
    assert ours == fv
    assert ours + biased_outputs == pt
    assert abs(pt - ours) / ours < 0.01


def _has_bias(layer) -> bool:
    d = layer.details
    if layer.kind == "gemm":
        return True   # every Linear in the registry has a bias
    weights = d["c_out"] * d["c_in"] // d["groups"] * math.prod(d["kernel"])
    return layer.params == weights + d["c_out"]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_params_equal_pytorch_numel(name):
    from fopt.models import build_model, count_params

    torch_model = build_model(name, 22)
    # vgg16's AdaptiveAvgPool2d(7) exports only when the 7x7 grid divides its input (224 px)
    c = count(export_preserving_bn(torch_model, 224 if name == "vgg16" else 64))
    assert c.params == count_params(torch_model)


@pytest.mark.parametrize("name", ["tiny", "mobilenet_v3_small", "resnet18"])
def test_folded_deployment_export_counts(name):
    """The exported (BN-folded) file: same MACs/FLOPs/bytes; params lose one per BN channel."""
    import torch.nn as nn

    from fopt.models import build_model, count_params

    torch_model = build_model(name, 10)
    kept = count(export_preserving_bn(torch_model, 64))
    folded = count(quiet_torch_export(torch_model, 64))
    bn_channels = sum(m.num_features for m in torch_model.modules() if isinstance(m, nn.BatchNorm2d))
    # every BN here follows a bias-free Conv: 2C (scale, shift) become C (the Conv's new bias)
    assert folded.params == count_params(torch_model) - bn_channels
    for key in ("macs", "flops", "weight_bytes", "activation_bytes", "peak_activation_bytes"):
        assert getattr(folded, key) == getattr(kept, key), key
    assert folded.bytes_read == kept.bytes_read and folded.n_executed == kept.n_executed


# ----------------------------------------------------------------------------- other precisions

@pytest.fixture(scope="module")
def tiny_onnx_files(tmp_path_factory):
    """The tiny model exported (folded), quantized QDQ static, quantized dynamic and FP16."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnxconverter_common import float16
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    from fopt.models import build_model

    d = tmp_path_factory.mktemp("tiny_onnx")
    model = quiet_torch_export(build_model("tiny", 6), 32)
    fp32 = save_onnx(model, d / "fp32.onnx")
    quantize_static(fp32, str(d / "qdq.onnx"), calibration_reader("input", (1, 3, 32, 32)),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    quantize_dynamic(fp32, str(d / "dyn.onnx"), weight_type=QuantType.QUInt8)
    onnx.save(float16.convert_float_to_float16(model, keep_io_types=True), str(d / "fp16.onnx"))
    return {k: str(d / f"{k}.onnx") for k in ("fp32", "qdq", "dyn", "fp16")}


def _load(path):
    import onnx
    return onnx.load(path)


def test_qdq_int8_file_counts_at_int8(tiny_onnx_files):
    ref = count(_load(tiny_onnx_files["fp32"]))
    q = count(_load(tiny_onnx_files["qdq"]))
    assert (q.precision, q.quantized, q.status) == ("int8", True, "complete")
    assert q.macs == ref.macs and q.params == ref.params
    convs = [x for x in q.layers if x.kind in MAC_KINDS]
    assert convs and all(x.precision == "int8" for x in convs)
    # int8 weights (1 B) and int32 biases instead of fp32: about a quarter of the bytes
    assert 0.24 * ref.weight_bytes < q.weight_bytes < 0.3 * ref.weight_bytes
    qdq = [x for x in q.layers if x.op_type in ("QuantizeLinear", "DequantizeLinear") and x.executes]
    assert qdq and all(x.kind == "quant" and x.flops > 0 for x in qdq)
    assert q.flops > ref.flops                              # the Q/DQ work is counted, not hidden
    with pytest.raises(UsageError, match="INT8"):
        count(_load(tiny_onnx_files["qdq"]), "fp32")
    # Q/DQ pass positions through: same receptive field (Flatten after Q/DQ after pooling is skipped)
    from fopt.analyze.receptive import receptive_field
    keys = ("size", "stride", "padding", "global", "conv_path_size", "feature_shape")
    q_rf, ref_rf = receptive_field(q.index).to_dict(), receptive_field(ref.index).to_dict()
    assert [q_rf[k] for k in keys] == [ref_rf[k] for k in keys] and q_rf["size"] == 31


def test_dynamic_int8_and_fp16_files(tiny_onnx_files):
    ref = count(_load(tiny_onnx_files["fp32"]))
    dyn = count(_load(tiny_onnx_files["dyn"]))
    assert (dyn.precision, dyn.status, dyn.macs) == ("int8", "complete", ref.macs)
    assert {x.op_type for x in dyn.layers if x.kind in MAC_KINDS} <= {"ConvInteger", "MatMulInteger"}
    half = count(_load(tiny_onnx_files["fp16"]))
    assert (half.precision, half.status, half.macs, half.params) == ("fp16", "complete", ref.macs, ref.params)
    assert half.weight_bytes == ref.weight_bytes // 2
    # an FP32 graph counted as an FP16 what-if gives the same bytes as the real FP16 graph's weights
    assert count(_load(tiny_onnx_files["fp32"]), "fp16").weight_bytes == half.weight_bytes


def test_one_precision_for_analyze_and_optimize(tiny_onnx_files):
    """`precision_of` is what a graph is counted at and what `fopt optimize` says its input is,
    on the whole file and on its weight-stripped copy alike."""
    for key, want in {"fp32": "fp32", "qdq": "int8", "dyn": "int8", "fp16": "fp16"}.items():
        model = _load(tiny_onnx_files[key])
        stripped, consts = strip_weights(model)
        assert precision_of(model) == precision_of(stripped, consts) == count(model).precision == want, key


def test_fp16_precision_is_the_weights_not_the_inputs():
    """An FP16 graph with an FP32 input larger than all its weights is still FP16."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.rand(4, 3, 3, 3).astype(np.float16), "w")
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16),
         helper.make_node("Conv", ["xh", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    stripped, consts = strip_weights(model)
    assert precision_of(model) == precision_of(stripped, consts) == "fp16"
    c = count(model)
    assert c.precision == "fp16" and c.layers[1].weight_bytes == w.dims[0] * 27 * 2


def test_onnxruntime_optimized_graph_is_counted(tiny_onnx_files, tmp_path):
    """ORT's saved 'extended' graph (FusedConv, QLinearConv, QGemm contrib ops) counts completely."""
    ort = pytest.importorskip("onnxruntime")
    for key in ("fp32", "qdq"):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(tmp_path / f"{key}_opt.onnx")
        ort.InferenceSession(tiny_onnx_files[key], so, providers=["CPUExecutionProvider"])
        opt = count(_load(so.optimized_model_filepath))
        assert opt.status == "complete", (opt.unsupported, opt.missing_shapes)
        assert opt.macs == count(_load(tiny_onnx_files[key])).macs
