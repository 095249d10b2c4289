"""The recommendation and the report rank (artifact, runtime) pairs; the pipeline measures them."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fopt.cli import cli
from fopt.pipeline.recommend import recommend, winners_by_model
from fopt.pipeline.report import build_report, load_summaries


def _row(model, method, runtime, lat, dacc, spread=None):
    return {"model": model, "method": method, "runtime": runtime, "artifact": f"/r/{model}/{method}.onnx",
            "format": "onnx", "precision": "int8" if "int8" in method else "fp32", "accuracy": 0.9 + dacc / 100,
            "macro_f1": 0.9 + dacc / 100, "d_accuracy_pts": dacc, "d_macro_f1_pts": dacc, "p50_b1_ms": lat,
            "spread_b1_pct": spread, "estimate_ms": {}, "error_pct": {}}


ROWS = [_row("resnet18", "onnx fp32", "onnxruntime", 17.0, 0.0),
        _row("resnet18", "onnx fp32", "openvino", 9.0, 0.0, spread=4.0),
        _row("resnet18", "int8-static", "onnxruntime", 6.0, -0.4),
        _row("resnet18", "int8-static", "openvino", 5.0, -1.5),     # fastest, but loses too much
        _row("effnet", "onnx fp32", "onnxruntime", 6.5, 0.0),
        _row("effnet", "onnx fp32", "openvino", 5.0, 0.0)]


def test_the_same_file_on_two_runtimes_is_two_candidates():
    rec = recommend(ROWS)
    assert (rec["artifact"], rec["runtime"]) == ("/r/effnet/onnx fp32.onnx", "openvino")
    assert "on openvino" in rec["why"]
    rejected = {(x["artifact"], x["runtime"]): x["reason"] for x in rec["rejected"]}
    assert "accuracy drop 1.50" in rejected[("/r/resnet18/int8-static.onnx", "openvino")]
    winners = winners_by_model(ROWS)
    assert (winners["resnet18"]["method"], winners["resnet18"]["runtime"]) == ("int8-static", "onnxruntime")
    assert winners["effnet"]["runtime"] == "openvino"


def test_report_names_the_winning_runtime_per_model(tmp_path):
    summaries = []
    for model in ("resnet18", "effnet"):
        s = {"model": model, "rows": [r for r in ROWS if r["model"] == model], "machine": {"cpu": {"model": "X"}}}
        (tmp_path / model).mkdir()
        (tmp_path / model / "summary.json").write_text(json.dumps(s))
        summaries.append(tmp_path / model / "summary.json")
    rep = build_report(load_summaries(summaries), tmp_path / "out")
    assert rep["recommendation"]["runtime"] == "openvino"
    assert rep["winners"]["resnet18"]["runtime"] == "onnxruntime"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "### Winning runtime per model" in md
    assert "| resnet18 | `int8-static.onnx` | onnxruntime | 6 |" in md
    assert "| artifact | runtime | format |" in md
    assert (tmp_path / "out" / "accuracy_vs_latency.png").stat().st_size > 0


@pytest.mark.slow
def test_pipeline_measures_every_onnx_artifact_on_openvino_too(synth_dataset, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    import fopt.bench.costmodel.calibrate as cal

    monkeypatch.setenv("FOPT_CACHE_DIR", str(tmp_path / "cache"))
    real = cal.calibrate
    monkeypatch.setattr(cal, "calibrate", lambda *a, **k: real(*a, **{**k, "quick": True}))
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["pipeline", "--model", "tiny", "--data", str(synth_dataset), "--out", str(run),
                                   "--epochs", "1", "--img-size", "32", "--workers", "0", "--method", "openvino",
                                   "--calib-size", "32", "--batch-sizes", "1", "--min-time", "0.05",
                                   "--threads", "1", "--processes", "2"])
    assert res.exit_code == 0, res.output
    rep = json.loads((run / "report.json").read_text())
    pairs = {(r["method"], r["runtime"]) for r in rep["rows"]}
    assert pairs == {("torch eager fp32", "torch"), ("torchscript fp32", "torch"), ("onnx fp32", "onnxruntime"),
                     ("onnx fp32", "openvino"), ("openvino", "openvino"), ("openvino-int8", "openvino")}
    for r in rep["rows"]:
        assert r["accuracy"] is not None and r["p50_b1_ms"] > 0, r
        assert r["spread_b1_pct"] is not None   # two processes each
    ov_onnx = next(r for r in rep["rows"] if r["method"] == "onnx fp32" and r["runtime"] == "openvino")
    assert ov_onnx["d_accuracy_pts"] == 0.0
    assert rep["recommendation"]["runtime"] in {"torch", "onnxruntime", "openvino"}
    assert set(rep["winners"]) == {"tiny"}
