"""TensorBoard: per-epoch scalars and the bench table, read back from the event files."""

from __future__ import annotations

import csv
import json

import pytest
from track_helpers import run_pipeline

pytest.importorskip("tensorboard")


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def test_epochs_are_scalars_and_the_bench_table_is_text(tracked_run, synth_dataset, quick_calibration):
    run, _ = tracked_run
    res = run_pipeline(run, synth_dataset, "--track", "tensorboard")
    assert res.exit_code == 0, res.output
    history = list(csv.DictReader((run / "tiny" / "train" / "history.csv").read_text().splitlines()))
    train = _events(run / "tensorboard" / "tiny_train")
    for key in ("val_acc", "train_loss", "val_macro_f1"):
        got = [(s.step, s.value) for s in train.Scalars(f"epoch/{key}")]
        assert got == [(int(h["epoch"]), pytest.approx(float(h[key]), rel=1e-6)) for h in history]

    root = _events(run / "tensorboard")
    text = root.Tensors("bench_tiny.md/text_summary")[0].tensor_proto.string_val[0].decode()
    bench = json.loads((run / "tiny" / "bench.json").read_text())["results"]
    assert text.startswith("| artifact | backend | batch | p50 ms")
    assert len(text.strip().splitlines()) == 2 + len(bench)  # header, rule, one line per bench row
    first = bench[0]
    assert f"| {first['batch_size']} | {first['latency_ms']['p50']:.4g} |" in text

    int8 = next(p for p in (run / "tensorboard").iterdir() if p.name == "tiny_int8-static_on_onnxruntime"
                or p.name == "tiny_int8-static")
    row = next(r for r in json.loads((run / "report.json").read_text())["rows"]
               if r["method"] == "int8-static" and r["backend"] == "onnxruntime")
    assert _events(int8).Scalars("p50_b1_ms")[0].value == pytest.approx(row["p50_b1_ms"], rel=1e-6)
