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
* Precision: a graph is counted at the precision it was built for (`fopt.onnxgraph.precision_of`:
  int8 if it has any quantized op, else its weights' float type); a float graph may also be
  counted at another precision as a what-if. In an INT8 graph, integer and QLinear kernels
  (`fopt.onnxgraph.INTEGER_KERNEL_OPS`) and nodes with int8/uint8 activation inputs run in int8.
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

`count_graph` takes a `fopt.analyze.graph.PreparedGraph` (weights stripped, shapes inferred).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from fopt.analyze.graph import (
    GraphIndex,
    MissingShape,
    NodeView,
    PreparedGraph,
    dtype_sizes,
    float_dtypes,
    node_name,
)
from fopt.errors import UsageError
from fopt.onnxgraph import (
    DYNAMIC_QUANTIZE_OPS,
    INTEGER_KERNEL_OPS,
    QDQ_OPS,
    QLINEAR_OPS,
    float_precision_of,
    precision_of,
)

PRECISIONS = ("fp32", "fp16", "int8")
FLOAT_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
MAC_KINDS = frozenset({"conv", "conv_pointwise", "conv_depthwise", "conv_grouped", "conv_transpose",
                       "gemm", "matmul"})


# ----------------------------------------------------------------------------- tensor bytes

def element_bytes(dtype: int, precision: str, role: str | None = None) -> int:
    """Bytes per element of a tensor of ONNX `dtype` read or written by a node at `precision`.

    `precision` is fp32/fp16/int8, or ``real`` for nodes whose tensors keep their stored types
    (Q/DQ, Cast). Unknown dtypes (0) are treated as float.
    """
    sizes = dtype_sizes()
    is_float = dtype == 0 or dtype in float_dtypes()
    if not is_float or precision == "real":
        return sizes.get(dtype, 4)
    if precision == "int8":
        return 4 if role == "bias" else 1
    return FLOAT_BYTES[precision]


# ----------------------------------------------------------------------------- handler registry

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
        if n.op_type in QDQ_OPS or n.op_type in QLINEAR_OPS:
            roles[i] = "qparam" if t.shape is None or math.prod(t.shape) <= 4096 else "param"
        elif n.op_type == "BatchNormalization":
            roles[i] = {1: "param", 2: "param", 3: "buffer", 4: "buffer"}.get(i, "const")
        elif n.op_type in ("PRelu", "InstanceNormalization", "LayerNormalization",
                           "GroupNormalization", "SkipLayerNormalization",
                           "SimplifiedLayerNormalization"):
            roles[i] = "param"
        elif t.dtype in float_dtypes() and t.shape is not None and math.prod(t.shape) > 1:
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


# ----------------------------------------------------------------------------- precision per node

# Op types that runtimes execute on int8 data when Q/DQ surround them (onnxruntime's QDQ
# selectors and TensorRT's quantized layers); others (HardSwish, HardSigmoid, LayerNorm, ...) stay
# float islands between a DequantizeLinear and a QuantizeLinear.
INT8_CAPABLE = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Sigmoid",
                          "LeakyRelu", "Relu", "Clip", "AveragePool", "GlobalAveragePool", "MaxPool",
                          "Concat", "Resize", "Transpose", "Reshape", "Flatten", "Squeeze",
                          "Unsqueeze", "Split", "Slice", "Gather", "Pad", "Softmax", "Where",
                          "ArgMax", "DepthToSpace", "SpaceToDepth", "InstanceNormalization"})
# Their tensors keep their stored types whatever the precision: they convert between types.
REAL_DTYPE_OPS = QDQ_OPS | DYNAMIC_QUANTIZE_OPS | {"Cast", "CastLike"}


def _resolve_precision(prepared: PreparedGraph, precision: str | None) -> tuple[str, bool, str]:
    """(precision to count at, whether the graph is quantized, precision of its float tensors).

    A float graph may be counted at another precision as a what-if; an INT8 or FP16 graph only
    at its own, because its stored types already fix the bytes.
    """
    native = precision_of(prepared.model, prepared.const_names)
    precision = precision or native
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    quantized = native == "int8"
    if quantized and precision != "int8":
        raise UsageError(f"this is an INT8 (quantized) graph; it is counted at int8: pass "
                         f"--precision int8 or leave --precision out (got {precision})")
    if native == "fp16" and precision != "fp16":
        raise UsageError(f"this is an FP16 graph; pass --precision fp16 or leave it out (got {precision})")
    return precision, quantized, float_precision_of(prepared.model, prepared.const_names)


