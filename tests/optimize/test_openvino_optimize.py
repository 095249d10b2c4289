"""`fopt optimize --openvino`: FP32 and NNCF INT8 IR with cards and accuracy deltas; bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fopt.artifacts import read_card, sha256_file
from fopt.cli import cli
from fopt.errors import MissingDependency, UsageError
from fopt.optimize.run import OptimizeOptions, optimize_onnx
from fopt.runtime import open_runner

pytest.importorskip("openvino")
pytest.importorskip("nncf")


def fopt(*args) -> tuple[int, str]:
    res = CliRunner().invoke(cli, [str(a) for a in args])
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def ov_run(tiny_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("ov_out")
    code, output = fopt("optimize", tiny_onnx, "--openvino", "--calib-size", "32", "--out", out,
                        "--threads", "1", "--no-latency", "--json", out / "result.json")
    assert code == 0, output
    return out, json.loads((out / "result.json").read_text())


def test_openvino_writes_fp32_and_int8_ir_with_cards(ov_run, tiny_onnx):
    out, result = ov_run
    for name, precision in (("tiny.openvino.xml", "fp32"), ("tiny.openvino-int8.xml", "int8")):
        xml = out / name
        weights = xml.with_suffix(".bin")
        card = read_card(xml)
        assert card["format"] == "openvino" and card["precision"] == precision
        assert card["parent"]["sha256"] == sha256_file(tiny_onnx)
        assert card["sha256"] == sha256_file(xml)
        assert card["openvino"]["weights"] == {"sha256": sha256_file(weights),
                                               "size_bytes": weights.stat().st_size}
        assert card["metrics"]["val"]["n"] > 0
    int8 = read_card(out / "tiny.openvino-int8.xml")
    assert int8["calibration"]["n"] == 32 and int8["calibration"]["split"] == "train"
    assert int8["openvino"]["subset_size"] == 32
    # the INT8 IR really holds quantized weights: a quarter of the FP32 weights' bytes, roughly
    assert (out / "tiny.openvino-int8.bin").stat().st_size < 0.5 * (out / "tiny.openvino.bin").stat().st_size
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["openvino"]["runs_on"] == "openvino cpu"
    # FP32 IR on OpenVINO (precision pinned to f32) scores exactly what the ONNX parent scores
    assert rows["openvino"]["d_accuracy_pts"] == 0.0 and rows["openvino"]["d_macro_f1_pts"] == 0.0
    assert rows["openvino-int8"]["d_accuracy_pts"] is not None


def test_fp32_ir_matches_the_onnx_parent(ov_run, tiny_onnx):
    out, _ = ov_run
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    with open_runner(tiny_onnx, threads=1) as ort, open_runner(out / "tiny.openvino.xml", threads=1) as ov:
        np.testing.assert_allclose(ov.infer(x), ort.infer(x), rtol=1e-4, atol=1e-4)


def test_openvino_int8_refuses_too_few_calibration_images(tiny_onnx, tmp_path):
    with pytest.raises(UsageError, match="at least 32"):
        optimize_onnx(tiny_onnx, OptimizeOptions(methods=("openvino",), calib_size=16, out_dir=str(tmp_path)))
    assert not list(tmp_path.iterdir())


def test_missing_openvino_is_one_line_naming_the_extra(tiny_onnx, tmp_path, monkeypatch):
    import fopt.optimize.openvino as ovopt
    import fopt.optimize.run as run

    reason = "OpenVINO is not installed: pip install fopt[openvino]"
    monkeypatch.setattr(ovopt, "openvino_unavailable_reason", lambda: reason)
    monkeypatch.setattr(run, "openvino_unavailable_reason", lambda: reason)
    with pytest.raises(MissingDependency, match=r"pip install fopt\[openvino\]"):
        optimize_onnx(tiny_onnx, OptimizeOptions(methods=("openvino",), out_dir=str(tmp_path)))
    code, output = fopt("optimize", tiny_onnx, "--openvino", "--out", tmp_path)
    assert code == 2 and output.strip() == f"error: {reason}"
    # --all leaves it out with a note instead
    res = optimize_onnx(tiny_onnx, OptimizeOptions(all_methods=True, out_dir=str(tmp_path), evaluate=False,
                                                   latency=False, calib_size=32))
    assert any("skipping --openvino" in n for n in res["notes"])
    assert not list(tmp_path.glob("*.xml"))


def test_a_failing_openvino_conversion_fails_its_row_only(tiny_onnx, tmp_path, monkeypatch):
    import fopt.optimize.openvino as ovopt

    def unsupported(*args, **kwargs):
        raise RuntimeError("OpenVINO does not support the following ONNX operations: FancyOp")

    monkeypatch.setattr(ovopt, "onnx_to_openvino", unsupported)
    res = optimize_onnx(tiny_onnx, OptimizeOptions(methods=("int8-static", "openvino"), calib_size=32,
                                                   out_dir=str(tmp_path), evaluate=False, latency=False))
    rows = {r["method"]: r for r in res["rows"]}
    assert "FancyOp" in rows["openvino"]["note"] and rows["openvino"]["note"].startswith("failed:")
    assert (tmp_path / "tiny.int8.onnx").exists() and (tmp_path / "tiny.openvino-int8.xml").exists()
    assert not (tmp_path / "tiny.openvino.xml").exists() and not (tmp_path / "tiny.openvino.bin").exists()
