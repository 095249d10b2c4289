"""Per-node MACs, FLOPs and bytes moved on an ONNX graph: one handler per op type.

Convention (every figure fopt prints follows it)
------------------------------------------------
* ``macs``: multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul and of their integer and
  QLinear forms (ConvInteger, MatMulInteger, QLinearConv, QLinearMatMul, ORT's FusedConv/FusedGemm/
  FusedMatMul). Conv: ``output elements x (C_in / groups) x kernel area``. Gemm/MatMul:
  ``output elements x K``. Bias additions are not MACs (fvcore's convention; ptflops adds one per
  output element of a biased layer, which is the whole difference between the two tools).
* ``flops``: ``2 x macs`` for those ops, plus a documented per-element count for everything else
  (`ELEMENTWISE_FLOPS` per output element, `REDUCE_FLOPS` per input element, pooling one per window
  element per output). Pure data movement (Transpose, Concat, Slice, Pad, Cast, ...) is 0 FLOPs but
  moves bytes. One FLOP is one scalar operation; MACs are never called FLOPs.
* Bytes, at the node's precision: float tensors take 4 B (fp32), 2 B (fp16) or 1 B (int8); in
  int8, Conv/Gemm biases take 4 B (int32). Integer tensors keep their real size (int64 shapes 8 B).
  ``bytes_read`` = weights (constant inputs) + input activations, ``bytes_written`` = outputs.
  Reshape-like views (Reshape, Flatten, Squeeze, Unsqueeze) move nothing; Shape reads only
  metadata.
* Params: elements of the constant inputs that are learned: Conv/Gemm/MatMul weights and biases,
  BatchNorm scale and shift (its running mean and variance are buffers: bytes, not params),
  normalisation scales, PRelu slopes, and float constants with more than one element fed to
  element-wise ops (a Linear on a 3-D input exports as MatMul + Add(bias)). A constant used by
  several nodes counts once; the exporter's de-duplication of equal-valued initializers (Identity
  copies) counts per copy, because each copy is a separate parameter in the model.
* Folding the runtime always does is modelled, so that a checkpoint and its exported ONNX file
  give the same compute figures:
  - a BatchNormalization whose only input is a Conv output used by nothing else is ``fused`` into
    that Conv (0 FLOPs, 0 bytes, no node of its own; its params still count, and the bias the
    Conv gains by folding counts in the Conv's weight bytes). The legacy exporter folds exactly
    these.
  - a node whose inputs are all constants (e.g. DequantizeLinear of int8 weights, Identity copies
    of initializers) is ``folded``: computed once at load time, not per inference.
* QDQ INT8 graphs (QuantizeLinear/DequantizeLinear pairs, onnxruntime's default format): a node
  of a type runtimes have integer kernels for (`INT8_CAPABLE`) whose float activation inputs all
  come from DequantizeLinear runs in int8 (its tensors count at
  1 B, its MACs at the device's INT8 rate); a node left between float tensors is a float island at
  the graph's float precision. Activation Q/DQ nodes are counted as the element-wise work they are
  in the graph (QuantizeLinear 3 FLOPs, DequantizeLinear 2 per element, real dtypes on each side):
  runtimes that fuse them into QLinear kernels do less, so for those this is an upper bound.
* ``activation_bytes`` sums every activation tensor written once (plus the graph input); the
  ``peak_activation_bytes`` is a liveness walk over the topologically sorted graph: a tensor lives
  from the node that writes it to its last reader, views share their input's buffer, constants are
  not counted.

No silent zeros: an op type is handled (`HANDLERS`), ignored with a reason (`IGNORED_OPS`), or
reported in ``unsupported`` with its count; a node whose shapes cannot be inferred is reported in
``missing_shapes``. Either makes the status ``partial``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from fopt.errors import InputError, UsageError, first_line

PRECISIONS = ("fp32", "fp16", "int8")
FLOAT_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
MAC_KINDS = frozenset({"conv", "conv_pointwise", "conv_depthwise", "conv_grouped", "conv_transpose",
                       "gemm", "matmul"})

# Kept as initializers (not replaced by typed inputs) for shape inference: shape vectors, axes,
# scalars. Anything larger is a weight whose values analysis never needs.
_SMALL_INITIALIZER = 64


class MissingShape(Exception):
    """A handler needs a tensor shape that shape inference could not provide."""


# ----------------------------------------------------------------------------- tensor bytes

def _onnx_dtype_sizes() -> dict[int, int]:
    from onnx import TensorProto as T

    return {T.FLOAT: 4, T.FLOAT16: 2, T.BFLOAT16: 2, T.DOUBLE: 8, T.INT8: 1, T.UINT8: 1, T.INT16: 2,
            T.UINT16: 2, T.INT32: 4, T.UINT32: 4, T.INT64: 8, T.UINT64: 8, T.BOOL: 1,
            getattr(T, "FLOAT8E4M3FN", 17): 1, getattr(T, "INT4", 22): 1, getattr(T, "UINT4", 21): 1}


def _float_dtypes() -> frozenset[int]:
    from onnx import TensorProto as T

    return frozenset({T.FLOAT, T.FLOAT16, T.BFLOAT16, T.DOUBLE})


def element_bytes(dtype: int, precision: str, role: str | None = None) -> int:
    """Bytes per element of a tensor of ONNX `dtype` read or written by a node at `precision`.

    `precision` is fp32/fp16/int8, or ``real`` for nodes whose tensors keep their stored types
    (Q/DQ, Cast). Unknown dtypes (0) are treated as float.
    """
    sizes = _onnx_dtype_sizes()
    is_float = dtype == 0 or dtype in _float_dtypes()
    if not is_float or precision == "real":
        return sizes.get(dtype, 4)
    if precision == "int8":
        return 4 if role == "bias" else 1
    return FLOAT_BYTES[precision]


# ----------------------------------------------------------------------------- graph view

@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...] | None
    dtype: int
    const: bool

    @property
    def numel(self) -> int:
        if self.shape is None:
            raise MissingShape(self.name)
        return math.prod(self.shape)


@dataclass
class NodeView:
    """What a handler sees of one node: attributes and typed, shaped inputs and outputs."""

    op_type: str
    name: str
    domain: str
    attrs: dict[str, Any]
    inputs: list[TensorInfo | None]   # None where an optional input is omitted
    outputs: list[TensorInfo | None]

    def inp(self, i: int) -> TensorInfo | None:
        return self.inputs[i] if i < len(self.inputs) else None

    def shape_in(self, i: int = 0) -> tuple[int, ...]:
        t = self.inp(i)
        if t is None or t.shape is None:
            raise MissingShape(f"{self.name} input {i}")
        return t.shape

    def shape_out(self, i: int = 0) -> tuple[int, ...]:
        t = self.outputs[i] if i < len(self.outputs) else None
        if t is None or t.shape is None:
            raise MissingShape(f"{self.name} output {i}")
        return t.shape

    def out_numel(self, i: int = 0) -> int:
        return math.prod(self.shape_out(i))

    def in_numel(self, i: int = 0) -> int:
        return math.prod(self.shape_in(i))


@dataclass
class OpCost:
    """What a handler returns. Bytes are derived by the engine from the roles and flags here."""

    kind: str
    macs: int = 0
    flops: int = 0
    roles: dict[int, str] = field(default_factory=dict)  # input index -> param|bias|buffer|qparam|const
    reads_inputs: bool = True     # False: metadata only (Shape) or a view
    writes_outputs: bool = True   # False: a view of its input
    alias: bool = False           # output 0 shares input 0's buffer (views)
    details: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[NodeView], OpCost]
HANDLERS: dict[str, Handler] = {}


def handles(*op_types: str):
    def deco(fn: Handler) -> Handler:
        for op in op_types:
            if op in HANDLERS:
                raise ValueError(f"handler for {op} registered twice")
            HANDLERS[op] = fn
        return fn
    return deco


# Op types that do no per-inference work, with the reason. (Nodes whose inputs are all constants
# are also skipped, as "<constant-foldable>", whatever their type.)
IGNORED_OPS: dict[str, str] = {
    "Identity": "alias of its input; every runtime removes it",
    "Dropout": "identity at inference; removed by every runtime",
    "Constant": "a literal stored in the graph, materialised once at load time",
    "ConstantOfShape": "fills a constant; folded at load time when its shape is static",
    "Optional": "wraps a value; no arithmetic",
}
CONSTANT_FOLDABLE = "<constant-foldable>"
CONSTANT_FOLDABLE_REASON = "all inputs are constants: computed once at load time, not per inference"
FUSED_BN_REASON = "BatchNormalization after a Conv is folded into the Conv's weights and bias"

# FLOPs per output element, by op type (one scalar operation = 1). Rough but fixed and documented:
# Sigmoid = neg, exp, add, reciprocal; HardSigmoid = mul, add, max, min; HardSwish = HardSigmoid
# + mul; BatchNormalization = one multiply and one add (scale and shift precomputed); Layer/
# Instance/GroupNorm = mean, variance, normalise, scale, shift; QLinear element-wise ops = the
# float op + 3 for requantisation.
ELEMENTWISE_FLOPS: dict[str, int] = {
    **dict.fromkeys(["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Mod",
                     "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or",
                     "Xor", "Not", "Where", "BitShift"], 1),
    **dict.fromkeys(["Relu", "Abs", "Neg", "Sign", "Floor", "Ceil", "Round", "Reciprocal", "Sqrt",
                     "Exp", "Log", "Erf", "Sin", "Cos", "Tan", "IsNaN", "IsInf",
                     "ThresholdedRelu"], 1),
    "LeakyRelu": 2, "PRelu": 2, "Clip": 2, "Shrink": 2,
    "Sigmoid": 4, "Tanh": 4, "HardSigmoid": 4, "HardSwish": 5, "Elu": 4, "Celu": 4, "Selu": 5,
    "Softplus": 3, "Softsign": 3, "Mish": 8, "Gelu": 8, "FastGelu": 8, "QuickGelu": 5,
    "BiasGelu": 9,
    "BatchNormalization": 2, "InstanceNormalization": 5, "LayerNormalization": 5,
    "GroupNormalization": 5, "LpNormalization": 3, "MeanVarianceNormalization": 5,
    "SkipLayerNormalization": 6, "SimplifiedLayerNormalization": 4,
    "QuantizeLinear": 3, "DequantizeLinear": 2,
    "QLinearAdd": 4, "QLinearMul": 4, "QLinearSigmoid": 7, "QLinearLeakyRelu": 5,
    "QLinearSoftmax": 8,
    "Softmax": 5, "LogSoftmax": 6, "Hardmax": 2,
}
# FLOPs per input element of reductions.
REDUCE_FLOPS: dict[str, int] = {
    **dict.fromkeys(["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
                     "ArgMax", "ArgMin", "GlobalAveragePool", "GlobalMaxPool",
                     "QLinearGlobalAveragePool"], 1),
    "ReduceL1": 2, "ReduceL2": 2, "ReduceSumSquare": 2, "ReduceLogSum": 1, "ReduceLogSumExp": 2,
    "GlobalLpPool": 2, "DynamicQuantizeLinear": 5,
}
DATA_OPS = ("Transpose", "Concat", "Slice", "Split", "Pad", "Gather", "GatherElements", "GatherND",
            "Tile", "Expand", "Cast", "CastLike", "DepthToSpace", "SpaceToDepth", "ReorderInput",
            "ReorderOutput", "QLinearConcat", "Range", "Trilu", "ScatterND", "ScatterElements",
            "Compress", "ReverseSequence", "EyeLike", "OneHot", "NonZero", "Unique")
VIEW_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


# ----------------------------------------------------------------------------- handler helpers

def _attr_ints(n: NodeView, key: str, default: Iterable[int]) -> list[int]:
    v = n.attrs.get(key)
    return list(v) if v is not None else list(default)


def _const_roles(n: NodeView, roles: dict[int, str]) -> dict[int, str]:
    """`roles` for the given indices where those inputs are constants; others are activations."""
    return {i: r for i, r in roles.items() if (t := n.inp(i)) is not None and t.const}


def _conv_kind(weight_shape: tuple[int, ...], group: int) -> str:
    cin_per_group = weight_shape[1]
    if group > 1 and cin_per_group == 1:
        return "conv_depthwise"
    if group > 1:
        return "conv_grouped"
    if all(k == 1 for k in weight_shape[2:]):
        return "conv_pointwise"
    return "conv"


def _conv_cost(n: NodeView, w_idx: int, b_idx: int | None, extra: dict[int, str] | None = None,
               act_flops_per_elem: int = 0) -> OpCost:
    w = n.inp(w_idx)
    if w is None or w.shape is None:
        raise MissingShape(f"{n.name} weight")
    out = n.shape_out(0)
    group = int(n.attrs.get("group", 1))
    macs = math.prod(out) * math.prod(w.shape[1:])
    roles = {w_idx: "param"}
    if b_idx is not None:
        roles[b_idx] = "bias"
    roles.update(extra or {})
    spatial = w.shape[2:]
    details = {"kernel": list(spatial), "stride": _attr_ints(n, "strides", [1] * len(spatial)),
               "dilation": _attr_ints(n, "dilations", [1] * len(spatial)), "groups": group,
               "c_in": w.shape[1] * group, "c_out": w.shape[0]}
    return OpCost(_conv_kind(w.shape, group), macs=macs,
                  flops=2 * macs + act_flops_per_elem * math.prod(out),
                  roles=_const_roles(n, roles), details=details)


# ----------------------------------------------------------------------------- handlers

@handles("Conv")
def _conv(n: NodeView) -> OpCost:
    return _conv_cost(n, 1, 2)


@handles("FusedConv")  # onnxruntime contrib: Conv + activation (+ optional residual Add)
def _fused_conv(n: NodeView) -> OpCost:
    act = n.attrs.get("activation", b"")
    act = act.decode() if isinstance(act, bytes) else str(act)
    per = ELEMENTWISE_FLOPS.get(act, 1) + (1 if n.inp(3) is not None else 0)
    return _conv_cost(n, 1, 2, act_flops_per_elem=per)


@handles("ConvInteger")
def _conv_integer(n: NodeView) -> OpCost:
    return _conv_cost(n, 1, None, extra={2: "qparam", 3: "qparam"})


@handles("QLinearConv")
def _qlinear_conv(n: NodeView) -> OpCost:
    # inputs: x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, B
    q = {i: "qparam" for i in (1, 2, 4, 5, 6, 7)}
    return _conv_cost(n, 3, 8, extra=q)


@handles("ConvTranspose")
def _conv_transpose(n: NodeView) -> OpCost:
    w = n.inp(1)
    if w is None or w.shape is None:
        raise MissingShape(f"{n.name} weight")
    group = int(n.attrs.get("group", 1))
    # every input element is multiplied into C_out/group x kernel outputs
    macs = n.in_numel(0) * math.prod(w.shape[1:])
    details = {"kernel": list(w.shape[2:]), "stride": _attr_ints(n, "strides", [1] * (len(w.shape) - 2)),
               "groups": group, "c_in": w.shape[0], "c_out": w.shape[1] * group}
    return OpCost("conv_transpose", macs=macs, flops=2 * macs,
                  roles=_const_roles(n, {1: "param", 2: "bias"}), details=details)


def _matmul_cost(n: NodeView, a_idx: int, b_idx: int, extra: dict[int, str] | None = None,
                 bias_idx: int | None = None) -> OpCost:
    a = n.shape_in(a_idx)
    k = a[-1] if len(a) > 1 else a[0]
    macs = n.out_numel(0) * k
    roles = {a_idx: "param", b_idx: "param"}
    if bias_idx is not None:
        roles[bias_idx] = "bias"
    roles.update(extra or {})
    b = n.inp(b_idx)
    a_t = n.inp(a_idx)
    # a product of two activations mixes positions (attention): receptive.py reads this flag
    both_act = bool(a_t is not None and b is not None and not a_t.const and not b.const)
    return OpCost("matmul", macs=macs, flops=2 * macs, roles=_const_roles(n, roles),
                  details={"k": k, "activation_product": both_act})


@handles("MatMul", "FusedMatMul")
def _matmul(n: NodeView) -> OpCost:
    cost = _matmul_cost(n, 0, 1)
    if n.op_type == "FusedMatMul" and int(n.attrs.get("transA", 0)):
        cost.macs = n.out_numel(0) * n.shape_in(0)[-2]
        cost.flops = 2 * cost.macs
    return cost


@handles("MatMulInteger")
def _matmul_integer(n: NodeView) -> OpCost:
    return _matmul_cost(n, 0, 1, extra={2: "qparam", 3: "qparam"})


@handles("QLinearMatMul")
def _qlinear_matmul(n: NodeView) -> OpCost:
    return _matmul_cost(n, 0, 3, extra={i: "qparam" for i in (1, 2, 4, 5, 6, 7)})


@handles("QGemm")  # onnxruntime contrib: A, a_scale, a_zp, B, b_scale, b_zp, C, y_scale, y_zp
def _qgemm(n: NodeView) -> OpCost:
    a = n.shape_in(0)
    k = a[0] if int(n.attrs.get("transA", 0)) else a[-1]
    macs = n.out_numel(0) * k
    roles = {0: "param", 3: "param", 6: "bias", **{i: "qparam" for i in (1, 2, 4, 5, 7, 8)}}
    return OpCost("gemm", macs=macs, flops=2 * macs, roles=_const_roles(n, roles), details={"k": k})


@handles("Gemm", "FusedGemm")
def _gemm(n: NodeView) -> OpCost:
    a = n.shape_in(0)
    k = a[0] if int(n.attrs.get("transA", 0)) else a[-1]
    macs = n.out_numel(0) * k
    cost = OpCost("gemm", macs=macs, flops=2 * macs,
                  roles=_const_roles(n, {0: "param", 1: "param", 2: "bias"}), details={"k": k})
    a_t, b_t = n.inp(0), n.inp(1)
    cost.details["activation_product"] = bool(a_t and b_t and not a_t.const and not b_t.const)
    return cost


def _elementwise(n: NodeView) -> OpCost:
    per = ELEMENTWISE_FLOPS[n.op_type]
    roles: dict[int, str] = {}
    for i, t in enumerate(n.inputs):
        if t is None or not t.const:
            continue
        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearAdd", "QLinearMul",
                         "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax"):
            roles[i] = "qparam" if t.shape is None or math.prod(t.shape) <= 4096 else "param"
        elif n.op_type == "BatchNormalization":
            roles[i] = {1: "param", 2: "param", 3: "buffer", 4: "buffer"}.get(i, "const")
        elif n.op_type in ("PRelu", "InstanceNormalization", "LayerNormalization",
                           "GroupNormalization", "SkipLayerNormalization",
                           "SimplifiedLayerNormalization"):
            roles[i] = "param"
        elif t.dtype in _float_dtypes() and t.shape is not None and math.prod(t.shape) > 1:
            roles[i] = "param"   # learned tensors exported as Add/Mul operands (bias, layer scale)
        else:
            roles[i] = "const"
    kind = {"BatchNormalization": "norm", "InstanceNormalization": "norm",
            "LayerNormalization": "norm", "GroupNormalization": "norm",
            "QuantizeLinear": "quant", "DequantizeLinear": "quant"}.get(n.op_type, "elementwise")
    if n.op_type in ("Softmax", "LogSoftmax", "Hardmax", "QLinearSoftmax"):
        kind = "softmax"
    return OpCost(kind, flops=per * n.out_numel(0), roles=roles)


for _op in ELEMENTWISE_FLOPS:
    HANDLERS[_op] = _elementwise


def _reduce(n: NodeView) -> OpCost:
    per = REDUCE_FLOPS[n.op_type]
    kind = "quant" if n.op_type == "DynamicQuantizeLinear" else "reduce"
    if n.op_type.startswith("Global") or n.op_type.startswith("QLinearGlobal"):
        kind = "global_pool"
    roles = {i: "const" for i, t in enumerate(n.inputs) if t is not None and t.const}
    if n.op_type == "QLinearGlobalAveragePool":
        roles = {i: "qparam" for i in roles}
    return OpCost(kind, flops=per * n.in_numel(0), roles=roles)


for _op in REDUCE_FLOPS:
    HANDLERS[_op] = _reduce


@handles("MaxPool", "AveragePool", "LpPool", "QLinearAveragePool")
def _pool(n: NodeView) -> OpCost:
    kernel = _attr_ints(n, "kernel_shape", [])
    if not kernel:
        raise MissingShape(f"{n.name} has no kernel_shape")
    per = math.prod(kernel) * (2 if n.op_type == "LpPool" else 1)
    details = {"kernel": kernel, "stride": _attr_ints(n, "strides", [1] * len(kernel)),
               "dilation": _attr_ints(n, "dilations", [1] * len(kernel))}
    roles = {i: "qparam" for i, t in enumerate(n.inputs) if t is not None and t.const}
    return OpCost("pool", flops=per * n.out_numel(0), roles=roles, details=details)


@handles(*DATA_OPS)
def _data(n: NodeView) -> OpCost:
    for t in n.outputs:
        if t is not None and t.shape is None:
            raise MissingShape(f"{n.name} output")
    roles = {i: "const" for i, t in enumerate(n.inputs) if t is not None and t.const}
    return OpCost("data", roles=roles)


@handles("Resize", "Upsample")
def _resize(n: NodeView) -> OpCost:
    mode = n.attrs.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    # interpolation weights applied per output element: bilinear 2-D ~ 4 mul + 3 add + index math
    per = {"nearest": 0, "linear": 8, "cubic": 32}.get(mode, 8)
    roles = {i: "const" for i, t in enumerate(n.inputs) if t is not None and t.const}
    return OpCost("data" if per == 0 else "elementwise", flops=per * n.out_numel(0), roles=roles,
                  details={"mode": mode})


@handles(*VIEW_OPS)
def _view(n: NodeView) -> OpCost:
    roles = {i: "const" for i, t in enumerate(n.inputs) if t is not None and t.const}
    return OpCost("view", roles=roles, reads_inputs=False, writes_outputs=False, alias=True)


@handles("Shape", "Size")
def _shape(n: NodeView) -> OpCost:
    return OpCost("shape", reads_inputs=False)


# ----------------------------------------------------------------------------- graph preparation

@dataclass
class PreparedGraph:
    """A weight-free copy of the model with concrete shapes, plus what the counts need."""

    model: Any                                  # onnx.ModelProto without large initializer data
    const_names: frozenset[str]                 # initializers (data stripped or not)
    input_shape: tuple[int, ...]                # the first activation input, concrete
    batch: int
    img_size: int | None


def strip_weights(model) -> tuple[Any, frozenset[str]]:
    """A copy of `model` whose large initializers are typed graph inputs (no data).

    Shape inference on VGG-16 takes 4 s with its 528 MB of weights and 0.05 s without them; only
    small constants (shape vectors, axes, scalars) carry values that inference needs.
    """
    import onnx
    from onnx import helper

    g = model.graph
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.graph.name = g.name
    light.graph.node.extend(g.node)
    light.graph.input.extend(g.input)
    light.graph.output.extend(g.output)
    light.functions.extend(model.functions)
    existing_inputs = {i.name for i in g.input}
    const_names = set()
    for init in g.initializer:
        const_names.add(init.name)
        if math.prod(init.dims) <= _SMALL_INITIALIZER:
            light.graph.initializer.append(init)
            continue
        if init.name in existing_inputs:  # old-style models list initializers as inputs too
            continue
        light.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    for sparse in g.sparse_initializer:
        const_names.add(sparse.values.name)
        light.graph.input.append(helper.make_tensor_value_info(
            sparse.values.name, sparse.values.data_type, list(sparse.dims)))
    if light.functions:
        from onnx import inliner

        light = inliner.inline_local_functions(light)
    return light, frozenset(const_names)


def _dims(value_info) -> list[Any] | None:
    t = value_info.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    out: list[Any] = []
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or None)
    return out


def activation_inputs(model, const_names: Iterable[str]) -> list[Any]:
    consts = set(const_names)
    return [i for i in model.graph.input if i.name not in consts]


def prepare_graph(model, *, batch: int | None = None, img_size: int | None = None) -> PreparedGraph:
    """Strip weights, make every input dimension concrete and run ONNX shape inference."""
    light, consts = strip_weights(model)
    return concretize(light, consts, batch=batch, img_size=img_size)


def concretize(stripped, consts: frozenset[str], *, batch: int | None = None,
               img_size: int | None = None) -> PreparedGraph:
    """Shape-infer a copy of a stripped model with every input dimension made concrete.

    The batch dimension (dim 0) becomes `batch` (default: the graph's own static batch, else 1);
    symbolic spatial dims of a 4-D input become `img_size`. A conflict with a static dimension is
    a UsageError, not a silent change.
    """
    import onnx

    light = onnx.ModelProto()
    light.CopyFrom(stripped)
    inputs = activation_inputs(light, consts)
    if not inputs:
        raise InputError("the ONNX graph has no activation input")
    symbols: dict[str, int] = {}
    first_shape: tuple[int, ...] | None = None
    for vi in inputs:
        dims = _dims(vi)
        if dims is None:
            raise InputError(f"ONNX input {vi.name!r} has no shape")
        new = list(dims)
        for axis, d in enumerate(dims):
            if isinstance(d, int):
                if axis == 0 and batch is not None and d != batch:
                    raise UsageError(f"the ONNX input {vi.name!r} has a fixed batch of {d}; "
                                     f"pass --batch {d} (or export with a dynamic batch)")
                if len(dims) == 4 and axis >= 2 and img_size is not None and d != img_size:
                    raise UsageError(f"the ONNX input {vi.name!r} is fixed at {dims[2]}x{dims[3]} px; "
                                     f"drop --img-size or pass --img-size {d}")
                continue
            if axis == 0:
                value = batch if batch is not None else 1
            elif len(dims) == 4 and axis >= 2 and img_size is not None:
                value = img_size
            elif d in symbols:
                value = symbols[d]
            else:
                what = "spatial size" if len(dims) == 4 and axis >= 2 else f"dimension {axis}"
                hint = "pass --img-size N" if what == "spatial size" else "export with static shapes"
                raise UsageError(f"the ONNX input {vi.name!r} has a symbolic {what} ({d or '?'}); {hint}")
            if d:
                symbols[d] = value
            new[axis] = value
        shape_proto = vi.type.tensor_type.shape
        for axis, value in enumerate(new):
            shape_proto.dim[axis].Clear()
            shape_proto.dim[axis].dim_value = int(value)
        if first_shape is None:
            first_shape = tuple(int(v) for v in new)
    assert first_shape is not None
    for out in light.graph.output:
        out.type.tensor_type.ClearField("shape")
    del light.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False,
                                                     data_prop=True)
    except Exception as e:  # onnx raises several types for malformed graphs
        first = first_line(e)
        raise InputError(f"ONNX shape inference failed: {first}") from e
    inferred = _contrib_shape_pass(inferred)
    real_batch = first_shape[0]
    size = first_shape[2] if len(first_shape) == 4 and first_shape[2] == first_shape[3] else img_size
    return PreparedGraph(inferred, consts, first_shape, real_batch, size)


# onnxruntime contrib ops -> a standard op with the same output shape (inputs by index), so that
# ONNX shape inference can see through graphs saved by ORT's optimizer at the portable "extended"
# level. NCHWc graphs (level "all") use blocked layouts and are not covered.
_SHAPE_STANDINS: dict[str, tuple[str, tuple[int, ...], tuple[str, ...]]] = {
    "FusedConv": ("Conv", (0, 1, 2), ("activation", "activation_params")),
    "FusedGemm": ("Gemm", (0, 1, 2), ("activation", "activation_alpha", "activation_beta",
                                      "activation_gamma")),
    "QGemm": ("Gemm", (0, 3, 6), ()),
    "QLinearAdd": ("Add", (0, 3), ()),
    "QLinearMul": ("Mul", (0, 3), ()),
    "QLinearSigmoid": ("Identity", (0,), ("alpha",)),
    "QLinearLeakyRelu": ("Identity", (0,), ("alpha",)),
    "QLinearSoftmax": ("Identity", (0,), ("axis", "opset")),
    "QuickGelu": ("Identity", (0,), ("alpha",)),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", (0,), ("channels_last",)),
}


def _contrib_shape_pass(model):
    """Run ONNX inference on a copy whose contrib nodes are stand-ins; keep the shapes it finds."""
    import onnx

    if not any(n.op_type in _SHAPE_STANDINS and n.domain == "com.microsoft" for n in model.graph.node):
        return model
    shadow = onnx.ModelProto()
    shadow.CopyFrom(model)
    del shadow.graph.node[:]
    for n in model.graph.node:
        standin = _SHAPE_STANDINS.get(n.op_type) if n.domain == "com.microsoft" else None
        if standin is None or (n.op_type == "QLinearGlobalAveragePool" and any(
                a.name == "channels_last" and a.i for a in n.attribute)):
            shadow.graph.node.append(n)
            continue
        op, idx, drop = standin
        new = shadow.graph.node.add()
        new.op_type, new.name, new.domain = op, n.name, ""
        new.input.extend(n.input[i] if i < len(n.input) else "" for i in idx)
        while new.input and not new.input[-1]:
            del new.input[-1]
        new.output.extend(n.output[:1])
        new.attribute.extend(a for a in n.attribute if a.name not in drop)
    try:
        inferred = onnx.shape_inference.infer_shapes(shadow, check_type=False, strict_mode=False,
                                                     data_prop=True)
    except Exception:  # noqa: BLE001 - a refinement only: the holes are reported as missing shapes
        return model
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    return model


# ----------------------------------------------------------------------------- the counting engine

@dataclass
class Layer:
    """One ONNX node's counts (bytes at the node's precision)."""

    name: str
    op_type: str
    kind: str
    status: str              # counted | fused | folded | ignored | unsupported | no_shape
    precision: str           # compute precision: fp32 | fp16 | int8
    output_shape: list[int] | None
    params: int = 0
    macs: int = 0
    flops: int = 0
    weight_bytes: int = 0
    input_bytes: int = 0
    output_bytes: int = 0
    executes: bool = True    # a node the runtime schedules (costs per-node overhead)
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    rf: dict[str, Any] | None = None   # filled by receptive.py

    @property
    def bytes_read(self) -> int:
        return self.weight_bytes + self.input_bytes

    @property
    def bytes_written(self) -> int:
        return self.output_bytes

    @property
    def bytes_moved(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def intensity(self) -> float | None:
        """Arithmetic intensity, FLOPs per byte moved (None when nothing moves)."""
        return self.flops / self.bytes_moved if self.bytes_moved else None

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "op_type": self.op_type, "kind": self.kind, "status": self.status,
             "precision": self.precision, "output_shape": self.output_shape, "params": self.params,
             "macs": self.macs, "flops": self.flops, "weight_bytes": self.weight_bytes,
             "input_bytes": self.input_bytes, "bytes_read": self.bytes_read,
             "bytes_written": self.bytes_written, "intensity": self.intensity,
             "executes": self.executes}
        if self.note:
            d["note"] = self.note
        if self.details:
            d["details"] = self.details
        if self.rf is not None:
            d["receptive_field"] = self.rf
        return d


@dataclass
class GraphCount:
    layers: list[Layer]
    precision: str
    batch: int
    input_shape: tuple[int, ...]
    quantized: bool
    params: int
    macs: int
    flops: int
    weight_bytes: int
    activation_bytes: int
    peak_activation_bytes: int
    unsupported: dict[str, int]
    missing_shapes: dict[str, int]
    ignored: dict[str, int]
    index: "GraphIndex" = field(repr=False, default=None)  # type: ignore[assignment]

    @property
    def status(self) -> str:
        return "partial" if self.unsupported or self.missing_shapes else "complete"

    @property
    def bytes_read(self) -> int:
        return sum(layer.bytes_read for layer in self.layers)

    @property
    def bytes_written(self) -> int:
        return sum(layer.bytes_written for layer in self.layers)

    @property
    def n_executed(self) -> int:
        return sum(layer.executes for layer in self.layers)


QUANT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QGemm",
                       "ConvInteger", "MatMulInteger", "QLinearMatMul", "QLinearAdd", "QLinearMul",
                       "QLinearSigmoid", "QLinearGlobalAveragePool", "QLinearConcat",
                       "QLinearAveragePool", "QLinearLeakyRelu", "QLinearSoftmax"})
INTEGER_OPS = QUANT_OPS - {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
# Op types that runtimes execute on int8 data when Q/DQ surround them (onnxruntime's QDQ
# selectors and TensorRT's quantized layers); others (HardSwish, HardSigmoid, LayerNorm, ...) stay
# float islands between a DequantizeLinear and a QuantizeLinear.
INT8_CAPABLE = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Sigmoid",
                          "LeakyRelu", "Relu", "Clip", "AveragePool", "GlobalAveragePool", "MaxPool",
                          "Concat", "Resize", "Transpose", "Reshape", "Flatten", "Squeeze",
                          "Unsqueeze", "Split", "Slice", "Gather", "Pad", "Softmax", "Where",
                          "ArgMax", "DepthToSpace", "SpaceToDepth", "InstanceNormalization"})
REAL_DTYPE_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Cast",
                            "CastLike"})


def graph_precision(model) -> str:
    """The precision a graph was built for: int8 (has Q/DQ or integer ops), fp16 or fp32."""
    from onnx import TensorProto as T

    if any(n.op_type in QUANT_OPS for n in model.graph.node):
        return "int8"
    return "fp16" if _float_type(model) == T.FLOAT16 else "fp32"


def _float_type(model) -> int:
    """The float type most weight elements use (FLOAT unless float16 dominates)."""
    from onnx import TensorProto as T

    counts: Counter[int] = Counter()
    for init in model.graph.initializer:
        if init.data_type in (T.FLOAT, T.FLOAT16):
            counts[init.data_type] += math.prod(init.dims)
    for vi in model.graph.input:
        et = vi.type.tensor_type.elem_type
        if et in (T.FLOAT, T.FLOAT16):
            counts[et] += math.prod(d.dim_value or 1 for d in vi.type.tensor_type.shape.dim)
    return T.FLOAT16 if counts[T.FLOAT16] > counts[T.FLOAT] else T.FLOAT


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def topo_order(nodes: list[Any], available: set[str]) -> list[Any]:
    """Kahn's algorithm, stable in file order (ONNX requires sorted graphs; not all files are)."""
    producers: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                producers[o] = i
    deps: list[set[int]] = []
    users: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        d = {producers[x] for x in n.input if x and x in producers and x not in available}
        d.discard(i)
        deps.append(d)
        for j in d:
            users.setdefault(j, []).append(i)
    import heapq

    ready = [i for i, d in enumerate(deps) if not d]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, []):
            deps[u].discard(i)
            if not deps[u]:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise InputError("the ONNX graph has a cycle")
    return [nodes[i] for i in order]


