"""Estimate bands: 80% intervals from the calibration's out-of-sample residuals, widened out of family."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fopt.bench.costmodel.bands import (
    LEVEL,
    MIN_RESIDUALS,
    bands_for,
    calibrated_band,
    residual_bands,
    roofline_band,
)
from fopt.bench.costmodel.fit import fit_joint
from fopt.bench.costmodel.predict import CalibratedEstimate, CalibratedNode, calibrated_estimate
from fopt.bench.measure.profile import ExecGraph, ExecNode
from fopt.bench.report import band_coverage

RATE = {"eltwise": 2e-10, "pool": 5e-10}   # seconds per element of the fake machine


def _fake_backend(noise: dict[str, list[float]], fixed: float = 1e-5) -> dict:
    """Probe equations of two memory classes whose times are the true rate times a known factor,
    fitted the way `fopt bench --calibrate` fits them."""
    eqs = []
    for cls, factors in noise.items():
        for i, f in enumerate(factors):
            work = 1e5 * (1 + i % 7)
            eqs.append({"probe": f"{cls}{i}", "batch": 1, "nodes": [[cls, work, 8 * work]],
                        "seconds": fixed + RATE[cls] * work * f})
    fit = fit_joint(eqs, fixed, cache_bytes=1e12)
    return {"equations": eqs, "classes": fit["classes"], "dram": fit["dram"], "run_fixed_s": fixed}


def _held(backend: dict, bands: dict, cls: str) -> float:
    """Share of `cls`'s probes whose measured time lies inside their own band."""
    from fopt.bench.costmodel.bands import _predict_equation

    fits = {"classes": backend["classes"], "dram": backend["dram"]}
    lo, hi, _ = bands["classes"][cls]
    inside = []
    for e in backend["equations"]:
        if e["nodes"][0][0] != cls:
            continue
        pred, _ = _predict_equation(e, fits, None, None, backend["run_fixed_s"])
        inside.append(pred * math.exp(lo) <= e["seconds"] <= pred * math.exp(hi))
    return sum(inside) / len(inside)


def test_band_quantiles_on_a_fake_calibration():
    """Residual factors drawn from known spreads: the tight class gets a tight band, the noisy
    one a wide band, and each holds about LEVEL of its own probes."""
    rng = np.random.default_rng(0)
    backend = _fake_backend({"eltwise": list(np.exp(rng.normal(0, 0.05, 60))),
                             "pool": list(np.exp(rng.normal(0, 0.4, 60)))})
    bands = residual_bands(backend, cap=None)
    el, po = bands["classes"]["eltwise"], bands["classes"]["pool"]
    assert el[2] == po[2] == 60 and bands["pooled"][2] == 120
    assert el[0] <= 0 <= el[1] and po[0] <= 0 <= po[1]
    assert (po[1] - po[0]) > 4 * (el[1] - el[0])
    # a normal spread of sigma has an 80% interval of +-1.28 sigma around the fitted centre
    assert (po[1] - po[0]) / 2 == pytest.approx(1.28 * 0.4, rel=0.3)
    for cls in ("eltwise", "pool"):
        assert LEVEL - 0.1 <= _held(backend, bands, cls) <= LEVEL + 0.1
    # leave-one-class-out: a class priced by its fallback (pool -> eltwise, 2.5x faster) misses
    # by that factor, so the out-of-family pool reaches far above the in-family one
    assert bands["borrowed"][1] > math.log(2.0) > po[1]


def _node(ms: float, cls: str, *, fit_class: str | None = None, unknown: bool = False, op: str = "Relu"):
    return CalibratedNode(name=cls, op=op, kernel_class=cls, fit_class=fit_class or cls, work=1.0, macs=0.0,
                          bytes_moved=0.0, estimate_ms=ms, bound="memory", unknown_op=unknown)


def _two_nodes() -> CalibratedEstimate:
    return CalibratedEstimate(total_ms=3.0, fixed_ms=0.0, nodes=[_node(1.0, "eltwise"), _node(2.0, "conv_dw")])


def _in_quadrature(center: float, end: float, ratio: float) -> float:
    """`end` of a band around `center`, moved away by `ratio` in quadrature in log space."""
    sign = 1.0 if end >= center else -1.0
    return center * math.exp(sign * math.hypot(math.log(end / center), math.log(ratio)))


