"""benchmarks/bench_runtimes.py --quick: every runtime column measured in one run, JSON and a plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytest.importorskip("openvino")
pytest.importorskip("nncf")


@pytest.mark.slow   # about 25 s of CPU (model builds, NNCF, six rows); longer on a busy machine
def test_quick_run_measures_every_column(tmp_path):
    out = tmp_path / "rt.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_runtimes.py"), "--quick",
                           "--models", "tiny", "--img-size", "32", "--threads", "1", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    cells = doc["table"]["tiny"]["1"]
    for column in doc["columns"]:
        assert cells[column]["status"] == "ok", (column, cells[column])
        assert cells[column]["p50_ms"] > 0
    assert cells["ov-fp32"]["ran_with"] == "f32"
    assert cells["best"] in doc["columns"]
    ov_best = min(cells["ov-fp32"]["p50_ms"], cells["ov-int8"]["p50_ms"])
    assert cells["vs_openvino_default"] == pytest.approx(ov_best / cells[cells["best"]]["p50_ms"])
    runtimes = {(Path(r["artifact"]).name, r["runtime"]) for r in doc["results"]}
    assert ("tiny_32.int8.onnx", "openvino") in runtimes and ("tiny_32.int8.onnx", "onnxruntime") in runtimes
    assert len(doc["load_average"]["before"]) == 3
    assert out.with_suffix(".png").stat().st_size > 0