class GraphIndex:
    """Shapes, dtypes, producers, consumers and constant-ness of every tensor of a prepared graph."""

    def __init__(self, prepared: PreparedGraph):
        g = prepared.model.graph
        self.prepared = prepared
        self.shapes: dict[str, tuple[int, ...] | None] = {}
        self.dtypes: dict[str, int] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            dims = _dims(vi)
            ok = dims is not None and all(isinstance(d, int) and d >= 0 for d in dims)
            if ok or vi.name not in self.shapes:
                self.shapes[vi.name] = tuple(dims) if ok else None  # type: ignore[arg-type]
            self.dtypes[vi.name] = vi.type.tensor_type.elem_type
        for init in g.initializer:
            self.shapes[init.name] = tuple(int(d) for d in init.dims)
            self.dtypes[init.name] = init.data_type
        graph_inputs = {i.name for i in g.input}
        self.graph_outputs = {o.name for o in g.output}
        self.nodes = topo_order(list(g.node), graph_inputs | set(prepared.const_names))
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[Any]] = {}
        for n in self.nodes:
            for o in n.output:
                if o:
                    self.producer[o] = n
            for x in n.input:
                if x:
                    self.consumers.setdefault(x, []).append(n)
        self.const: set[str] = set(prepared.const_names)
        for n in self.nodes:
            real_inputs = [x for x in n.input if x]
            if n.op_type in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                             "Multinomial", "Bernoulli"):
                continue
            if all(x in self.const for x in real_inputs):
                self.const.update(o for o in n.output if o)
        self.act_inputs = [i.name for i in g.input if i.name not in self.const]

    def tensor(self, name: str) -> TensorInfo | None:
        if not name:
            return None
        return TensorInfo(name, self.shapes.get(name), self.dtypes.get(name, 0), name in self.const)

    def view(self, node) -> NodeView:
        return NodeView(node.op_type, node.name or f"{node.op_type}_{id(node)}", node.domain,
                        _attrs(node), [self.tensor(x) for x in node.input],
                        [self.tensor(x) for x in node.output])


