"""Reading ONNX inputs and describing what a quantized / reduced-precision graph contains.

`load_onnx` is the one place that turns "not an ONNX file" into a one-line error.
`graph_summary` is what tests, cards and the CLI use to say how much of a graph is INT8 or FP16:
QDQ pairs, quantized Conv/MatMul/Gemm (QDQ format: their activation and weight inputs come from
DequantizeLinear; operator format: QLinearConv, ConvInteger, ...), and the compute nodes that
stayed FP32. `param_count` counts weights the same way for every precision, so an FP32 model and
its INT8/FP16 children report the same number.

This module is the one home of what "quantized" means for an ONNX graph: the op-type sets below
and `precision_of`, the precision a graph was built for. `fopt.analyze.counting` (bytes and
compute precision per node) and `fopt.optimize` (what an input file already is) both use them.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from fopt.errors import InputError, first_line

# Float compute ops whose quantized forms the sets below name.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

# Quantized op types, by what they do (ONNX standard ops and onnxruntime's com.microsoft ops):
# QDQ format: float <-> integer at a stored scale and zero point. Between a DequantizeLinear and a
# QuantizeLinear the graph is float; runtimes fuse the pattern into integer kernels.
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# Dynamic quantization: float -> uint8 at a scale computed from each input's range at run time.
DYNAMIC_QUANTIZE_OPS = frozenset({"DynamicQuantizeLinear"})
# Integer compute kernels of dynamic quantization: integer inputs, int32 (or rescaled float) output.
INTEGER_OPS = frozenset({"ConvInteger", "MatMulInteger", "MatMulIntegerToFloat",
                         "DynamicQuantizeMatMul"})
# Fused quantized ops (operator format, and what onnxruntime's optimizer makes of QDQ groups):
# integer inputs, an integer output requantized to its own scale.
QLINEAR_OPS = frozenset({"QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul",
                         "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearAveragePool",
                         "QLinearGlobalAveragePool", "QLinearConcat"})
# Convolutions and GEMMs that multiply in integers (the quantized forms of COMPUTE_OPS).
INTEGER_MAC_OPS = frozenset({"QLinearConv", "QLinearMatMul", "QGemm"}) | INTEGER_OPS
# Ops whose kernels compute on integer data.
INTEGER_KERNEL_OPS = QLINEAR_OPS | INTEGER_OPS
# Operator-format and dynamic-quantization ops: each one is a quantized op by itself (a QDQ
# compute node is quantized only when its inputs come from DequantizeLinear).
QUANT_OPS = INTEGER_KERNEL_OPS | DYNAMIC_QUANTIZE_OPS
# Any one of these makes the whole graph an INT8 graph (`precision_of`).
INT8_GRAPH_OPS = QUANT_OPS | QDQ_OPS

def load_onnx(path: str | Path, *, load_weights: bool = True):
    """Load an ONNX file; a missing, non-ONNX or corrupt file is an InputError (one line).

    External weight files are read only after `check_external_data` has proven that each one
    lies inside the model's folder."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file (expected an .onnx model)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError, truncated files, ...
        raise InputError(f"{path}: not a readable ONNX model ({type(e).__name__}); "
                         f"expected a file written by `fopt export`") from None
    if not model.graph.node or not model.graph.input:
        raise InputError(f"{path}: not an ONNX model (empty graph); expected a file written by `fopt export`")
    check_external_data(path, model)
    if load_weights and _external_tensors(model.graph):
        try:
            load_external_data_for_model(model, str(path.parent))
        except Exception as e:  # a missing or short external weight file
            raise InputError(f"{path}: its external weights cannot be read ({first_line(e)})") from None
    return model


def _external_tensors(graph) -> list:
    """Every tensor of `graph` and its subgraphs whose data lives in an external file."""
    import onnx

    found = []

    def visit(g) -> None:
        tensors = list(g.initializer)
        for sparse in g.sparse_initializer:
            tensors += [sparse.values, sparse.indices]
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    tensors.append(attr.t)
                tensors.extend(attr.tensors)
                if attr.HasField("g"):
                    visit(attr.g)
                for sub in attr.graphs:
                    visit(sub)
        found.extend(t for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL)

    visit(graph)
    return found


