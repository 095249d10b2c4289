"""Paired accuracy / macro-F1 deltas with a bootstrap interval (`fopt.evaluation.paired_delta`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score

from fopt.evaluation import (
    _macro_f1_counts,
    classification_metrics,
    paired_delta,
    paired_deltas,
    resolution_note,
)


def _pair(n: int, classes: int, seed: int, flips: float):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    a = np.where(rng.random(n) < 0.8, y, rng.integers(0, classes, n))
    b = np.where(rng.random(n) < flips, rng.integers(0, classes, n), a)
    return y, a, b


def test_identical_predictions_have_a_zero_width_interval():
    y, a, _ = _pair(50, 5, 0, 0.0)
    for metric in ("accuracy", "macro_f1"):
        assert paired_delta(y, a, a, metric) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_point_is_the_difference_of_the_two_metrics(metric):
    y, a, b = _pair(120, 6, 1, 0.3)
    names = [str(i) for i in range(6)]
    want = 100 * (classification_metrics(y, b, names)[metric] - classification_metrics(y, a, names)[metric])
    point, low, high = paired_delta(y, a, b, metric)
    assert point == pytest.approx(want, abs=1e-3)
    assert low <= point <= high and high - low > 0


def test_weighted_macro_f1_equals_sklearn_on_the_expanded_resample():
    """The vectorised resample scoring is sklearn's macro-F1 of the images drawn (with repeats),
    including classes that vanish from a resample."""
    y, a, _ = _pair(40, 7, 2, 0.0)
    rng = np.random.default_rng(3)
    for _ in range(20):
        w = rng.multinomial(40, np.full(40, 1 / 40))
        idx = np.repeat(np.arange(40), w)
        want = f1_score(y[idx], a[idx], average="macro", zero_division=0)
        assert _macro_f1_counts(w[None, :].astype(float), y, a)[0] == pytest.approx(want)


def test_one_sided_disagreement_gives_a_one_sided_interval():
    """b fixes 3 of a's 19 mistakes and breaks none: every resample's delta is >= 0."""
    y = np.zeros(19, dtype=int)
    a = np.array([0] * 16 + [1] * 3)
    b = np.zeros(19, dtype=int)
    point, low, high = paired_delta(y, a, b)
    assert point == pytest.approx(100 * 3 / 19, abs=1e-3)
    assert low >= 0 and high > point
    # one image of 19 lost: the interval reaches zero (a resample may miss it)
    point, low, high = paired_delta(y, b, np.array([0] * 18 + [1]))
    assert point == pytest.approx(-100 / 19, abs=1e-3)
    assert high == 0.0 and low < point


def test_accuracy_interval_matches_the_normal_approximation_on_a_large_set():
    """With many images the bootstrap half-width approaches 1.96 * SE of the paired difference,
    SE = sqrt((n01 + n10)/n - ((n01 - n10)/n)^2) / sqrt(n)."""
    y, a, b = _pair(4000, 10, 4, 0.1)
    ca, cb = a == y, b == y
    n01, n10, n = int((~ca & cb).sum()), int((ca & ~cb).sum()), len(y)
    se = math.sqrt((n01 + n10) / n - ((n01 - n10) / n) ** 2) / math.sqrt(n)
    _, low, high = paired_delta(y, a, b)
    assert (high - low) / 2 == pytest.approx(100 * 1.96 * se, rel=0.15)


def test_seeded_and_checked():
    y, a, b = _pair(60, 4, 5, 0.3)
    assert paired_delta(y, a, b, "macro_f1") == paired_delta(y, a, b, "macro_f1")
    assert paired_delta(y, a, b, seed=1) != paired_delta(y, a, b, seed=2)
    with pytest.raises(ValueError):
        paired_delta(y, a, b[:-1])
    with pytest.raises(ValueError):
        paired_delta(y, a, b, "top5")


def test_paired_deltas_needs_predictions_on_the_same_images():
    y, a, b = _pair(30, 3, 6, 0.4)
    ref = {"labels": y.tolist(), "predictions": a.tolist()}
    other = {"labels": y.tolist(), "predictions": b.tolist()}
    ci = paired_deltas(ref, other)
    assert ci["accuracy"] == list(paired_delta(y, a, b)[1:])
    assert ci["macro_f1"] == list(paired_delta(y, a, b, "macro_f1")[1:])
    assert paired_deltas(ref, {"accuracy": 0.5}) == {"accuracy": None, "macro_f1": None}
    shuffled = {"labels": y[::-1].tolist(), "predictions": b.tolist()}
    assert paired_deltas(ref, shuffled) == {"accuracy": None, "macro_f1": None}


def test_resolution_note():
    assert "one image is 5.3 pts" in resolution_note(19, [-15.8, 0.0], 1.0)
    assert "half-width 3.0" in resolution_note(1000, [-4.0, 2.0], 1.0)
    assert resolution_note(1000, [-0.5, 0.5], 1.0) is None


def test_evaluate_artifact_returns_the_per_image_predictions(tiny_checkpoint, synth_dataset):
    from fopt.evaluation import evaluate_artifact

    r = evaluate_artifact(tiny_checkpoint, synth_dataset, split="val", batch_size=5)
    y, p = np.asarray(r["labels"]), np.asarray(r["predictions"])
    assert len(y) == len(p) == r["n"]
    assert float((y == p).mean()) == pytest.approx(r["accuracy"])
    assert paired_delta(y, p, p) == (0.0, 0.0, 0.0)


def test_pipeline_report_shows_the_interval_and_says_when_the_split_is_too_small(tmp_path):
    """19 validation images (the DeepFashion case): one image lost is -5.3 pts, and the report
    says the split cannot resolve a 1 pt budget."""
    from fopt.pipeline.report import build_report

    y = np.arange(19) % 4
    ref = {"labels": y.tolist(), "predictions": y.tolist()}
    lost = y.copy()
    lost[0] = (lost[0] + 1) % 4
    other = {"labels": y.tolist(), "predictions": lost.tolist()}
    ci = paired_deltas(ref, other)

    def row(method, lat, acc, dacc, ci_pair):
        return {"model": "m", "method": method, "artifact": f"/r/{method}.onnx", "runtime": "onnxruntime",
                "accuracy": acc, "macro_f1": acc, "d_accuracy_pts": dacc, "d_macro_f1_pts": dacc,
                "d_accuracy_ci_pts": ci_pair["accuracy"], "d_macro_f1_ci_pts": ci_pair["macro_f1"],
                "eval_n": 19, "p50_b1_ms": lat, "spread_b1_pct": 35.0}

    rows = [row("fp32", 1.0, 1.0, 0.0, paired_deltas(ref, ref)), row("int8", 0.5, 18 / 19, -100 / 19, ci)]
    rows[1]["estimate_ms"] = {"calibrated": 0.45}
    rows[1]["estimate_band_ms"] = {"calibrated": [0.31, 0.62]}
    summary = {"model": "m", "rows": rows, "_path": "/r/m/summary.json"}
    rep = build_report([summary], tmp_path, max_accuracy_drop=1.0)
    md = (tmp_path / "report.md").read_text()
    lo, hi = ci["accuracy"]
    assert f"-5.26 [{lo:+.1f}, {hi:+.1f}]" in md
    assert "| 1 (±35%) |" in md
    assert "0.45 [0.31–0.62]" in md
    assert "one image is 5.3 pts of 19" in rep["resolution"]["m"] and "Too few images" in md


def test_optimize_rows_carry_the_intervals_and_cards_do_not_carry_the_images(tmp_path):
    from fopt.optimize.report import make_row, summary

    y, a, b = _pair(80, 5, 7, 0.3)
    parent = {"accuracy": float((a == y).mean()), "macro_f1": 0.5, "n": 80,
              "labels": y.tolist(), "predictions": a.tolist()}
    child = {"accuracy": float((b == y).mean()), "macro_f1": 0.4, "n": 80,
             "labels": y.tolist(), "predictions": b.tolist()}
    row = make_row(artifact=tmp_path / "m.int8.onnx", method="int8-static", precision="int8",
                   runs_on="onnxruntime cpu", params=None, metrics=child, parent_metrics=parent,
                   latency=None, parent_latency=None)
    point, lo, hi = paired_delta(y, a, b)
    assert row["d_accuracy_pts"] == pytest.approx(point, abs=0.01)
    assert row["d_accuracy_ci_pts"] == [lo, hi]
    assert row["d_macro_f1_ci_pts"] == list(paired_delta(y, a, b, "macro_f1")[1:])
    assert "predictions" not in summary(child) and summary(child)["n"] == 80 and summary(None) is None
