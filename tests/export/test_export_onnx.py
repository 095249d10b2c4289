"""ONNX export: graph contract, checks, simplification safety net, card in and beside the file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    """tiny.pt copied into its own folder and exported to ONNX with default options."""
    from fopt.export.onnx import checkpoint_to_onnx

    d = tmp_path_factory.mktemp("onnx_export")
    ckpt = d / "tiny.pt"
    shutil.copy(tiny_checkpoint, ckpt)
    lines: list[str] = []
    result = checkpoint_to_onnx(ckpt, log=lines.append)
    return ckpt, result, lines


def test_graph_contract_named_io_dynamic_batch(exported):
    import onnx

    ckpt, result, _ = exported
    assert result.path == ckpt.with_name("tiny.onnx")
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model, full_check=True)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert out.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] == 17


def test_card_beside_and_inside_agree(exported):
    from fopt.artifacts import read_card, sha256_file
    from fopt.runtime.onnxrt import embedded_card

    ckpt, result, _ = exported
    side = read_card(result.path)
    inside = embedded_card(result.path)
    assert side["sha256"] == sha256_file(result.path)  # the sidecar describes this very file
    assert side["size_bytes"] == result.path.stat().st_size
    for card in (side, inside):
        assert (card["kind"], card["format"], card["precision"], card["opset"]) == ("onnx", "onnx", "fp32", 17)
        assert card["parent"]["sha256"] == sha256_file(ckpt)
        assert card["model"]["name"] == "tiny" and card["model"]["params"] > 0
        assert card["input_spec"]["size"] == 32 and card["input_spec"]["mean"] == [0.5, 0.5, 0.5]
        assert card["class_names"] == json.loads(json.dumps(side["class_names"]))
        parity = card["metrics"]["parity"]
        assert parity["passed"] and parity["inputs_kind"] == "real" and parity["batch_sizes"] == [1, 8]
        assert parity["max_abs_diff"] < 1e-4 and parity["top1_agreement"] == 1.0
    assert {k: v for k, v in side.items() if k not in ("sha256", "size_bytes")} == inside


def test_one_line_per_step_with_sizes(exported):
    _, result, lines = exported
    assert any(line.startswith("onnxsim: ") and "nodes" in line and "MB" in line for line in lines)
    wrote = [line for line in lines if line.startswith("onnx: wrote")]
    assert len(wrote) == 1 and "parity ok" in wrote[0] and "\n" not in wrote[0]
    assert result.details["simplify"]["before"]["nodes"] >= result.details["nodes"]


def test_fixed_batch_and_opset(tiny_checkpoint, tmp_path):
    import onnx

    from fopt.export.onnx import checkpoint_to_onnx

    r = checkpoint_to_onnx(tiny_checkpoint, tmp_path / "b2.onnx", dynamic_batch=False, batch=2, opset=18,
                           log=lambda s: None)
    model = onnx.load(str(r.path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] == 18
    assert r.parity["batch_sizes"] == [2]


def test_img_size_override_goes_into_card_and_graph(tiny_checkpoint, tmp_path):
    import onnx

    from fopt.artifacts import read_card
    from fopt.export.onnx import checkpoint_to_onnx

    r = checkpoint_to_onnx(tiny_checkpoint, tmp_path / "t48.onnx", img_size=48, simplify=False,
                           log=lambda s: None)
    assert read_card(r.path)["input_spec"]["size"] == 48
    dims = onnx.load(str(r.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[2:]] == [48, 48]
    assert r.details["simplify"]["reason"] == "--no-simplify"


# ----------------------------------------------------------------------------- simplification

def _tiny_proto():
    import torch

    from fopt.export.onnx import check_and_infer, model_to_onnx
    from fopt.models import build_model

    torch.manual_seed(0)
    return check_and_infer(model_to_onnx(build_model("tiny", num_classes=4), 32))


def _inputs():
    rng = np.random.default_rng(0)
    return [rng.standard_normal((b, 3, 32, 32)).astype(np.float32) for b in (1, 4)]


def test_simplify_kept_when_equal():
    from fopt.export.onnx import simplify_onnx

    proto = _tiny_proto()
    out, report = simplify_onnx(proto, _inputs(), atol=1e-4, rtol=1e-3)
    assert report.applied and report.after is not None and report.max_abs_diff < 1e-5
    assert "->" in report.line()


def test_simplify_that_changes_outputs_is_dropped(monkeypatch):
    import onnx.numpy_helper as nh
    import onnxsim

    from fopt.export.onnx import simplify_onnx

    proto = _tiny_proto()
    real = onnxsim.simplify

    def corrupting(model, **kw):
        simplified, ok = real(model, **kw)
        init = max(simplified.graph.initializer, key=lambda t: len(t.raw_data))
        arr = nh.to_array(init) * 1.5  # a "simplification" that changes the maths
        init.CopyFrom(nh.from_array(arr.astype(np.float32), init.name))
        return simplified, ok

    monkeypatch.setattr(onnxsim, "simplify", corrupting)
    out, report = simplify_onnx(proto, _inputs(), atol=1e-4, rtol=1e-3)
    assert out is proto and not report.applied
    assert "changed outputs" in report.reason and report.max_abs_diff > 1e-3
    assert "not applied" in report.line()


@pytest.mark.parametrize("behaviour, reason", [("raise", "onnxsim failed"), ("check_fails", "own check failed")])
def test_simplify_failure_keeps_unsimplified(monkeypatch, behaviour, reason):
    import onnxsim

    from fopt.export.onnx import simplify_onnx

    def fake(model, **kw):
        if behaviour == "raise":
            raise RuntimeError("boom inside onnxsim")
        return model, False

    monkeypatch.setattr(onnxsim, "simplify", fake)
    proto = _tiny_proto()
    out, report = simplify_onnx(proto, _inputs(), atol=1e-4, rtol=1e-3)
    assert out is proto and not report.applied and reason in report.reason


def test_unsimplified_note_reaches_card(tiny_checkpoint, tmp_path, monkeypatch):
    import onnxsim

    from fopt.artifacts import read_card
    from fopt.export.onnx import checkpoint_to_onnx

    monkeypatch.setattr(onnxsim, "simplify", lambda model, **kw: (model, False))
    lines: list[str] = []
    r = checkpoint_to_onnx(tiny_checkpoint, tmp_path / "t.onnx", log=lines.append)
    card = read_card(r.path)
    assert card["export"]["simplify"]["applied"] is False
    assert any("unsimplified model kept" in n for n in card["notes"])
    assert any("onnxsim: not applied" in line for line in lines)


# ----------------------------------------------------------------------------- export-friendly rewrite

def test_adaptive_pool_that_does_not_divide_is_rewritten_exactly():
    """VGG's 7x7 adaptive pool after a 2x2 map: the exporter refuses it, the rewrite is exact."""
    import onnxruntime as ort
    import torch
    import torch.nn as nn

    from fopt.export.onnx import model_to_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=8, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((7, 5)),
                          nn.Flatten(), nn.Linear(4 * 35, 3)).eval()
    notes: list[str] = []
    proto = model_to_onnx(model, 24, notes=notes)  # 24 px -> 3x3 map -> 7x5: no divisor
    assert len(notes) == 1 and "3x3 -> 7x5" in notes[0]
    assert isinstance(model[2], nn.AdaptiveAvgPool2d)  # restored after export
    x = np.random.default_rng(1).standard_normal((3, 3, 24, 24)).astype(np.float32)
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


def test_pool_matrix_bins_match_pytorch():
    import torch

    from fopt.export.onnx import _PoolMatrix

    for n_in, n_out in [(1, 7), (3, 7), (10, 4), (7, 7), (5, 2)]:
        x = torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in)
        ref = torch.nn.functional.adaptive_avg_pool1d(x, n_out).flatten()
        got = _PoolMatrix.matrix(n_in, n_out) @ torch.arange(n_in, dtype=torch.float32)
        torch.testing.assert_close(got, ref)


def test_failing_export_is_one_line_and_quiet(capfd):
    """A symbolic the exporter lacks: ExportError, and no TorchScript IR dump on the terminal."""
    import torch
    import torch.nn as nn

    from fopt.errors import ExportError
    from fopt.export.onnx import model_to_onnx

    class NoSymbolic(nn.Module):
        def forward(self, x):
            return torch.nn.functional.adaptive_max_pool2d(x, (3, 3)) .flatten(1)

    with pytest.raises(ExportError) as err:
        model_to_onnx(NoSymbolic(), 16)
    assert "\n" not in str(err.value)
    captured = capfd.readouterr()
    assert "IR graph" not in captured.out + captured.err
