"""The recommendation does not chase noise: latency differences within the measured spread are ties."""

from fopt.pipeline.recommend import DEFAULT_NOISE_PCT, RUNTIME_SIMPLICITY, noise_pct, recommend


def row(method, lat, acc=0.9, *, spread=None, size=10.0, runtime="onnxruntime", f1=None):
    return {"artifact": f"{method}-{runtime}", "model": "m", "method": method, "runtime": runtime,
            "p50_b1_ms": lat, "spread_b1_pct": spread, "size_mb": size, "accuracy": acc,
            "d_accuracy_pts": 100 * (acc - 0.9), "macro_f1": acc if f1 is None else f1,
            "d_macro_f1_pts": 100 * ((acc if f1 is None else f1) - 0.9)}


def test_the_demo_case_fp16_vs_fp32_is_a_tie_and_the_smaller_file_wins():
    """The issue's case: FP16 0.925 ms vs FP32 1.09 ms (18% apart), measured with a 30% spread.
    Same accuracy; FP16 is half the file, so it still wins, but as a tie, and says so."""
    rows = [row("fp32", 1.09, spread=30, size=6.0), row("fp16", 0.925, spread=30, size=3.0)]
    rec = recommend(rows)
    assert rec["artifact"] == "fp16-onnxruntime"
    assert "tied within noise with fp32" in rec["why"] and "smaller file" in rec["why"]
    assert [t["artifact"] for t in rec["tied_with"]] == ["fp32-onnxruntime"]


def test_higher_accuracy_wins_a_tie_over_the_faster():
    rows = [row("fp32", 1.09, acc=0.91, spread=30), row("fp16", 0.925, acc=0.90, spread=30)]
    rec = recommend(rows, max_accuracy_drop=5)
    assert rec["artifact"] == "fp32-onnxruntime"
    assert "tied within noise with fp16" in rec["why"] and "higher accuracy" in rec["why"]


def test_a_difference_larger_than_the_spread_is_not_a_tie():
    rows = [row("fp32", 1.09, acc=0.91, spread=5), row("int8", 0.60, acc=0.90, spread=5)]
    rec = recommend(rows, max_accuracy_drop=5)
    assert rec["artifact"] == "int8-onnxruntime"
    assert "tied" not in rec["why"] and rec["tied_with"] == []


def test_the_larger_spread_of_the_two_decides():
    """1.00 vs 1.15 ms: tied when either row's spread reaches 15%, not when both are tighter."""
    slow = row("fp32", 1.15, acc=0.91, spread=20)
    fast = row("int8", 1.00, acc=0.90, spread=3)
    assert recommend([fast, slow], max_accuracy_drop=5)["artifact"] == "fp32-onnxruntime"
    slow["spread_b1_pct"] = 8
    assert recommend([fast, slow], max_accuracy_drop=5)["artifact"] == "int8-onnxruntime"


def test_without_a_measured_spread_the_stated_default_applies():
    assert noise_pct({"spread_b1_pct": None}) == DEFAULT_NOISE_PCT
    assert noise_pct({"spread_b1_pct": 0.0}) == DEFAULT_NOISE_PCT      # one process measures no spread
    assert noise_pct({"spread_b1_pct": 42.0}) == 42.0
    inside = 1.0 * (1 + DEFAULT_NOISE_PCT / 100) - 0.01
    outside = 1.0 * (1 + DEFAULT_NOISE_PCT / 100) + 0.01
    base = row("a", 1.0, acc=0.90, size=5.0)
    assert recommend([base, row("b", inside, acc=0.90, size=1.0)])["artifact"] == "b-onnxruntime"
    assert recommend([base, row("b", outside, acc=0.90, size=1.0)])["artifact"] == "a-onnxruntime"


def test_then_the_simpler_runtime():
    """Same file, same accuracy, within noise on three runtimes: ORT before OpenVINO before TensorRT."""
    rows = [row("int8", 1.00, spread=25, runtime="tensorrt"), row("int8", 1.05, spread=25, runtime="openvino"),
            row("int8", 1.12, spread=25, runtime="onnxruntime")]
    rec = recommend(rows)
    assert rec["runtime"] == "onnxruntime"
    assert "simpler runtime" in rec["why"]
    assert RUNTIME_SIMPLICITY.index("onnxruntime") < RUNTIME_SIMPLICITY.index("openvino")
    # and OpenVINO over TensorRT once ORT is out of the race
    assert recommend(rows[:2])["runtime"] == "openvino"


def test_ties_are_judged_against_the_fastest_only():
    """A chain 1.0 -> 1.08 -> 1.16 (10% default): the third is not tied with the first."""
    rows = [row("a", 1.0, acc=0.90), row("b", 1.08, acc=0.905), row("c", 1.16, acc=0.92)]
    rec = recommend(rows, max_accuracy_drop=5)
    assert rec["artifact"] == "b-onnxruntime"
    assert "1 other qualifying pair(s) were slower" in rec["why"]
