"""A full disk while fopt replaces earlier outputs: one clear error line, earlier outputs intact.

For each of `data synth`, `data build`, `export` and `optimize`: a complete first run, then a
forced second run (other settings, so its files differ) in which the disk "fills up": from the
k-th file opened for writing inside the output folder on, every write raises ENOSPC after
writing half its data (`fault_helpers.DiskFull`, patched `open`/`io.open`, in-process through
the CLI). k is the first, a middle and the last write-open of an unfaulted forced run (counted
first on a copy), so the fault hits the start, the middle and the final commit.

Expected: exit status 2 with exactly one ``error:`` line that names the full disk, no traceback,
the first run's files byte-identical (sha256) and loadable, no temporary left behind.
The export/optimize cases need a trained checkpoint (~30 s of setup) and are `slow`.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from fault_helpers import DiskFull, hashes, one_error_line, stray_temps, validate_tree

SPACE = re.compile(r"no space|disk( is)? full|ENOSPC", re.I)


def _invoke(args):
    from fopt.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def _fault_points(n: int) -> list[int]:
    assert n >= 1, "the forced run opened no file for writing in the output folder"
    return sorted({1, (n + 1) // 2, n})


def _disk_full_case(tmp_path: Path, monkeypatch, first: Path, make_args, rel_out: str,
                    per_artifact: bool = False) -> None:
    """`first`: a folder holding the first run's outputs at `first/rel_out`.

    `make_args(out)` is the forced second run writing to `out`. Each fault point runs on a fresh
    copy of `first` so the earlier outputs are always those of a complete run."""
    # count the write-opens of an unfaulted forced run (on a copy)
    count_dir = tmp_path / "count"
    shutil.copytree(first, count_dir)
    counter = DiskFull(count_dir / rel_out, None)
    with monkeypatch.context() as m:
        counter.install(m)
        res = _invoke(make_args(count_dir / rel_out))
    assert res.exit_code == 0, res.output
    assert hashes(count_dir / rel_out) != hashes(first / rel_out), "the second run must change the files"

    ref = hashes(first / rel_out)
    for k in _fault_points(len(counter.opens)):
        work = tmp_path / f"full{k}"
        shutil.copytree(first, work)
        full = DiskFull(work / rel_out, k)
        with monkeypatch.context() as m:
            full.install(m)
            res = _invoke(make_args(work / rel_out))
        assert full.fired, f"fault point {k}: no write hit the full disk"
        where = f"disk full from write-open {k}/{len(counter.opens)} ({counter.opens[k - 1]})"
        assert not (res.exception and not isinstance(res.exception, SystemExit)), (
            f"{where}: uncaught {type(res.exception).__name__}: {res.exception}")
        assert res.exit_code == 2, f"{where}: exit {res.exit_code}\n{res.output[-2000:]}"
        line = one_error_line(res.output)
        assert SPACE.search(line), f"{where}: the error does not say the disk is full: {line}"
        if per_artifact:
            assert set(hashes(work / rel_out)) == set(ref), f"{where}: files appeared or vanished"
        else:
            assert hashes(work / rel_out) == ref, f"{where}: the first run's files changed"
        validate_tree(work / rel_out)
        assert stray_temps(work) == [], f"{where}: temporaries left"


def test_disk_full_data_synth_keeps_the_previous_set(tmp_path, monkeypatch):
    first = tmp_path / "first"
    first.mkdir()
    res = _invoke(["data", "synth", first / "raw", "--classes", "3", "--per-class", "10", "--size", "32"])
    assert res.exit_code == 0, res.output
    _disk_full_case(tmp_path, monkeypatch, first,
                    lambda out: ["data", "synth", out, "--classes", "3", "--per-class", "10", "--size", "32",
                                 "--seed", "7", "--force"], "raw")


def test_disk_full_data_build_keeps_the_previous_table(tmp_path, monkeypatch, fault_raw):
    first = tmp_path / "first"
    first.mkdir()
    res = _invoke(["data", "build", fault_raw, first / "table"])
    assert res.exit_code == 0, res.output
    _disk_full_case(tmp_path, monkeypatch, first,
                    lambda out: ["data", "build", fault_raw, out, "--max-per-class", "20", "--seed", "4",
                                 "--force"], "table")


@pytest.mark.slow
def test_disk_full_export_keeps_the_previous_export(tmp_path, monkeypatch, fault_checkpoint):
    first = tmp_path / "first"
    first.mkdir()
    res = _invoke(["export", fault_checkpoint, "--out", first / "exp"])
    assert res.exit_code == 0, res.output
    # --no-simplify: another graph, so the files differ from the first run's for sure
    _disk_full_case(tmp_path, monkeypatch, first,
                    lambda out: ["export", fault_checkpoint, "--out", out, "--opset", "13", "--no-simplify",
                                 "--force"], "exp", per_artifact=True)


@pytest.mark.slow
def test_disk_full_optimize_keeps_the_previous_outputs(tmp_path, monkeypatch, fault_onnx):
    first = tmp_path / "first"
    first.mkdir()
    base = ["optimize", fault_onnx, "--int8-static", "--int8-dynamic", "--calib-size", "32", "--no-latency"]
    res = _invoke([*base, "--out", first / "opt"])
    assert res.exit_code == 0, res.output
    _disk_full_case(tmp_path, monkeypatch, first,
                    lambda out: [*base, "--calib-method", "minmax", "--seed", "3", "--out", out, "--force"],
                    "opt", per_artifact=True)
