"""The runners: one interface over checkpoint, TorchScript and ONNX Runtime, cards, devices."""

from __future__ import annotations

import numpy as np
import pytest

from fopt.errors import DeviceUnavailable, InputError, ValidationError
from fopt.runtime import RUNNERS, open_runner

FORMATS = ("checkpoint", "torchscript", "onnx")


def _batch(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def test_every_format_has_a_runner():
    for fmt in FORMATS:
        assert fmt in RUNNERS


@pytest.mark.parametrize("fmt", FORMATS)
def test_open_runner_picks_the_runner_for_the_format(artifacts, fmt):
    with open_runner(artifacts[fmt]) as runner:
        assert runner.format == fmt
        assert type(runner) is RUNNERS.get(fmt)
        assert runner.input_spec.size == 32
        assert runner.card["format"] == fmt
        assert len(runner.class_names) == 6


def test_all_formats_compute_the_same_logits(artifacts):
    x = _batch(5)
    outs = {}
    for fmt in FORMATS:
        with open_runner(artifacts[fmt]) as runner:
            outs[fmt] = runner.infer(x)
            assert runner.last_infer_s is not None and runner.last_infer_s > 0
            # batch 1 through the same (dynamic-batch) artifact gives row 0 of the batch result
            np.testing.assert_allclose(runner.infer(x[:1]), outs[fmt][:1], atol=1e-5, rtol=1e-4)
    assert outs["checkpoint"].shape == (5, 6)
    for fmt in ("torchscript", "onnx"):
        np.testing.assert_allclose(outs[fmt], outs["checkpoint"], atol=1e-4, rtol=1e-3)


def test_runners_accept_torch_tensors(artifacts):
    import torch

    x = _batch(2)
    with open_runner(artifacts["onnx"]) as runner:
        np.testing.assert_allclose(runner.infer(torch.from_numpy(x)), runner.infer(x))


@pytest.mark.parametrize("fmt", ("torchscript", "onnx"))
def test_embedded_card_is_used_without_the_sidecar(artifacts, without_sidecar, fmt):
    path = without_sidecar(fmt)
    assert not path.with_name(path.name + ".json").exists()
    with open_runner(path) as runner:
        assert runner.card["format"] == fmt
        assert runner.class_names == open_runner(artifacts[fmt]).class_names
        assert runner.infer(_batch(1)).shape == (1, 6)


def test_torchscript_without_any_card_is_a_clear_error(tmp_path, artifacts):
    import torch

    from fopt.checkpoint import load_checkpoint

    path = tmp_path / "bare.torchscript.pt"
    torch.jit.save(torch.jit.trace(load_checkpoint(artifacts["checkpoint"]).model,
                                   torch.randn(1, 3, 32, 32)), str(path))
    with pytest.raises(InputError, match="no fopt card"):
        open_runner(path)


def test_onnx_without_any_card_is_a_clear_error(tmp_path):
    import onnx
    import torch

    from fopt.export.onnx import model_to_onnx

    path = tmp_path / "bare.onnx"
    onnx.save(model_to_onnx(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten()), 8), str(path))
    with pytest.raises(InputError, match="no fopt card"):
        open_runner(path)


