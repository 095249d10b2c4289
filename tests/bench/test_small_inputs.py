"""Small inputs (issue 19): probe layers at the sizes a 64 px input gives, and bench_quality's own cache."""

from __future__ import annotations

import json
import math

import pytest

from fopt.bench.costmodel.kernels import classify
from fopt.bench.costmodel.predict import KNN_MAX_DIST, calibrated_estimate, predict_node
from fopt.bench.costmodel.probes import FULL_BRANCHES, SMALL_BRANCHES, build_probenet, probe_inputs
from fopt.bench.measure.profile import ExecGraph, ExecNode, torch_exec_graph


def _conv_node(cin: int, cout: int, hw: int, k: int = 3, batch: int = 1) -> ExecNode:
    """An executed NCHW convolution with a `hw` x `hw` output."""
    return ExecNode(name=f"conv{cin}x{hw}", op="Conv", input_shapes=[[batch, cin, hw, hw], [cout, cin, k, k]],
                    output_shapes=[[batch, cout, hw, hw]], input_dtypes=["float", "float"],
                    output_dtypes=["float"], attrs={"group": 1, "strides": [1, 1]})


def _point(node: ExecNode, ms: float) -> list[float]:
    """A probe layer's rate point: its shape features and the MAC/s it reached in `ms`."""
    nw = classify(node)
    return [*nw.features, nw.work / (ms / 1e3)]


def test_small_shape_node_is_priced_from_the_small_probe_layer():
    """A fake calibration that measured the same 512-channel 3x3 convolution at 7x7 and at 2x2
    output pixels: the 2x2 layer is twelve times fewer MACs but only 3x faster (its fixed cost).
    A model's 2x2 layer is priced from the 2x2 probe; without it, from the 7x7 one - the
    miss this change removes."""
    big, small = _conv_node(512, 512, 7), _conv_node(512, 512, 2)
    big_ms, small_ms = 1.2, 0.4
    points = {"conv_dense": [_point(big, big_ms), _point(small, small_ms)]}
    fits = {"conv_dense": {"overhead_s": 0.0, "sec_per_work": 1e-11, "n": 2, "rel_rmse": 0.0}}
    model_node = classify(_conv_node(512, 512, 2))
    sec, used, bound = predict_node(model_node, fits, None, points)
    assert used == "conv_dense" and bound == "compute"
    assert sec * 1e3 == pytest.approx(small_ms, rel=0.05)   # the small probe dominates the lookup
    # the same node with only the 224 px-sized probe: priced at the 7x7 rate, 3.6x too fast
    only_big = {"conv_dense": [_point(big, big_ms), _point(_conv_node(512, 512, 7, batch=8), 8 * big_ms)]}
    sec_big, _, _ = predict_node(model_node, fits, None, only_big)
    rate_7x7 = classify(big).work / (big_ms / 1e3)
    assert sec_big == pytest.approx(model_node.work / rate_7x7, rel=0.05)
    assert small_ms / (sec_big * 1e3) > 3
    # and a 7x7 layer still gets the 7x7 rate: the small probe does not leak into large layers
    sec7, _, _ = predict_node(classify(_conv_node(512, 512, 7)), fits, None, points)
    assert sec7 * 1e3 == pytest.approx(big_ms, rel=0.05)


def test_small_layers_raise_the_whole_estimate():
    """Through `calibrated_estimate`: a graph of small-shape convolutions costs what the small
    probe layers cost (each node's rate from its probe, summed, plus the run's fixed cost and
    the weights read from DRAM, which the probes timed in a loop did not pay)."""
    from bench_testutil import synthetic_calibration

    cal = synthetic_calibration()
    shapes = [(64, 16), (128, 8), (256, 4), (512, 2)]
    probe_ms = {hw: 0.05 * (1 + i) for i, (_, hw) in enumerate(shapes)}
    cal["backends"]["onnxruntime/fp32"]["rate_points"] = {
        "conv_dense": [_point(_conv_node(c, c, hw), probe_ms[hw]) for c, hw in shapes]}
    graph = ExecGraph(backend="onnxruntime", precision="fp32", batch_size=1,
                      nodes=[_conv_node(c, c, hw) for c, hw in shapes], source="test")
    ce = calibrated_estimate(graph, cal, "onnxruntime/fp32")
    fixed_ms = cal["backends"]["onnxruntime/fp32"]["run_fixed_s"] * 1e3
    assert ce.weights_ms > 0
    assert ce.total_ms - ce.weights_ms == pytest.approx(sum(probe_ms.values()) + fixed_ms, rel=0.02)
    assert not any("no similar probe layer" in n for n in ce.notes)


