import pytest

from fopt.pipeline.recommend import recommend


def row(name, lat, acc, dacc, f1=None, df1=None):
    return {"artifact": name, "model": "m", "method": name, "p50_b1_ms": lat, "accuracy": acc,
            "d_accuracy_pts": dacc, "macro_f1": acc if f1 is None else f1,
            "d_macro_f1_pts": dacc if df1 is None else df1}


def test_fastest_within_drop_wins():
    rows = [row("fp32", 10.0, 0.90, 0.0), row("int8", 2.0, 0.885, -1.5), row("fp16", 6.0, 0.899, -0.1)]
    rec = recommend(rows, max_accuracy_drop=1.0)
    assert rec["artifact"] == "fp16"
    assert {r["artifact"] for r in rec["rejected"]} == {"int8"}
    assert "fastest" in rec["why"]
    assert recommend(rows, max_accuracy_drop=2.0)["artifact"] == "int8"


def test_macro_f1_drop_alone_disqualifies():
    rows = [row("fp32", 10.0, 0.9, 0.0), row("int8", 2.0, 0.9, 0.0, f1=0.8, df1=-10.0)]
    assert recommend(rows)["artifact"] == "fp32"


def test_latency_budget_and_none_qualifies():
    rows = [row("fp32", 10.0, 0.9, 0.0), row("int8", 2.0, 0.7, -20.0)]
    rec = recommend(rows, latency_budget_ms=5.0)
    assert rec["artifact"] is None and rec["why"].startswith("none qualifies")
    assert len(rec["rejected"]) == 2


def test_unmeasured_rows_never_qualify_and_bad_limit():
    rows = [row("ts", None, 0.9, 0.0), row("fp32", 10.0, 0.9, 0.0)]
    assert recommend(rows)["artifact"] == "fp32"
    with pytest.raises(ValueError):
        recommend(rows, max_accuracy_drop=-1)


def test_improvement_counts_as_no_drop():
    rows = [row("fp32", 10.0, 0.80, 0.0), row("int8", 3.0, 0.82, +2.0)]
    assert recommend(rows, max_accuracy_drop=0.0)["artifact"] == "int8"
