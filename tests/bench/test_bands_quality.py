"""benchmarks/bench_quality.py's held-out report: in-family vs held-out scores and band coverage."""

from __future__ import annotations


def _row(path, p50, est, band):
    return {"artifact": path, "status": "ok", "latency_ms": {"p50": p50},
            "estimate_ms": {"calibrated": est, "roofline": est},
            "error_pct": {"calibrated": (est / p50 - 1) * 100, "roofline": (est / p50 - 1) * 100},
            "estimate_band_ms": {"calibrated": band}}


def test_family_summary_scores_held_out_apart_and_checks_the_goals(bq):
    rows = [_row("/w/resnet18.onnx", 10.0, 11.0, [8.0, 14.0]),      # in family: within 25%, inside
            _row("/w/resnet18.int8.onnx", 4.0, 2.0, [1.5, 3.0]),     # in family: -50%, outside
            _row("/w/heldout_a.onnx", 5.0, 4.5, [3.5, 6.0]),         # held out: within, inside
            _row("/w/heldout_b.onnx", 5.0, 4.8, [4.0, 5.5]),
            {"artifact": "/w/heldout_c.onnx", "status": "error", "error_pct": {}}]
    fam = bq.family_summary(rows, {"/w/heldout_a.onnx", "/w/heldout_b.onnx", "/w/heldout_c.onnx"})
    ino, held = fam["in_family"]["calibrated"], fam["held_out"]["calibrated"]
    assert ino["points"] == 2 and ino["within_25"] == 0.5 and ino["band"]["coverage"] == 0.5
    assert held["points"] == 2 and held["within_25"] == 1.0 and held["band"]["coverage"] == 1.0
    assert fam["held_out"]["roofline"]["band"]["points"] == 0      # no roofline bands in these rows
    goals = bq.goals_verdict(fam)
    assert "held-out within +-25% (goal >= 60%): 100% PASS" in goals
    assert "in-family 80% band coverage (goal >= 80%): 50% FAIL" in goals
    assert any(g.startswith("median band half-width") for g in goals)
    assert set(bq.HELD_OUT).isdisjoint({"resnet18", "resnet50", "efficientnet_b0", "mobilenet_v3_small",
                                        "mobilenet_v3_large", "tiny"}) and len(bq.HELD_OUT) >= 4


def test_the_report_says_how_steady_the_machine_was_during_the_calibration(bq):
    """The chain network's slowest over fastest timing per ONNX Runtime backend and batch, in
    batch order; a calibration that timed it once (before bands version 4) reports nothing."""
    cal = {"backends": {"torch-eager/fp32": {},
                        "onnxruntime/fp32": {"composition_timings_s": {"8": [20e-3, 30e-3], "1": [2e-3, 2e-3, 4e-3]}},
                        "onnxruntime/int8": {"composition_timings_s": {"1": [3e-3]}}}}
    spells = bq.calibration_spells(cal)
    assert spells == {"onnxruntime/fp32": {"1": 2.0, "8": 1.5}}
    assert list(spells["onnxruntime/fp32"]) == ["1", "8"]
