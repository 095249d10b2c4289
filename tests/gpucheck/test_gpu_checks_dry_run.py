"""benchmarks/gpu/gpu_checks.py --dry-run: every step that needs no GPU runs on the CPU, the GPU
ones are recorded as skipped, and a second run in the same folder works (issue 18, defect 5)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "gpu_checks.py"
GPU_ONLY = {"calibrate_gpu", "latency_cuda", "ort_providers", "trtexec", "compat_guard"}


def _load():
    spec = importlib.util.spec_from_file_location("gpu_checks_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_dry_run_twice_in_the_same_folder(tmp_path):
    gc = _load()
    args = ["--out", str(tmp_path), "--dry-run", "--classes", "4", "--per-class", "16"]
    assert gc.main(args) == 0
    first = json.loads((tmp_path / "gpu_checks.json").read_text())
    assert gc.main(args) == 0   # a rerun replaces, it never stops on what the first run wrote
    doc = json.loads((tmp_path / "gpu_checks.json").read_text())
    steps = doc["steps"]
    assert doc["dry_run"] and first["steps"].keys() == steps.keys()
    assert {n for n, s in steps.items() if s["status"] == "skipped"} == GPU_ONLY
    assert all(s["status"] == "ok" for n, s in steps.items() if n not in GPU_ONLY), steps
    assert steps["train"]["result"]["epochs"] == 1 and steps["export"]["result"]["parity"]["passed"]
    rows = steps["latency_cpu"]["result"]
    assert {r["batch_size"] for r in rows} == {1, 8, 32} and all(r["status"] == "ok" for r in rows)
    md = (tmp_path / "gpu_checks.md").read_text()
    for section in ("## Training (1 epoch)", "## Export parity", "## Engines and accuracy",
                    "## Latency: measured against estimated", "## ONNX Runtime providers",
                    "## fopt against trtexec"):
        assert section in md


def test_summary_renders_gpu_results():
    """The Markdown summary of a GPU run's record (the sections the dry run cannot fill)."""
    gc = _load()
    row = {"artifact": "/x/m.engine", "backend": "tensorrt", "batch_size": 8, "status": "ok",
           "latency_ms": {"p50": 0.5}, "throughput_ips": 16000.0,
           "estimate_ms": {"naive": 0.05, "roofline": 0.4, "calibrated": 0.45},
           "error_pct": {"naive": -90.0, "roofline": -20.0, "calibrated": -10.0}}
    record = {"dry_run": False, "steps": {
        "latency_cuda": {"status": "ok", "result": [row]},
        "ort_providers": {"status": "ok", "result": [{"backend": "onnxruntime-tensorrt", "batch_size": 1,
                                                       "p50_ms": 0.3, "throughput_ips": 3333.0}]},
        "trtexec": {"status": "ok", "result": {"trtexec_median_ms": 0.48, "fopt_p50_ms": 0.5, "diff_pct": 4.2}}}}
    md = gc.summary_markdown(record)
    assert "| m.engine | tensorrt | 8 | 0.5 | 1.6e+04 | 0.05 (-90) | 0.4 (-20) | 0.45 (-10) |" in md
    assert "| onnxruntime-tensorrt | 1 | 0.3 |" in md and "trtexec median 0.48 ms, fopt p50 0.5 ms" in md
