"""`fopt eval` on the exported TorchScript and ONNX files reports the checkpoint's accuracy/F1."""

from __future__ import annotations

import json
import shutil

import pytest
from export_testutil import make_checkpoint


@pytest.fixture(scope="module")
def exported(synth_dataset, tmp_path_factory):
    from fopt.export.run import export_checkpoint

    folder = tmp_path_factory.mktemp("eval_eq")
    ckpt = make_checkpoint(folder, "tiny", 32, synth_dataset)
    results = export_checkpoint(ckpt)
    return {"checkpoint": ckpt, **{r.format: r.path for r in results}}


@pytest.mark.parametrize("split", ["val", "test"])
def test_same_accuracy_and_macro_f1_as_the_checkpoint(exported, synth_dataset, split):
    from fopt.evaluation import evaluate_artifact

    ref = evaluate_artifact(exported["checkpoint"], synth_dataset, split=split, batch_size=7)
    assert ref["n"] > 0
    for fmt in ("torchscript", "onnx"):
        res = evaluate_artifact(exported[fmt], synth_dataset, split=split, batch_size=7)
        assert res["format"] == fmt and res["n"] == ref["n"]
        assert abs(res["accuracy"] - ref["accuracy"]) * 100 <= 0.1, fmt
        assert abs(res["macro_f1"] - ref["macro_f1"]) * 100 <= 0.1, fmt


def test_fopt_eval_cli_takes_exported_files(exported, synth_dataset, tmp_path):
    """Through the CLI, with only the embedded cards (sidecars removed)."""
    from click.testing import CliRunner

    from fopt.cli import cli

    accs = {}
    for fmt in ("checkpoint", "torchscript", "onnx"):
        src = exported[fmt]
        path = tmp_path / src.name
        shutil.copy(src, path)  # no sidecar card copied
        out = tmp_path / f"{fmt}.json"
        res = CliRunner().invoke(cli, ["eval", str(path), "--data", str(synth_dataset), "--json", str(out)])
        assert res.exit_code == 0, res.output
        accs[fmt] = json.loads(out.read_text())
    for fmt in ("torchscript", "onnx"):
        assert abs(accs[fmt]["accuracy"] - accs["checkpoint"]["accuracy"]) * 100 <= 0.1
        assert abs(accs[fmt]["macro_f1"] - accs["checkpoint"]["macro_f1"]) * 100 <= 0.1