FAKE_BANDS = {"classes": {"eltwise": [math.log(0.9), math.log(1.2), 40],
                          "conv_dw": [math.log(0.8), math.log(1.5), 30],
                          "pool": [math.log(0.5), math.log(3.0), 2]},   # too few: the pooled pool
              "pooled": [math.log(0.7), math.log(1.4), 72],
              "borrowed": [math.log(0.6), math.log(2.5), 50],
              "far": [math.log(0.75), math.log(1.8), 30],
              "roofline": [math.log(0.5), math.log(4.0), 72]}


def test_band_arithmetic():
    """Band = fixed + sum of each node's estimate times its class's factors."""
    ce = CalibratedEstimate(total_ms=1.0 + 2.0 + 3.0 + 0.5, fixed_ms=0.5,
                            nodes=[_node(1.0, "eltwise"), _node(2.0, "conv_dw"), _node(3.0, "pool")])
    lo, hi, notes = calibrated_band(ce, FAKE_BANDS)
    assert 3 < MIN_RESIDUALS
    assert lo == pytest.approx(0.5 + 1.0 * 0.9 + 2.0 * 0.8 + 3.0 * 0.7)
    assert hi == pytest.approx(0.5 + 1.0 * 1.2 + 2.0 * 1.5 + 3.0 * 1.4)
    assert notes == []
    assert roofline_band(2.0, FAKE_BANDS) == pytest.approx((1.0, 8.0))


def test_the_chain_networks_miss_widens_the_side_it_missed_at_the_nearest_batch():
    """The calibration's chain network ran 1.5x its estimate at batch 1 and 0.8x at batch 8:
    a batch-1 band gains on its upper end only, a batch-16 band (nearest: 8) on its lower end
    only, each in quadrature with what was there; the note says so. No chain: no change."""
    bands = {**FAKE_BANDS, "composition": {"1": 1.5, "8": 0.8}}
    ce = _two_nodes()
    lo0, hi0, _ = calibrated_band(ce, FAKE_BANDS, 1)
    lo, hi, notes = calibrated_band(ce, bands, 1)
    assert lo == pytest.approx(lo0)
    assert hi == pytest.approx(_in_quadrature(3.0, hi0, 1.5))
    assert any("x1.50" in n and "batch 1" in n for n in notes)
    lo16, hi16, notes16 = calibrated_band(ce, bands, 16)
    assert hi16 == pytest.approx(hi0)
    assert lo16 == pytest.approx(_in_quadrature(3.0, lo0, 0.8))
    assert any("x0.80" in n and "batch 8" in n for n in notes16)
    assert calibrated_band(ce, {**FAKE_BANDS, "composition": None}, 1)[:2] == pytest.approx((lo0, hi0))


def test_the_chains_slowest_timing_widens_the_upper_end_only():
    """The chain network ran 1.4x slower at its slowest timing than at its fastest at batch 1
    (a slow spell of the machine) and not at all at batch 8: a batch-1 band's upper end widens
    in quadrature, its lower end stays, a batch-8 band is unchanged; a note says why."""
    from fopt.bench.costmodel.bands import chain_spells

    spells = chain_spells({"composition_timings_s": {"1": [2.0e-3, 2.8e-3, 2.1e-3], "8": [9e-3, 9e-3]}})
    assert spells == pytest.approx({"1": 1.4, "8": 1.0})
    assert chain_spells({"composition_timings_s": {"1": [2.0e-3]}}) is None   # timed once: nothing to say
    bands = {**FAKE_BANDS, "spells": spells}
    ce = _two_nodes()
    lo0, hi0, _ = calibrated_band(ce, FAKE_BANDS, 1)
    lo, hi, notes = calibrated_band(ce, bands, 1)
    assert lo == pytest.approx(lo0)
    assert hi == pytest.approx(_in_quadrature(3.0, hi0, 1.4))
    assert any("x1.40 slower" in n and "batch 1" in n for n in notes)
    lo8, hi8, notes8 = calibrated_band(ce, bands, 8)
    assert (lo8, hi8) == pytest.approx(calibrated_band(ce, FAKE_BANDS, 8)[:2]) and notes8 == []


