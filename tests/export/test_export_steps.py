"""export_checkpoint and the shared step wrapper: names, folders, order of checks, shared inputs."""

from __future__ import annotations

import json
import shutil

import pytest


@pytest.fixture
def ckpt(tiny_checkpoint, tmp_path):
    path = tmp_path / "run" / "best.pt"
    path.parent.mkdir()
    shutil.copy(tiny_checkpoint, path)
    return path


def test_both_formats_beside_the_checkpoint_by_default(ckpt):
    from fopt.export.run import export_checkpoint

    lines: list[str] = []
    results = export_checkpoint(ckpt, freeze=False, log=lines.append)
    assert [r.format for r in results] == ["torchscript", "onnx"]
    assert sorted(p.name for p in ckpt.parent.iterdir()) == [
        "best.onnx", "best.onnx.json", "best.pt", "best.torchscript.pt", "best.torchscript.pt.json"]
    assert [line.split(":")[0] for line in lines if ": wrote " in line] == ["torchscript", "onnx"]
    for r in results:
        assert r.passed and r.size_bytes == r.path.stat().st_size and r.seconds > 0
        json.dumps(r.to_dict())  # the CLI's --json must serialise
    # one set of parity inputs for both formats: the same images and batch sizes
    assert results[0].parity["inputs"] == results[1].parity["inputs"]


def test_every_output_is_refused_before_anything_is_written(ckpt, tmp_path):
    from fopt.errors import OutputExistsError
    from fopt.export.run import export_checkpoint

    out = tmp_path / "out"
    out.mkdir()
    (out / "best.onnx").write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="best.onnx exists"):
        export_checkpoint(ckpt, ["torchscript", "onnx"], out, log=lambda s: None)
    assert sorted(p.name for p in out.iterdir()) == ["best.onnx"]  # torchscript was not written either
    assert (out / "best.onnx").read_bytes() == b"old"


def test_force_replaces_file_and_card(ckpt, tmp_path):
    from fopt.artifacts import read_card, sha256_file
    from fopt.export.run import export_checkpoint

    out = tmp_path / "out"
    out.mkdir()
    (out / "best.onnx").write_bytes(b"old")
    (r,) = export_checkpoint(ckpt, ["onnx"], out, force=True, log=lambda s: None)
    assert read_card(r.path)["sha256"] == sha256_file(r.path)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging/probe leftovers


def test_unknown_format_and_empty_list(ckpt):
    from fopt.errors import UsageError
    from fopt.export.run import export_checkpoint

    with pytest.raises(UsageError, match="Did you mean 'onnx'"):
        export_checkpoint(ckpt, ["onx"])
    with pytest.raises(UsageError, match="at least one format"):
        export_checkpoint(ckpt, [])


def test_output_may_not_be_the_checkpoint(ckpt):
    from fopt.errors import UsageError
    from fopt.export.onnx import checkpoint_to_onnx

    with pytest.raises(UsageError, match="overwrite the checkpoint"):
        checkpoint_to_onnx(ckpt, ckpt, force=True, log=lambda s: None)


def test_default_output_names():
    import fopt.export.run  # noqa: F401  (registers the formats and their suffixes)
    from fopt.export.steps import default_output

    assert default_output("a/b/m.pt", "onnx").as_posix() == "a/b/m.onnx"
    assert default_output("a/b/m.pt", "torchscript", "o").as_posix() == "o/m.torchscript.pt"


@pytest.mark.parametrize("failure, message", [("empty", "wrote nothing"), ("disk_full", "No space left")])
def test_saver_failures_are_one_line_and_leave_nothing(ckpt, tmp_path, monkeypatch, failure, message):
    import errno

    from fopt.errors import ExportError
    from fopt.export import onnx as onnx_export

    def broken_saver(proto):
        def save(path, card):
            if failure == "empty":
                path.write_bytes(b"")
            else:
                raise OSError(errno.ENOSPC, "No space left on device")
        return save

    monkeypatch.setattr(onnx_export, "_saver", broken_saver)
    out = tmp_path / "out"
    lines: list[str] = []
    with pytest.raises(ExportError, match=message):
        onnx_export.checkpoint_to_onnx(ckpt, out / "m.onnx", simplify=False, log=lines.append)
    assert list(out.iterdir()) == []
    assert lines[-1].startswith("onnx: FAILED") and message in lines[-1]
