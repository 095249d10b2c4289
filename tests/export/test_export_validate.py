"""Parity metrics (arithmetic ground truth), inputs, and failing artifacts through the runners."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

# ----------------------------------------------------------------------------- compare_outputs

def test_metrics_by_hand():
    from fopt.export.validate import compare_outputs

    ref = np.array([[1.0, 2.0, 0.0], [0.0, 4.0, 3.0]])
    got = np.array([[1.0, 2.0, 0.0], [0.0, 3.0, 4.0]])  # row 2: top-1 flips, cos = 24/25
    c = compare_outputs(got, ref, atol=1e-4, rtol=1e-3)
    assert c.batch == 2
    assert c.max_abs_diff == pytest.approx(1.0)
    assert c.max_rel_diff == pytest.approx(1.0 / 4.0)  # relative to the largest |reference| logit
    assert c.cosine_similarity == pytest.approx(24.0 / 25.0)
    assert c.top1_agreement == pytest.approx(0.5)
    assert not c.within_tolerance


def test_tolerance_is_relative_to_each_images_largest_logit():
    from fopt.export.validate import compare_outputs

    ref = np.array([[10.0, -10.0, 0.01], [0.5, 0.0, -0.2]])
    # row 1 allows 1e-4 + 1e-3 * 10 = 0.0101 on every logit, even the one near zero
    near_zero = ref + np.array([[0.0, 0.0, 0.0099], [0.0, 0.0, 0.0]])
    assert compare_outputs(near_zero, ref, atol=1e-4, rtol=1e-3).within_tolerance
    assert not np.allclose(near_zero, ref, atol=1e-4, rtol=1e-3)  # element-wise would reject it
    over = ref + np.array([[0.0, 0.0, 0.0103], [0.0, 0.0, 0.0]])
    assert not compare_outputs(over, ref, atol=1e-4, rtol=1e-3).within_tolerance
    # row 2 allows 1e-4 + 1e-3 * 0.5 = 6e-4: its own scale, not the batch's
    small_row = ref + np.array([[0.0, 0.0, 0.0], [0.0, 7e-4, 0.0]])
    c = compare_outputs(small_row, ref, atol=1e-4, rtol=1e-3)
    assert not c.within_tolerance and c.max_rel_diff == pytest.approx(7e-4 / 0.5)
    # the bound itself passes: "within" means diff <= atol + rtol * scale (exact in binary here)
    exact = np.array([[2.0, 1.0]])
    assert compare_outputs(exact + np.array([[0.0, 0.5]]), exact, atol=0.25, rtol=0.125).within_tolerance
    assert not compare_outputs(exact + np.array([[0.0, 0.5 + 2 ** -20]]), exact, atol=0.25,
                               rtol=0.125).within_tolerance


def test_shape_mismatch_is_fatal_and_nan_fails():
    from fopt.errors import ValidationError
    from fopt.export.validate import ShapeMismatch, compare_outputs

    with pytest.raises(ShapeMismatch) as err:
        compare_outputs(np.zeros((2, 5)), np.zeros((2, 6)), atol=1, rtol=1, label="m.onnx")
    assert isinstance(err.value, ValidationError) and "(2, 5)" in str(err.value)
    c = compare_outputs(np.array([[np.nan, 1.0]]), np.array([[0.0, 1.0]]), atol=1, rtol=1)
    assert not c.within_tolerance and math.isinf(c.max_abs_diff)


def test_report_truthiness_and_aggregates():
    from fopt.export.validate import BatchComparison, ParityReport

    ok = BatchComparison(1, 1e-6, 1e-6, 1.0, 1.0, True)
    bad = BatchComparison(3, 2e-3, 1e-3, 0.99, 2 / 3, False)
    rep = ParityReport("a", "b", 1e-4, 1e-3, "random", "random", "cpu", [ok, bad])
    assert not rep and rep.max_abs_diff == 2e-3 and rep.cosine_similarity == 0.99
    assert rep.top1_agreement == pytest.approx((1 + 2) / 4)  # weighted by batch size
    assert ParityReport("a", "b", 1e-4, 1e-3, "random", "random", "cpu", [ok])
    d = rep.to_dict()
    assert d["passed"] is False and d["batch_sizes"] == [1, 3] and "FAILED" in rep.line()


# ----------------------------------------------------------------------------- inputs

def test_parity_inputs_real_then_random(synth_dataset, tmp_path):
    from fopt.artifacts import InputSpec
    from fopt.export.validate import parity_inputs

    spec = InputSpec(size=32)
    real = parity_inputs({"config": {"data": str(synth_dataset)}}, spec, (1, 8))
    assert real.real and [b.shape for b in real.batches] == [(1, 3, 32, 32), (8, 3, 32, 32)]
    np.testing.assert_array_equal(real.batches[0], real.batches[1][:1])  # same first image
    assert -1.0 - 1e-6 <= real.batches[1].min() and real.batches[1].max() <= 1.0 + 1e-6  # mean/std 0.5
    assert "val split" in real.source

    gone = parity_inputs({"config": {"data": str(tmp_path / "moved")}}, spec, (1, 8))
    assert not gone.real and "not reachable" in gone.source
    none = parity_inputs({"config": {}}, spec, (4,))
    assert none.kind == "random" and "records no dataset" in none.source and none.batches[0].shape[0] == 4
    np.testing.assert_array_equal(none.batches[0], parity_inputs({}, spec, (4,)).batches[0])  # seeded

    too_many = parity_inputs({"config": {"data": str(synth_dataset)}}, spec, (1, 10_000))
    assert not too_many.real and "10000 images" in too_many.source


# ----------------------------------------------------------------------------- through the runners

@pytest.fixture(scope="module")
def good_onnx(tiny_checkpoint, tmp_path_factory):
    from fopt.export.onnx import checkpoint_to_onnx

    d = tmp_path_factory.mktemp("validate")
    return checkpoint_to_onnx(tiny_checkpoint, d / "tiny.onnx", log=lambda s: None).path


def test_validate_artifact_passes_for_the_export(good_onnx, tiny_checkpoint):
    from fopt.export.validate import validate_artifact

    rep = validate_artifact(good_onnx, tiny_checkpoint)
    assert rep and rep.inputs_kind == "real" and [b.batch for b in rep.batches] == [1, 8]


def _perturbed_copy(src, dst, factor=1.1):
    """A copy of an exported ONNX file (card embedded and beside) with its last weight scaled."""
    import onnx
    import onnx.numpy_helper as nh

    from fopt.artifacts import read_card, write_card

    model = onnx.load(str(src))
    init = [t for t in model.graph.initializer if len(nh.to_array(t).shape) == 2][-1]  # classifier
    init.CopyFrom(nh.from_array((nh.to_array(init) * factor).astype(np.float32), init.name))
    onnx.save(model, str(dst))
    write_card(dst, read_card(src))
    return dst


def test_over_tolerance_raises_with_report(good_onnx, tiny_checkpoint, tmp_path):
    from fopt.errors import ValidationError
    from fopt.export.validate import ToleranceExceeded, validate_artifact

    bad = _perturbed_copy(good_onnx, tmp_path / "bad.onnx")
    with pytest.raises(ToleranceExceeded) as err:
        validate_artifact(bad, tiny_checkpoint)
    assert isinstance(err.value, ValidationError) and not err.value.report
    assert err.value.report.max_abs_diff > 1e-3
    rep = validate_artifact(bad, tiny_checkpoint, check=False)
    assert not rep and rep.cosine_similarity > 0.9  # a scaled classifier keeps the direction


def test_export_that_fails_parity_leaves_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    """A wrong graph from the exporter: ToleranceExceeded, no file, no card, no staging folder."""
    from fopt.export import onnx as onnx_export
    from fopt.export.validate import ToleranceExceeded

    real = onnx_export.model_to_onnx

    def wrong(model, *a, **kw):
        import torch

        with torch.no_grad():
            model[-1].weight.mul_(1.5)
        try:
            return real(model, *a, **kw)
        finally:
            with torch.no_grad():
                model[-1].weight.div_(1.5)

    monkeypatch.setattr(onnx_export, "model_to_onnx", wrong)
    lines: list[str] = []
    with pytest.raises(ToleranceExceeded):
        onnx_export.checkpoint_to_onnx(tiny_checkpoint, tmp_path / "t.onnx", log=lines.append)
    assert list(tmp_path.iterdir()) == []
    assert lines[-1].startswith("onnx: FAILED")


def test_failed_forced_export_keeps_the_old_file(tiny_checkpoint, tmp_path, monkeypatch):
    from fopt.artifacts import sha256_file
    from fopt.export import onnx as onnx_export
    from fopt.export.validate import ShapeMismatch

    first = onnx_export.checkpoint_to_onnx(tiny_checkpoint, tmp_path / "t.onnx", log=lambda s: None)
    before = sha256_file(first.path)

    real = onnx_export.model_to_onnx

    def other_classes(model, *a, **kw):
        import torch.nn as nn

        return real(nn.Sequential(model, nn.Linear(6, 5)), *a, **kw)

    monkeypatch.setattr(onnx_export, "model_to_onnx", other_classes)
    with pytest.raises(ShapeMismatch, match=r"\(1, 5\)"):
        onnx_export.checkpoint_to_onnx(tiny_checkpoint, tmp_path / "t.onnx", force=True, log=lambda s: None)
    assert sha256_file(first.path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.onnx", "t.onnx.json"]


def test_parity_on_random_inputs_when_dataset_moved(tiny_checkpoint, tmp_path):
    """A checkpoint whose dataset is gone still exports; the card says the inputs were random."""
    import torch

    from fopt.artifacts import read_card
    from fopt.export.torchscript import checkpoint_to_torchscript

    raw = torch.load(tiny_checkpoint, weights_only=True)
    raw["card"]["config"]["data"] = str(tmp_path / "nowhere")
    moved = tmp_path / "moved.pt"
    torch.save(raw, moved)
    shutil.copy(str(tiny_checkpoint) + ".json", str(moved) + ".json")
    r = checkpoint_to_torchscript(moved, freeze=False, log=lambda s: None)
    parity = read_card(r.path)["metrics"]["parity"]
    assert parity["passed"] and parity["inputs_kind"] == "random" and "not reachable" in parity["inputs"]