def check_external_data(path: str | Path, model=None) -> None:
    """Refuse an ONNX file whose external-data locations leave its folder (absolute paths, ``..``,
    symlinks out): a model must not make fopt, onnx or onnxruntime read any other file.

    `model` is the file's proto loaded without external data, if the caller has it."""
    import onnx

    path = Path(path)
    if model is None:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:
            raise InputError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    folder = path.parent.resolve()
    for tensor in _external_tensors(model.graph):
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise InputError(f"{path}: tensor {tensor.name!r} keeps its data at {location!r}, outside the "
                             f"model's folder; fopt does not open such files")


def check_onnx(path: str | Path) -> None:
    """onnx.checker on a file (by path, so models over 2 GB work); failures are InputErrors."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as e:
        first = first_line(e)
        raise InputError(f"{path}: invalid ONNX model ({first})") from None


# ----------------------------------------------------------------------------- structure

def _producers(model) -> dict[str, Any]:
    return {o: n for n in model.graph.node for o in n.output}


def _initializer_types(model) -> dict[str, int]:
    return {i.name: i.data_type for i in model.graph.initializer}


def quantized_node_kind(node, producers: dict[str, Any]) -> str | None:
    """'qdq' if a compute node's activation and weight both come from DequantizeLinear,
    'dq-weight' if only its weight does (weight-only), the op type for operator-format ops,
    None for a float node."""
    if node.op_type in QUANT_OPS:
        return node.op_type
    if node.op_type not in COMPUTE_OPS or len(node.input) < 2:
        return None
    act = producers.get(node.input[0])
    wgt = producers.get(node.input[1])
    act_dq = act is not None and act.op_type == "DequantizeLinear"
    wgt_dq = wgt is not None and wgt.op_type == "DequantizeLinear"
    if act_dq and wgt_dq:
        return "qdq"
    if wgt_dq:
        return "dq-weight"
    return None


def graph_summary(model) -> dict[str, Any]:
    """How quantized / reduced-precision a graph is (see the module docstring)."""
    from onnx import TensorProto

    producers = _producers(model)
    ops = Counter(n.op_type for n in model.graph.node)
    qdq_pairs = sum(1 for n in model.graph.node
                    if n.op_type == "DequantizeLinear" and n.input
                    and producers.get(n.input[0]) is not None
                    and producers[n.input[0]].op_type == "QuantizeLinear")
    quantized: Counter[str] = Counter()
    float_nodes: list[str] = []
    for n in model.graph.node:
        kind = quantized_node_kind(n, producers)
        if n.op_type in COMPUTE_OPS:
            if kind == "qdq":
                quantized[n.op_type] += 1
            else:
                float_nodes.append(n.name or n.op_type)
        elif kind is not None:
            quantized[n.op_type] += 1
    init_types = Counter(_initializer_types(model).values())
    fp16_inits = init_types.get(TensorProto.FLOAT16, 0)
    int8_inits = init_types.get(TensorProto.INT8, 0) + init_types.get(TensorProto.UINT8, 0)
    act_types = sorted({_zero_point_type(model, n) for n in model.graph.node
                        if n.op_type == "QuantizeLinear"} - {None})
    return {
        "nodes": len(model.graph.node),
        "op_counts": dict(sorted(ops.items())),
        "qdq_pairs": qdq_pairs,
        "quantize_linear": ops.get("QuantizeLinear", 0),
        "dequantize_linear": ops.get("DequantizeLinear", 0),
        "quantized_ops": dict(sorted(quantized.items())),
        "integer_ops": {k: ops[k] for k in sorted(INTEGER_OPS) if ops.get(k)},
        "float_compute_nodes": float_nodes,
        "fp16_initializers": fp16_inits,
        "int8_initializers": int8_inits,
        "activation_types": act_types,
    }


def _zero_point_type(model, q_node) -> str | None:
    """The integer type a QuantizeLinear produces ('int8' / 'uint8'), from its zero point."""
    from onnx import TensorProto

    if len(q_node.input) < 3:
        return "uint8"  # ONNX default when the zero point is omitted
    t = _initializer_types(model).get(q_node.input[2])
    return {TensorProto.INT8: "int8", TensorProto.UINT8: "uint8", TensorProto.INT16: "int16",
            TensorProto.UINT16: "uint16"}.get(t) if t is not None else None


def precision_of(model, weight_inputs: Iterable[str] = ()) -> str:
    """The precision a graph was built for: 'int8', 'fp16' or 'fp32'.

    'int8' if any node is one of `INT8_GRAPH_OPS` (Q/DQ, dynamic quantization, integer or QLinear
    kernels); otherwise `float_precision_of`. `weight_inputs`: see there.
    """
    if any(n.op_type in INT8_GRAPH_OPS for n in model.graph.node):
        return "int8"
    return float_precision_of(model, weight_inputs)


def float_precision_of(model, weight_inputs: Iterable[str] = ()) -> str:
    """'fp16' if FLOAT16 holds more weight elements than FLOAT, else 'fp32'.

    Weights are the float initializers, plus the graph inputs named in `weight_inputs`: a copy
    whose weights were made typed inputs (`fopt.analyze.graph.strip_weights`) passes their names.
    Activation inputs never count: an FP16 model converted with FP32 inputs and outputs is FP16.
    In an INT8 graph this is the precision of the float tensors around the quantized ones.
    """
    from onnx import TensorProto as T

    elements: Counter[int] = Counter()
    initializers = set()
    for init in model.graph.initializer:
        initializers.add(init.name)
        if init.data_type in (T.FLOAT, T.FLOAT16):
            elements[init.data_type] += math.prod(init.dims)
    stripped = set(weight_inputs) - initializers
    for vi in model.graph.input:
        et = vi.type.tensor_type.elem_type
        if vi.name in stripped and et in (T.FLOAT, T.FLOAT16):
            elements[et] += math.prod(d.dim_value for d in vi.type.tensor_type.shape.dim)
    return "fp16" if elements[T.FLOAT16] > elements[T.FLOAT] else "fp32"


def param_count(model) -> int:
    """Weight and bias elements, at any precision.

    Quantization parameters are not parameters: scales and zero points of Q/DQ nodes, the zero
    points of ConvInteger/MatMulInteger/DynamicQuantizeMatMul and the weight scales onnxruntime's
    quantizer names ``*_scale``/``*_zero_point``. Neither are integer shape constants or scalars.
    A QDQ-quantized weight appears once (as the int8 initializer feeding its DequantizeLinear).
    """
    from onnx import TensorProto

    qparams: set[str] = set()
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
            qparams.update(n.input[1:])
        elif n.op_type in ("ConvInteger", "MatMulInteger"):
            qparams.update(n.input[2:])
        elif n.op_type == "DynamicQuantizeMatMul":
            qparams.update(n.input[2:4])
    count = 0
    for init in model.graph.initializer:
        if init.name in qparams or init.name.endswith(("_scale", "_zero_point")):
            continue
        if init.data_type in (TensorProto.INT64, TensorProto.BOOL):
            continue
        if init.data_type == TensorProto.INT32 and not _feeds_dequantize(model, init.name):
            continue
        n = 1
        for d in init.dims:
            n *= d
        if n > 1:  # scalar constants (alpha, eps, zero points) are not learned parameters
            count += n
    return count


def _feeds_dequantize(model, name: str) -> bool:
    return any(n.op_type == "DequantizeLinear" and n.input and n.input[0] == name
               for n in model.graph.node)


def compute_nodes(model) -> list[Any]:
    """Conv/Gemm/MatMul nodes in graph (topological) order."""
    return [n for n in model.graph.node if n.op_type in COMPUTE_OPS]


def input_shape(model) -> tuple[str, list[int | str]]:
    """Name and shape (ints, or the symbolic name of a dynamic dim) of the first graph input."""
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = []
        for d in inp.type.tensor_type.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
        return inp.name, dims
    raise InputError("ONNX model has no graph input")
