"""INT8 quantization of an FP32 ONNX model with onnxruntime.quantization.

Two pure functions, each ``(src, dst, **settings) -> settings record``:

`onnx_to_int8_dynamic`
    Weights to INT8 ahead of time, activations quantized on the fly per batch
    (``quantize_dynamic``). By default only MatMul/Gemm: dynamic Conv becomes ConvInteger,
    which on CPU is slower than the FP32 convolution (no fused requantisation, no NCHWc
    layout), so for CNNs only the classifier head gains. ``op_types`` overrides.

`onnx_to_int8_static`
    QDQ static quantization calibrated on real images: ``quant_pre_process`` (symbolic shape
    inference, ONNX Runtime graph fusions) first, then ``quantize_static`` with per-channel
    symmetric INT8 weights. Two QDQ encodings of the same calibration, because the runtimes
    want different things:
    * ``target="ort"`` (ONNX Runtime on CPU): uint8 asymmetric activations (U8S8). On x86,
      ONNX Runtime fuses DQ->Conv->Q into QLinearConv only for uint8 activations (int8 is
      converted to uint8 only where a QuantizeLinear has a single consumer), and an
      asymmetric range lets the quantizer fold Relu/Clip into the preceding Q; with symmetric
      activations every Relu stays a float island and most convolutions stay FP32 (measured on
      resnet18: INT8 symmetric was no faster than FP32). SiLU (x * sigmoid(x)) is first fused
      into one com.microsoft QuickGelu(alpha=1) node, which ONNX Runtime runs as one float op
      between one DQ and one Q instead of a QLinearSigmoid + QLinearMul pair (those two
      dominated EfficientNet INT8 time).
    * ``target="tensorrt"``: int8 activations with zero point 0 (TensorRT accepts only
      symmetric signed INT8 Q/DQ), FP32 bias (no int32 bias DequantizeLinear), no contrib
      ops. This is the file TensorRT 10/11 builds INT8 engines from (explicit quantization;
      TensorRT 11 has no INT8 flag or calibrator). ONNX Runtime runs it too, slowly, so its
      accuracy can be measured on CPU.

Weights are 8-bit by default, 7-bit (``reduce_range``) on an x86 CPU without VNNI: there ONNX
Runtime's U8S8 kernels add pairs of u8 x s8 products in 16 bits (``pmaddubsw``), which saturate
with full-range weights. Measured on a 2-core AVX2 VM (tiny model, 123 test images): FP32 0.911,
INT8 with 8-bit weights 0.829, with 7-bit weights 0.911 (`tests/optimize/test_int8_end_to_end.py`).
The choice and its reason go into the artifact's card; a file made on a VNNI machine and run on
an AVX2-only one can be remade with ``--reduce-range``.

Calibration never uses random data (`fopt.optimize.calib`).
"""

from __future__ import annotations

import difflib
import tempfile
from pathlib import Path
from typing import Any, Sequence

from fopt.errors import UsageError
from fopt.onnxgraph import compute_nodes, input_shape
from fopt.optimize.calib import ArrayCalibrationReader, CalibrationSet
from fopt.runtime.base import cpu_flags

DYNAMIC_DEFAULT_OPS = ("MatMul", "Gemm")
# avg-minmax: per tensor, the mean over calibration batches of the batch min and max (onnxruntime's
#   CalibMovingAverage over one collection pass; PyTorch's moving-average observers do the same).
#   A few calibration images with extreme activations cannot stretch the range for all others.
# minmax: the global min and max over every calibration image (onnxruntime's default).
# entropy / percentile: histogram methods (TensorRT's classic choice / clip the 0.001% tails).
CALIB_METHODS = ("avg-minmax", "minmax", "entropy", "percentile")
DEFAULT_CALIB_METHOD = "avg-minmax"
STATIC_TARGETS = ("ort", "tensorrt")
KEEP_FP32_CHOICES = ("first", "last")
CALIB_BATCH = 4          # images per calibration inference
CALIB_STRIDE_BATCHES = 2  # batches whose intermediate outputs are held at once (memory bound)


# ----------------------------------------------------------------------------- helpers

