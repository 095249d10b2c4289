"""Reading ONNX inputs and describing what a quantized / reduced-precision graph contains.

`load_onnx` is the one place that turns "not an ONNX file" into a one-line error.
`graph_summary` is what tests, cards and the CLI use to say how much of a graph is INT8 or FP16:
QDQ pairs, quantized Conv/MatMul/Gemm (QDQ format: their activation and weight inputs come from
DequantizeLinear; operator format: QLinearConv, ConvInteger, ...), and the compute nodes that
stayed FP32. `param_count` counts weights the same way for every precision, so an FP32 model and
its INT8/FP16 children report the same number.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from fopt.errors import InputError, first_line

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Operator-format and dynamic-quantization ops: their presence means "already quantized".
QUANT_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear",
             "QGemm", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearGlobalAveragePool",
             "QLinearConcat", "MatMulIntegerToFloat", "DynamicQuantizeMatMul")
INTEGER_OPS = ("ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")


def load_onnx(path: str | Path, *, load_weights: bool = True):
    """Load an ONNX file; a missing, non-ONNX or corrupt file is an InputError (one line)."""
    import onnx

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file (expected an .onnx model)")
    try:
        model = onnx.load(str(path), load_external_data=load_weights)
    except Exception as e:  # protobuf DecodeError, truncated files, external data missing, ...
        raise InputError(f"{path}: not a readable ONNX model ({type(e).__name__}); "
                         f"expected a file written by `fopt export`") from None
    if not model.graph.node or not model.graph.input:
        raise InputError(f"{path}: not an ONNX model (empty graph); expected a file written by `fopt export`")
    return model


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
        "integer_ops": {k: ops[k] for k in INTEGER_OPS if ops.get(k)},
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


def precision_of(model) -> str:
    """'int8' if the graph is quantized, 'fp16' if its weights are FP16, else 'fp32'."""
    s = graph_summary(model)
    if s["quantize_linear"] or s["dequantize_linear"] or s["quantized_ops"] or s["integer_ops"]:
        return "int8"
    if s["fp16_initializers"]:
        return "fp16"
    return "fp32"


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
