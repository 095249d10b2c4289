"""evaluate_artifact / `fopt eval`: metrics through the runner, and bad checkpoints."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fopt.cli import cli


def test_evaluate_artifact_matches_a_direct_forward_pass(tiny_checkpoint, synth_dataset):
    """Ground truth computed here by hand: the checkpoint's model on the eval transform."""
    from fopt.checkpoint import load_checkpoint
    from fopt.data.datasets import ImageTableDataset
    from fopt.data.transforms import build_transform
    from fopt.evaluation import evaluate_artifact

    result = evaluate_artifact(tiny_checkpoint, synth_dataset, split="val", batch_size=7)
    ckpt = load_checkpoint(tiny_checkpoint)
    spec = ckpt.input_spec
    ds = ImageTableDataset(synth_dataset, "val", build_transform(spec.size, spec.mean, spec.std))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        pred = ckpt.model(x).argmax(1).numpy()
    y = np.asarray(ds.labels)
    assert result["n"] == len(ds)
    assert result["accuracy"] == pytest.approx(float((pred == y).mean()))
    per_class = result["per_class"]
    assert list(per_class) == ckpt.class_names
    for c, name in enumerate(ckpt.class_names):
        tp = int(((pred == c) & (y == c)).sum())
        assert per_class[name]["support"] == int((y == c).sum())
        assert per_class[name]["recall"] == pytest.approx(tp / max(1, (y == c).sum()))
        assert per_class[name]["precision"] == pytest.approx(tp / max(1, (pred == c).sum()))
    present = [name for c, name in enumerate(ckpt.class_names) if (y == c).any() or (pred == c).any()]
    assert result["macro_f1"] == pytest.approx(np.mean([per_class[n]["f1"] for n in present]))
    assert result["format"] == "checkpoint"


def test_eval_cli_writes_json(tiny_checkpoint, synth_dataset, tmp_path):
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(cli, ["eval", str(tiny_checkpoint), "--data", str(synth_dataset),
                                   "--split", "test", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert {"accuracy", "macro_f1", "n", "per_class"} <= set(data)
    assert 0 <= data["accuracy"] <= 1 and 0 <= data["macro_f1"] <= 1
    assert set(next(iter(data["per_class"].values()))) == {"precision", "recall", "f1", "support"}


def test_eval_rejects_a_dataset_with_other_classes(tiny_checkpoint, tmp_path):
    from fopt.data.build import build_dataset
    from fopt.data.synth import synthesize

    synthesize(tmp_path / "raw", classes=3, per_class=12, size=32, seed=1)
    build_dataset(tmp_path / "raw", tmp_path / "ds")
    res = CliRunner().invoke(cli, ["eval", str(tiny_checkpoint), "--data", str(tmp_path / "ds")])
    assert res.exit_code == 2
    assert "differ from the ones" in res.output


class Custom:  # a pickled custom class: weights-only loading must refuse it
    def __init__(self):
        self.payload = [1, 2, 3]


def _bad_files(tiny_checkpoint, tmp_path):
    from fopt.artifacts import InputSpec
    from fopt.checkpoint import save_checkpoint
    from fopt.models import build_model

    rng = np.random.default_rng(0)
    files = {}
    files["random"] = tmp_path / "random.pt"
    files["random"].write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    data = tiny_checkpoint.read_bytes()
    files["truncated"] = tmp_path / "truncated.pt"
    files["truncated"].write_bytes(data[: len(data) // 2])
    # the same truncation, with its (intact) sidecar card beside it
    files["truncated_with_card"] = tmp_path / "truncated2.pt"
    files["truncated_with_card"].write_bytes(data[: len(data) // 2])
    (tmp_path / "truncated2.pt.json").write_text(
        (tiny_checkpoint.parent / (tiny_checkpoint.name + ".json")).read_text())
    files["state_dict"] = tmp_path / "state_dict.pt"
    torch.save(build_model("tiny", 6).state_dict(), files["state_dict"])
    files["custom_class"] = tmp_path / "custom.pt"
    torch.save({"fopt_checkpoint": 1, "card": {}, "state_dict": Custom()}, files["custom_class"])
    files["pickle"] = tmp_path / "plain.pkl"
    files["pickle"].write_bytes(pickle.dumps(Custom()))
    files["unknown_model"] = tmp_path / "unknown.pt"
    save_checkpoint(files["unknown_model"], build_model("tiny", 6), model_name="tiny",
                    model_kwargs={"num_classes": 6}, class_names=list("abcdef"),
                    input_spec=InputSpec(size=32))
    card_file = tmp_path / "unknown.pt.json"
    card = json.loads(card_file.read_text())
    card["model"]["name"] = "resnet_9000"
    card_file.write_text(json.dumps(card))
    raw = torch.load(files["unknown_model"], weights_only=True)
    raw["card"]["model"]["name"] = "resnet_9000"
    torch.save(raw, files["unknown_model"])
    return files


BAD_MESSAGES = {"random": "unknown artifact format", "truncated": "unknown artifact format",
                "truncated_with_card": "truncated", "state_dict": "not a fopt checkpoint",
                "custom_class": "weights-only load refused", "pickle": "unknown artifact format",
                "unknown_model": "not in the registry"}


@pytest.mark.parametrize("kind", sorted(BAD_MESSAGES))
def test_bad_checkpoints_exit_2_with_one_line(kind, tiny_checkpoint, synth_dataset, tmp_path):
    path = _bad_files(tiny_checkpoint, tmp_path)[kind]
    res = CliRunner().invoke(cli, ["eval", str(path), "--data", str(synth_dataset)])
    assert res.exit_code == 2, (res.output, res.exception)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert BAD_MESSAGES[kind] in lines[0]
    assert "Traceback" not in res.output


def test_resume_from_a_bad_last_pt_is_one_line(tiny_checkpoint, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(tiny_checkpoint.read_bytes()[:1000])
    res = CliRunner().invoke(cli, ["train", "--resume", str(run)])
    assert res.exit_code == 2 and res.output.startswith("error: ") and "truncated" in res.output


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
def test_evaluate_artifact_runs_onnx_through_its_runner(tiny_checkpoint, synth_dataset, tmp_path):
    """The eval loop only knows the Runner interface: an ONNX file of the same weights (written
    here with plain torch.onnx + a card) scores the same as the checkpoint."""
    pytest.importorskip("onnxruntime")
    from fopt.artifacts import make_card, write_card
    from fopt.checkpoint import load_checkpoint
    from fopt.evaluation import evaluate_artifact

    ckpt = load_checkpoint(tiny_checkpoint)
    onnx_path = tmp_path / "tiny.onnx"
    torch.onnx.export(ckpt.model, torch.zeros(1, 3, 32, 32), str(onnx_path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    write_card(onnx_path, make_card(kind="onnx", format="onnx", precision="fp32",
                                    input_spec=ckpt.card["input_spec"], class_names=ckpt.class_names,
                                    parent=tiny_checkpoint))
    a = evaluate_artifact(tiny_checkpoint, synth_dataset, split="val", batch_size=16)
    b = evaluate_artifact(onnx_path, synth_dataset, split="val", batch_size=16)
    assert b["format"] == "onnx" and b["backend"] == "onnxruntime"
    assert (a["n"], a["accuracy"], a["macro_f1"]) == (b["n"], b["accuracy"], b["macro_f1"])
