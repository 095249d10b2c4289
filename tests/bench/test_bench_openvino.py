"""`fopt bench` on OpenVINO: rows name their runtime and what it ran with; per-layer counters."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fopt.bench.run import bench_artifacts
from fopt.cli import cli
from fopt.runtime.timing import StopRule

pytest.importorskip("openvino")

QUICK = StopRule(min_time_s=0.05, warmup_iters=1, warmup_s=0.0, min_iters=3)


def test_one_file_on_two_runtimes_in_fresh_processes(bench_dir, synthetic_cal):
    onnx = bench_dir / "tiny.onnx"
    res = bench_artifacts([onnx, (onnx, "openvino")], batch_sizes=(1, 2), threads=1, processes=2,
                          estimate=False, rule=QUICK).to_dict()
    rows = {(r["runtime"], r["batch_size"]): r for r in res["results"]}
    assert set(rows) == {("onnxruntime", 1), ("onnxruntime", 2), ("openvino", 1), ("openvino", 2)}
    for (runtime, _), r in rows.items():
        assert r["status"] == "ok", r["error"]
        assert r["processes"] == 2 and len(r["process_p50_ms"]) == 2 and r["spread_pct"] is not None
        assert r["latency_ms"]["p50"] > 0
    ov = rows[("openvino", 1)]
    assert ov["backend"] == "openvino"
    assert ov["execution"]["inference_precision"] == "f32" and ov["execution"]["threads"] == 1
    assert rows[("onnxruntime", 1)]["execution"]["device"] == "cpu"


def test_cli_runtime_and_per_layer_from_performance_counters(bench_dir, synthetic_cal, tmp_path):
    out = tmp_path / "b.json"
    res = CliRunner().invoke(cli, ["bench", str(bench_dir / "tiny.onnx"), "--runtime", "openvino",
                                   "--batch-sizes", "1", "--threads", "1", "--min-time", "0.05",
                                   "--per-layer", "--json", str(out), "--csv", str(tmp_path / "b.csv")])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(out.read_text())["results"]
    assert row["runtime"] == "openvino"
    assert "calibrated: not calibrated for openvino" in row["estimate_notes"]
    assert row["estimate_ms"]["roofline"] is not None   # the analysis still prices the ONNX graph
    ops = {x["op"] for x in row["layers"]}
    assert "Convolution" in ops
    assert all(x["source"] == "openvino performance counters" for x in row["layers"])
    assert "openvino performance counters" in res.output
    assert (tmp_path / "b.csv").read_text().splitlines()[0].startswith("artifact,runtime,backend")


def test_runtime_that_cannot_run_the_format_is_an_error_row(bench_dir, synthetic_cal):
    res = bench_artifacts([(bench_dir / "tiny.pt", "openvino"), bench_dir / "tiny.onnx"], batch_sizes=(1,),
                          threads=1, estimate=False, rule=QUICK).to_dict()
    bad, good = res["results"]
    assert bad["status"] == "error" and "runtime openvino cannot run checkpoint" in bad["error"]
    assert good["status"] == "ok"
