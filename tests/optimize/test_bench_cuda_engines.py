"""benchmarks/bench_cuda.py builds the FP32, FP16 and INT8 engines (TensorRT stand-in; no GPU)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from fopt.optimize import run as optrun
from fopt.optimize import tensorrt as trtmod
from trt_standin import TrtStandIn

BENCH_CUDA = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_cuda.py"


@pytest.fixture(scope="module")
def bench_cuda():
    spec = importlib.util.spec_from_file_location("bench_cuda_under_test", BENCH_CUDA)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_methods_build_every_engine_precision_in_one_call(bench_cuda):
    assert bench_cuda.optimize_methods(None) == (("int8-static", "fp16", "tensorrt"), "both")
    methods, _ = bench_cuda.optimize_methods("no CUDA GPU")
    assert "tensorrt" not in methods


def test_fp32_fp16_and_int8_engines_are_built(bench_cuda, tiny_onnx, tmp_path, monkeypatch):
    import fopt.runtime.tensorrt as rtrt

    fake = TrtStandIn()
    monkeypatch.setattr(trtmod, "require_tensorrt", lambda: fake)
    monkeypatch.setattr(optrun, "require_tensorrt", lambda: fake)
    monkeypatch.setattr(rtrt, "tensorrt_unavailable_reason", lambda: None)
    monkeypatch.setattr(trtmod, "runtime_record", lambda trt, device=0: {"tensorrt_version": trt.__version__,
                                                                          "gpu_name": "Fake GPU"})
    onnx = tmp_path / "tiny.onnx"
    shutil.copy(tiny_onnx, onnx)
    shutil.copy(tiny_onnx.with_name("tiny.onnx.json"), tmp_path / "tiny.onnx.json")
    from fopt.data.datasets import DatasetTable
    from fopt.describe.infer import own_card
    from fopt.optimize.lineage import lineage_dataset

    calib = tmp_path / "calib_images"   # bench_cuda calibrates on a folder of images
    calib.mkdir()
    for i, p in enumerate(DatasetTable.load(lineage_dataset(own_card(onnx))).abs_paths("train")[:40]):
        shutil.copy(p, calib / f"{i}{p.suffix}")
    notes: list[str] = []
    engines = bench_cuda.build_optimized(onnx, tmp_path, 8, notes)
    assert notes == [], notes
    assert set(engines) == {"fp32", "fp16", "int8"} and all(engines.values())
    parsed = [c[1] for c in fake.calls if c[0] == "parse"]
    assert sorted(parsed) == ["tiny.fp16.onnx", "tiny.int8-trt.onnx", "tiny.onnx"]


def test_missing_engines_are_notes_not_silence(bench_cuda, monkeypatch, tmp_path):
    import fopt.runtime.tensorrt as rtrt

    monkeypatch.setattr(rtrt, "tensorrt_unavailable_reason", lambda: "TensorRT is not installed")
    monkeypatch.setattr(optrun, "optimize_onnx", lambda *a, **k: {"artifacts": []})
    notes: list[str] = []
    engines = bench_cuda.build_optimized(tmp_path / "x.onnx", tmp_path, 8, notes)
    assert engines == {"fp32": None, "fp16": None, "int8": None}
    assert notes == [f"no {p} TensorRT engine: TensorRT is not installed" for p in ("FP32", "FP16", "INT8")]
