import json

import pytest

from fopt.errors import InputError
from fopt.pipeline.report import (
    build_report,
    find_summaries,
    load_summaries,
    pareto_front,
)


def _summary(model, rows):
    return {"model": model, "dataset": "/d", "machine": {"cpu": {"model": "TestCPU"}},
            "train": {"accuracy": 0.9, "macro_f1": 0.88, "epochs": 2, "img_size": 64, "best_epoch": 2},
            "analysis": {"params": 11.2e6, "macs": 0.15e9, "flops": 0.31e9,
                         "receptive_field": {"conv_path_size": 435, "global": False},
                         "t4": {"naive_ms": 0.038, "roofline_ms": 0.4, "study_fp64_ms": 1.2}},
            "rows": rows}


def _row(model, method, lat, acc, dacc):
    return {"model": model, "method": method, "artifact": f"/r/{model}/{method}.onnx", "format": "onnx",
            "precision": "int8" if "int8" in method else "fp32", "accuracy": acc, "macro_f1": acc,
            "d_accuracy_pts": dacc, "d_macro_f1_pts": dacc, "p50_b1_ms": lat,
            "estimate_ms": {"naive": 0.1, "roofline": 0.5, "calibrated": lat * 1.1},
            "error_pct": {"naive": -90.0, "roofline": -50.0, "calibrated": 10.0}}


def test_report_from_summaries_and_rebuild(tmp_path):
    run = tmp_path / "run"
    for model, rows in (("resnet18", [_row("resnet18", "fp32", 5.0, 0.9, 0.0),
                                      _row("resnet18", "int8-static", 1.5, 0.895, -0.5)]),
                        ("tiny", [_row("tiny", "fp32", 0.5, 0.7, 0.0)])):
        (run / model).mkdir(parents=True)
        (run / model / "summary.json").write_text(json.dumps(_summary(model, rows)))
    sums = load_summaries(find_summaries([run]))
    rep = build_report(sums, tmp_path / "out", max_accuracy_drop=1.0)
    assert rep["recommendation"]["artifact"] == "/r/tiny/fp32.onnx"   # fastest within the drop
    md = (tmp_path / "out" / "report.md").read_text()
    assert "resnet18" in md and "int8-static" in md and "0.15" in md   # MACs in G
    assert (tmp_path / "out" / "accuracy_vs_latency.png").stat().st_size > 1000
    back = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(back["rows"]) == 3 and back["recommendation"]["why"]
    rep2 = build_report(sums, tmp_path / "out", latency_budget_ms=0.1)
    assert rep2["recommendation"]["artifact"] is None
    assert "No artifact qualifies" in (tmp_path / "out" / "report.md").read_text()


def test_find_summaries_errors(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        find_summaries([tmp_path / "nope"])
    with pytest.raises(InputError, match="no summary.json"):
        find_summaries([tmp_path])


def test_pareto_front():
    pts = [(1.0, 80.0), (2.0, 90.0), (3.0, 85.0), (0.5, 70.0), (4.0, 95.0)]
    assert sorted(pareto_front(pts)) == [0, 1, 3, 4]


@pytest.mark.parametrize("content, what", [
    ({}, "no 'model' name"),
    ([], "found a list"),
    ({"model": "tiny"}, "no 'rows' list"),
    ({"model": "tiny", "rows": [{"method": "fp32"}]}, "rows[0] has no 'artifact'"),
    ({"model": "tiny", "rows": [{"artifact": "/a.onnx", "method": "fp32", "p50_b1_ms": "fast"}]},
     "rows[0].p50_b1_ms is 'fast'"),
    ({"model": "tiny", "rows": [], "analysis": [1, 2]}, "'analysis' is a list"),
])
def test_report_on_a_malformed_summary_is_one_line_naming_the_file(tmp_path, content, what):
    from click.testing import CliRunner

    from fopt.cli import cli

    (tmp_path / "run" / "tiny").mkdir(parents=True)
    summary = tmp_path / "run" / "tiny" / "summary.json"
    summary.write_text(json.dumps(content))
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "run"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and res.output.count("\n") == 1, res.output
    assert str(summary) in res.output and what in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o" / "report.json").exists()
