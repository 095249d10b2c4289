"""TensorRT: what can be checked without a GPU (profiles, flags, cards, error paths, the build
sequence against a stand-in module), and the real build/run, which skips without CUDA+TensorRT."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from fopt.artifacts import make_card, read_card, write_card
from fopt.errors import DeviceUnavailable, InputError, MissingDependency, UsageError
from fopt.optimize import tensorrt as trtmod
from fopt.optimize.base import OptimizeError
from fopt.runtime import tensorrt as rtrt
from trt_standin import TrtStandIn, cache_bytes

BUILT = {"tensorrt_version": "10.3.0", "gpu_name": "Tesla T4", "compute_capability": "7.5"}


# ----------------------------------------------------------------------------- pure helpers

def test_profile_shapes_dynamic_batch():
    p = trtmod.profile_shapes((3, 224, 224), 1, 4, 16)
    assert p == {"min": (1, 3, 224, 224), "opt": (4, 3, 224, 224), "max": (16, 3, 224, 224)}


@pytest.mark.parametrize("args, match", [
    ((2, 1, 8), "min-batch <= --opt-batch"),
    ((1, 8, 4), "min-batch <= --opt-batch"),
    ((0, 1, 8), "--min-batch must be a positive"),
    ((1, 1, -3), "--max-batch must be a positive"),
])
def test_profile_shapes_invalid(args, match):
    with pytest.raises(UsageError, match=match):
        trtmod.profile_shapes((3, 32, 32), *args)


def test_profile_shapes_static_batch():
    assert trtmod.profile_shapes((3, 32, 32), 2, 2, 2, static_batch=2)["opt"] == (2, 3, 32, 32)
    with pytest.raises(UsageError, match="fixed batch of 1"):
        trtmod.profile_shapes((3, 32, 32), 1, 1, 8, static_batch=1)
    with pytest.raises(UsageError, match="fixed channel/height/width"):
        trtmod.profile_shapes((3, -1, 32), 1, 1, 8)


def _fake_trt(version: str, strongly_typed: bool = True):
    flags = types.SimpleNamespace(**({"STRONGLY_TYPED": 1} if strongly_typed else {}))
    return types.SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=flags)


def test_network_flags_per_version():
    assert trtmod.network_flags(_fake_trt("10.8.0.43")) == (1 << 1, True)
    assert trtmod.network_flags(_fake_trt("11.1.0", strongly_typed=False)) == (0, True)
    with pytest.raises(MissingDependency, match="strongly typed"):
        trtmod.network_flags(_fake_trt("10.0.0", strongly_typed=False))


def test_engine_compat_problems():
    assert rtrt.engine_compat_problems(BUILT, dict(BUILT)) == []
    other_version = rtrt.engine_compat_problems(BUILT, {**BUILT, "tensorrt_version": "10.4.0"})
    assert other_version == ["built with TensorRT 10.3.0, this machine has TensorRT 10.4.0"]
    other_gpu = rtrt.engine_compat_problems(BUILT, {**BUILT, "gpu_name": "NVIDIA H200",
                                                      "compute_capability": "9.0"})
    assert len(other_gpu) == 1 and "built on Tesla T4 (compute capability 7.5)" in other_gpu[0]
    assert "NVIDIA H200 (compute capability 9.0)" in other_gpu[0]
    assert rtrt.engine_compat_problems({}, BUILT)


# ----------------------------------------------------------------------------- availability

def test_require_tensorrt_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable, match="CUDA GPU"):
        rtrt.require_tensorrt()
    assert "CUDA GPU" in rtrt.tensorrt_unavailable_reason()


def test_require_tensorrt_without_the_package(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(MissingDependency, match=r"pip install fopt\[gpu\]"):
        rtrt.require_tensorrt()


def test_too_old_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(MissingDependency, match="TensorRT 8.6.1 is too old"):
        rtrt.import_tensorrt()


def test_runtime_module_imports_without_tensorrt():
    import subprocess

    code = ("import sys; sys.modules['tensorrt'] = None; "
            "from fopt.runtime import RUNNERS; "
            "assert 'tensorrt' in RUNNERS and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tensorrt_compatible_flavours(tiny_onnx, tmp_path):
    from fopt.artifacts import InputSpec
    from fopt.optimize.calib import load_calibration_set
    from fopt.optimize.quantize import onnx_to_int8_static
    from fopt.optimize.run import inspect_input, tensorrt_compatible

    assert tensorrt_compatible(inspect_input(tiny_onnx)) is None
    cal = load_calibration_set(_dataset_of(tiny_onnx), InputSpec(size=32), n=32)
    for target, ok in (("ort", False), ("tensorrt", True)):
        out = tmp_path / f"{target}.onnx"
        onnx_to_int8_static(tiny_onnx, out, calibration=cal, target=target)
        card = make_card(kind="optimized", format="onnx", precision="int8", input_spec={"size": 32,
                         "mean": [0.5] * 3, "std": [0.5] * 3}, class_names=["a", "b"])
        write_card(out, card)
        reason = tensorrt_compatible(inspect_input(out))
        assert (reason is None) == ok, reason
        if not ok:
            assert "uint8" in reason


def _dataset_of(onnx_path: Path) -> Path:
    from fopt.describe.infer import own_card
    from fopt.optimize.lineage import lineage_dataset

    return lineage_dataset(own_card(onnx_path))


# ----------------------------------------------------------------------------- the runner

@pytest.fixture
def engine_file(tmp_path, tiny_onnx) -> Path:
    path = tmp_path / "tiny.engine"
    path.write_bytes(b"serialized-engine-bytes")
    parent = read_card(tiny_onnx)
    card = make_card(kind="optimized", format="tensorrt", precision="fp32",
                     input_spec=parent["input_spec"], class_names=parent["class_names"],
                     parent=tiny_onnx, method="tensorrt", tensorrt={**BUILT, "source_onnx": str(tiny_onnx)})
    write_card(path, card)
    return path


def test_runner_refuses_cpu(engine_file):
    from fopt.runtime import open_runner

    with pytest.raises(UsageError, match="CUDA GPU only"):
        open_runner(engine_file, device="cpu")


def test_runner_without_gpu(engine_file, monkeypatch):
    import torch

    from fopt.runtime import open_runner

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable):
        open_runner(engine_file, device="cuda")


class _FakeRuntime:
    def __init__(self, logger):
        pass

    def deserialize_cuda_engine(self, data):
        return None  # what TensorRT returns for an engine it cannot read


def _fake_gpu_env(monkeypatch, here: dict):
    import torch

    import fopt.runtime.base as base

    fake = types.SimpleNamespace(__version__=here["tensorrt_version"], Runtime=_FakeRuntime,
                                 Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda s, l=0: None}))
    monkeypatch.setattr(base, "resolve_device", lambda d: "cuda")
    monkeypatch.setattr(rtrt, "import_tensorrt", lambda: fake)
    monkeypatch.setattr(rtrt, "runtime_record", lambda trt, device=0: dict(here))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_runner_refuses_engine_from_other_gpu_and_version(engine_file, monkeypatch):
    from fopt.runtime import open_runner

    _fake_gpu_env(monkeypatch, {"tensorrt_version": "10.8.0", "gpu_name": "NVIDIA H200",
                                "compute_capability": "9.0"})
    runner = open_runner(engine_file, device="cuda")
    with pytest.raises(InputError) as e:
        runner.load()
    msg = str(e.value)
    assert "\n" not in msg and "engine cannot run here" in msg
    assert "TensorRT 10.3.0" in msg and "10.8.0" in msg and "Tesla T4" in msg and "NVIDIA H200" in msg
    assert "--tensorrt" in msg


def test_runner_matching_card_reaches_deserialization(engine_file, monkeypatch):
    from fopt.runtime import open_runner

    _fake_gpu_env(monkeypatch, BUILT)
    with pytest.raises(InputError, match="could not deserialize"):
        open_runner(engine_file, device="cuda").load()


def test_runner_needs_a_tensorrt_card(tmp_path, tiny_onnx, monkeypatch):
    import fopt.runtime.base as base

    monkeypatch.setattr(base, "resolve_device", lambda d: "cuda")
    path = tmp_path / "x.engine"
    path.write_bytes(b"x")
    write_card(path, {**read_card(tiny_onnx), "format": "onnx"})
    from fopt.runtime.tensorrt import TensorRTRunner

    with pytest.raises(InputError, match="not a TensorRT engine"):
        TensorRTRunner(path, device="cuda")


class _Stream:
    """A CUDA stream stand-in: work queued on it is pending until it is synchronized."""

    def __init__(self):
        self.pending = 0

    def synchronize(self):
        self.pending = 0


def test_runner_synchronize_waits_for_the_input_copy_on_the_current_stream(engine_file, monkeypatch):
    import torch

    from fopt.runtime import open_runner

    _fake_gpu_env(monkeypatch, BUILT)
    runner = open_runner(engine_file, device="cuda")
    current, own = _Stream(), _Stream()
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current)
    runner.stream = own
    current.pending, own.pending = 1, 1   # prepare's copy + cast on the current stream; inference on ours
    runner.synchronize()
    assert current.pending == 0 and own.pending == 0


# ----------------------------------------------------------------------------- build sequence

_Recorder = TrtStandIn


def test_build_sequence_with_stand_in(tiny_onnx, tmp_path, monkeypatch):
    fake = _Recorder()
    monkeypatch.setattr(trtmod, "require_tensorrt", lambda: fake)
    monkeypatch.setattr(trtmod, "runtime_record", lambda trt, device=0: {"tensorrt_version": trt.__version__,
                                                                          "gpu_name": "Fake GPU",
                                                                          "compute_capability": "9.0"})
    cache = tmp_path / "t.cache"
    rec = trtmod.onnx_to_engine(tiny_onnx, tmp_path / "e.engine", min_batch=1, opt_batch=2, max_batch=4,
                                workspace_mb=64, timing_cache=cache)
    assert (tmp_path / "e.engine").read_bytes() == b"ENGINE"
    assert cache.read_bytes() == cache_bytes("10.8.0", "Fake GPU", 1)
    assert ("network", 2) in fake.calls and ("workspace", "WORKSPACE", 64 << 20) in fake.calls
    assert ("profile", "input", (1, 3, 32, 32), (2, 3, 32, 32), (4, 3, 32, 32)) in fake.calls
    assert ("set_cache", False, True) in fake.calls and ("cache_in", b"") in fake.calls
    assert rec["profile"] == {"input": "input", "min": [1, 3, 32, 32], "opt": [2, 3, 32, 32],
                              "max": [4, 3, 32, 32]}
    assert rec["strongly_typed"] and rec["timing_cache_reused"] is False and rec["gpu_name"] == "Fake GPU"
    # A second build reuses the timing cache.
    fake.calls.clear()
    rec2 = trtmod.onnx_to_engine(tiny_onnx, tmp_path / "e2.engine", timing_cache=cache)
    assert ("cache_in", cache_bytes("10.8.0", "Fake GPU", 1)) in fake.calls and rec2["timing_cache_reused"]
    assert rec2["timing_cache_notes"] == [] and cache.read_bytes() == cache_bytes("10.8.0", "Fake GPU", 2)


def _build_with_cache(monkeypatch, tiny_onnx, tmp_path, fake, cache):
    monkeypatch.setattr(trtmod, "require_tensorrt", lambda: fake)
    monkeypatch.setattr(trtmod, "runtime_record", lambda trt, device=0: {"tensorrt_version": trt.__version__})
    rec = trtmod.onnx_to_engine(tiny_onnx, tmp_path / "e.engine", timing_cache=cache)
    assert (tmp_path / "e.engine").read_bytes() == b"ENGINE"   # a cache problem never fails the build
    return rec


def test_timing_cache_from_another_tensorrt_version_is_replaced(tiny_onnx, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "t.cache"
    cache.write_bytes(cache_bytes("10.3.0", "Fake GPU", 7))   # create_timing_cache -> None
    rec = _build_with_cache(monkeypatch, tiny_onnx, tmp_path, TrtStandIn("10.8.0"), cache)
    assert rec["timing_cache_reused"] is False
    assert len(rec["timing_cache_notes"]) == 1 and "cannot read the timing cache" in rec["timing_cache_notes"][0]
    assert "cannot read the timing cache t.cache" in capsys.readouterr().err
    assert cache.read_bytes() == cache_bytes("10.8.0", "Fake GPU", 1)   # this build's cache replaces it


def test_timing_cache_from_another_gpu_is_refused_not_used(tiny_onnx, tmp_path, monkeypatch):
    cache = tmp_path / "t.cache"
    cache.write_bytes(cache_bytes("10.8.0", "Tesla T4", 7))   # set_timing_cache -> False
    fake = TrtStandIn("10.8.0", gpu="NVIDIA H200")
    rec = _build_with_cache(monkeypatch, tiny_onnx, tmp_path, fake, cache)
    assert ("set_cache", False, False) in fake.calls and ("set_cache", False, True) in fake.calls
    assert rec["timing_cache_reused"] is False and "refused the timing cache" in rec["timing_cache_notes"][0]
    assert cache.read_bytes() == cache_bytes("10.8.0", "NVIDIA H200", 1)   # not the T4's 7 entries


def test_timing_cache_lost_after_build_leaves_the_file(tiny_onnx, tmp_path, monkeypatch):
    cache = tmp_path / "t.cache"
    old = cache_bytes("10.8.0", "Fake GPU", 3)
    cache.write_bytes(old)
    rec = _build_with_cache(monkeypatch, tiny_onnx, tmp_path, TrtStandIn(lose_cache=True), cache)
    assert rec["timing_cache_reused"] is True
    assert rec["timing_cache_notes"] == ["TensorRT returned no timing cache after the build; t.cache was not updated"]
    assert cache.read_bytes() == old


def test_timing_cache_that_cannot_be_created_builds_without_one(tiny_onnx, tmp_path, monkeypatch):
    cache = tmp_path / "t.cache"
    fake = TrtStandIn(empty_cache_ok=False)
    rec = _build_with_cache(monkeypatch, tiny_onnx, tmp_path, fake, cache)
    assert not any(c[0] == "set_cache" for c in fake.calls)
    assert rec["timing_cache_notes"][0] == "TensorRT could not attach an empty timing cache; building without one"
    assert "no timing cache after the build" in rec["timing_cache_notes"][1] and not cache.exists()


def test_build_errors_with_stand_in(tiny_onnx, tmp_path, monkeypatch):
    from fopt.optimize.base import METHODS, produce

    monkeypatch.setattr(trtmod, "runtime_record", lambda trt, device=0: {})
    monkeypatch.setattr(trtmod, "require_tensorrt", lambda: _Recorder(parse_ok=False))
    target = tmp_path / "tiny.engine"
    with pytest.raises(OptimizeError, match="TensorRT cannot parse tiny.onnx: Unsupported ONNX op: QuickGelu"):
        produce(METHODS.get("tensorrt"), tiny_onnx, target, read_card(tiny_onnx))
    monkeypatch.setattr(trtmod, "require_tensorrt", lambda: _Recorder(build_ok=False))
    with pytest.raises(OptimizeError, match="could not build an engine"):
        produce(METHODS.get("tensorrt"), tiny_onnx, target, read_card(tiny_onnx))
    assert list(tmp_path.iterdir()) == []


def test_engine_card_through_produce(tiny_onnx, tmp_path, monkeypatch):
    from fopt.optimize.base import METHODS, produce

    monkeypatch.setattr(trtmod, "require_tensorrt", lambda: _Recorder())
    monkeypatch.setattr(trtmod, "runtime_record", lambda trt, device=0: dict(BUILT))
    p = produce(METHODS.get("tensorrt"), tiny_onnx, tmp_path / "tiny.engine", read_card(tiny_onnx),
                precision="fp32", min_batch=1, opt_batch=1, max_batch=8)
    card = read_card(p.path)
    assert card["format"] == "tensorrt" and card["precision"] == "fp32" and card["opset"] is None
    assert card["tensorrt"]["gpu_name"] == "Tesla T4" and card["tensorrt"]["compute_capability"] == "7.5"
    assert card["tensorrt"]["tensorrt_version"] == "10.3.0"
    assert card["tensorrt"]["profile"]["max"] == [8, 3, 32, 32]


# ----------------------------------------------------------------------------- real GPU

@pytest.mark.tensorrt
def test_real_engines_fp32_fp16_int8(model_copy, tiny_onnx):
    from fopt.optimize.run import OptimizeOptions, optimize_onnx
    from fopt.runtime import open_runner

    path = model_copy(tiny_onnx)
    result = optimize_onnx(path, OptimizeOptions(methods=("int8-static", "fp16", "tensorrt"),
                                                 calib_size=32, max_batch=8))
    engines = [a for a in result["artifacts"] if a["method"] == "tensorrt"]
    assert {Path(a["path"]).name for a in engines} == {"tiny.engine", "tiny.fp16.engine", "tiny.int8-trt.engine"}
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    with open_runner(path) as ref_runner:
        ref = ref_runner.infer(x)
    for a in engines:
        card = read_card(a["path"])
        assert card["tensorrt"]["gpu_name"] and card["tensorrt"]["tensorrt_version"]
        with open_runner(a["path"], device="cuda") as r:
            got = r.infer(x)
            assert got.shape == ref.shape
            if card["precision"] != "int8":
                assert np.allclose(got, ref, atol=5e-2, rtol=5e-2)
            with pytest.raises(Exception, match="outside the engine's profile"):
                r.infer(np.zeros((9, 3, 32, 32), np.float32))
        assert a["row"]["accuracy_pct"] is not None
