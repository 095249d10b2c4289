"""The ONNX graph as analysis sees it: weight-free, shape-inferred, indexed, topologically sorted.

`prepare_graph` (= `strip_weights` then `concretize`) turns a ModelProto into a `PreparedGraph`:
large initializers become typed graph inputs (their shapes matter, their values never do), every
input dimension is made concrete (batch, image size) and ONNX shape inference runs, seeing through
onnxruntime's contrib ops by standing standard ops in for them. `GraphIndex` then gives every
tensor's shape, dtype, producer, consumers and constant-ness (an initializer, or computed from
constants only) over the nodes in topological order, and `GraphIndex.view` hands one node to a
counting handler as a `NodeView`. A shape that inference could not find is `None`; asking for it
raises `MissingShape`, which the caller reports rather than counting it as zero.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any, Iterable

from fopt.errors import InputError, UsageError, first_line

# Kept as initializers (not replaced by typed inputs) for shape inference: shape vectors, axes,
# scalars. Anything larger is a weight whose values analysis never needs.
_SMALL_INITIALIZER = 64


class MissingShape(Exception):
    """A tensor shape was asked for that shape inference could not provide."""


# ----------------------------------------------------------------------------- dtypes

def dtype_sizes() -> dict[int, int]:
    """Bytes per element of each ONNX tensor element type (4-bit types round up to 1)."""
    from onnx import TensorProto as T

    return {T.FLOAT: 4, T.FLOAT16: 2, T.BFLOAT16: 2, T.DOUBLE: 8, T.INT8: 1, T.UINT8: 1, T.INT16: 2,
            T.UINT16: 2, T.INT32: 4, T.UINT32: 4, T.INT64: 8, T.UINT64: 8, T.BOOL: 1,
            getattr(T, "FLOAT8E4M3FN", 17): 1, getattr(T, "INT4", 22): 1, getattr(T, "UINT4", 21): 1}


def float_dtypes() -> frozenset[int]:
    """The ONNX element types that hold real numbers (the ones a precision can rescale)."""
    from onnx import TensorProto as T

    return frozenset({T.FLOAT, T.FLOAT16, T.BFLOAT16, T.DOUBLE})


# ----------------------------------------------------------------------------- graph view

@dataclass
class TensorInfo:
    """One tensor: shape (None where inference found none), ONNX dtype (0 unknown), constant-ness."""

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


# ----------------------------------------------------------------------------- graph preparation

@dataclass
class PreparedGraph:
    """A weight-free copy of the model with concrete shapes, plus what the counts need."""

    model: Any                                  # onnx.ModelProto without large initializer data
    const_names: frozenset[str]                 # initializers (data stripped or not)
    input_shape: tuple[int, ...]                # the first activation input, concrete
    batch: int                                  # dim 0 of `input_shape`


def strip_weights(model) -> tuple[Any, frozenset[str]]:
    """A copy of `model` whose large initializers are typed graph inputs (no data).

    Shape inference slows down with the size of the weights it carries (VGG-16 has 528 MB), yet
    only small constants (shape vectors, axes, scalars) carry values that inference needs.
    `const_names` names every initializer, stripped or kept.
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
    """The graph inputs that are not weights (a stripped graph lists its weights as inputs)."""
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
    shapes: list[tuple[int, ...]] = []
    for vi in inputs:
        dims = _dims(vi)
        if dims is None:
            raise InputError(f"ONNX input {vi.name!r} has no shape")
        concrete = _concrete_dims(vi.name, dims, batch, img_size, symbols)
        shape_proto = vi.type.tensor_type.shape
        for axis, value in enumerate(concrete):
            shape_proto.dim[axis].Clear()
            shape_proto.dim[axis].dim_value = value
        shapes.append(tuple(concrete))
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
    return PreparedGraph(inferred, consts, shapes[0], shapes[0][0])


def _concrete_dims(name: str, dims: list[Any], batch: int | None, img_size: int | None,
                   symbols: dict[str, int]) -> list[int]:
    """One input's dims made concrete (see `concretize`); `symbols` carries symbolic dims
    already fixed on an earlier input, so inputs that share a dim name get the same value."""
    concrete = []
    for axis, d in enumerate(dims):
        spatial = len(dims) == 4 and axis >= 2
        if isinstance(d, int):
            if axis == 0 and batch is not None and d != batch:
                raise UsageError(f"the ONNX input {name!r} has a fixed batch of {d}; "
                                 f"pass --batch {d} (or export with a dynamic batch)")
            if spatial and img_size is not None and d != img_size:
                raise UsageError(f"the ONNX input {name!r} is fixed at {dims[2]}x{dims[3]} px; "
                                 f"drop --img-size or pass --img-size {d}")
            concrete.append(d)
            continue
        if axis == 0:
            value = batch if batch is not None else 1
        elif spatial and img_size is not None:
            value = img_size
        elif d in symbols:
            value = symbols[d]
        else:
            what = "spatial size" if spatial else f"dimension {axis}"
            hint = "pass --img-size N" if spatial else "export with static shapes"
            raise UsageError(f"the ONNX input {name!r} has a symbolic {what} ({d or '?'}); {hint}")
        if d:
            symbols[d] = value
        concrete.append(int(value))
    return concrete


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


# ----------------------------------------------------------------------------- the index

def node_attrs(node) -> dict[str, Any]:
    """A NodeProto's attributes as plain Python values, by name."""
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
                        node_attrs(node), [self.tensor(x) for x in node.input],
                        [self.tensor(x) for x in node.output])


def node_name(node, index: int) -> str:
    """The node's name, or ``<op_type>_<index>`` for an unnamed node (index: its place in topological order)."""
    return node.name or f"{node.op_type}_{index}"

