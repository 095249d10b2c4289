"""`fopt bench`: JSON schema, CSV, plots, calibration display, processes, user errors."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from fopt.cli import cli

FAST = ["--min-time", "0.02", "--threads", "1"]
RESULT_KEYS = {"artifact", "backend", "precision", "batch_size", "latency_ms", "throughput_ips",
               "estimate_ms", "error_pct", "status", "error"}


def run(args):
    return CliRunner().invoke(cli, ["bench", *args], catch_exceptions=False)


def test_json_csv_and_plots(bench_dir, synthetic_cal, tmp_path):
    out_json, out_csv, plots = tmp_path / "b.json", tmp_path / "b.csv", tmp_path / "plots"
    res = run([str(bench_dir / "tiny.onnx"), str(bench_dir / "tiny.pt"), "--batch-sizes", "1,2", *FAST,
               "--json", str(out_json), "--csv", str(out_csv), "--plot", str(plots), "--per-layer", "--top", "3"])
    assert res.exit_code == 0, res.output
    data = json.loads(out_json.read_text())
    assert {"machine", "results"} <= set(data)
    assert data["machine"]["cpu"]["model"] and "flags" in data["machine"]["cpu"]
    assert data["machine"]["versions"]["onnxruntime"]
    assert len(data["results"]) == 4
    for r in data["results"]:
        assert RESULT_KEYS <= set(r)
        assert set(r["latency_ms"]) == {"p50", "p90", "p99", "mean", "std"}
        assert set(r["estimate_ms"]) == set(r["error_pct"]) == {"naive", "roofline", "calibrated"}
        assert r["status"] == "ok" and r["error"] is None
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert r["throughput_ips"] == pytest.approx(r["batch_size"] / lat["p50"] * 1e3)
        assert r["threads"] == 1
    assert {r["backend"] for r in data["results"]} == {"onnxruntime", "torch-eager"}
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 4 and "latency_ms.p50" in rows[0] and "error_pct.calibrated" in rows[0]
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert "measured_vs_estimated.png" in pngs and "latency_vs_batch.png" in pngs
    assert sum(n.startswith("layers_") for n in pngs) == 4
    assert all((plots / n).stat().st_size > 5000 for n in pngs)
    words = " ".join(res.output.split())
    assert "p50" in words and re.search(r"top\s+3\s+of", words), res.output


def test_failed_row_keeps_exit_zero_but_all_failed_is_an_error(bench_dir, cache_dir, tmp_path):
    out = tmp_path / "r.json"
    res = run([str(bench_dir / "tiny_static.onnx"), "--batch-sizes", "1,2", *FAST, "--no-estimate",
               "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert [r["status"] for r in json.loads(out.read_text())["results"]] == ["ok", "error"]
    assert "warning: tiny_static.onnx batch 2:" in " ".join(res.output.split())
    res = run([str(bench_dir / "corrupt.onnx"), "--batch-sizes", "1", *FAST])
    assert res.exit_code == 2
    assert "every row failed" in res.output


@pytest.mark.parametrize("args, message", [
    ([], "give artifacts to benchmark"),
    (["x.onnx", "--batch-sizes", "1,a"], "comma-separated integers"),
    (["x.onnx", "--batch-sizes", "0"], "batch sizes must be >= 1"),
    (["x.onnx", "--processes", "0"], "0"),
])
def test_usage_errors(args, message, cache_dir):
    res = CliRunner().invoke(cli, ["bench", *args])
    assert res.exit_code == 2
    assert message in res.output


def test_show_calibration(synthetic_cal):
    res = run(["--show-calibration", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "GEMM fp32" in res.output and "conv_dense" in res.output


def test_show_calibration_without_one_says_what_to_run(cache_dir):
    res = CliRunner().invoke(cli, ["bench", "--show-calibration", "--threads", "1"])
    assert res.exit_code == 2 and "fopt bench --calibrate" in res.output


def test_several_processes_report_their_spread(bench_dir, cache_dir, tmp_path):
    """Two fresh processes (real subprocesses, as `fopt bench --processes 2` runs them)."""
    out = tmp_path / "p.json"
    proc = subprocess.run([sys.executable, "-m", "fopt", "bench", str(bench_dir / "tiny.onnx"), "--batch-sizes", "1",
                           *FAST, "--processes", "2", "--no-estimate", "--json", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())["results"][0]
    assert r["processes"] == 2 and len(r["process_p50_ms"]) == 2
    lo, hi = min(r["process_p50_ms"]), max(r["process_p50_ms"])
    assert r["spread_pct"] == pytest.approx((hi / lo - 1) * 100)
