"""Kernel classes: what kind of work an executed node does, and how much.

Achieved MAC rates differ 10-40x between kernel types on the same CPU (`fopt bench
--show-calibration` lists them per class), so the calibrated estimate gives each executed node
a class and a work amount, and the calibration measures each class's rate on this machine. The
same function classifies the calibration probes and the models being estimated, so a class
means the same thing on both sides.

Work units: MACs for convolutions and GEMMs (1 MAC = 2 FLOPs), weight elements for GEMMs with
fewer than 16 output rows (``gemv``: bound by reading the weights), elements for everything else
(the largest tensor the node reads or writes). Bytes are every input and output tensor at its
element type, plus pre-packed weights the profile leaves out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fopt.bench.measure.profile import DTYPE_BYTES, ExecNode
from fopt.onnxgraph import DYNAMIC_QUANTIZE_OPS, QDQ_OPS

CONV_OPS = {"Conv", "FusedConv", "QLinearConv", "ConvInteger", "NhwcFusedConv", "NhwcConv",
            "conv2d", "convolution", "_convolution", "mkldnn_convolution", "conv1d", "conv3d"}
GEMM_OPS = {"Gemm", "FusedGemm", "MatMul", "FusedMatMul", "QGemm", "MatMulInteger",
            "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearMatMul",
            "linear", "addmm", "mm", "matmul", "bmm"}
# Non-MAC work, by op type (ONNX, ORT contrib, ATen).
OP_CLASS = {
    **{op: "eltwise" for op in (
        "Relu", "Clip", "LeakyRelu", "Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Neg", "Abs",
        "Identity", "Dropout", "Concat", "Slice", "Split", "Pad", "Cast",
        "relu", "relu_", "add", "add_", "mul", "mul_", "sub", "div", "hardtanh", "hardtanh_",
        "cat",
        "clamp", "clamp_", "dropout", "dropout_", "clone", "contiguous", "copy_", "leaky_relu")},
    # Integer element-wise ops dequantize, compute and requantize every element: on this CPU they
    # cost several times a float Relu or Add per element, so they are not fitted with them.
    **{op: "eltwise_q" for op in ("QLinearAdd", "QLinearMul", "QLinearLeakyRelu", "QLinearConcat")},
    **{op: "eltwise_transcendental" for op in (
        "Sigmoid", "QuickGelu", "Tanh", "Erf", "Gelu", "FastGelu", "BiasGelu", "Exp", "Log",
        "Softmax", "LogSoftmax", "Swish", "QLinearSigmoid", "QLinearSoftmax",
        "sigmoid", "sigmoid_", "silu", "silu_", "gelu", "tanh", "softmax", "_softmax", "exp")},
    **{op: "norm" for op in (
        "BatchNormalization", "InstanceNormalization", "LayerNormalization",
        "batch_norm", "native_batch_norm", "_native_batch_norm_legit_no_training", "layer_norm",
        "group_norm", "instance_norm")},
    **{op: "eltwise_hard" for op in (
        "HardSigmoid", "HardSwish", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_")},
    **{op: "pool" for op in (
        "MaxPool", "AveragePool", "NhwcMaxPool", "QLinearAveragePool", "LpPool",
        "max_pool2d", "max_pool2d_with_indices", "avg_pool2d")},
    **{op: "global_pool" for op in (
        "GlobalAveragePool", "GlobalMaxPool", "QLinearGlobalAveragePool", "ReduceMean", "ReduceMax",
        "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "mean", "amax")},
    **{op: "layout" for op in ("ReorderInput", "ReorderOutput", "Transpose", "permute")},
    **{op: "quant" for op in QDQ_OPS | DYNAMIC_QUANTIZE_OPS},
    **{op: "noop" for op in (
        "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Shape", "Gather", "Constant", "Expand",
        "Size", "ConstantOfShape", "flatten", "view", "reshape", "_reshape_alias", "t",
        "squeeze", "unsqueeze", "expand", "detach", "alias")},
}
COMPUTE_CLASSES = ("conv_dense", "conv_stem", "conv_pw", "conv_dw", "conv_grouped", "conv_se", "gemm", "gemv")
GEMV_MAX_ROWS = 16   # fewer output rows than this: a matrix-vector product in practice
MEMORY_CLASSES = ("eltwise", "eltwise_q", "norm", "eltwise_transcendental", "eltwise_hard", "pool", "global_pool",
                  "layout", "quant", "noop")
ALL_CLASSES = COMPUTE_CLASSES + MEMORY_CLASSES
# Activations ONNX Runtime fuses into a convolution (its ``activation`` attribute) that are not
# free: measured, MobileNetV3-Small's 3->16 stem at batch 8 took 0.58 ms with HardSwish fused and
# 0.27 ms with Relu fused (the tiny model's stem, same shape).
FUSED_ACTIVATION_CLASS = {"HardSwish": "eltwise_hard", "HardSigmoid": "eltwise_hard",
                          "Sigmoid": "eltwise_transcendental", "Tanh": "eltwise_transcendental"}
# A conv whose input channels per group x kernel area is this small (an RGB stem) vectorises poorly.
STEM_MAX_REDUCTION = 3 * 7 * 7


@dataclass(frozen=True)
class NodeWork:
    kernel_class: str
    work: float           # MACs (compute classes) or elements (memory classes)
    macs: float
    bytes_moved: float
    unknown: bool = False  # op type not in the tables: costed as element-wise, flagged
    # Shape features of convolutions and GEMMs (see `shape_features`): the calibration looks up
    # the achieved rate of the most similar probe layers by them.
    features: tuple[float, ...] = ()
    weight_bytes: float = 0.0   # convolutions and GEMMs: their weights (or pre-packed weights)
    # An activation ONNX Runtime fused into the convolution that costs real work (HardSwish,
    # Sigmoid...; Relu and Clip are free): its class and the elements it runs on. It is costed
    # with that class's rate, so the convolution's own rate stays the same with or without it.
    fused_act: tuple[str, float] | None = None

    def as_equation_node(self) -> list:
        """The compact form calibration equations store: [class, work, bytes, features, fused_act]."""
        return [self.kernel_class, self.work, self.bytes_moved, list(self.features),
                list(self.fused_act) if self.fused_act else None]

    @classmethod
    def from_equation_node(cls, node: list) -> "NodeWork":
        """The inverse of `as_equation_node`. Features and fused_act may be absent: equations
        written by hand, such as the calibration's Relu chains, give only [class, work, bytes]."""
        feats = tuple(node[3]) if len(node) > 3 and node[3] else ()
        act = tuple(node[4]) if len(node) > 4 and node[4] else None
        return cls(node[0], node[1], 0.0, node[2], features=feats, fused_act=act)