def test_small_probes_stay_out_of_the_linear_fits():
    """A fake calibration: three 224 px-sized equations of a conv class and an element-wise class,
    and one small-input probe whose conv pays a large fixed cost. Marked ``lookup_only`` (as
    `calibrate` marks `SMALL_BRANCHES`) it leaves the linear fits exactly as without it, so the
    element-wise class keeps its rate, while `rate_points` still carries its measured rate."""
    from fopt.bench.costmodel.fit import fit_joint, rate_points

    sec_per_mac, sec_per_elem, fixed_s = 1e-11, 2e-10, 1e-5

    def eq(c: int, hw: int, extra_s: float = 0.0, **flags) -> dict:
        conv = classify(_conv_node(c, c, hw))
        elems = float(c * hw * hw)
        return {"batch": 1, "nodes": [conv.as_equation_node(), ["eltwise", elems, 8 * elems]],
                "seconds": fixed_s + conv.work * sec_per_mac + elems * sec_per_elem + extra_s, **flags}

    big = [eq(64, 56), eq(128, 28), eq(256, 14), eq(512, 7)]
    small = eq(512, 2, extra_s=3e-4, lookup_only=True)
    alone, with_small = fit_joint(big, fixed_s, 1e12), fit_joint(big + [small], fixed_s, 1e12)
    for cls in ("conv_dense", "eltwise"):
        for k in ("overhead_s", "sec_per_work"):
            assert with_small["classes"][cls][k] == pytest.approx(alone["classes"][cls][k], rel=1e-9, abs=1e-15)
    assert with_small["classes"]["eltwise"]["sec_per_work"] == pytest.approx(sec_per_elem, rel=1e-3)
    assert len(with_small["used"]) == len(big)
    points = rate_points(big + [small], with_small, fixed_s)["conv_dense"]
    small_feats = classify(_conv_node(512, 512, 2)).features
    (rate,) = [p[-1] for p in points if tuple(p[:-1]) == small_feats]
    work = classify(_conv_node(512, 512, 2)).work
    # its conv's time: the measured time less the element-wise node's fitted share and the run's cost
    assert work / rate == pytest.approx(small["seconds"] - fixed_s - 512 * 4 * sec_per_elem, rel=1e-3)


def _conv_features(graph: ExecGraph) -> list[tuple[str, tuple[float, ...]]]:
    return [(nw.kernel_class, nw.features) for nw in map(classify, graph.nodes)
            if nw.kernel_class.startswith("conv") and nw.features]


def test_small_probes_cover_resnet18_at_64_px():
    """Every convolution of resnet18 at the demo's 64 px has a probe layer of its class well within
    the similarity lookup's reach, most an exact match; without the small probes none is within
    one size step (the lookup then priced 2x2-pixel layers from 7x7 ones)."""
    import torch

    from fopt.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", 22).eval()
    with torch.inference_mode():
        layers = _conv_features(torch_exec_graph(model, torch.zeros(1, 3, 64, 64)))
        net = build_probenet(FULL_BRANCHES)
        probes: dict[str, list[tuple[tuple[float, ...], bool]]] = {}
        for spec, block, x in zip(FULL_BRANCHES, net.blocks, probe_inputs(FULL_BRANCHES, 1)):
            for cls, feats in _conv_features(torch_exec_graph(block, torch.from_numpy(x))):
                probes.setdefault(cls, []).append((feats, spec in SMALL_BRANCHES))
    assert len(layers) == 20
    nearest = [min(math.dist(f, p) for p, _ in probes[cls]) for cls, f in layers]
    without = [min(math.dist(f, p) for p, small in probes[cls] if not small) for cls, f in layers]
    assert max(nearest) <= 2.5 < KNN_MAX_DIST
    assert sum(d == 0 for d in nearest) >= 17
    assert min(without) > 1.0


# ----------------------------------------------------------------------------- private cache

def test_bench_quality_calibrates_into_its_own_cache(bq, tmp_path, monkeypatch):
    """After `use_private_cache`, a calibration saved (as bench_quality's `calibrate` saves it)
    and loaded lands in the work folder; the user's cached calibration stays byte for byte."""
    from bench_testutil import synthetic_calibration

    from fopt.bench.costmodel.cache import cache_path, load_machine_calibration, save_calibration

    user = tmp_path / "home_cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(user))
    monkeypatch.setenv("FOPT_CACHE_DIR", "")          # unset for cache_root, restored after the test
    users_file = cache_path()
    assert users_file.is_relative_to(user)
    mine = synthetic_calibration()
    mine["created"] = "2020-01-01T00:00:00+00:00"
    save_calibration(mine)
    before = users_file.read_bytes()

    work = tmp_path / "bq_work"
    root = bq.use_private_cache(work)
    assert root == (work / "cache").resolve()
    theirs = synthetic_calibration()
    save_calibration(theirs)
    assert users_file.read_bytes() == before
    assert cache_path().is_relative_to(root) and cache_path().is_file()
    assert load_machine_calibration("cpu", 1)["created"] == theirs["created"]
    assert json.loads(users_file.read_text())["entries"]["cpu:threads=1"]["created"] == mine["created"]


def test_compare_calibration_prices_the_same_rows_again(bq, bench_dir, synthetic_cal, tmp_path):
    """`--compare-calibration`: the rows measured once, priced with a second calibration whose
    compute classes cost twice as much. The measured p50 is the same row's; the calibrated
    estimate moves, and by no more than the doubled part."""
    import copy

    from fopt.artifacts import write_json_atomic
    from fopt.bench.run import bench_artifacts
    from fopt.runtime.timing import StopRule

    res = bench_artifacts([bench_dir / "tiny.onnx"], batch_sizes=[1], threads=1,
                          rule=StopRule(min_time_s=0.02, warmup_iters=1, warmup_s=0.0))
    slower = copy.deepcopy(synthetic_cal)
    for fit in slower["backends"]["onnxruntime/fp32"]["classes"].values():
        fit["sec_per_work"] *= 2
    other = tmp_path / "other.json"
    write_json_atomic(other, {"schema": slower["schema"], "machine_key": slower["machine_key"],
                              "entries": {"cpu:threads=1": slower}})
    (row,) = [r.to_dict() for r in res.results]
    (again,) = bq.reestimate(res, other, 1, "wall")
    assert row["status"] == again["status"] == "ok"
    assert again["latency_ms"] == row["latency_ms"]
    a, b = row["estimate_ms"]["calibrated"], again["estimate_ms"]["calibrated"]
    assert a < b <= 2 * a
    assert res.results[0].estimate_ms["calibrated"] == a            # the measured rows are left as they were
    with pytest.raises(SystemExit, match="no CPU calibration for 2 thread"):
        bq.reestimate(res, other, 2, "wall")
