"""benchmarks/optimize_quality.py on real data: Fashion-MNIST from shared/ through a capped table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FMNIST = REPO.parent / "shared" / "data" / "fashion-mnist"


@pytest.mark.slow   # about 24 s of CPU (torch start, 100-image table, train, export, INT8, OpenVINO eval)
@pytest.mark.skipif(not (FMNIST / "FashionMNIST" / "raw").is_dir(), reason="no Fashion-MNIST in ../shared/data")
def test_real_data_rows_carry_deltas_intervals_and_verdicts(tmp_path):
    out = tmp_path / "oq"
    cmd = [sys.executable, str(REPO / "benchmarks" / "optimize_quality.py"), "--models", "tiny",
           "--data-raw", str(FMNIST), "--max-per-class", "10", "--img-size", "32", "--epochs", "1",
           "--methods", "int8-static", "--eval-split", "test", "--no-latency", "--profile-runs", "0",
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((out / "optimize_quality.json").read_text())
    # the table and its PNGs are written under --out; the raw files are only read
    assert (out / "data" / "fashion-mnist-cap10" / "dataset.csv").is_file()
    (model,) = doc["models"]
    assert model["eval_split"] == "test" and model["eval_n"] > 0
    rows = {r["method"]: r for r in model["rows"]}
    assert rows["torch eager fp32"]["verdict"]["word"] == "REFERENCE"
    static = rows["int8-static"]
    assert static["error"] is None
    for metric in ("accuracy", "macro_f1"):
        low, high = static[f"d_{metric}_ci_pts"]
        assert low <= static[f"d_{metric}_pts"] <= high
    assert static["verdict"]["word"] in {"PASS", "FAIL", "INCONCLUSIVE"}
    # a dozen test images cannot resolve a 1-point bar, and the verdict says so
    assert static["verdict"]["resolution"]
    assert "latency_b1_ms" not in static
    try:
        import openvino  # noqa: F401
    except ImportError:
        return
    assert rows["int8-static on openvino"]["runtime"] == "openvino"
    assert rows["int8-static on openvino"]["accuracy_pct"] is not None
