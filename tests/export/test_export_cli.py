"""`fopt export` end to end through click: table, --json, options reaching the files."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from fopt.cli import cli


@pytest.fixture
def ckpt(tiny_checkpoint, tmp_path):
    path = tmp_path / "m.pt"
    shutil.copy(tiny_checkpoint, path)
    return path


def test_onnx_only_fixed_batch_with_json(ckpt, tmp_path):
    import onnx

    out, report = tmp_path / "o", tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["export", str(ckpt), "--onnx", "--out", str(out), "--json", str(report),
                                   "--batch", "4", "--no-simplify", "--opset", "18"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["m.onnx", "m.onnx.json"]
    data = json.loads(report.read_text())
    (r,) = data["results"]
    assert r["format"] == "onnx" and r["parity"]["passed"] and r["parity"]["batch_sizes"] == [4]
    assert r["details"]["simplify"]["applied"] is False and r["details"]["opset"] == 18
    dim0 = onnx.load(str(out / "m.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_value == 4
    assert "pass" in res.stdout and "m.onnx" in res.stdout  # the table
    assert "onnx: wrote" in res.stderr


def test_torchscript_only_no_freeze(ckpt, tmp_path):
    from fopt.artifacts import read_card

    res = CliRunner().invoke(cli, ["export", str(ckpt), "--torchscript", "--no-freeze", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    card = read_card(tmp_path / "o" / "m.torchscript.pt")
    assert card["export"]["freeze"]["frozen"] is False and card["format"] == "torchscript"
    assert not (tmp_path / "o" / "m.onnx").exists()


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_bad_batch_is_a_usage_error(ckpt, value):
    res = CliRunner().invoke(cli, ["export", str(ckpt), "--batch", value])
    assert res.exit_code == 2 and "--batch" in res.output


def test_help_has_example_and_opset_reason():
    res = CliRunner().invoke(cli, ["export", "--help"])
    assert res.exit_code == 0
    assert "Example: fopt export" in res.output and "opset 17" in res.output.replace("\n", " ")
