"""Shared fixtures and marker handling.

Markers: `slow` runs only with FOPT_SLOW=1; `gpu` needs CUDA; `tensorrt` needs TensorRT + CUDA.
Torch runs single-threaded in tests so parallel helpers and 2-core CI stay predictable.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if os.environ.get("FOPT_SHARED_DATA"):
    SHARED_DATA = Path(os.environ["FOPT_SHARED_DATA"])


def _cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    slow_ok = bool(os.environ.get("FOPT_SLOW"))
    cuda = None
    for item in items:
        if "slow" in item.keywords and not slow_ok:
            item.add_marker(pytest.mark.skip(reason="slow test: set FOPT_SLOW=1 (make test-all)"))
        if "gpu" in item.keywords or "tensorrt" in item.keywords:
            if cuda is None:
                cuda = _cuda_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="no CUDA GPU on this machine"))
            elif "tensorrt" in item.keywords and importlib.util.find_spec("tensorrt") is None:
                item.add_marker(pytest.mark.skip(reason="tensorrt is not installed"))


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    try:
        import torch
        torch.set_num_threads(1)
    except Exception:
        pass
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (read-only); tests skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synth_raw(tmp_path_factory) -> Path:
    """A small synthetic DeepFashion-layout dataset (6 classes x 20 images, 64 px)."""
    from fopt.data.synth import synthesize

    out = tmp_path_factory.mktemp("synth_raw")
    synthesize(out, classes=6, per_class=20, size=64, seed=0)
    return out


@pytest.fixture(scope="session")
def synth_dataset(synth_raw, tmp_path_factory) -> Path:
    """The dataset table (dataset.csv + mapping.json) built from `synth_raw`."""
    from fopt.data.build import build_dataset

    out = tmp_path_factory.mktemp("synth_table")
    build_dataset(synth_raw, out)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(synth_dataset, tmp_path_factory) -> Path:
    """A fopt checkpoint of the `tiny` model (random weights) for the synthetic classes, 32 px."""
    import torch

    from fopt.artifacts import InputSpec
    from fopt.checkpoint import save_checkpoint
    from fopt.data.datasets import DatasetTable
    from fopt.models import build_model

    table = DatasetTable.load(synth_dataset)
    torch.manual_seed(0)
    model = build_model("tiny", num_classes=len(table.class_names))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, model_name="tiny",
                    model_kwargs={"num_classes": len(table.class_names)},
                    class_names=table.class_names, input_spec=InputSpec(size=32),
                    config={"data": str(synth_dataset)})
    return path
