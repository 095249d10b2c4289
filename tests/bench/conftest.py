"""Fixtures for bench tests: tiny artifacts (32 px) and a synthetic calibration in a tmp cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_testutil import synthetic_calibration

REPO = Path(__file__).resolve().parents[2]
TINY_CLASSES = ["a", "b", "c", "d"]


def _tiny_model():
    import torch

    from fopt.models import build_model

    torch.manual_seed(0)
    return build_model("tiny", num_classes=len(TINY_CLASSES)).eval()


def write_tiny_onnx(path: Path, *, dynamic_batch: bool = True, size: int = 32) -> Path:
    """The `tiny` registry model as a carded ONNX file (what `fopt export` writes, minus checks)."""
    import onnx

    from fopt.artifacts import InputSpec, make_card, write_card
    from fopt.export.onnx import model_to_onnx

    proto = model_to_onnx(_tiny_model(), size, dynamic_batch=dynamic_batch)
    card = make_card(kind="onnx", format="onnx", precision="fp32", input_spec=InputSpec(size=size),
                     class_names=TINY_CLASSES, model={"name": "tiny", "kwargs": {"num_classes": 4}},
                     opset=17)
    onnx.save(proto, str(path))
    write_card(path, card)
    return path


@pytest.fixture(scope="session")
def bench_dir(tmp_path_factory) -> Path:
    """tiny.onnx (dynamic batch), tiny_static.onnx (batch 1 only), tiny.pt checkpoint, corrupt.onnx."""
    from fopt.artifacts import InputSpec
    from fopt.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("bench_artifacts")
    write_tiny_onnx(d / "tiny.onnx")
    write_tiny_onnx(d / "tiny_static.onnx", dynamic_batch=False)
    save_checkpoint(d / "tiny.pt", _tiny_model(), model_name="tiny", model_kwargs={"num_classes": 4},
                    class_names=TINY_CLASSES, input_spec=InputSpec(size=32))
    (d / "corrupt.onnx").write_bytes(b"not an onnx file at all")
    return d


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """An empty calibration cache for this test (FOPT_CACHE_DIR)."""
    d = tmp_path / "cache"
    monkeypatch.setenv("FOPT_CACHE_DIR", str(d))
    return d


@pytest.fixture
def synthetic_cal(cache_dir) -> dict:
    """The synthetic calibration saved for 1 thread in the test's cache."""
    from fopt.bench.costmodel.cache import save_calibration

    cal = synthetic_calibration(threads=1)
    save_calibration(cal)
    return cal


@pytest.fixture(scope="module")
def bq():
    """benchmarks/bench_quality.py as a module (benchmarks/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "benchmarks" / "bench_quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
