"""The OpenVINO runner: ONNX files and IR through OpenVINO, the runtime registry, bad IR files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from fopt.artifacts import detect_format, make_card, read_card, write_card
from fopt.errors import InputError, UsageError
from fopt.runtime import RUNNERS, RUNTIMES, open_runner, runtimes_for

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def ir(artifacts, tmp_path_factory):
    """The tiny ONNX model converted to OpenVINO IR (FP32 weights), with its card."""
    import openvino as ov

    folder = tmp_path_factory.mktemp("ir")
    xml = folder / "tiny.xml"
    ov.save_model(ov.convert_model(str(artifacts["onnx"])), str(xml), compress_to_fp16=False)
    parent = read_card(artifacts["onnx"])
    write_card(xml, make_card(kind="optimized", format="openvino", precision="fp32",
                              input_spec=parent["input_spec"], class_names=parent["class_names"],
                              parent=artifacts["onnx"]))
    return xml


def _batch(n: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 3, 32, 32), dtype=np.float32)


def test_every_runner_names_its_runtime():
    for fmt, cls in RUNNERS.items():
        assert cls.runtime in RUNTIMES, fmt
    assert runtimes_for("onnx") == ["onnxruntime", "openvino"]
    assert runtimes_for("openvino") == ["openvino"]


@pytest.mark.parametrize("batch", [1, 3])
def test_openvino_runs_onnx_like_onnxruntime(artifacts, batch):
    x = _batch(batch)
    with open_runner(artifacts["onnx"], threads=1) as ort:
        want = ort.infer(x)
    with open_runner(artifacts["onnx"], threads=1, runtime="openvino") as ov:
        got = ov.infer(x)
        assert ov.runtime == "openvino" and ov.backend == "openvino"
        # FP32 artifact: the precision hint is pinned, and the compiled model says so
        assert ov.execution["inference_precision"] == "f32"
        assert ov.execution["threads"] == 1 and ov.execution["streams"] == 1
        again = ov.infer(x[:1])   # another batch size: a second compiled model
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(again, want[:1], rtol=1e-4, atol=1e-4)


def test_unknown_or_impossible_runtime_is_a_clear_error(artifacts):
    with pytest.raises(UsageError, match="runtime tensorrt cannot run onnx artifacts; onnx runs on onnxruntime, openvino"):
        open_runner(artifacts["onnx"], runtime="tensorrt")
    with pytest.raises(UsageError, match="cannot run checkpoint"):
        open_runner(artifacts["checkpoint"], runtime="openvino")
    with pytest.raises(UsageError, match="unknown runtime"):
        open_runner(artifacts["onnx"], runtime="tvm")


def test_ir_is_detected_and_runs_on_openvino(artifacts, ir):
    assert detect_format(ir) == "openvino"
    x = _batch(2)
    with open_runner(artifacts["onnx"], threads=1) as ort:
        want = ort.infer(x)
    with open_runner(ir, threads=1) as runner:
        assert runner.runtime == "openvino" and runner.format == "openvino"
        np.testing.assert_allclose(runner.infer(x), want, rtol=1e-4, atol=1e-4)


def test_ir_with_missing_or_truncated_weights_names_both_files(ir, tmp_path):
    xml = tmp_path / ir.name
    for suffix in (".xml", ".xml.json"):
        shutil.copy(ir.with_name(ir.stem + suffix), tmp_path / (ir.stem + suffix))
    with pytest.raises(InputError) as e:
        open_runner(xml).load()
    assert str(xml) in str(e.value) and "tiny.bin" in str(e.value) and "missing" in str(e.value)
    data = ir.with_suffix(".bin").read_bytes()
    xml.with_suffix(".bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"tiny\.bin is truncated \(\d+ bytes; the \.xml needs \d+\)"):
        open_runner(xml).load()


def test_layer_times_come_from_performance_counters(artifacts):
    with open_runner(artifacts["onnx"], threads=1, runtime="openvino") as runner:
        layers = runner.layer_times(_batch(1), runs=3)
    convs = [x for x in layers if x["op"] == "Convolution"]
    assert convs, [x["op"] for x in layers]
    assert all(x["measured_ms"] >= 0 for x in layers)
    assert sum(x["share_pct"] for x in layers) == pytest.approx(100.0)
    assert all(x["exec_type"] for x in convs)


def test_eval_cli_runs_an_onnx_file_on_openvino(artifacts, synth_dataset, tmp_path):
    import json

    from click.testing import CliRunner

    from fopt.cli import cli

    results = {}
    for runtime in ("onnxruntime", "openvino"):
        out = tmp_path / f"{runtime}.json"
        res = CliRunner().invoke(cli, ["eval", str(artifacts["onnx"]), "--data", str(synth_dataset),
                                       "--runtime", runtime, "--threads", "1", "--json", str(out)])
        assert res.exit_code == 0, res.output
        results[runtime] = json.loads(out.read_text())
    ov = results["openvino"]
    assert ov["runtime"] == "openvino" and ov["execution"]["inference_precision"] == "f32"
    # FP32 on both runtimes: the same predictions on the same images
    assert ov["confusion_matrix"] == results["onnxruntime"]["confusion_matrix"]
    assert ov["n"] > 0