def shape_features(*, spatial: float, cin_per_group: float, cout: float, kernel_area: float,
                   stride: float, batch: float, channels_aligned: bool) -> tuple[float, ...]:
    """log2 sizes (so that "twice as wide" is the same step everywhere) plus channel alignment
    to 16 (one AVX-512 vector of FP32), which decides whether kernels need remainder loops."""
    return (math.log2(max(spatial, 1)), math.log2(max(cin_per_group, 1)), math.log2(max(cout, 1)),
            math.log2(max(kernel_area, 1)), math.log2(max(stride, 1)), math.log2(max(batch, 1)),
            1.0 if channels_aligned else 0.0)


def _numel(shape: list[int]) -> int:
    return math.prod(shape) if shape else 1


def _dtype_bytes(dtype: str | None, default: int = 4) -> int:
    return DTYPE_BYTES.get(dtype or "", default)


def _bytes(node: ExecNode) -> float:
    total = sum(_numel(s) * _dtype_bytes(d) for s, d in zip(node.input_shapes, node.input_dtypes))
    total += sum(_numel(s) * _dtype_bytes(d) for s, d in zip(node.output_shapes, node.output_dtypes))
    if node.weight_shape is not None and node.weight_shape not in node.input_shapes:
        total += _numel(node.weight_shape) * _dtype_bytes(node.weight_dtype)  # pre-packed weight
    return float(total)


