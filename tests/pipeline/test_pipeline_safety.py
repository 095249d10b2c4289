"""The run folder is fopt's, one pipeline at a time, and INT8 calibration is checked before
training: each refusal is one line, and nothing of the user's is touched."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fopt.cli import cli

QUICK = ["--model", "tiny", "--epochs", "1", "--img-size", "32", "--workers", "0",
         "--synth-per-class", "4", "--batch-sizes", "1", "--min-time", "0.01", "--threads", "1"]


def _one_error_line(res):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def test_a_users_folder_is_refused_and_left_as_it_is(tmp_path):
    out = tmp_path / "mine"
    (out / "data" / "raw").mkdir(parents=True)
    (out / "data" / "raw" / "notes.txt").write_text("my notes")
    res = CliRunner().invoke(cli, ["pipeline", "--out", str(out), *QUICK])
    assert "not made by fopt" in _one_error_line(res)
    assert (out / "data" / "raw" / "notes.txt").read_text() == "my notes"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "data", "data/raw", "data/raw/notes.txt"]


def test_in_fopts_run_folder_a_path_it_did_not_write_is_not_replaced(tmp_path):
    from fopt.workdir import OwnedFolder

    out = tmp_path / "run"
    OwnedFolder.claim(out)                     # an earlier pipeline made this folder ...
    (out / "data" / "raw").mkdir(parents=True)  # ... and the user put their own data/raw there
    (out / "data" / "raw" / "notes.txt").write_text("my notes")
    for extra in ([], ["--force"]):
        res = CliRunner().invoke(cli, ["pipeline", "--out", str(out), *QUICK, *extra])
        line = _one_error_line(res)
        assert "was not written by fopt" in line and "data/raw" in line, line
        assert (out / "data" / "raw" / "notes.txt").read_text() == "my notes"
        assert list((out / "data" / "raw").iterdir()) == [out / "data" / "raw" / "notes.txt"]


def test_a_second_pipeline_on_the_same_run_folder_is_refused(tmp_path):
    from fopt.workdir import OwnedFolder, exclusive

    out = tmp_path / "run"
    OwnedFolder.claim(out)
    with exclusive(out):                       # another pipeline is writing this run
        res = CliRunner().invoke(cli, ["pipeline", "--out", str(out), *QUICK])
    assert "being written by another fopt process" in _one_error_line(res)
    assert not (out / "data").exists() and not (out / "stages.json").exists()


@pytest.fixture(scope="module")
def small_table(tmp_path_factory):
    """A dataset with fewer than 32 training images (3 classes x 10)."""
    from fopt.data.build import build_dataset
    from fopt.data.synth import synthesize

    root = tmp_path_factory.mktemp("small")
    synthesize(root / "raw", classes=3, per_class=10, size=32, seed=0)
    build_dataset(root / "raw", root / "ds")
    return root / "ds"


def test_too_few_calibration_images_fail_before_training(tmp_path, small_table):
    from fopt.data.datasets import DatasetTable

    n = len(DatasetTable.load(small_table).split("train"))
    assert n < 32
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["pipeline", "--data", str(small_table), "--out", str(out),
                                   "--method", "int8-static", *QUICK])
    line = _one_error_line(res)
    assert f"has {n} image(s)" in line and "at least 32" in line, line
    assert not (out / "tiny").exists()         # nothing trained
    stages = json.loads((out / "stages.json").read_text()) if (out / "stages.json").exists() else {}
    assert "tiny/train" not in stages


def test_calibration_size_defaults_like_fopt_optimize(synth_dataset, tmp_path):
    from fopt.data.datasets import DatasetTable
    from fopt.pipeline.run import PipelineConfig, check_calibration

    n = len(DatasetTable.load(synth_dataset).split("train"))
    assert 32 <= n < 256                       # fewer than the old fixed default of 256
    cfg = PipelineConfig(out=str(tmp_path), models=("tiny",), methods=("int8-static",))
    assert cfg.calib_size is None
    check_calibration(cfg.validate(), synth_dataset)          # all of them will be used: fine
    from fopt.errors import DataError

    with pytest.raises(DataError, match=f"--calib-size 256 but the train split .* has only {n}"):
        check_calibration(PipelineConfig(models=("tiny",), methods=("int8-static",), calib_size=256),
                          synth_dataset)
    check_calibration(PipelineConfig(models=("tiny",), methods=("fp16",), calib_size=256), synth_dataset)