def preprocess(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """quant_pre_process: symbolic shape inference + ORT basic fusions + ONNX shape inference.

    Symbolic shape inference fails on some graphs; then it is skipped (ONNX shape inference still
    runs), and the record says so.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst))
        return {"symbolic_shape_inference": True, "optimization": True}
    except Exception as first:  # onnxruntime raises plain Exception subclasses here
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        except Exception:
            raise first from None
        return {"symbolic_shape_inference": False, "optimization": True,
                "note": f"symbolic shape inference failed ({type(first).__name__}); skipped"}


def fuse_silu(model) -> int:
    """Replace x * Sigmoid(x) by com.microsoft QuickGelu(x, alpha=1) in place; returns the count.

    Only where the Sigmoid's single consumer is that Mul, so nothing else reads the sigmoid.
    """
    from onnx import helper

    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    drop: set[int] = set()
    replace: dict[int, Any] = {}
    for n in model.graph.node:
        if n.op_type != "Sigmoid" or n.domain not in ("", "ai.onnx"):
            continue
        x, s = n.input[0], n.output[0]
        users = consumers.get(s, [])
        if len(users) != 1 or users[0].op_type != "Mul" or sorted(users[0].input) != sorted([x, s]):
            continue
        mul = users[0]
        replace[id(mul)] = helper.make_node("QuickGelu", [x], [mul.output[0]],
                                            name=(mul.name or "silu") + "_silu", domain="com.microsoft",
                                            alpha=1.0)
        drop.add(id(n))
    if not replace:
        return 0
    nodes = [replace.get(id(n), n) for n in model.graph.node if id(n) not in drop]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(replace)


def gemm_to_matmul(model) -> int:
    """Rewrite Gemm(A, W, C) with a constant W as MatMul(A, W') + Add(C), in place; returns the count.

    onnxruntime's dynamic quantizer has no Gemm support (its IntegerOps registry lacks it), and
    torchvision's classifier heads export as Gemm; as MatMul they become DynamicQuantizeMatMul.
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes, count = [], 0
    for n in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if (n.op_type != "Gemm" or n.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        if attrs.get("transB", 0):
            w = w.T.copy()
        w_name = n.input[1] + "_matmul"
        model.graph.initializer.append(numpy_helper.from_array(w, w_name))
        has_bias = len(n.input) > 2 and n.input[2]
        mm_out = n.output[0] + "_matmul" if has_bias else n.output[0]
        nodes.append(helper.make_node("MatMul", [n.input[0], w_name], [mm_out], name=(n.name or "gemm") + "_matmul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, n.input[2]], [n.output[0]],
                                          name=(n.name or "gemm") + "_bias"))
        count += 1
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        used = {i for n in model.graph.node for i in n.input}
        keep = [i for i in model.graph.initializer if i.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return count


def float_outputs(model) -> int:
    """Remove the QuantizeLinear -> DequantizeLinear pair in front of each graph output, in place.

    Quantizing the logits buys no speed (onnxruntime's QGemm/QLinearMatMul can emit FP32 directly,
    TensorRT likewise) and costs accuracy: one calibration image with large logits sets a range
    whose step can exceed the logit differences of every other image. Returns the pairs removed.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    drop, removed = set(), 0
    for out in model.graph.output:
        dq = producers.get(out.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or consumers.get(q.output[0], 0) != 1:
            continue
        src = producers.get(q.input[0])
        if src is None or consumers.get(q.input[0], 0) != 1:
            continue  # the float tensor feeds other nodes too; renaming it would rewire them
        src.output[list(src.output).index(q.input[0])] = out.name
        drop.update({id(q), id(dq)})
        removed += 1
    if removed:
        nodes = [n for n in model.graph.node if id(n) not in drop]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return removed


def drop_unused_initializers(model) -> int:
    """Remove initializers no node reads (nor a subgraph, nor a graph output), in place; returns
    how many. `float_outputs` leaves the logits' scale and zero point behind, and onnxruntime
    then warns "Removing initializer ... It is not used by any node" on every load."""
    def used_names(graph) -> set[str]:
        names = {o.name for o in graph.output}
        for n in graph.node:
            names.update(n.input)
            for a in n.attribute:
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    names |= used_names(g)
        return names

    used = used_names(model.graph)
    keep = [i for i in model.graph.initializer if i.name in used]
    dropped = len(model.graph.initializer) - len(keep)
    if dropped:
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return dropped


def resolve_exclusions(model, exclude: Sequence[str] = (), keep_fp32: Sequence[str] = ()) -> dict[str, list[str]]:
    """Node names to keep FP32: `exclude` (checked to exist) plus the first/last Conv/Gemm/MatMul."""
    names = [n.name for n in model.graph.node]
    known = set(names)
    missing = [e for e in exclude if e not in known]
    if missing:
        close = difflib.get_close_matches(missing[0], names, n=3, cutoff=0.5)
        hint = f" (closest: {', '.join(close)})" if close else ""
        raise UsageError(f"--exclude {missing[0]!r}: no node with that name in the pre-processed "
                         f"graph{hint}")
    bad = [k for k in keep_fp32 if k not in KEEP_FP32_CHOICES]
    if bad:
        raise UsageError(f"--keep-fp32 {bad[0]!r}: choose from {', '.join(KEEP_FP32_CHOICES)} "
                         f"(comma-separated), or name nodes with --exclude")
    compute = compute_nodes(model)
    kept: list[str] = []
    if compute:
        if "first" in keep_fp32:
            kept.append(compute[0].name)
        if "last" in keep_fp32 and compute[-1].name not in kept:
            kept.append(compute[-1].name)
    return {"exclude": list(exclude), "keep_fp32": kept,
            "nodes_to_exclude": list(dict.fromkeys([*exclude, *kept]))}


def _input_name(model) -> str:
    return input_shape(model)[0]


# ----------------------------------------------------------------------------- dynamic

def onnx_to_int8_dynamic(src: str | Path, dst: str | Path, *,
                         op_types: Sequence[str] = DYNAMIC_DEFAULT_OPS,
                         per_channel: bool = False) -> dict[str, Any]:
    """Dynamic INT8 (weights INT8, activations quantized per batch at run time)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    op_types = list(dict.fromkeys(op_types))
    valid = sorted({*IntegerOpsRegistry, "Gemm"})
    unknown = [o for o in op_types if o not in valid]
    if not op_types or unknown:
        raise UsageError(f"--op-types: {unknown[0] if unknown else '(empty)'} cannot be dynamically "
                         f"quantized; choose from {', '.join(valid)}")
    ort_ops = list(dict.fromkeys("MatMul" if o == "Gemm" else o for o in op_types))
    rewrites: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="fopt-int8d-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        pre_info = preprocess(src, pre)
        if "Gemm" in op_types:
            model = onnx.load(str(pre))
            n_gemm = gemm_to_matmul(model)
            if n_gemm:
                rewrites["gemm_to_matmul"] = n_gemm
                onnx.save(model, str(pre))
        quantize_dynamic(str(pre), str(dst), op_types_to_quantize=ort_ops, per_channel=per_channel,
                         weight_type=QuantType.QInt8)
    return {"mode": "dynamic", "op_types": op_types, "graph_rewrites": rewrites, "weight_type": "int8",
            "weight_symmetric": True, "per_channel": per_channel,
            "activation_type": "uint8 (dynamic, per batch)", "preprocess": pre_info,
            "note": ("Conv included: ConvInteger is usually slower than FP32 Conv on CPU"
                     if "Conv" in op_types else "MatMul/Gemm only (the classifier head in CNNs)")}


# ----------------------------------------------------------------------------- static

def default_reduce_range(target: str, flags: set[str] | None = None) -> tuple[bool, str]:
    """(7-bit weights?, why) for static INT8 on this machine (see the module docstring)."""
    if target != "ort":
        return False, "TensorRT computes INT8 without 16-bit intermediate sums"
    flags = cpu_flags() if flags is None else flags
    if "avx2" in flags and not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        return True, "x86 CPU without VNNI: 8-bit weights overflow ONNX Runtime's 16-bit U8S8 sums"
    return False, "this CPU's INT8 dot products (VNNI, or not x86) do not saturate"



def onnx_to_int8_static(src: str | Path, dst: str | Path, *, calibration: CalibrationSet,
                        target: str = "ort", calib_method: str = DEFAULT_CALIB_METHOD, per_channel: bool = True,
                        exclude: Sequence[str] = (), keep_fp32: Sequence[str] = (),
                        reduce_range: bool | None = None, calibration_cache: str | Path | None = None,
                        percentile: float = 99.999) -> dict[str, Any]:
    """Static QDQ INT8 calibrated on `calibration` (see the module docstring for `target`).

    `reduce_range` None: 7-bit weights where this CPU needs them (`default_reduce_range`)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if target not in STATIC_TARGETS:
        raise UsageError(f"INT8 target must be one of {', '.join(STATIC_TARGETS)}, got {target!r}")
    if reduce_range is None:
        reduce_range, range_reason = default_reduce_range(target)
    else:
        range_reason = "asked for" if reduce_range else "full-range weights asked for"
    if calib_method not in CALIB_METHODS:
        raise UsageError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}, got {calib_method!r}")
    method = {"avg-minmax": CalibrationMethod.MinMax, "minmax": CalibrationMethod.MinMax,
              "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[calib_method]

    with tempfile.TemporaryDirectory(prefix="fopt-int8s-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        pre_info = preprocess(src, pre)
        model = onnx.load(str(pre))
        excl = resolve_exclusions(model, exclude, keep_fp32)
        rewrites: dict[str, int] = {}
        if target == "ort":
            n_silu = fuse_silu(model)
            if n_silu:
                rewrites["silu_to_quickgelu"] = n_silu
                onnx.save(model, str(pre))
        reader = ArrayCalibrationReader(calibration.images, _input_name(model), CALIB_BATCH)
        extra: dict[str, Any] = {}
        if method == CalibrationMethod.MinMax:
            # Min/max calibration keeps only per-batch reductions, so one pass over every batch is
            # cheap; the moving average is then the plain mean over batches.
            extra["CalibMovingAverage"] = calib_method == "avg-minmax"
        else:
            # Histogram methods hold every intermediate tensor of a pass: collect in strides.
            extra["CalibStridedMinMax"] = reader.stride(CALIB_STRIDE_BATCHES)
        if calib_method == "percentile":
            extra["CalibPercentile"] = percentile
        if target == "tensorrt":
            extra.update({"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
            act_type = QuantType.QInt8
        else:
            extra.update({"ActivationSymmetric": False, "WeightSymmetric": True})
            act_type = QuantType.QUInt8
        quantized = Path(tmp) / "quantized.onnx"
        quantize_static(str(pre), str(quantized), reader, quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, reduce_range=reduce_range,
                        activation_type=act_type, weight_type=QuantType.QInt8,
                        nodes_to_exclude=excl["nodes_to_exclude"] or None,
                        calibrate_method=method, extra_options=extra,
                        calibration_cache_path=str(calibration_cache) if calibration_cache else None)
        qmodel = onnx.load(str(quantized))
        n_out = float_outputs(qmodel)
        if n_out:
            rewrites["fp32_outputs"] = n_out
        n_dead = drop_unused_initializers(qmodel)  # e.g. the logits' scale and zero point
        onnx.save(qmodel, str(dst))
    return {
        "mode": "static", "format": "QDQ", "target": target,
        "activation_type": "int8" if target == "tensorrt" else "uint8",
        "activation_symmetric": target == "tensorrt",
        "weight_type": "int8", "weight_symmetric": True, "per_channel": per_channel,
        "reduce_range": reduce_range, "reduce_range_reason": range_reason, "bias": "fp32" if target == "tensorrt" else "int32",
        "calib_method": calib_method, "calib_batch": CALIB_BATCH,
        **({"calib_percentile": percentile} if calib_method == "percentile" else {}),
        "excluded_nodes": excl["exclude"], "keep_fp32": list(keep_fp32),
        "keep_fp32_nodes": excl["keep_fp32"], "graph_rewrites": rewrites, "preprocess": pre_info,
        "unused_initializers_removed": n_dead,
    }