def _node_precision(idx: GraphIndex, node, precision: str, quantized: bool, float_precision: str) -> str:
    """Precision at which a node's float tensors are counted (see the module docstring)."""
    if node.op_type in REAL_DTYPE_OPS:
        return "real"
    if not quantized:
        return precision
    if node.op_type in INTEGER_KERNEL_OPS:
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


def _fused_batchnorms(idx: GraphIndex) -> dict[int, Any]:
    """BatchNormalization nodes that the Conv before them absorbs: id(BN node) -> that Conv node."""
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


# ----------------------------------------------------------------------------- the counting engine

def count_graph(prepared: PreparedGraph, precision: str | None = None) -> GraphCount:
    """Count every node of a prepared graph at `precision` (None: the graph's own)."""
    idx = GraphIndex(prepared)
    precision, quantized, float_precision = _resolve_precision(prepared, precision)
    tally = _Tally(idx, precision, quantized, float_precision)
    for node in idx.nodes:
        tally.count_node(node)
    return tally.result(prepared)


class _Tally:
    """The running state of one `count_graph`: its layers and the totals over distinct tensors.

    A weight shared by several nodes is in each node's bytes but once in the graph's totals; a
    view (or an ignored alias) shares its input's buffer for the peak-memory walk.
    """

    def __init__(self, idx: GraphIndex, precision: str, quantized: bool, float_precision: str):
        self.idx = idx
        self.precision, self.quantized, self.float_precision = precision, quantized, float_precision
        self.fused = _fused_batchnorms(idx)
        self.names = {id(n): node_name(n, i) for i, n in enumerate(idx.nodes)}
        self.conv_has_bias = {id(c): len(c.input) > 2 and bool(c.input[2]) for c in self.fused.values()}
        self.layers: list[Layer] = []
        self.layer_of: dict[int, Layer] = {}
        self.unsupported: Counter[str] = Counter()
        self.missing: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self.param_seen: set[str] = set()
        self.weight_seen: set[str] = set()
        self.params_total = 0
        self.weight_bytes_total = 0
        self.alias_of: dict[str, str] = {}      # view output -> base tensor
        self.out_bytes: dict[str, int] = {}     # activation tensor -> bytes written

    # ---- one node

    def count_node(self, node) -> None:
        """Add `node`'s layer: ignored, folded, fused into its Conv, unsupported, or costed."""
        idx = self.idx
        nprec = _node_precision(idx, node, self.precision, self.quantized, self.float_precision)
        out0 = idx.shapes.get(node.output[0]) if node.output else None
        layer = Layer(self.names[id(node)], node.op_type, "other", "counted",
                      self.float_precision if nprec == "real" else nprec,
                      list(out0) if out0 is not None else None)
        self.layers.append(layer)
        self.layer_of[id(node)] = layer
        outputs_const = all(o in idx.const for o in node.output if o)
        if node.op_type in IGNORED_OPS:
            self._ignore(node, layer, outputs_const)
        elif outputs_const and node.op_type != "Shape":
            layer.kind, layer.status, layer.executes = "folded", "folded", False
            layer.note = CONSTANT_FOLDABLE_REASON
            self.ignored[CONSTANT_FOLDABLE] += 1
        elif id(node) in self.fused:
            self._fuse_batchnorm(node, layer, nprec)
        elif node.op_type not in HANDLERS:
            self._unsupported(node, layer, nprec)
        else:
            self._cost(node, layer, nprec)

    def _ignore(self, node, layer: Layer, outputs_const: bool) -> None:
        layer.kind, layer.status, layer.executes = "ignored", "ignored", False
        layer.note = IGNORED_OPS[node.op_type]
        self.ignored[node.op_type] += 1
        if node.input and node.input[0] and not outputs_const:
            self._alias(node)

    def _fuse_batchnorm(self, node, layer: Layer, nprec: str) -> None:
        """A BN folded into the Conv before it: no work of its own, its params still count."""
        view = self._view(node)
        conv = self.fused[id(node)]
        layer.kind, layer.status, layer.executes = "fused", "fused", False
        layer.note = FUSED_BN_REASON + f" ({self.names[id(conv)]})"
        self._alias(node)
        for j in (1, 2):
            t = view.inp(j)
            if t is not None and t.shape is not None:
                self._add_params(layer, t.name, t.numel)
        shift = view.inp(2)
        if not self.conv_has_bias[id(conv)] and shift is not None and shift.shape is not None:
            # the bias the Conv gains by folding (its weights are rewritten in place, same size):
            # the Conv reads it, exactly as in the exported, folded graph
            nbytes = shift.numel * element_bytes(shift.dtype, nprec, "bias")
            self.layer_of[id(conv)].weight_bytes += nbytes
            self.weight_bytes_total += nbytes

    def _unsupported(self, node, layer: Layer, nprec: str) -> None:
        """No handler: reported with its count; its outputs still take memory."""
        layer.kind, layer.status = "unsupported", "unsupported"
        layer.note = f"no handler for {node.op_type} (domain {node.domain or 'ai.onnx'})"
        self.unsupported[node.op_type] += 1
        for o in node.output:
            t = self.idx.tensor(o)
            if t is not None and t.shape is not None and not t.const:
                self.out_bytes[o] = t.numel * element_bytes(t.dtype, nprec)

    def _cost(self, node, layer: Layer, nprec: str) -> None:
        """The handler's MACs and FLOPs, and the bytes its roles and flags imply."""
        view = self._view(node)
        try:
            cost = HANDLERS[node.op_type](view)
        except MissingShape as e:
            layer.kind, layer.status = "no_shape", "no_shape"
            layer.note = f"shape unknown: {e}"
            self.missing[node.op_type] += 1
            return
        layer.kind, layer.macs, layer.flops = cost.kind, cost.macs, cost.flops
        layer.details = cost.details
        try:
            self._charge_bytes(view, cost, layer, nprec)
        except MissingShape as e:
            layer.status, layer.note = "no_shape", f"shape unknown: {e}"
            self.missing[node.op_type] += 1
        if cost.alias and node.input and node.output:
            self._alias(node)

    def _charge_bytes(self, view: NodeView, cost: OpCost, layer: Layer, nprec: str) -> None:
        for j, t in enumerate(view.inputs):
            if t is None:
                continue
            if t.const:
                role = cost.roles.get(j, "const")
                nbytes = t.numel * element_bytes(t.dtype, nprec, role)
                if role in ("param", "bias"):
                    self._add_params(layer, t.name, t.numel)
                if cost.reads_inputs:
                    layer.weight_bytes += nbytes
                if t.name not in self.weight_seen:
                    self.weight_seen.add(t.name)
                    self.weight_bytes_total += nbytes
            elif cost.reads_inputs:
                layer.input_bytes += t.numel * element_bytes(t.dtype, nprec)
        for t in view.outputs:
            if t is None:
                continue
            nbytes = t.numel * element_bytes(t.dtype, nprec)
            if cost.writes_outputs:
                layer.output_bytes += nbytes
                self.out_bytes[t.name] = nbytes

    # ---- bookkeeping

    def _view(self, node) -> NodeView:
        view = self.idx.view(node)
        view.name = self.names[id(node)]
        return view

    def _add_params(self, layer: Layer, name: str, numel: int) -> None:
        layer.params += numel
        if name not in self.param_seen:
            self.param_seen.add(name)
            self.params_total += numel

    def _alias(self, node) -> None:
        """Output 0 of `node` shares the buffer of its input 0."""
        self.alias_of[node.output[0]] = self.alias_of.get(node.input[0], node.input[0])

    # ---- totals

    def result(self, prepared: PreparedGraph) -> GraphCount:
        """Totals over the graph, activation bytes and the peak of live activations."""
        idx = self.idx
        input_precision = self.float_precision if self.quantized else self.precision
        input_bytes: dict[str, int] = {}
        for name in idx.act_inputs:
            t = idx.tensor(name)
            if t is not None and t.shape is not None:
                input_bytes[name] = t.numel * element_bytes(t.dtype, input_precision)
        layers = self.layers
        return GraphCount(
            layers=layers, precision=self.precision, batch=prepared.batch,
            input_shape=prepared.input_shape, quantized=self.quantized, params=self.params_total,
            macs=sum(layer.macs for layer in layers), flops=sum(layer.flops for layer in layers),
            weight_bytes=self.weight_bytes_total,
            activation_bytes=sum(input_bytes.values()) + sum(self.out_bytes.values()),
            peak_activation_bytes=_peak_activation_bytes(idx, self.alias_of,
                                                         {**input_bytes, **self.out_bytes}),
            unsupported=dict(self.unsupported), missing_shapes=dict(self.missing),
            ignored=dict(self.ignored), index=idx)


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
