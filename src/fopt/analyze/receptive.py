"""Receptive field over an ONNX graph: per-op rules composed along every path.

Each tensor carries, per spatial axis, the receptive field of its first element in input pixels:
``size`` r, effective ``stride`` j (input pixels between neighbouring outputs) and effective
``padding`` P (how far the field of the first output reaches before pixel 0). A Conv or pooling
node with kernel k, stride s, dilation d and begin padding p (asymmetric pads: only the begin side
moves the field of the first output; ``auto_pad`` is resolved from the input size) gives

    k_eff = d (k - 1) + 1,   r' = r + (k_eff - 1) j,   j' = j s,   P' = P + p j

(Araujo, Norris and Sim, "Computing Receptive Fields of Convolutional Neural Networks", Distill
2019). Where paths meet (Add, Mul, Concat, any multi-input node) the field is the union of the
inputs' fields: ``P = max P_i``, ``r = max(r_i - P_i) + P``, which is the maximum over paths for
centred paths and stays right for off-centre ones. Everything that maps positions one to one
(activations, BatchNorm, Q/DQ, channel-wise ops) passes the field through.

Global context: global pooling, a reduction over the spatial axes, or a product of two activations
(attention) sees the whole input. Its output is ``global``, and so is everything computed from it
(a squeeze-and-excitation Mul makes the body tensor global) while the convolutional path keeps
growing beside it. The reported field is that of the *final feature map*: the input of the last
global pooling / flatten before the classifier, found by walking back from the graph output.
Ops without a rule (ConvTranspose, Resize, reshapes that move spatial axes) make the result
``approximate`` and are listed.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fopt.analyze.counting import Layer
from fopt.analyze.graph import GraphIndex, node_attrs, node_name

CONV_LIKE = frozenset({"Conv", "ConvInteger", "QLinearConv", "FusedConv", "MaxPool", "AveragePool",
                       "LpPool", "QLinearAveragePool"})
WEIGHT_INDEX = {"Conv": 1, "ConvInteger": 1, "FusedConv": 1, "QLinearConv": 3}
GLOBAL_POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
                          "QLinearGlobalAveragePool"})
REDUCES = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                     "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"})
COLLAPSES = frozenset({"Flatten", "Reshape"})
NO_RULE = frozenset({"ConvTranspose", "Resize", "Upsample", "DepthToSpace", "SpaceToDepth",
                     "Transpose"})


@dataclass(frozen=True)
class RF:
    """Per spatial axis: size, effective stride and effective padding, in input pixels."""
    size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]

    @classmethod
    def identity(cls, ndim: int) -> "RF":
        return cls((1,) * ndim, (1,) * ndim, (0,) * ndim)

    def then(self, kernel, stride, dilation, pad_begin) -> "RF":
        size, jump, pad = [], [], []
        for a in range(len(self.size)):
            k_eff = dilation[a] * (kernel[a] - 1) + 1
            size.append(self.size[a] + (k_eff - 1) * self.stride[a])
            pad.append(self.padding[a] + pad_begin[a] * self.stride[a])
            jump.append(self.stride[a] * stride[a])
        return RF(tuple(size), tuple(jump), tuple(pad))

    @staticmethod
    def union(fields: list["RF"]) -> "RF":
        if len(fields) == 1:
            return fields[0]
        nd = min(len(f.size) for f in fields)
        pad = tuple(max(f.padding[a] for f in fields) for a in range(nd))
        size = tuple(max(f.size[a] - f.padding[a] for f in fields) + pad[a] for a in range(nd))
        jump = tuple(max(f.stride[a] for f in fields) for a in range(nd))
        return RF(size, jump, pad)


@dataclass(frozen=True)
class TensorRF:
    conv: RF | None      # the convolutional path (None: no spatial path, e.g. after global pooling)
    global_: bool        # depends on the whole input through global context


def _scalar(values: tuple[int, ...] | None) -> int | list[int] | None:
    if values is None:
        return None
    return values[0] if len(set(values)) == 1 else list(values)


@dataclass
class ReceptiveField:
    size: int | list[int] | None          # None when global
    stride: int | list[int] | None
    padding: int | list[int] | None
    global_: bool
    conv_path_size: int | list[int] | None
    feature_map: str | None = None
    feature_shape: list[int] | None = None
    approximate: bool = False
    no_rule: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {"size": self.size, "stride": self.stride, "padding": self.padding,
             "global": self.global_, "conv_path_size": self.conv_path_size,
             "feature_map": self.feature_map, "feature_shape": self.feature_shape,
             "approximate": self.approximate}
        if self.no_rule:
            d["no_rule"] = self.no_rule
        return d


def _tensor_rf_dict(t: TensorRF | None) -> dict[str, Any] | None:
    if t is None:
        return None
    c = t.conv
    return {"size": _scalar(c.size) if c else None, "stride": _scalar(c.stride) if c else None,
            "padding": _scalar(c.padding) if c else None, "global": t.global_}


def _ints(attrs: dict[str, Any], key: str, default: list[int]) -> list[int]:
    v = attrs.get(key)
    return [int(x) for x in v] if v is not None else default


def _auto_pad(attrs: dict[str, Any], in_spatial, kernel, stride, dilation) -> list[int] | None:
    mode = attrs.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode in ("NOTSET", ""):
        return None
    if mode == "VALID":
        return [0] * len(kernel)
    begin = []
    for a, n in enumerate(in_spatial):
        k_eff = dilation[a] * (kernel[a] - 1) + 1
        out = math.ceil(n / stride[a])
        total = max((out - 1) * stride[a] + k_eff - n, 0)
        begin.append(total // 2 if mode == "SAME_UPPER" else total - total // 2)
    return begin


def _window(idx: GraphIndex, node, attrs: dict[str, Any], nd: int):
    """(kernel, stride, dilation, begin pads) of a conv-like node, or None if unknown."""
    if node.op_type in WEIGHT_INDEX:
        w_name = node.input[WEIGHT_INDEX[node.op_type]]
        w = idx.shapes.get(w_name)
        if w is None:
            return None
        kernel = [int(k) for k in w[2:]]
    else:
        kernel = _ints(attrs, "kernel_shape", [])
    if len(kernel) != nd:
        return None
    stride = _ints(attrs, "strides", [1] * nd)
    dilation = _ints(attrs, "dilations", [1] * nd)
    pads = _ints(attrs, "pads", [0] * (2 * nd))
    in_shape = idx.shapes.get(node.input[0])
    auto = _auto_pad(attrs, in_shape[2:] if in_shape else [1] * nd, kernel, stride, dilation)
    begin = auto if auto is not None else pads[:nd]
    return kernel, stride, dilation, begin


def _reduce_axes(idx: GraphIndex, node, attrs: dict[str, Any]) -> list[int] | None:
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        for init in idx.prepared.model.graph.initializer:
            if init.name == node.input[1]:
                from onnx import numpy_helper

                axes = numpy_helper.to_array(init).tolist()
                break
        else:
            return None   # axes computed at run time
    return None if axes is None else [int(a) for a in axes]


def _spatial_preserved(in_shape, out_shape) -> bool:
    return (in_shape is not None and out_shape is not None and len(in_shape) >= 3
            and len(out_shape) >= 3 and tuple(in_shape[-2:]) == tuple(out_shape[-2:]))


def propagate(idx: GraphIndex, layers: list[Layer] | None = None) -> tuple[dict[str, TensorRF], dict[str, int]]:
    """Receptive field of every activation tensor; fills ``layer.rf`` when `layers` is given."""
    states: dict[str, TensorRF] = {}
    for name in idx.act_inputs:
        shape = idx.shapes.get(name)
        nd = max(len(shape) - 2, 1) if shape else 2
        states[name] = TensorRF(RF.identity(nd), False)
    no_rule: dict[str, int] = {}
    by_name = {layer.name: layer for layer in layers} if layers else {}
    for i, node in enumerate(idx.nodes):
        ins = [states[x] for x in node.input if x and x in states and x not in idx.const]
        if not ins:
            continue
        attrs = node_attrs(node)
        convs = [t.conv for t in ins if t.conv is not None]
        glob = any(t.global_ for t in ins)
        base = RF.union(convs) if convs else None
        op = node.op_type
        in_shape = idx.shapes.get(node.input[0]) if node.input else None
        out_shape = idx.shapes.get(node.output[0]) if node.output else None
        if op in CONV_LIKE and base is not None:
            win = _window(idx, node, attrs, len(base.size))
            if win is None:
                no_rule[op] = no_rule.get(op, 0) + 1
                out = TensorRF(base, glob)
            else:
                # the first input is the one the window slides over; others (FusedConv's residual) join
                first = states.get(node.input[0])
                src = first.conv if first is not None and first.conv is not None else base
                moved = src.then(*win)
                others = [c for t, x in zip(ins, [x for x in node.input if x and x in states]) if
                          x != node.input[0] and (c := t.conv) is not None]
                out = TensorRF(RF.union([moved, *others]), glob)
        elif op in GLOBAL_POOLS:
            out = TensorRF(None, True)
        elif op in REDUCES:
            axes = _reduce_axes(idx, node, attrs)
            rank = len(in_shape) if in_shape else 4
            spatial = set(range(2, rank))
            keep = axes is not None and not (spatial & {a % rank for a in axes}) and axes != []
            out = TensorRF(base, glob) if keep else TensorRF(None, True)
        elif op in COLLAPSES:
            out = (TensorRF(base, glob) if _spatial_preserved(in_shape, out_shape)
                   else TensorRF(None, True))
        elif op in ("MatMul", "Gemm", "FusedMatMul", "MatMulInteger", "QLinearMatMul") and len(ins) > 1:
            out = TensorRF(base, True)      # two activations multiplied: attention-like mixing
        else:
            if op in NO_RULE and base is not None:
                no_rule[op] = no_rule.get(op, 0) + 1
            out = TensorRF(base, glob)
        for o in node.output:
            if o and o not in idx.const:
                states[o] = out
        if layers:
            layer = by_name.get(node_name(node, i))
            if layer is not None:
                layer.rf = _tensor_rf_dict(out)
    return states, no_rule


def final_feature_map(idx: GraphIndex, states: dict[str, TensorRF]) -> str | None:
    """The input of the last spatial reduction (global pool, spatial reduce, flatten) before the output.

    Breadth-first from the graph outputs backwards, so the classifier's pooling is found before any
    squeeze-and-excitation pooling deeper in the body. A reduction whose input has no spatial path
    left (Flatten after global pooling, with Q/DQ or casts between) is passed over.
    """
    queue = deque(o for o in idx.graph_outputs)
    seen: set[str] = set()
    while queue:
        name = queue.popleft()
        if name in seen or name in idx.const:
            continue
        seen.add(name)
        node = idx.producer.get(name)
        if node is None:
            continue
        src = node.input[0] if node.input else None
        in_shape = idx.shapes.get(src) if src else None
        out_shape = idx.shapes.get(name)
        spatial_in = in_shape is not None and len(in_shape) >= 3
        has_path = src is not None and (st := states.get(src)) is not None and st.conv is not None
        if spatial_in and has_path:
            if node.op_type in GLOBAL_POOLS:
                return src
            if node.op_type in COLLAPSES and not _spatial_preserved(in_shape, out_shape):
                return src
            if node.op_type in REDUCES:
                axes = _reduce_axes(idx, node, node_attrs(node))
                rank = len(in_shape)
                if axes is None or set(range(2, rank)) & {a % rank for a in axes}:
                    return src
        queue.extend(x for x in node.input if x)
    return None


def receptive_field(idx: GraphIndex, layers: list[Layer] | None = None) -> ReceptiveField:
    """The receptive field of the final feature map (see the module docstring)."""
    states, no_rule = propagate(idx, layers)
    fmap = final_feature_map(idx, states)
    if fmap is None:  # a fully convolutional graph: the output itself is the feature map
        fmap = next((o for o in idx.graph_outputs if o in states), None)
    t = states.get(fmap) if fmap else None
    shape = idx.shapes.get(fmap) if fmap else None
    if t is None:
        return ReceptiveField(None, None, None, False, None, fmap, list(shape) if shape else None,
                              True, no_rule)
    c = t.conv
    conv_size = _scalar(c.size) if c else None
    return ReceptiveField(
        size=None if t.global_ else conv_size,
        stride=_scalar(c.stride) if c else None,
        padding=_scalar(c.padding) if c else None,
        global_=t.global_, conv_path_size=conv_size, feature_map=fmap,
        feature_shape=list(shape) if shape else None, approximate=bool(no_rule), no_rule=no_rule)