def test_garbage_files_are_input_errors(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(InputError):
        open_runner(bad)
    missing = tmp_path / "nope.onnx"
    with pytest.raises(InputError, match="no such file"):
        open_runner(missing)


@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_input_shape_is_a_validation_error(artifacts, fmt):
    with open_runner(artifacts[fmt]) as runner:
        with pytest.raises(ValidationError, match="expected input"):
            runner.infer(np.zeros((1, 1, 32, 32), np.float32))
        with pytest.raises(ValidationError, match="expected input"):
            runner.infer(np.zeros((3, 32, 32), np.float32))


@pytest.mark.parametrize("fmt", FORMATS)
def test_cuda_without_gpu_is_device_unavailable(artifacts, fmt, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable, match="no CUDA GPU"):
        open_runner(artifacts[fmt], device="cuda")
    with open_runner(artifacts[fmt], device="auto") as runner:  # auto falls back to the CPU
        assert runner.device == "cpu"


def test_ort_cuda_needs_the_cuda_provider(artifacts, monkeypatch):
    """A GPU is present (torch sees it) but this onnxruntime has no CUDA provider."""
    import onnxruntime as ort
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    runner = open_runner(artifacts["onnx"], device="cuda")
    with pytest.raises(DeviceUnavailable, match="onnxruntime-gpu"):
        runner.load()


def test_ort_cuda_provider_that_fails_to_start_is_not_a_silent_cpu_fallback(artifacts, monkeypatch, tmp_path):
    """onnxruntime-gpu without its CUDA libraries quietly runs on the CPU; the runner refuses."""
    import onnxruntime as ort
    import torch

    monkeypatch.setenv("FOPT_CACHE_DIR", str(tmp_path))   # the TensorRT provider's engine cache

    real_session = ort.InferenceSession
    asked = {}

    def session(path, sess_options=None, providers=None):
        asked["providers"] = list(providers)
        return real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", session)
    with pytest.raises(DeviceUnavailable, match="could not start its CUDA provider"):
        open_runner(artifacts["onnx"], device="cuda").load()
    # The TensorRT provider only when asked for (tests/runtime/test_ort_cuda.py has the details).
    assert [p if isinstance(p, str) else p[0] for p in asked["providers"]] == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(DeviceUnavailable):
        open_runner(artifacts["onnx"], device="cuda", tensorrt_provider=True).load()
    assert [p if isinstance(p, str) else p[0] for p in asked["providers"]] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_ort_threads_reach_the_session(artifacts):
    runner = open_runner(artifacts["onnx"], threads=1)
    so = runner.session_options()
    assert so.intra_op_num_threads == 1 and so.inter_op_num_threads == 1


def test_feed_and_input_spec_come_from_the_card(artifacts):
    with open_runner(artifacts["torchscript"]) as runner:
        feed, spec = runner.feed, runner.input_spec
    assert feed.shape == (None, 3, 32, 32) and feed.dtype == "float32"
    assert feed.at_batch(4) == (4, 3, 32, 32)
    assert spec.size == 32 and len(spec.mean) == 3


@pytest.mark.parametrize("fmt", FORMATS)
def test_eval_gives_the_same_accuracy_through_every_runner(artifacts, synth_dataset, fmt):
    from fopt.evaluation import evaluate_artifact

    ref = evaluate_artifact(artifacts["checkpoint"], synth_dataset, split="val", batch_size=16)
    res = evaluate_artifact(artifacts[fmt], synth_dataset, split="val", batch_size=16)
    assert res["n"] == ref["n"] > 0
    assert res["format"] == fmt
    assert abs(res["accuracy"] - ref["accuracy"]) * 100 <= 0.1
    assert abs(res["macro_f1"] - ref["macro_f1"]) * 100 <= 0.1


# ----------------------------------------------------------------------------- input vs the model

def _onnx_with_card(tmp_path, net, name, card_from, *, example, dynamic=True):
    """`net` exported as ONNX (input shape from `example`) with the card of a 3x32x32 model."""
    import json
    import warnings

    import onnx
    import torch

    from fopt.artifacts import card_path, set_onnx_card

    path = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # the legacy exporter: small and exact
        torch.onnx.export(net.eval(), (example,), str(path), input_names=["input"],
                          output_names=["logits"], dynamo=False,
                          dynamic_axes={"input": {0: "batch"}} if dynamic else None)
    card = json.loads(card_path(card_from).read_text())
    proto = onnx.load(str(path))
    set_onnx_card(proto, card)
    onnx.save(proto, str(path))
    card_path(path).write_text(json.dumps(card))
    return path


def test_onnx_whose_input_rank_differs_from_its_card_is_one_line(tmp_path, artifacts):
    import torch

    net = torch.nn.Linear(3 * 32 * 32, 6)               # takes flat (N, 3072) vectors
    path = _onnx_with_card(tmp_path, net, "flat.onnx", artifacts["onnx"], example=torch.randn(1, 3072))
    with open_runner(path) as runner:
        with pytest.raises(ValidationError, match=r"has rank 2 \(\?, 3072\).*does not match") as e:
            runner.infer(_batch(2))
    assert "\n" not in str(e.value)


def test_onnx_static_dims_are_checked_before_running(tmp_path, artifacts):
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 30 * 30, 6))
    path = _onnx_with_card(tmp_path, net, "static.onnx", artifacts["onnx"],
                           example=torch.randn(4, 3, 32, 32), dynamic=False)
    with open_runner(path) as runner:
        assert runner.infer(_batch(4)).shape == (4, 6)
        with pytest.raises(ValidationError, match=r"batch size is fixed at 4"):
            runner.infer(_batch(2))
        with pytest.raises(ValidationError, match=r"height is fixed at 32"):
            runner.infer(_batch(4, size=16))


def test_onnx_runtime_argument_errors_become_one_line(artifacts, monkeypatch):
    """Whatever still slips past the checks: onnxruntime's InvalidArgument, first line only."""
    with open_runner(artifacts["onnx"]) as runner:
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

        class FakeSession:
            def run(self, *a, **k):
                raise InvalidArgument("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : bad dims\nmore\nlines")

        real = runner.session
        runner.session = FakeSession()
        with pytest.raises(ValidationError, match="INVALID_ARGUMENT : bad dims$"):
            runner.run_prepared(_batch(1))
        runner.session = real


# ----------------------------------------------------------------------------- trust

def test_foreign_torchscript_gets_one_trust_note_once(artifacts, without_sidecar, capsys):
    from fopt.runtime import base

    with open_runner(artifacts["torchscript"]) as runner:     # fopt's own, sha256 in its card
        runner.infer(_batch(1))
    assert "not written by fopt" not in capsys.readouterr().err

    path = without_sidecar("torchscript")                     # embedded card only: unproven
    base._TRUST_NOTED.discard(str(path.resolve()))
    for _ in range(2):
        with open_runner(path) as runner:
            runner.infer(_batch(1))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "not written by fopt" in ln]
    assert len(lines) == 1, err
    assert str(path) in lines[0] and "trust" in lines[0] and "TorchScript" in lines[0]


def test_a_card_that_does_not_hash_to_the_file_proves_nothing(artifacts, tmp_path):
    import json
    import shutil

    from fopt.artifacts import card_path
    from fopt.runtime.base import trust_note, written_by_fopt

    path = tmp_path / "m.torchscript.pt"
    shutil.copy(artifacts["torchscript"], path)
    card = json.loads(card_path(artifacts["torchscript"]).read_text())
    card_path(path).write_text(json.dumps(card))
    assert written_by_fopt(path)
    card["sha256"] = "0" * 64                                   # a card for some other file
    card_path(path).write_text(json.dumps(card))
    assert not written_by_fopt(path)
    assert "not written by fopt" in trust_note(path, "torchscript")
    assert trust_note(path, "torchscript") is None       # once per file
    assert trust_note(tmp_path / "x.onnx", "onnx") is None   # ONNX is data, not code
    assert "TensorRT engine" in trust_note(tmp_path / "y.engine", "tensorrt")
