"""End to end: the pipeline on tiny synthetic data, then a re-run that skips every stage."""

import json

import pytest
from click.testing import CliRunner

from fopt.cli import cli


@pytest.fixture()
def quick_calibration(monkeypatch, tmp_path):
    """A real but reduced calibration in a private cache (the full one takes about a minute)."""
    import fopt.bench.costmodel.calibrate as cal

    monkeypatch.setenv("FOPT_CACHE_DIR", str(tmp_path / "cache"))
    real = cal.calibrate
    monkeypatch.setattr(cal, "calibrate", lambda *a, **k: real(*a, **{**k, "quick": True}))


def test_pipeline_end_to_end_and_resume(synth_dataset, tmp_path, quick_calibration):
    run = tmp_path / "run"
    args = ["pipeline", "--model", "tiny", "--data", str(synth_dataset), "--out", str(run),
            "--epochs", "1", "--img-size", "32", "--workers", "0", "--method", "int8-static",
            "--calib-size", "32", "--batch-sizes", "1,2", "--min-time", "0.05", "--threads", "1"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    rep = json.loads((run / "report.json").read_text())
    methods = {r["method"] for r in rep["rows"]}
    # the precision search runs by default with int8-static
    assert methods == {"torch eager fp32", "torchscript fp32", "onnx fp32", "int8-static", "int8-mixed"}
    for r in rep["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["p50_b1_ms"] > 0, r
        assert r["best_batch"] in (1, 2)
        assert set(r["estimate_ms"]) >= {"naive", "roofline", "calibrated"}
    eager = next(r for r in rep["rows"] if r["method"] == "torch eager fp32")
    onnx_fp32 = next(r for r in rep["rows"] if r["method"] == "onnx fp32")
    # Exported and checkpoint are the same network: identical predictions on the same split.
    assert onnx_fp32["accuracy"] == pytest.approx(eager["accuracy"], abs=1e-3)
    assert eager["d_accuracy_pts"] == 0.0 and eager["speedup_vs_eager"] == pytest.approx(1.0)
    model = rep["models"][0]
    assert model["analysis"]["macs"] > 0 and model["analysis"]["t4"]["naive_ms"] > 0
    assert rep["recommendation"]["why"]
    md = (run / "report.md").read_text()
    assert "## tiny" in md and "Recommendation" in md and "accuracy_vs_latency.png" in md
    assert "curves.png" in md and "measured_vs_estimated" in md and "roofline_t4.png" in md

    # Second run: nothing changed, so every stage is skipped and the report is rebuilt.
    res2 = CliRunner().invoke(cli, args)
    assert res2.exit_code == 0, res2.output
    for stage in ("train", "export", "optimize", "eval", "analyze", "bench"):
        assert f"{stage} skipped" in res2.output, (stage, res2.output)
    ledger = json.loads((run / "stages.json").read_text())
    assert {"tiny/train", "tiny/export", "tiny/optimize", "tiny/bench"} <= set(ledger)

    # `fopt report` rebuilds the same recommendation from the run folder alone.
    res3 = CliRunner().invoke(cli, ["report", str(run), "--out", str(tmp_path / "rep")])
    assert res3.exit_code == 0, res3.output
    rep3 = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep3["recommendation"]["artifact"] == rep["recommendation"]["artifact"]


def test_pipeline_rejects_unknown_model(tmp_path):
    res = CliRunner().invoke(cli, ["pipeline", "--model", "resnet19", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "Did you mean 'resnet18'" in res.output
