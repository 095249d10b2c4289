"""Nothing lost, no tracebacks: resume checks, worker errors, one writer per run folder, and an
experiments CSV that keeps every row when runs finish at once."""

from __future__ import annotations

import csv
import multiprocessing

import pytest
from click.testing import CliRunner

from fopt.cli import cli

FAST = ["--model", "tiny", "--img-size", "32", "--batch-size", "8", "--epochs", "1",
        "--top-losses", "0", "--precise-bn", "0"]


def _dataset(root, classes, seed=0):
    from fopt.data.build import build_dataset
    from fopt.data.synth import synthesize

    synthesize(root / "raw", classes=classes, per_class=12, size=32, seed=seed)
    build_dataset(root / "raw", root / "ds", seed=seed)
    return root / "ds"


def _one_error_line(res):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in res.output and "Caught" not in res.output, res.output
    return lines[0]


def test_resume_after_the_dataset_changed_its_classes_says_what_differs(tmp_path):
    import shutil

    data = _dataset(tmp_path / "a", classes=4)
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", "--data", str(data), "--out", str(run), "--workers", "0",
                                   "--experiments", str(tmp_path / "exp.csv"), *FAST])
    assert res.exit_code == 0, res.output
    shutil.rmtree(data)                        # rebuilt in place with another class count
    shutil.copytree(_dataset(tmp_path / "b", classes=3), data)
    res = CliRunner().invoke(cli, ["train", "--resume", str(run)])
    line = _one_error_line(res)
    assert "cannot resume" in line and "4 classes" in line and "3 classes" in line, line


def test_resume_check_names_a_changed_input_spec(tmp_path):
    from fopt.artifacts import InputSpec
    from fopt.errors import CheckpointError
    from fopt.train.engine import check_resume_matches

    card = {"class_names": ["a", "b"], "input_spec": InputSpec(size=32).to_dict()}
    check_resume_matches(tmp_path / "last.pt", card, "D", ["a", "b"], InputSpec(size=32))
    with pytest.raises(CheckpointError, match="input spec differs \\(size 32 vs 64 now\\)"):
        check_resume_matches(tmp_path / "last.pt", card, "D", ["a", "b"], InputSpec(size=64))
    with pytest.raises(CheckpointError, match="other class names \\('b' -> 'c'\\)"):
        check_resume_matches(tmp_path / "last.pt", card, "D", ["a", "c"], InputSpec(size=32))
    with pytest.raises(CheckpointError, match="same classes in another label order"):
        check_resume_matches(tmp_path / "last.pt", card, "D", ["b", "a"], InputSpec(size=32))


def test_a_corrupt_jpeg_in_a_worker_is_its_own_one_line_error(tmp_path):
    from fopt.data.datasets import DatasetTable

    data = _dataset(tmp_path, classes=3)
    bad = DatasetTable.load(data).abs_paths("train")[0]
    with open(bad, "r+b") as f:                 # keep the JPEG header, break the data after it
        f.seek(200)
        f.write(b"\x00" * 64)
        f.truncate(300)
    res = CliRunner().invoke(cli, ["train", "--data", str(data), "--out", str(tmp_path / "run"),
                                   "--workers", "1", "--experiments", str(tmp_path / "e.csv"), *FAST])
    line = _one_error_line(res)
    assert "cannot decode image" in line or "image file is" in line, line
    assert "DataLoader worker" not in line and "File \"" not in line


def test_a_second_writer_of_a_run_folder_is_refused(tmp_path, synth_dataset):
    from fopt.workdir import exclusive

    run = tmp_path / "run"
    run.mkdir()
    with exclusive(run):                           # another fopt process is writing this run
        res = CliRunner().invoke(cli, ["train", "--data", str(synth_dataset), "--out", str(run),
                                       "--workers", "0", "--experiments", str(tmp_path / "e.csv"), *FAST])
    line = _one_error_line(res)
    assert "being written by another fopt process" in line
    assert not (run / "last.pt").exists()


def _append_rows(path, who, n):
    from fopt.train.metrics import append_row_csv

    for i in range(n):
        append_row_csv(path, {"writer": who, "i": i, **({"extra": 1} if i % 5 == 0 else {})})


def test_two_processes_appending_to_the_experiments_csv_keep_every_row(tmp_path):
    path = tmp_path / "experiments.csv"
    n = 40
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_rows, args=(path, w, n)) for w in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * n
    assert sorted((r["writer"], int(r["i"])) for r in rows) == [(w, i) for w in "ab" for i in range(n)]
    assert not list(tmp_path.glob(".*.lock"))