def test_the_machines_drift_widens_every_band_in_quadrature():
    """The machine ran 20% slower in one timing pass than in the last: a later measurement may
    too, whatever the model's error; the two add in quadrature in log space, at both ends."""
    d = math.log(1.2)
    bands = {**FAKE_BANDS, "drift": [-d, d, 200]}
    ce = _two_nodes()
    lo0, hi0, _ = calibrated_band(ce, FAKE_BANDS)
    lo, hi, _ = calibrated_band(ce, bands)
    assert lo == pytest.approx(3.0 * math.exp(-math.hypot(math.log(lo0 / 3.0), d)))
    assert hi == pytest.approx(3.0 * math.exp(math.hypot(math.log(hi0 / 3.0), d)))
    assert lo < lo0 and hi > hi0
    # wider, yet narrower than the two stacked end to end
    assert hi < hi0 * 1.2 and lo > lo0 / 1.2
    rlo, rhi = roofline_band(2.0, bands)
    assert rhi == pytest.approx(2.0 * math.exp(math.hypot(math.log(4.0), d)))
    assert rlo == pytest.approx(2.0 * math.exp(-math.hypot(math.log(0.5), d)))


def test_drift_is_the_median_move_of_all_probes_between_passes():
    """Every probe timed in two passes: most 10% slower in the second, a few far off either way
    (their own noise, already in the residuals): the drift is the common move, 10%."""
    backend = _fake_backend({"eltwise": [1.0] * 30, "pool": [1.0] * 30})
    moves = [1.1] * 40 + [3.0] * 10 + [0.5] * 10
    for e, m in zip(backend["equations"], moves):
        e["pass_s"] = [e["seconds"], e["seconds"] * m]
    drift = residual_bands(backend, cap=None)["drift"]
    assert drift == pytest.approx([-math.log(1.1), math.log(1.1), len(moves)])
    # torch eager's calls are merged per branch and batch, their pass times summed per pass
    from fopt.bench.costmodel.bands import _blocks, machine_drift

    calls = [{"call": j, "branch": 0, "batch": 1, "seconds": s, "nodes": [["eltwise", 1.0, 8.0]],
              "pass_s": [s, 2 * s]} for j, s in enumerate((1e-3, 3e-3))]
    (block,) = _blocks(calls)
    assert block["pass_s"] == pytest.approx([4e-3, 8e-3])
    assert machine_drift([block]) == pytest.approx([-math.log(2), math.log(2), 1])
    assert machine_drift([{"seconds": 1e-3, "nodes": []}]) is None   # one pass: no drift to tell


@pytest.mark.parametrize("odd, reason", [
    (dict(fit_class="eltwise", cls="pool"), "class pool not calibrated"),
    (dict(fit_class="conv_dw (linear: no similar probe layer)", cls="conv_dw"), "conv_dw shape far from every probe"),
    (dict(unknown=True, cls="eltwise", op="Mystery"), "op Mystery has no handler"),
])
def test_an_out_of_family_node_widens_the_band_and_says_why(odd, reason):
    cls = odd.pop("cls")
    base = [_node(2.0, "conv_dw")]
    inside = CalibratedEstimate(total_ms=3.0, fixed_ms=0.0, nodes=base + [_node(1.0, cls)])
    outside = CalibratedEstimate(total_ms=3.0, fixed_ms=0.0, nodes=base + [_node(1.0, cls, **odd)])
    lo_in, hi_in, notes_in = calibrated_band(inside, FAKE_BANDS)
    lo_out, hi_out, notes_out = calibrated_band(outside, FAKE_BANDS)
    assert lo_out < lo_in or hi_out > hi_in
    assert lo_out <= lo_in and hi_out >= hi_in
    # the odd node takes the wider of its own (<= 1.5) and the out-of-family pool's factors (2.5)
    assert hi_out == pytest.approx(2.0 * 1.5 + 1.0 * 2.5)
    assert not notes_in
    assert len(notes_out) == 1 and reason in notes_out[0] and "33% of the estimate" in notes_out[0]


