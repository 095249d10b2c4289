"""kill -9 at seeded points of `fopt data synth|build`, `export`, `optimize` and `pipeline`.

Each test runs the command once uninterrupted (the reference, which also measures how long it
takes), then for each of several kill delays drawn from a seeded RNG (one per equal slice of the
measured duration, so the kills spread over the whole run) it:

1. starts the command as a real process (`python -m fopt ...`) and SIGKILLs it after the delay;
2. checks that every output-looking file left behind loads completely (ONNX load + checker,
   torch.load(weights_only=True), torch.jit.load, JSON, CSV rows, images, a complete synthetic
   tree) and that every artifact's card describes that very file (sha256);
3. reruns the same command (--force where it replaces fopt's own outputs) and checks it exits 0
   with the reference's file set and, where the command is deterministic, its bytes;
4. checks that no temporary or lock file of fopt is left anywhere in the work folder and that
   the rerun left nothing in the system temp folder.

The data tests take ~30 s and run by default; export/optimize/pipeline are `slow` (FOPT_SLOW=1).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from fault_helpers import (
    check_cards,
    copy_artifact,
    hashes,
    kill_delays,
    run_and_kill,
    run_fopt,
    stray_temps,
    timed_run,
    validate_tree,
    visible_files,
)


def _systmp(base: Path) -> set[str]:
    d = base / "systmp"
    return set(os.listdir(d)) if d.is_dir() else set()


def _kill_rerun(base_args, rerun_args, work: Path, delay: float, check_dir: Path):
    """Kill at `delay`, validate, rerun; returns (killed, rerun result)."""
    killed, err = run_and_kill(base_args, work, delay)
    assert "Traceback" not in err, f"killed run crashed before the kill:\n{err}"
    validate_tree(check_dir)
    before = _systmp(work)
    res = run_fopt(rerun_args, work)
    assert res.returncode == 0, (f"rerun after a kill at {delay:.2f} s failed "
                                 f"(rc {res.returncode}):\n{res.stderr[-3000:]}")
    assert stray_temps(work) == [], f"temporaries left after the rerun (kill at {delay:.2f} s)"
    new_tmp = {n for n in _systmp(work) - before if n.startswith("fopt")}   # fopt's own temp dirs
    assert not new_tmp, f"the rerun left {sorted(new_tmp)} in the system temp folder"
    validate_tree(check_dir)
    return killed, res


# ----------------------------------------------------------------------------- data


SYNTH_ARGS = ["--classes", "4", "--per-class", "60", "--size", "64", "--seed", "3"]


def test_kill_data_synth_then_rerun_gives_the_same_bytes(tmp_path):
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    res, duration = timed_run(["data", "synth", ref_dir / "raw", *SYNTH_ARGS], ref_dir)
    assert res.returncode == 0, res.stderr
    ref = hashes(ref_dir / "raw")
    killed_any = 0
    for i, delay in enumerate(kill_delays(duration, 4, seed=11)):
        work = tmp_path / f"k{i}"
        work.mkdir()
        args = ["data", "synth", work / "raw", *SYNTH_ARGS]
        killed, _ = _kill_rerun(args, args, work, delay, work)
        killed_any += killed
        assert hashes(work / "raw") == ref, f"rerun after a kill at {delay:.2f} s differs from a clean run"
    assert killed_any, f"no run was still going at its kill point (duration {duration:.1f} s)"


def test_kill_data_build_force_then_rerun_gives_the_same_table(tmp_path, fault_raw, fault_table):
    """A --force rebuild (other --max-per-class) over an existing table, killed at seeded points."""
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    extra = ["--max-per-class", "20", "--seed", "5"]
    res, duration = timed_run(["data", "build", fault_raw, ref_dir / "table", *extra], ref_dir)
    assert res.returncode == 0, res.stderr
    ref = {n: (ref_dir / "table" / n).read_bytes() for n in ("dataset.csv", "mapping.json")}
    assert ref["dataset.csv"] != (fault_table / "dataset.csv").read_bytes()  # the kill can mix them
    killed_any = 0
    for i, delay in enumerate(kill_delays(duration, 5, seed=12)):
        work = tmp_path / f"k{i}"
        work.mkdir()
        shutil.copytree(fault_table, work / "table")      # the earlier fopt-made table (ledger too)
        args = ["data", "build", fault_raw, work / "table", *extra, "--force"]
        killed, _ = _kill_rerun(args, args, work, delay, work)
        killed_any += killed
        for n, data in ref.items():
            assert (work / "table" / n).read_bytes() == data, f"{n} after kill at {delay:.2f} s + rerun"
        assert visible_files(work / "table") == visible_files(ref_dir / "table")
    assert killed_any, f"no run was still going at its kill point (duration {duration:.1f} s)"


# ----------------------------------------------------------------------------- export / optimize


@pytest.mark.slow
def test_kill_export_force_over_previous_export(tmp_path, fault_checkpoint):
    """`fopt export --force` over a complete earlier export, killed at seeded points."""
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    res, duration = timed_run(["export", fault_checkpoint, "--out", ref_dir / "exp"], ref_dir)
    assert res.returncode == 0, res.stderr
    ref_files = visible_files(ref_dir / "exp")
    assert {"best.onnx", "best.onnx.json", "best.torchscript.pt", "best.torchscript.pt.json"} <= ref_files
    killed_any = 0
    for i, delay in enumerate(kill_delays(duration, 4, seed=13)):
        work = tmp_path / f"k{i}"
        work.mkdir()
        shutil.copytree(ref_dir / "exp", work / "exp")
        args = ["export", fault_checkpoint, "--out", work / "exp", "--force"]
        killed, _ = _kill_rerun(args, args, work, delay, work)
        killed_any += killed
        assert visible_files(work / "exp") == ref_files
        for art in ("best.onnx", "best.torchscript.pt"):
            card = json.loads((work / "exp" / f"{art}.json").read_text())
            assert card["metrics"]["parity"]["passed"] is True, art
        check_cards(work / "exp")
    assert killed_any, f"no run was still going at its kill point (duration {duration:.1f} s)"


OPT_ARGS = ["--int8-static", "--int8-dynamic", "--calib-size", "32", "--no-latency"]


@pytest.mark.slow
def test_kill_optimize_force_over_previous_outputs(tmp_path, fault_onnx):
    """`fopt optimize --force` over complete earlier outputs, killed at seeded points."""
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    res, duration = timed_run(["optimize", fault_onnx, *OPT_ARGS, "--out", ref_dir / "opt"], ref_dir)
    assert res.returncode == 0, res.stderr
    ref_files = visible_files(ref_dir / "opt")
    assert {"best.int8.onnx", "best.int8.onnx.json", "best.int8-dynamic.onnx"} <= ref_files
    killed_any = 0
    for i, delay in enumerate(kill_delays(duration, 4, seed=14)):
        work = tmp_path / f"k{i}"
        work.mkdir()
        shutil.copytree(ref_dir / "opt", work / "opt")
        args = ["optimize", fault_onnx, *OPT_ARGS, "--out", work / "opt", "--force"]
        killed, _ = _kill_rerun(args, args, work, delay, work)
        killed_any += killed
        assert visible_files(work / "opt") == ref_files
        for art in ("best.int8.onnx", "best.int8-dynamic.onnx"):
            card = json.loads((work / "opt" / f"{art}.json").read_text())
            assert "val" in card["metrics"] and card["precision"] == "int8", art
        check_cards(work / "opt")
    assert killed_any, f"no run was still going at its kill point (duration {duration:.1f} s)"


# ----------------------------------------------------------------------------- pipeline


def _pipeline_args(table: Path, out: Path) -> list:
    return ["pipeline", "--model", "tiny", "--data", table, "--out", out, "--epochs", "1",
            "--img-size", "32", "--workers", "0", "--method", "int8-static", "--calib-size", "32",
            "--batch-sizes", "1", "--min-time", "0.05", "--threads", "1"]


@pytest.mark.slow
def test_kill_pipeline_then_resume(tmp_path, fault_table, quick_cache):
    help_text = run_fopt(["pipeline", "--help"], tmp_path).stdout
    resume = ["--resume"] if "--resume" in help_text else []
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    shutil.copytree(quick_cache, ref_dir / "cache")
    res, duration = timed_run(_pipeline_args(fault_table, ref_dir / "pl"), ref_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    ref_files = visible_files(ref_dir / "pl")
    killed_any = 0
    for i, delay in enumerate(kill_delays(duration, 3, seed=15)):
        work = tmp_path / f"k{i}"
        work.mkdir()
        shutil.copytree(quick_cache, work / "cache")
        args = _pipeline_args(fault_table, work / "pl")
        killed, rerun = _kill_rerun(args, args + resume, work, delay, work)
        killed_any += killed
        assert visible_files(work / "pl") == ref_files, (
            f"kill at {delay:.2f} s: files differ from a clean run: "
            f"missing {sorted(ref_files - visible_files(work / 'pl'))}, "
            f"extra {sorted(visible_files(work / 'pl') - ref_files)}")
        rep = json.loads((work / "pl" / "report.json").read_text())
        assert {r["method"] for r in rep["rows"]} == {"torch eager fp32", "torchscript fp32", "onnx fp32",
                                                      "int8-static", "int8-mixed"}   # the search: on by default
        ledger = json.loads((work / "pl" / "stages.json").read_text())
        assert {"tiny/train", "tiny/export", "tiny/optimize", "tiny/eval", "tiny/bench"} <= set(ledger)
    assert killed_any, f"no run was still going at its kill point (duration {duration:.1f} s)"