def _conv(node: ExecNode) -> NodeWork:
    out = node.output_shapes[0] if node.output_shapes else []
    w, w_dtype = node.weight_shape, node.weight_dtype
    if w is None:  # fall back to the profile's inputs: the first 4-D tensor after x
        w, w_dtype = next(((s, d) for s, d in zip(node.input_shapes[1:], node.input_dtypes[1:])
                           if len(s) == len(out)), (None, None))
    group = int(node.attrs.get("group", 1) or 1)
    if not out or w is None or len(w) < 3:
        return NodeWork("conv_dense", 0.0, 0.0, _bytes(node), unknown=True)
    cin_per_group = w[1]
    kernel_area = math.prod(w[2:])
    macs = float(_numel(out) * cin_per_group * kernel_area)
    cout = w[0]
    # Output spatial size, whatever the layout (NCHW, NHWC, NCHWc-logical).
    spatial = _numel(out) // max(1, out[0] * cout)
    if spatial <= 1:
        cls = "conv_se"
    elif group > 1 and cin_per_group == 1:
        cls = "conv_dw"
    elif group > 1:
        cls = "conv_grouped"
    elif kernel_area == 1:
        cls = "conv_pw"
    elif cin_per_group * kernel_area <= STEM_MAX_REDUCTION and cin_per_group <= 4:
        cls = "conv_stem"
    else:
        cls = "conv_dense"
    strides = node.attrs.get("strides") or node.attrs.get("stride") or [1]
    stride = float(max(strides)) if isinstance(strides, (list, tuple)) else float(strides)
    feats = shape_features(spatial=spatial, cin_per_group=cin_per_group, cout=cout, kernel_area=kernel_area,
                           stride=stride, batch=out[0], channels_aligned=cout % 16 == 0 and (group > 1 or w[1] % 16 == 0))
    act_cls = FUSED_ACTIVATION_CLASS.get(str(node.attrs.get("activation") or ""))
    return NodeWork(cls, macs, macs, _bytes(node), features=feats, weight_bytes=_numel(w) * _dtype_bytes(w_dtype),
                    fused_act=(act_cls, float(_numel(out))) if act_cls else None)


def _gemm(node: ExecNode) -> NodeWork:
    out = node.output_shapes[0] if node.output_shapes else []
    x = node.input_shapes[0] if node.input_shapes else []
    if not out or not x:
        return NodeWork("gemm", 0.0, 0.0, _bytes(node), unknown=True)
    trans_a = bool(node.attrs.get("transA", 0))
    k = x[-2] if trans_a else x[-1]
    n = out[-1]
    macs = float(_numel(out) * k)
    rows = _numel(out) // max(1, n)
    feats = shape_features(spatial=1, cin_per_group=k, cout=n, kernel_area=1, stride=1, batch=rows,
                           channels_aligned=n % 16 == 0 and k % 16 == 0)
    wb = _numel(node.weight_shape) * _dtype_bytes(node.weight_dtype) if node.weight_shape else 0.0
    if rows < GEMV_MAX_ROWS:
        # a few rows (a classifier at small batch): every weight is read for a handful of MACs,
        # so the time follows the weights, not the MACs
        return NodeWork("gemv", float(k * n), macs, _bytes(node), features=feats, weight_bytes=wb)
    return NodeWork("gemm", macs, macs, _bytes(node), features=feats, weight_bytes=wb)


def classify(node: ExecNode) -> NodeWork:
    """The kernel class and work of one executed node."""
    if node.op in CONV_OPS:
        return _conv(node)
    if node.op in GEMM_OPS:
        return _gemm(node)
    cls = OP_CLASS.get(node.op)
    shapes = node.input_shapes + node.output_shapes
    elements = float(max((_numel(s) for s in shapes), default=0))
    if cls == "noop":
        return NodeWork("noop", 0.0, 0.0, 0.0)
    if cls is None:
        return NodeWork("eltwise", elements, 0.0, _bytes(node), unknown=True)
    return NodeWork(cls, elements, 0.0, _bytes(node))


def output_bytes(node: ExecNode) -> float:
    """Bytes a node allocates for its outputs (in-place ATen ops, ``relu_`` etc., allocate none)."""
    if node.domain == "aten" and node.op.endswith("_"):
        return 0.0
    return float(sum(math.prod(sh) * DTYPE_BYTES.get(dt, 4) for sh, dt in zip(node.output_shapes, node.output_dtypes)))


# If a class has no probe points, borrow the fit of a similar class (recorded in the estimate).
CLASS_FALLBACK = {
    "conv_stem": "conv_dense", "conv_grouped": "conv_dw", "conv_se": "gemv",
    "conv_dw": "conv_dense", "conv_pw": "conv_dense", "gemm": "conv_pw", "gemv": "gemm",
    "eltwise_transcendental": "eltwise", "eltwise_hard": "eltwise", "eltwise_q": "eltwise", "norm": "eltwise", "pool": "eltwise",
    "global_pool": "eltwise", "layout": "eltwise", "quant": "eltwise", "noop": "eltwise",
}