def _node_name(node, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def _fused_batchnorms(idx: GraphIndex) -> dict[str, Any]:
    """BatchNormalization nodes that the Conv before them absorbs: name -> that Conv node."""
    fused = {}
    for n in idx.nodes:
        if n.op_type != "BatchNormalization" or not n.input:
            continue
        src = idx.producer.get(n.input[0])
        if src is None or src.op_type not in ("Conv", "ConvTranspose", "FusedConv"):
            continue
        if len(idx.consumers.get(n.input[0], [])) != 1 or n.input[0] in idx.graph_outputs:
            continue
        if any(x not in idx.const for x in n.input[1:] if x):
            continue
        fused[id(n)] = src
    return fused


def _node_precision(idx: GraphIndex, node, precision: str, quantized: bool, float_precision: str) -> str:
    """Precision at which a node's float tensors are counted (see the module docstring)."""
    if node.op_type in REAL_DTYPE_OPS:
        return "real"
    if not quantized:
        return precision
    if node.op_type in INTEGER_OPS:
        return "int8"
    float_acts = []
    for x in node.input:
        if not x or x in idx.const:
            continue
        dt = idx.dtypes.get(x, 0)
        if dt in (2, 3):  # UINT8, INT8 activations: a QOperator-format integer path
            return "int8"
        float_acts.append(x)
    if node.op_type in INT8_CAPABLE and float_acts and all(
            (p := idx.producer.get(x)) is not None and p.op_type == "DequantizeLinear" for x in float_acts):
        return "int8"
    return float_precision


def count_graph(prepared: PreparedGraph, precision: str | None = None) -> GraphCount:
    """Count every node of a prepared graph at `precision` (None: the graph's own)."""
    idx = GraphIndex(prepared)
    native = graph_precision(prepared.model)
    precision = precision or native
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    quantized = native == "int8"
    if quantized and precision != "int8":
        raise UsageError(f"this is an INT8 (quantized) graph; it is counted at int8: pass "
                         f"--precision int8 or leave --precision out (got {precision})")
    if native == "fp16" and precision != "fp16":
        raise UsageError(f"this is an FP16 graph; pass --precision fp16 or leave it out (got {precision})")
    from onnx import TensorProto as T

    float_precision = "fp16" if _float_type(prepared.model) == T.FLOAT16 else "fp32"
    fused = _fused_batchnorms(idx)
    names = {id(n): _node_name(n, i) for i, n in enumerate(idx.nodes)}
    conv_has_bias = {id(c): len(c.input) > 2 and bool(c.input[2]) for c in fused.values()}
    layer_of: dict[int, Layer] = {}

    layers: list[Layer] = []
    unsupported: Counter[str] = Counter()
    missing: Counter[str] = Counter()
    ignored: Counter[str] = Counter()
    param_seen: set[str] = set()
    weight_seen: set[str] = set()
    params_total = weight_bytes_total = 0
    alias_of: dict[str, str] = {}      # view output -> base tensor
    out_bytes: dict[str, int] = {}     # activation tensor -> bytes written

    for i, node in enumerate(idx.nodes):
        name = names[id(node)]
        nprec = _node_precision(idx, node, precision, quantized, float_precision)
        compute_prec = float_precision if nprec == "real" else nprec
        out0 = idx.shapes.get(node.output[0]) if node.output else None
        layer = Layer(name, node.op_type, "other", "counted", compute_prec,
                      list(out0) if out0 is not None else None)
        layers.append(layer)
        layer_of[id(node)] = layer
        outputs_const = all(o in idx.const for o in node.output if o)

        if node.op_type in IGNORED_OPS:
            layer.kind, layer.status, layer.executes = "ignored", "ignored", False
            layer.note = IGNORED_OPS[node.op_type]
            ignored[node.op_type] += 1
            if node.input and node.input[0] and not outputs_const:
                alias_of[node.output[0]] = alias_of.get(node.input[0], node.input[0])
            continue
        if outputs_const and node.op_type != "Shape":
            layer.kind, layer.status, layer.executes = "folded", "folded", False
            layer.note = CONSTANT_FOLDABLE_REASON
            ignored[CONSTANT_FOLDABLE] += 1
            continue
        view = idx.view(node)
        view.name = name
        if id(node) in fused:
            conv = fused[id(node)]
            layer.kind, layer.status, layer.executes = "fused", "fused", False
            layer.note = FUSED_BN_REASON + f" ({names[id(conv)]})"
            alias_of[node.output[0]] = alias_of.get(node.input[0], node.input[0])
            for j in (1, 2):
                t = view.inp(j)
                if t is not None and t.shape is not None:
                    layer.params += t.numel
                    if t.name not in param_seen:
                        param_seen.add(t.name)
                        params_total += t.numel
            shift = view.inp(2)
            if not conv_has_bias[id(conv)] and shift is not None and shift.shape is not None:
                # the bias the Conv gains by folding (its weights are rewritten in place, same size):
                # the Conv reads it, exactly as in the exported, folded graph
                nbytes = shift.numel * element_bytes(shift.dtype, nprec, "bias")
                layer_of[id(conv)].weight_bytes += nbytes
                weight_bytes_total += nbytes
            continue
        handler = HANDLERS.get(node.op_type)
        if handler is None:
            layer.kind, layer.status = "unsupported", "unsupported"
            layer.note = f"no handler for {node.op_type} (domain {node.domain or 'ai.onnx'})"
            unsupported[node.op_type] += 1
            for o in node.output:
                t = idx.tensor(o)
                if t is not None and t.shape is not None and not t.const:
                    out_bytes[o] = t.numel * element_bytes(t.dtype, nprec)
            continue
        try:
            cost = handler(view)
        except MissingShape as e:
            layer.kind, layer.status = "no_shape", "no_shape"
            layer.note = f"shape unknown: {e}"
            missing[node.op_type] += 1
            continue
        layer.kind, layer.macs, layer.flops = cost.kind, cost.macs, cost.flops
        layer.details = cost.details
        try:
            for j, t in enumerate(view.inputs):
                if t is None:
                    continue
                if t.const:
                    role = cost.roles.get(j, "const")
                    nbytes = t.numel * element_bytes(t.dtype, nprec, role)
                    if role in ("param", "bias"):
                        layer.params += t.numel
                        if t.name not in param_seen:
                            param_seen.add(t.name)
                            params_total += t.numel
                    if cost.reads_inputs:
                        layer.weight_bytes += nbytes
                    if t.name not in weight_seen:
                        weight_seen.add(t.name)
                        weight_bytes_total += nbytes
                elif cost.reads_inputs:
                    layer.input_bytes += t.numel * element_bytes(t.dtype, nprec)
            for t in view.outputs:
                if t is None:
                    continue
                nbytes = t.numel * element_bytes(t.dtype, nprec)
                if cost.writes_outputs:
                    layer.output_bytes += nbytes
                    out_bytes[t.name] = nbytes
        except MissingShape as e:
            layer.status, layer.note = "no_shape", f"shape unknown: {e}"
            missing[node.op_type] += 1
        if cost.alias and node.input and node.output:
            alias_of[node.output[0]] = alias_of.get(node.input[0], node.input[0])

    input_bytes: dict[str, int] = {}
    for name in idx.act_inputs:
        t = idx.tensor(name)
        if t is not None and t.shape is not None:
            input_bytes[name] = t.numel * element_bytes(t.dtype, precision if not quantized else float_precision)
    activation_bytes = sum(input_bytes.values()) + sum(out_bytes.values())
    peak = _peak_activation_bytes(idx, alias_of, {**input_bytes, **out_bytes})
    return GraphCount(
        layers=layers, precision=precision, batch=prepared.batch, input_shape=prepared.input_shape,
        quantized=quantized, params=params_total,
        macs=sum(layer.macs for layer in layers), flops=sum(layer.flops for layer in layers),
        weight_bytes=weight_bytes_total, activation_bytes=activation_bytes,
        peak_activation_bytes=peak, unsupported=dict(unsupported), missing_shapes=dict(missing),
        ignored=dict(ignored), index=idx)


def _peak_activation_bytes(idx: GraphIndex, alias_of: dict[str, str], sizes: dict[str, int]) -> int:
    """Largest sum of live activation buffers at any node (outputs allocated before inputs free)."""
    def base(name: str) -> str:
        return alias_of.get(name, name)

    remaining: Counter[str] = Counter()
    for n in idx.nodes:
        for x in n.input:
            if x and x not in idx.const:
                remaining[base(x)] += 1
    pinned = {base(o) for o in idx.graph_outputs}
    live: dict[str, int] = {}
    for name in idx.act_inputs:
        live[base(name)] = sizes.get(name, 0)
    peak = sum(live.values())
    for n in idx.nodes:
        for o in n.output:
            if o and o not in idx.const and base(o) == o and o in sizes:
                live[o] = sizes[o]
        peak = max(peak, sum(live.values()))
        for x in n.input:
            if not x or x in idx.const:
                continue
            b = base(x)
            remaining[b] -= 1
            if remaining[b] <= 0 and b not in pinned:
                live.pop(b, None)
    return peak
