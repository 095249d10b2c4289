"""Structure of quantized graphs, calibration validation and the pure quantization functions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fopt.artifacts import InputSpec
from fopt.errors import DataError, InputError, UsageError
from fopt.onnxgraph import graph_summary, load_onnx, param_count
from fopt.optimize.calib import MIN_CALIB, CalibrationSet, load_calibration_set
from fopt.optimize.quantize import (
    fuse_silu,
    onnx_to_int8_dynamic,
    onnx_to_int8_static,
    resolve_exclusions,
)
from fopt.optimize.report import ort_executed_ops

SPEC = InputSpec(size=32)


@pytest.fixture(scope="module")
def calib(synth_dataset) -> CalibrationSet:
    return load_calibration_set(synth_dataset, SPEC, n=MIN_CALIB)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _conv_names(path: Path) -> list[str]:
    return [n.name for n in load_onnx(path).graph.node if n.op_type == "Conv"]


# ----------------------------------------------------------------------------- dynamic

def test_dynamic_default_quantizes_only_the_head(tiny_onnx, tmp_path):
    out = tmp_path / "d.onnx"
    rec = onnx_to_int8_dynamic(tiny_onnx, out)
    s = graph_summary(load_onnx(out))
    assert s["integer_ops"] == {"MatMulInteger": 1}          # the classifier head (Gemm -> MatMul)
    assert "ConvInteger" not in s["op_counts"]
    assert len(s["float_compute_nodes"]) == 4                # every Conv stays FP32
    assert rec["graph_rewrites"] == {"gemm_to_matmul": 1}
    assert param_count(load_onnx(out)) == param_count(load_onnx(tiny_onnx))


def test_dynamic_with_conv_makes_conv_integer(tiny_onnx, tmp_path):
    out = tmp_path / "d.onnx"
    onnx_to_int8_dynamic(tiny_onnx, out, op_types=("Conv", "MatMul", "Gemm"))
    s = graph_summary(load_onnx(out))
    assert s["integer_ops"] == {"ConvInteger": 4, "MatMulInteger": 1}
    assert s["float_compute_nodes"] == []


def test_dynamic_unknown_op_type(tiny_onnx, tmp_path):
    with pytest.raises(UsageError, match="cannot be dynamically quantized"):
        onnx_to_int8_dynamic(tiny_onnx, tmp_path / "d.onnx", op_types=("Softmax",))


# ----------------------------------------------------------------------------- static

def test_static_ort_flavour_structure(tiny_onnx, calib, tmp_path):
    out = tmp_path / "s.onnx"
    rec = onnx_to_int8_static(tiny_onnx, out, calibration=calib)
    model = load_onnx(out)
    s = graph_summary(model)
    assert s["quantized_ops"] == {"Conv": 4, "Gemm": 1}
    assert s["float_compute_nodes"] == []
    assert s["activation_types"] == ["uint8"]
    # Relu is folded into the asymmetric Q ranges, so each Conv output has one QDQ pair, plus the
    # graph input, the pooled tensor and the flattened tensor.
    assert s["op_counts"].get("Relu", 0) == 0
    assert rec["target"] == "ort" and rec["per_channel"] and rec["activation_type"] == "uint8"
    # What onnxruntime executes: fused INT8 convolutions, no float Conv left.
    ops = ort_executed_ops(out)
    assert ops.get("QLinearConv") == 4 and "Conv" not in ops and ops.get("QGemm") == 1
    # Per-channel weights: one scale per output channel of the first Conv.
    inits = {i.name: i for i in model.graph.initializer}
    dq_w = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
            and inits.get(n.input[0]) is not None and len(inits[n.input[0]].dims) == 4]
    assert len(dq_w) == 4 and all(inits[n.input[1]].dims[0] == inits[n.input[0]].dims[0] for n in dq_w)


@pytest.mark.parametrize("target", ["ort", "tensorrt"], ids=["ort-flavour", "trt-flavour"])
def test_logits_stay_fp32(tiny_onnx, calib, tmp_path, target):
    """The graph output comes straight from the (quantized) Gemm: no Q/DQ pair on the logits."""
    out = tmp_path / f"{target}.onnx"
    rec = onnx_to_int8_static(tiny_onnx, out, calibration=calib, target=target)
    model = load_onnx(out)
    producer = next(n for n in model.graph.node if model.graph.output[0].name in n.output)
    assert producer.op_type == "Gemm" and rec["graph_rewrites"]["fp32_outputs"] == 1
    assert graph_summary(model)["quantized_ops"]["Gemm"] == 1  # its inputs are still INT8
    if target == "ort":
        ops = ort_executed_ops(out)
        assert ops.get("QGemm") == 1 and "DequantizeLinear" not in ops


def test_static_tensorrt_flavour_is_symmetric_int8(tiny_onnx, calib, tmp_path):
    from onnx import TensorProto, numpy_helper

    out = tmp_path / "t.onnx"
    rec = onnx_to_int8_static(tiny_onnx, out, calibration=calib, target="tensorrt")
    model = load_onnx(out)
    s = graph_summary(model)
    assert s["activation_types"] == ["int8"]
    assert s["quantized_ops"] == {"Conv": 4, "Gemm": 1}
    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            zp = numpy_helper.to_array(inits[n.input[2]])
            assert inits[n.input[2]].data_type in (TensorProto.INT8, TensorProto.INT32)
            assert not zp.any(), f"{n.name}: TensorRT needs zero points of 0"
    # No int32 bias through DequantizeLinear and no contrib ops: TensorRT parses neither.
    assert not any(inits.get(n.input[0]) is not None and inits[n.input[0]].data_type == TensorProto.INT32
                   for n in model.graph.node if n.op_type == "DequantizeLinear")
    assert not any(n.domain == "com.microsoft" for n in model.graph.node)
    assert rec["bias"] == "fp32" and rec["activation_symmetric"] is True


def test_keep_fp32_first_last(tiny_onnx, calib, tmp_path):
    out = tmp_path / "k.onnx"
    rec = onnx_to_int8_static(tiny_onnx, out, calibration=calib, keep_fp32=("first", "last"))
    s = graph_summary(load_onnx(out))
    first_conv = _conv_names(tiny_onnx)[0]
    gemm = next(n.name for n in load_onnx(tiny_onnx).graph.node if n.op_type == "Gemm")
    assert s["float_compute_nodes"] == [first_conv, gemm]
    assert s["quantized_ops"].get("Conv") == 3 and "Gemm" not in s["quantized_ops"]
    assert rec["keep_fp32_nodes"] == [first_conv, gemm]


def test_exclude_named_node_and_unknown_name(tiny_onnx, calib, tmp_path):
    second = _conv_names(tiny_onnx)[1]
    out = tmp_path / "e.onnx"
    onnx_to_int8_static(tiny_onnx, out, calibration=calib, exclude=(second,))
    assert graph_summary(load_onnx(out))["float_compute_nodes"] == [second]
    with pytest.raises(UsageError, match="closest"):
        onnx_to_int8_static(tiny_onnx, tmp_path / "x.onnx", calibration=calib, exclude=(second + "x",))
    with pytest.raises(UsageError, match="first, last"):
        resolve_exclusions(load_onnx(tiny_onnx), keep_fp32=("middle",))


def test_silu_fused_for_onnxruntime_and_accurate(silu_onnx, calib, tmp_path):
    model = load_onnx(silu_onnx)
    n_sigmoid = sum(n.op_type == "Sigmoid" for n in model.graph.node)
    assert n_sigmoid == 3
    assert fuse_silu(model) == 3
    assert not any(n.op_type == "Sigmoid" for n in model.graph.node)

    out = tmp_path / "silu.int8.onnx"
    rec = onnx_to_int8_static(silu_onnx, out, calibration=calib)
    assert rec["graph_rewrites"] == {"silu_to_quickgelu": 3, "fp32_outputs": 1}
    s = graph_summary(load_onnx(out))
    assert s["op_counts"]["QuickGelu"] == 3 and s["quantized_ops"] == {"Conv": 3, "Gemm": 1}
    ops = ort_executed_ops(out)
    assert "QLinearSigmoid" not in ops and ops.get("QLinearConv") == 3 and ops.get("QLinearAdd") == 2
    # INT8 logits stay close to FP32 on real images.
    ref, got = _run(silu_onnx, calib.images), _run(out, calib.images)
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert cos.min() > 0.98
    # The TensorRT flavour keeps plain Sigmoid/Mul (no contrib op).
    trt = tmp_path / "silu.trt.onnx"
    onnx_to_int8_static(silu_onnx, trt, calibration=calib, target="tensorrt")
    assert graph_summary(load_onnx(trt))["op_counts"].get("Sigmoid") == 3


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_histogram_calibration_methods(tiny_onnx, calib, tmp_path, method):
    out = tmp_path / f"{method}.onnx"
    rec = onnx_to_int8_static(tiny_onnx, out, calibration=calib, calib_method=method)
    assert rec["calib_method"] == method
    assert graph_summary(load_onnx(out))["quantized_ops"] == {"Conv": 4, "Gemm": 1}


def test_avg_minmax_is_robust_to_an_outlier_image(silu_onnx, calib, tmp_path):
    """One calibration image with 40x the usual contrast stretches minmax ranges, not avg-minmax."""
    from onnx import numpy_helper

    images = calib.images.copy()
    images[0] *= 40.0
    spiked = CalibrationSet(images, dict(calib.info))
    ref = _run(silu_onnx, calib.images[1:])
    scales, errors = {}, {}
    for method in ("minmax", "avg-minmax"):
        out = tmp_path / f"{method}.onnx"
        onnx_to_int8_static(silu_onnx, out, calibration=spiked, calib_method=method)
        model = load_onnx(out)
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        q_in = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
        scales[method] = float(inits[q_in.input[1]])
        errors[method] = float(np.abs(_run(out, calib.images[1:]) - ref).mean())
    # 32 images in batches of 4: the outlier batch is one of 8 in the mean, so the input range
    # shrinks by about 8 * 40 / (40 + 7) ~ 6.8x against the global minmax.
    assert scales["minmax"] > 5 * scales["avg-minmax"]
    assert errors["avg-minmax"] < errors["minmax"]


# ----------------------------------------------------------------------------- calibration data

def test_calibration_from_dataset_is_real_and_seeded(synth_dataset):
    a = load_calibration_set(synth_dataset, SPEC, n=MIN_CALIB, seed=0)
    b = load_calibration_set(synth_dataset, SPEC, n=MIN_CALIB, seed=0)
    assert a.images.shape == (MIN_CALIB, 3, 32, 32) and a.images.dtype == np.float32
    assert np.array_equal(a.images, b.images)
    assert a.info["split"] == "train" and a.info["n"] == MIN_CALIB and a.info["kind"] == "dataset"
    # Normalised with mean/std 0.5: pixel values lie in [-1, 1].
    assert a.images.min() >= -1.0 and a.images.max() <= 1.0


def test_calibration_default_uses_all_when_fewer_than_256(synth_dataset):
    from fopt.data.datasets import DatasetTable

    n_train = len(DatasetTable.load(synth_dataset).split("train"))
    c = load_calibration_set(synth_dataset, SPEC)
    assert c.info["n"] == n_train == c.info["available"]


def test_calibration_size_below_minimum_is_refused(synth_dataset):
    with pytest.raises(UsageError, match=f"at least {MIN_CALIB}"):
        load_calibration_set(synth_dataset, SPEC, n=MIN_CALIB - 1)


def test_calibration_more_than_available_is_refused(synth_dataset):
    with pytest.raises(DataError, match="has only"):
        load_calibration_set(synth_dataset, SPEC, n=10_000)


def test_calibration_folder_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="0 image"):
        load_calibration_set(tmp_path, SPEC)


def test_calibration_folder_with_too_few_images(tmp_path):
    from PIL import Image

    for i in range(5):
        Image.new("RGB", (40, 40), (i * 40, 10, 10)).save(tmp_path / f"{i}.png")
    with pytest.raises(DataError, match=f"at least {MIN_CALIB}"):
        load_calibration_set(tmp_path, SPEC)


def test_calibration_plain_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(MIN_CALIB + 3):
        sub = tmp_path / f"c{i % 3}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(sub / f"{i}.jpg")
    c = load_calibration_set(tmp_path, SPEC, n=MIN_CALIB)
    assert c.images.shape == (MIN_CALIB, 3, 32, 32) and c.info["kind"] == "image-folder"
    assert c.info["available"] == MIN_CALIB + 3


def test_calibration_missing_folder(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        load_calibration_set(tmp_path / "nope", SPEC)


# ----------------------------------------------------------------------------- graph helpers

def test_param_count_matches_torch(tiny_checkpoint, tiny_onnx):
    from fopt.checkpoint import load_checkpoint

    model = load_checkpoint(tiny_checkpoint).model
    # BatchNorm is folded into the (bias-free) convolutions on export: its weight and bias
    # (2 x C parameters) become one conv bias (C).
    bn = [m for m in model.modules() if m.__class__.__name__ == "BatchNorm2d"]
    expected = sum(p.numel() for p in model.parameters()) - sum(m.num_features for m in bn)
    assert param_count(load_onnx(tiny_onnx)) == expected


def test_load_onnx_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01 not a protobuf at all" * 10)
    with pytest.raises(InputError, match="not a readable ONNX|not an ONNX"):
        load_onnx(bad)
    txt = tmp_path / "model.txt"
    txt.write_text("hello")
    with pytest.raises(InputError):
        load_onnx(txt)
