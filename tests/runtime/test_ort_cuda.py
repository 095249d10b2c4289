"""ONNX Runtime on CUDA without a GPU: the providers asked for, the row label, IO binding, and the
installed-flavour check. A stand-in session wraps a real CPU session and reports the providers a
GPU machine would (`_FakeGpuSession`); IO binding is bound to host memory in place of the GPU."""

from __future__ import annotations

import numpy as np
import pytest

from fopt.errors import DeviceUnavailable, MissingDependency, UsageError
from fopt.runtime import onnxrt, open_runner
from fopt.runtime.ortflavour import check_flavours

ALL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def _names(providers):
    return [p if isinstance(p, str) else p[0] for p in providers]


class _FakeGpuSession:
    """A real CPU session that says it runs on `active` providers and counts how it is run."""

    def __init__(self, real, active):
        self._real, self._active = real, active
        self.calls = {"run": 0, "run_with_iobinding": 0}

    def get_providers(self):
        return list(self._active)

    def run(self, *a, **k):
        self.calls["run"] += 1
        return self._real.run(*a, **k)

    def run_with_iobinding(self, binding, *a):
        self.calls["run_with_iobinding"] += 1
        return self._real.run_with_iobinding(binding, *a)

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """--device cuda on this CPU machine; returns the dict recording what the session was asked."""
    import onnxruntime as ort
    import torch

    real_session = ort.InferenceSession
    seen: dict = {"active": None}

    def session(path, sess_options=None, providers=None):
        seen["providers"] = list(providers)
        real = real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"])
        seen["session"] = _FakeGpuSession(real, seen["active"] or _names(providers))
        return seen["session"]

    monkeypatch.setenv("FOPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(ALL))
    monkeypatch.setattr(ort, "InferenceSession", session)
    monkeypatch.setattr(onnxrt, "IO_DEVICE", {"cuda": "cpu"}, raising=False)   # "device" buffers in host memory
    return seen


def test_cuda_default_is_the_cuda_provider_with_tf32_as_onnxruntime_has_it(artifacts, fake_gpu):
    with open_runner(artifacts["onnx"], device="cuda") as r:
        assert fake_gpu["providers"] == [("CUDAExecutionProvider", {"use_tf32": "1"}), "CPUExecutionProvider"]
        assert r.backend == "onnxruntime-cuda"
        assert r.execution["providers"][0] == "CUDAExecutionProvider"
    with open_runner(artifacts["onnx"], device="cuda", tf32=False):
        assert fake_gpu["providers"][0] == ("CUDAExecutionProvider", {"use_tf32": "0"})
    assert open_runner(artifacts["onnx"], device="cpu").backend == "onnxruntime"


def test_tensorrt_provider_only_when_asked_and_with_its_engine_cache(artifacts, fake_gpu, tmp_path):
    with open_runner(artifacts["onnx"], device="cuda", tensorrt_provider=True) as r:
        name, opts = fake_gpu["providers"][0]
        assert name == "TensorrtExecutionProvider" and r.backend == "onnxruntime-tensorrt"
        assert opts["trt_engine_cache_enable"] == "True" and opts["trt_timing_cache_enable"] == "True"
        cache = tmp_path / "cache" / "ort-tensorrt"
        assert opts["trt_engine_cache_path"] == str(cache) and cache.is_dir()
    with pytest.raises(UsageError, match="no TF32 switch"):
        open_runner(artifacts["onnx"], device="cuda", tensorrt_provider=True, tf32=False).load()


def test_tensorrt_provider_that_did_not_start_is_not_labelled_tensorrt(artifacts, fake_gpu):
    fake_gpu["active"] = ["CUDAExecutionProvider", "CPUExecutionProvider"]   # ORT went on without TRT
    with pytest.raises(DeviceUnavailable, match="could not start the TensorrtExecutionProvider"):
        open_runner(artifacts["onnx"], device="cuda", tensorrt_provider=True).load()


def test_tensorrt_provider_missing_from_this_onnxruntime(artifacts, fake_gpu, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ALL[1:])
    with pytest.raises(DeviceUnavailable, match="TensorRT provider is not available"):
        open_runner(artifacts["onnx"], device="cuda", tensorrt_provider=True).load()


def test_cuda_timing_runs_on_bound_device_buffers(artifacts, fake_gpu):
    """The timed call gets device buffers (no host arrays, so no copies inside the loop); the
    output stays an OrtValue until to_numpy, and the logits are the CPU runner's."""
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    with open_runner(artifacts["onnx"], device="cpu") as cpu:
        ref = cpu.infer(x)
    with open_runner(artifacts["onnx"], device="cuda") as r:
        prepared = r.prepare(x)
        assert not isinstance(prepared, np.ndarray)
        out = r.run_prepared(prepared)
        assert not isinstance(out, np.ndarray)   # still on the device
        sess = fake_gpu["session"]
        assert sess.calls == {"run": 0, "run_with_iobinding": 1}
        assert np.allclose(r.to_numpy(out), ref, atol=1e-5)
        assert np.allclose(r.infer(x), ref, atol=1e-5)


def test_harness_times_cuda_onnx_rows_on_bound_buffers(artifacts, fake_gpu):
    from fopt.bench.measure.harness import measure_artifact
    from fopt.runtime.timing import StopRule

    rows = measure_artifact(str(artifacts["onnx"]), device="cuda", batch_sizes=[2], threads=1,
                            rule=StopRule(min_time_s=0.05, warmup_iters=1, warmup_s=0, min_iters=3))
    assert rows[0]["status"] == "ok", rows[0]
    assert rows[0]["backend"] == "onnxruntime-cuda" and rows[0]["h2d_ms"] is not None
    assert fake_gpu["session"].calls["run"] == 0   # every timed iteration used the bound buffers


# ----------------------------------------------------------------------------- flavours

def test_flavour_check_names_the_one_installed():
    assert check_flavours({"onnxruntime-gpu": "1.22.0"}) == "onnxruntime-gpu 1.22.0 (CUDA/TensorRT)"
    assert check_flavours({"onnxruntime": "1.32.0"}) == "onnxruntime 1.32.0 (CPU)"


def test_flavour_check_refuses_cpu_and_gpu_together():
    with pytest.raises(MissingDependency) as e:
        check_flavours({"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.22.0"})
    msg = str(e.value)
    assert "\n" not in msg and "share one import folder" in msg
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in msg and "'.[gpu]'" in msg


def test_flavour_check_without_onnxruntime():
    with pytest.raises(MissingDependency, match=r"onnxruntime is not installed: pip install -e '\.\[cpu\]'"):
        check_flavours({})


def test_this_environment_has_exactly_one_flavour():
    from fopt.runtime.ortflavour import active_flavour

    assert active_flavour().startswith("onnxruntime")


def test_cuda_without_the_gpu_flavour_says_which_flavour_is_active(artifacts, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(onnxrt, "active_flavour", lambda: "onnxruntime 1.32.0 (CPU)")
    with pytest.raises(DeviceUnavailable, match=r"this is onnxruntime 1.32.0 \(CPU\).*pip uninstall -y onnxruntime"):
        open_runner(artifacts["onnx"], device="cuda").load()


def test_parity_on_cuda_compares_fp32_without_tf32_on_both_sides(artifacts, fake_gpu):
    """export's parity check runs the ONNX file through the CUDA provider with use_tf32=0 (torch
    has TF32 off in `_strict_fp32`); with TF32 on, Ampere/Hopper logits move by ~1e-3."""
    from fopt.export.validate import PARITY_BATCH, parity_inputs, validate_artifact

    with open_runner(artifacts["checkpoint"], device="cpu") as ref_runner:
        inputs = parity_inputs(ref_runner.card, ref_runner.input_spec, (1, PARITY_BATCH))
        # the checkpoint's "cuda" outputs, computed on the CPU (no GPU here)
        inputs.reference[f"{artifacts['checkpoint'].resolve()}|cuda"] = [ref_runner.infer(b) for b in inputs.batches]
    report = validate_artifact(artifacts["onnx"], artifacts["checkpoint"], inputs=inputs, device="cuda")
    assert report.passed and report.device == "cuda"
    assert fake_gpu["providers"] == [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