def test_no_residuals_no_band():
    ce = CalibratedEstimate(total_ms=1.0, fixed_ms=0.0, nodes=[_node(1.0, "eltwise")])
    lo, hi, notes = calibrated_band(CalibratedEstimate(total_ms=1.0, fixed_ms=0.0,
                                                       nodes=[_node(1.0, "gemm", fit_class="conv_pw")]), FAKE_BANDS)
    assert (lo, hi) == pytest.approx((0.6, 2.5)) and "class gemm not calibrated" in notes[0]
    assert calibrated_band(ce, {"classes": {}, "pooled": None}) is None


def test_bands_are_computed_once_and_kept_on_the_calibration():
    from bench_testutil import synthetic_calibration

    rng = np.random.default_rng(1)
    cal = synthetic_calibration()
    cal["backends"]["onnxruntime/fp32"] = _fake_backend({"eltwise": list(np.exp(rng.normal(0, 0.1, 20)))})
    b = bands_for(cal, "onnxruntime/fp32")
    assert b is cal["backends"]["onnxruntime/fp32"]["bands"] and bands_for(cal, "onnxruntime/fp32") is b
    assert b["roofline"] is not None and b["roofline"][2] == 20
    assert bands_for(cal, "onnxruntime/fp16") is None
    # and an executed graph's band holds its estimate
    node = ExecNode("r", "Relu", input_shapes=[[1, 16, 32, 32]], input_dtypes=["float"],
                    output_shapes=[[1, 16, 32, 32]], output_dtypes=["float"])
    ce = calibrated_estimate(ExecGraph(backend="onnxruntime", precision="fp32", batch_size=1, nodes=[node]), cal, "onnxruntime/fp32")
    lo, hi, _ = calibrated_band(ce, b)
    assert lo <= ce.total_ms <= hi


def test_band_coverage_counts_measured_p50s_inside():
    rows = [{"status": "ok", "estimate_ms": {"calibrated": 1.0}, "estimate_band_ms": {"calibrated": [0.8, 1.4]},
             "latency_ms": {"p50": p}} for p in (0.9, 1.3, 1.5, 0.7)]
    rows.append({"status": "ok", "estimate_ms": {"calibrated": 1.0}, "latency_ms": {"p50": 1.0}})  # no band
    cov = band_coverage(rows)
    assert cov["points"] == 4 and cov["coverage"] == 0.5
    assert cov["median_half_width_pct"] == pytest.approx(30.0)


def test_bench_rows_carry_bands_beside_their_estimates(bench_dir, cache_dir):
    """Wiring: with probe residuals in the calibration, every CPU row of `bench_artifacts` gets
    ``estimate_band_ms`` for roofline and calibrated, each holding its estimate; the table shows it."""
    from bench_testutil import synthetic_calibration

    from fopt.bench.costmodel.cache import save_calibration
    from fopt.bench.report import table_rows
    from fopt.bench.run import bench_artifacts
    from fopt.runtime.timing import StopRule

    rng = np.random.default_rng(2)
    cal = synthetic_calibration(threads=1)
    fake = _fake_backend({"eltwise": list(np.exp(rng.normal(0, 0.2, 30))),
                          "pool": list(np.exp(rng.normal(0, 0.2, 30)))})
    cal["backends"]["onnxruntime/fp32"].update(equations=fake["equations"])
    del cal["backends"]["onnxruntime/fp32"]["classes"]["conv_stem"]   # the tiny model's RGB stem: borrowed
    save_calibration(cal)
    res = bench_artifacts([bench_dir / "tiny.onnx"], batch_sizes=[1], threads=1,
                          rule=StopRule(min_time_s=0.02, warmup_iters=1, warmup_s=0.0)).to_dict()
    row = res["results"][0]
    assert row["status"] == "ok", row["error"]
    for k in ("roofline", "calibrated"):
        lo, hi = row["estimate_band_ms"][k]
        assert lo <= row["estimate_ms"][k] <= hi and lo < hi
    assert "naive" not in row["estimate_band_ms"]
    # its stem's class was not calibrated: out of family, and the row says so
    assert any(n.startswith("band widened") and "class conv_stem not calibrated" in n for n in row["estimate_notes"])
    cell = table_rows(res)[0]["calibrated ms"]
    assert "[" in cell and "]" in cell
