"""The per-layer precision search (`fopt optimize --int8-static --search`): node classes, the
decision rule on made-up screens, and a real search whose output keeps exactly the chosen classes
FP32."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fopt.artifacts import read_card
from fopt.cli import cli
from fopt.errors import UsageError
from fopt.onnxgraph import graph_summary, load_onnx
from fopt.optimize.run import OptimizeOptions, optimize_onnx
from fopt.optimize.search import choose_classes, node_classes


def _mobile_net(classes: int = 5):
    """A stem, a depthwise block with squeeze-and-excitation, pointwise, grouped and dense convs,
    and a linear head: one node of each class the search knows."""
    import torch
    import torch.nn as nn

    class SE(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Conv2d(c, c // 4, 1)
            self.fc2 = nn.Conv2d(c // 4, c, 1)

        def forward(self, x):
            return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(self.pool(x)))))

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(),                    # conv_stem
        nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.ReLU(),        # conv_dw
        SE(16),                                                  # conv_se x 2
        nn.Conv2d(16, 32, 1), nn.ReLU(),                         # conv_pw
        nn.Conv2d(32, 32, 3, 1, 1, groups=4), nn.ReLU(),         # conv_grouped
        nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(),                   # conv_dense
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes)).eval()   # gemm


def test_node_classes_of_a_mobile_block(tmp_path):
    import onnx

    from fopt.export.onnx import model_to_onnx
    from fopt.optimize.quantize import preprocess

    onnx.save(model_to_onnx(_mobile_net(), 32), str(tmp_path / "m.onnx"))
    preprocess(tmp_path / "m.onnx", tmp_path / "pre.onnx")   # the graph the quantizer names nodes in
    classes = node_classes(onnx.load(str(tmp_path / "pre.onnx")))
    assert {k: len(v) for k, v in classes.items()} == {
        "conv_stem": 1, "conv_dw": 1, "conv_se": 2, "conv_pw": 1, "conv_grouped": 1, "conv_dense": 1, "gemm": 1}
    names = {n.name for n in onnx.load(str(tmp_path / "pre.onnx")).graph.node}
    assert all(n in names for v in classes.values() for n in v)
    # a 3x3 convolution on a 1x1 map (resnet18's last stage at 32 px) is no squeeze-and-excitation
    import torch.nn as nn

    tiny_map = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 8, 3, 1, 1),
                             nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8, 3)).eval()
    onnx.save(model_to_onnx(tiny_map, 32), str(tmp_path / "t.onnx"))
    assert {k: len(v) for k, v in node_classes(onnx.load(str(tmp_path / "t.onnx"))).items()} == {
        "conv_stem": 1, "conv_dense": 1, "conv_se": 1, "gemm": 1}


def _additive(int8_agreement: float, variants: dict[str, tuple[float, float]]):
    """agreement_of for made-up screens: each kept class adds back what it recovered alone."""
    calls: list[list[str]] = []

    def agreement_of(keep):
        calls.append(list(keep))
        return min(1.0, int8_agreement + sum(variants[c][1] - int8_agreement for c in keep))
    return agreement_of, calls


def test_a_class_whose_int8_is_slower_beyond_the_noise_stays_fp32():
    variants = {"conv_dw": (8.0, 0.993), "conv_pw": (9.8, 0.993), "gemm": (10.4, 0.993)}
    agreement_of, calls = _additive(0.995, variants)
    keep, why, ended = choose_classes(10.0, 0.995, 20.0, 1.0, 0.05, variants, 1.0, agreement_of)
    assert ended == "within the budget"
    assert keep == ["conv_dw"]       # 20% faster with it FP32; conv_pw's 2% is within the 5% noise
    assert "does not pay" in why["conv_dw"] and calls == [["conv_dw"]]
    keep, _, _ = choose_classes(10.0, 0.995, 20.0, 1.0, 0.01, variants, 1.0, _additive(0.995, variants)[0])
    assert keep == ["conv_dw", "conv_pw"]   # with less noise the 2% counts


def test_accuracy_budget_keeps_the_best_recovery_per_millisecond_until_met():
    # all-INT8 disagrees with FP32 on 5% of images; a recovers 3 pts for 4 ms, b 2 pts for 1 ms
    variants = {"a": (14.0, 0.98), "b": (11.0, 0.97), "c": (10.5, 0.95)}
    agreement_of, calls = _additive(0.95, variants)
    keep, why, _ = choose_classes(10.0, 0.95, 20.0, 1.0, 0.05, variants, 1.0, agreement_of)
    assert keep == ["b", "a"] and calls == [[], ["b"], ["b", "a"]]
    assert "recovers 2 pts" in why["b"] and "c" not in why   # c recovers nothing, never kept
    # a looser budget stops after b (97% agreement is within 5 points)
    keep, _, _ = choose_classes(10.0, 0.95, 20.0, 1.0, 0.05, variants, 5.0, _additive(0.95, variants)[0])
    assert keep == ["b"]
    # with FP32 at 15 ms, b (+1 ms) fits but b and a (+5 ms: 15 ms, not 5% under FP32) do not
    keep, _, ended = choose_classes(10.0, 0.95, 15.0, 1.0, 0.05, variants, 1.0, _additive(0.95, variants)[0])
    assert keep == ["b"] and "would not be faster than FP32" in ended


def test_nothing_is_kept_when_no_class_helps():
    variants = {"a": (10.2, 0.90), "b": (10.1, 0.94)}
    keep, why, ended = choose_classes(10.0, 0.95, 20.0, 1.0, 0.05, variants, 0.0, _additive(0.95, variants)[0])
    assert keep == [] and why == {} and ended == "no class left that recovers it"


def test_search_writes_a_graph_with_exactly_the_kept_classes_fp32(model_copy, silu_onnx):
    path = model_copy(silu_onnx)
    result = optimize_onnx(path, OptimizeOptions(methods=("int8-static",), search=True, calib_size=32,
                                                 evaluate=False, latency=False, threads=1))
    assert [a["method"] for a in result["artifacts"]] == ["int8-static", "int8-mixed"]
    mixed = path.with_name("silu.int8-mixed.onnx")
    card = read_card(mixed)
    search = card["quantization"]["search"]
    assert card["method"] == "int8-mixed" and card["precision"] == "int8"
    assert search["runtime"] == "onnxruntime" and search["score_images"] == 32
    # the lineage dataset's train images carry the model's own classes: scored by accuracy
    assert search["scored_by"] == "accuracy" and 0 <= search["fp32_score"] <= 1
    assert {r["class"] for r in search["classes"]} == {"conv_stem", "conv_dense", "gemm"}
    assert 0 < search["mixed_ms"] and 0 <= search["mixed_score"] <= 1
    kept = {r["class"] for r in search["classes"] if r["kept_fp32"]}
    assert kept == set(search["kept_fp32_classes"])
    # every class kept FP32 has all its nodes float in the written graph, and only those are
    floats = set(graph_summary(load_onnx(mixed))["float_compute_nodes"])
    assert len(floats) == sum(r["nodes"] for r in search["classes"] if r["kept_fp32"])
    assert set(card["quantization"]["excluded_nodes"]) == floats
    # the decision matches the rule on the screen's own numbers, except where the card's rounding
    # (4 decimals of a ms, about 0.1% of this graph's 0.07 ms) could have flipped the comparison
    screen = search["screen"]
    threshold = screen["int8_ms"] * (1 - screen["noise"])
    for r in search["classes"]:
        if abs(r["ms_with_it_fp32"] - threshold) > 2e-4:
            faster = r["ms_with_it_fp32"] < threshold
            assert faster <= r["kept_fp32"]   # faster beyond the noise -> kept (kept may also be for accuracy)


def test_search_scores_agreement_when_the_images_carry_no_labels(model_copy, silu_onnx, synth_dataset):
    from fopt.data.datasets import DatasetTable

    path = model_copy(silu_onnx)
    folder = DatasetTable.load(synth_dataset).root   # the same pictures as a plain folder: no labels
    optimize_onnx(path, OptimizeOptions(methods=("int8-static",), search=True, calib_data=str(folder),
                                        calib_size=32, evaluate=False, latency=False, threads=1))
    search = read_card(path.with_name("silu.int8-mixed.onnx"))["quantization"]["search"]
    assert search["scored_by"] == "agreement" and search["fp32_score"] == 1.0


@pytest.mark.parametrize("args, message", [
    (["--fp16", "--search"], "pass it with --int8-static"),
    (["--int8-static", "--search", "--search-max-drop", "-1"], ">= 0 points"),
])
def test_bad_search_options_are_one_line_and_write_nothing(model_copy, tiny_onnx, args, message):
    path = model_copy(tiny_onnx)
    before = sorted(p.name for p in path.parent.iterdir())
    res = CliRunner().invoke(cli, ["optimize", str(path), *args])
    assert res.exit_code == 2 and message in res.output and res.output.count("\n") == 1
    assert sorted(p.name for p in path.parent.iterdir()) == before


def test_search_without_int8_static_in_options_is_a_usage_error():
    with pytest.raises(UsageError, match="--int8-static"):
        OptimizeOptions(methods=("fp16",), search=True).validate()
    assert OptimizeOptions(all_methods=True).searching and not OptimizeOptions(methods=("int8-static",)).searching
    json.dumps(OptimizeOptions(all_methods=True).__dict__)   # the options stay JSON-writable


@pytest.mark.parametrize("kept, int8_ms, says", [
    (["gemm"], 14.8, "kept FP32: gemm ("),
    ([], 16.7, "INT8 paid for every class"),
    ([], 30.0, "use FP32"),        # all-INT8 slower than FP32: no subset can win
])
def test_the_mixed_row_says_what_the_search_found(tmp_path, kept, int8_ms, says):
    from fopt.optimize.base import Produced
    from fopt.optimize.run import _method_notes

    search = {"kept_fp32_classes": kept, "runtime": "onnxruntime", "mixed_ms": 14.8 if kept else int8_ms,
              "int8_ms": int8_ms, "fp32_ms": 28.3}
    p = Produced("int8-mixed", tmp_path / "m.int8-mixed.onnx", {}, 1.0, {"search": search})
    row = {"speedup": None, "d_accuracy_pts": None, "d_macro_f1_pts": None}
    notes = _method_notes(p, row, False, OptimizeOptions(methods=("int8-static",)))
    assert len(notes) == 1 and says in notes[0] and "FP32 28.3" in notes[0]


def test_float_nodes_onnxruntime_runs_as_int8_are_counted():
    """For any INT8 file (--exclude, --keep-fp32, the search): nodes float in the file that ONNX
    Runtime re-fuses into integer kernels (the resnet50 case: 22 quantized in the file, 53 run)."""
    from fopt.optimize.report import ort_requantized

    graph = {"quantized_ops": {"Conv": 22, "Gemm": 1}}
    assert ort_requantized(graph, {"QLinearConv": 53, "QGemm": 1, "QLinearAdd": 16}) == 31
    assert ort_requantized(graph, {"QLinearConv": 22, "QGemm": 1, "Conv": 31}) == 0   # really float
