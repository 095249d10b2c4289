"""Bring your own model: every command on files fopt did not make (issue 15)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fopt.artifacts import read_card, sha256_file
from fopt.cli import cli
from fopt.describe.hints import ModelHints, parse_shape
from fopt.describe.infer import describe_model
from fopt.errors import InputError


def run(*args: str):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    return res.exit_code, res.output


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir())


def copy_to(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / src.name
    shutil.copy(src, dst)
    return dst


# ----------------------------------------------------------------------------- what a file says

def test_plain_onnx_is_described_from_its_graph(foreign_dir, synth_dataset):
    dyn = describe_model(foreign_dir["dynamic"])
    assert dyn["kind"] == "foreign" and dyn["format"] == "onnx" and dyn["precision"] == "fp32"
    assert dyn["input"] == {"name": "pixels", "shape": [None, 3, 32, 32], "dtype": "float32"}
    assert dyn["num_classes"] == 6 and dyn["class_names"] is None
    assert dyn["input_spec"]["size"] == 32 and dyn["input_spec"]["mean"] is None
    assert dyn["foreign"]["sha256"] == sha256_file(foreign_dir["dynamic"])
    fixed = describe_model(foreign_dir["fixed"], ModelHints(preset="imagenet"))
    assert fixed["input"]["shape"] == [1, 3, 32, 32]           # a fixed batch stays fixed
    assert fixed["input_spec"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert any("--preset imagenet" in a for a in fixed["foreign"]["assumed"])


def test_bench_times_a_foreign_onnx_with_nothing_but_its_file(foreign_dir):
    from fopt.bench.run import bench_artifacts

    before = listing(foreign_dir["dir"])
    res = bench_artifacts([foreign_dir["dynamic"], foreign_dir["fixed"]], batch_sizes=(1, 2), threads=1,
                          min_time_s=0.05, estimate=False)
    rows = {(Path(r.artifact).name, r.batch_size): r for r in res.results}
    assert rows[("dynamic.onnx", 1)].status == rows[("dynamic.onnx", 2)].status == "ok"
    assert rows[("dynamic.onnx", 2)].p50 > 0 and rows[("fixed.onnx", 1)].status == "ok"
    # its batch is fixed at 1: that row fails alone, saying so
    assert rows[("fixed.onnx", 2)].status == "error" and "fixed at 1" in rows[("fixed.onnx", 2)].error
    assert listing(foreign_dir["dir"]) == before


def test_eval_of_plain_onnx_matches_the_checkpoint_it_came_from(foreign_dir, tiny_checkpoint, synth_dataset):
    from fopt.evaluation import evaluate_artifact

    ref = evaluate_artifact(tiny_checkpoint, synth_dataset)
    code, out = run("eval", foreign_dir["dynamic"], "--data", synth_dataset)
    assert code == 2 and "normalisation is unknown" in out and "--preset" in out
    card = describe_model(foreign_dir["dynamic"], ModelHints(preset="inception"))   # fopt's 0.5/0.5
    res = evaluate_artifact(foreign_dir["dynamic"], synth_dataset, card=card)
    assert res["class_map"] == "index" and res["n"] == ref["n"]
    assert res["accuracy"] == ref["accuracy"] and res["macro_f1"] == ref["macro_f1"]
    code, out = run("eval", foreign_dir["dynamic"], "--data", synth_dataset, "--preset", "inception",
                    "--classes", foreign_dir["classes"], "--json", foreign_dir["dir"].parent / "e.json")
    assert code == 0, out
    assert json.loads((foreign_dir["dir"].parent / "e.json").read_text())["class_map"] == "names"


def test_torchscript_from_elsewhere_then_a_card_makes_options_unneeded(foreign_dir, tiny_checkpoint,
                                                                       synth_dataset, tmp_path):
    from fopt.evaluation import evaluate_artifact

    ts = copy_to(foreign_dir["torchscript"], tmp_path)
    code, out = run("eval", ts, "--data", synth_dataset, "--preset", "inception")
    assert code == 2 and "--input-shape" in out
    code, out = run("card", ts, "--input-shape", "1x3x32x32", "--preset", "inception",
                    "--classes", foreign_dir["classes"])
    assert code == 0, out
    card = read_card(ts)
    assert card["kind"] == "foreign" and card["input_spec"]["size"] == 32 and len(card["class_names"]) == 6
    ref = evaluate_artifact(tiny_checkpoint, synth_dataset)
    code, out = run("eval", ts, "--data", synth_dataset, "--json", tmp_path / "e.json")
    assert code == 0, out
    assert json.loads((tmp_path / "e.json").read_text())["accuracy"] == ref["accuracy"]
    assert "was not written by fopt" in out   # a described card vouches for nothing
    code, out = run("card", ts, "--preset", "imagenet")
    assert code == 2 and "exists" in out
    code, out = run("card", "--show", ts)
    assert code == 0 and json.loads(out)["input"]["shape"] == [None, 3, 32, 32]
    # the file is replaced after its card was written: the card no longer describes it
    ts.write_bytes(ts.read_bytes() + b"\0")
    code, out = run("eval", ts, "--data", synth_dataset)
    assert code == 2 and out.count("\n") == 1 and "another version" in out and "fopt card" in out
    code, out = run("bench", ts, "--batch-sizes", "1", "--min-time", "0.01")
    assert code == 2 and "another version" in out.splitlines()[-1]   # its row fails, saying why
    code, out = run("card", ts, "--force", "--input-shape", "1x3x32x32", "--preset", "inception")
    assert code == 0, out
    assert read_card(ts)["foreign"]["sha256"] == sha256_file(ts)


def test_optimize_foreign_onnx(foreign_dir, synth_dataset, tmp_path):
    src = foreign_dir["dynamic"]
    before = listing(foreign_dir["dir"])
    out = tmp_path / "opt"
    code, text = run("optimize", src, "--int8-static", "--out", out)
    assert code == 2 and "--calib-data" in text and "--preset" in text and not out.exists()
    code, text = run("optimize", src, "--int8-static", "--int8-dynamic", "--fp16", "--calib-data", synth_dataset,
                     "--calib-size", "32", "--preset", "inception", "--eval", synth_dataset, "--out", out,
                     "--no-latency", "--json", tmp_path / "o.json")
    assert code == 0, text
    result = json.loads((tmp_path / "o.json").read_text())
    int8 = next(r for r in result["rows"] if r["artifact"].endswith("dynamic.int8.onnx"))
    assert int8["d_accuracy_pts"] is not None and abs(int8["d_accuracy_pts"]) <= 100
    card = read_card(out / "dynamic.int8.onnx")
    assert card["parent"]["sha256"] == sha256_file(src) and card["foreign"]["sha256"] == sha256_file(src)
    assert card["input_spec"]["mean"] == [0.5, 0.5, 0.5] and card["num_classes"] == 6
    assert listing(foreign_dir["dir"]) == before
    # the INT8 file is fopt's now: eval needs no options (output i = class i, as its parent)
    code, text = run("eval", out / "dynamic.int8.onnx", "--data", synth_dataset)
    assert code == 0 and "class i" in text
    # dynamic INT8 and FP16 need nothing; without --eval deltas are "not measured"
    code, text = run("optimize", src, "--fp16", "--out", tmp_path / "o2", "--no-latency",
                     "--json", tmp_path / "o2.json")
    assert code == 0, text
    fp16 = json.loads((tmp_path / "o2.json").read_text())["rows"][1]
    assert fp16["d_accuracy_pts"] is None and "not measured" in text


# ----------------------------------------------------------------------------- other architectures

def test_export_timm_model_with_a_saved_state_dict(tmp_path, foreign_dir):
    pytest.importorskip("timm")
    import timm

    net = timm.create_model("test_resnet", num_classes=6)
    torch.save({"model": net.state_dict(), "epoch": 7}, tmp_path / "w.pth")
    out = tmp_path / "out"
    code, text = run("export", "--model", "timm:test_resnet", "--weights", tmp_path / "w.pth",
                     "--classes", foreign_dir["classes"], "--img-size", "32", "--onnx", "--out", out)
    assert code == 0, text
    assert sorted(listing(out)) == ["test_resnet.onnx", "test_resnet.onnx.json", "test_resnet.pt",
                                    "test_resnet.pt.json"]
    onnx_card = read_card(out / "test_resnet.onnx")
    assert onnx_card["metrics"]["parity"]["passed"] is True
    ckpt_card = read_card(out / "test_resnet.pt")
    assert ckpt_card["parent"]["sha256"] == sha256_file(tmp_path / "w.pth")
    assert ckpt_card["model"]["name"] == "timm:test_resnet"
    assert any("timm's config" in a for a in ckpt_card["config"]["imported"]["assumed"])
    # the same weights into another architecture: one line naming the keys, nothing written
    code, text = run("export", "--model", "timm:test_efficientnet", "--weights", tmp_path / "w.pth",
                     "--num-classes", "6", "--onnx", "--out", tmp_path / "other")
    assert code == 2 and "missing" in text and "unexpected" in text and len(text.strip().splitlines()) == 1
    assert not (tmp_path / "other").exists()


def test_export_user_module_factory(tmp_path):
    out = tmp_path / "out"
    code, text = run("export", "--module", "byom_nets:small_net", "--num-classes", "4", "--img-size", "16",
                     "--torchscript", "--out", out)
    assert code == 0, text
    assert (out / "small_net.torchscript.pt").is_file()
    assert read_card(out / "small_net.pt")["model"]["name"] == "module:byom_nets:small_net"


def test_registry_resolves_timm_and_torchvision_names(synth_dataset, tmp_path):
    pytest.importorskip("timm")
    from fopt.analyze.run import analyze
    from fopt.models import MODELS, build_model

    assert "timm:test_resnet" in MODELS and "torchvision:resnet18" in MODELS and "resnet18" in MODELS
    a = analyze("torchvision:mobilenet_v3_small", img_size=64, num_classes=10)
    b = analyze("mobilenet_v3_small", img_size=64, num_classes=10)
    assert a.counts.macs == b.counts.macs > 0
    from fopt.checkpoint import load_checkpoint
    from fopt.train.config import TrainConfig
    from fopt.train.engine import fit

    fit(TrainConfig(data=str(synth_dataset), model="timm:test_efficientnet", epochs=1, img_size=32,
                    batch_size=16, workers=0, out=str(tmp_path / "run"), precise_bn=0, top_losses=0,
                    experiments=str(tmp_path / "experiments.csv")))
    ck = load_checkpoint(tmp_path / "run" / "best.pt")   # rebuilt through the registry by its name
    assert ck.model_name == "timm:test_efficientnet"
    assert type(ck.model).__name__ == type(build_model("timm:test_efficientnet", 6)).__name__


# ----------------------------------------------------------------------------- layouts and bad input

def test_layouts_fopt_cannot_feed_get_one_clear_error_but_bench_times_them(foreign_dir, synth_dataset):
    from fopt.bench.run import bench_artifacts

    code, out = run("eval", foreign_dir["nhwc"], "--data", synth_dataset, "--preset", "imagenet")
    assert code == 2 and "'pixels' (1, 32, 32, 3)" in out and "channels-last" in out
    res = bench_artifacts([foreign_dir["nhwc"]], batch_sizes=(1,), threads=1, min_time_s=0.05, estimate=False)
    assert res.results[0].status == "ok" and res.results[0].p50 > 0


def test_bench_times_a_uint8_nhwc_model_given_shape_and_dtype(tmp_path, synth_dataset):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("raw", TensorProto.UINT8, ["n", "h", "w", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, 1, 1])
    nodes = [helper.make_node("Cast", ["raw"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["f"], ["y"], keepdims=1)]
    model = helper.make_model(helper.make_graph(nodes, "u8", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "u8.onnx")
    code, out = run("eval", tmp_path / "u8.onnx", "--data", synth_dataset, "--preset", "none")
    assert code == 2 and "'raw' (?, ?, ?, 3) is uint8" in out
    code, out = run("bench", tmp_path / "u8.onnx", "--input-shape", "1x16x16x3", "--dtype", "float32")
    assert code == 2 and "is uint8" in out
    code, out = run("bench", tmp_path / "u8.onnx", "--input-shape", "1x16x16x3", "--dtype", "uint8",
                    "--batch-sizes", "1,2", "--min-time", "0.05", "--no-estimate", "--threads", "1",
                    "--json", tmp_path / "b.json")
    assert code == 0, out
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(r["latency_ms"]["p50"] > 0 for r in rows)


def test_several_inputs_are_refused_naming_them(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 8, 8])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "two", [a, b], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "two.onnx")
    code, out = run("bench", tmp_path / "two.onnx", "--input-shape", "1x3x8x8")
    assert code == 2 and "2 inputs" in out and "'a'" in out and "'b'" in out


@pytest.mark.parametrize("args, message", [
    (["--input-shape", "1x3x32"], "rank 3"),
    (["--input-shape", "1x3x0x32"], "positive"),
    (["--input-shape", "1x3x64x64"], "fixed at 32"),
    (["--mean", "0.5,0.5", "--std", "0.2,0.2"], "2 values"),
    (["--mean", "0.5", "--std", "0"], "zero std"),
    (["--preset", "imagenett"], "choose from"),
])
def test_bad_options_exit_2_with_one_line_and_write_nothing(foreign_dir, synth_dataset, args, message):
    before = listing(foreign_dir["dir"])
    code, out = run("eval", foreign_dir["fixed"], "--data", synth_dataset, *args)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out
    assert listing(foreign_dir["dir"]) == before


def test_bad_files_and_classes(foreign_dir, synth_dataset, tmp_path):
    junk = tmp_path / "model.bin"
    junk.write_bytes(b"\x00not a model" * 10)
    code, out = run("bench", junk)
    assert code == 2 and "neither an ONNX nor a TorchScript" in out
    (tmp_path / "five.txt").write_text("a\nb\nc\nd\ne\n")
    code, out = run("eval", foreign_dir["fixed"], "--data", synth_dataset, "--preset", "none",
                    "--classes", tmp_path / "five.txt")
    assert code == 2 and "5 names" in out and "6 scores" in out
    with pytest.raises(InputError, match="positive"):
        parse_shape("1x-3")


def test_bad_module_and_missing_timm(tmp_path, monkeypatch):
    code, out = run("export", "--module", "no_such_pkg.nets:make", "--num-classes", "3", "--out", tmp_path / "a")
    assert code == 2 and "cannot import no_such_pkg.nets" in out
    code, out = run("export", "--module", "byom_nets:not_a_module", "--num-classes", "3", "--out", tmp_path / "b")
    assert code == 2 and "not a torch.nn.Module" in out
    monkeypatch.setitem(sys.modules, "timm", None)   # as if timm were not installed
    code, out = run("export", "--model", "timm:resnet18", "--num-classes", "3", "--out", tmp_path / "c")
    assert code == 2 and "pip install fopt[timm]" in out
    assert not any((tmp_path / d).exists() for d in ("a", "b", "c"))


def test_pipeline_from_a_foreign_onnx(foreign_dir, synth_dataset, tmp_path, monkeypatch):
    import fopt.bench.costmodel.calibrate as cal

    monkeypatch.setenv("FOPT_CACHE_DIR", str(tmp_path / "cache"))
    real = cal.calibrate
    monkeypatch.setattr(cal, "calibrate", lambda *a, **k: real(*a, **{**k, "quick": True}))
    before = listing(foreign_dir["dir"])
    run_dir = tmp_path / "run"
    args = ["pipeline", "--model", foreign_dir["dynamic"], "--data", synth_dataset, "--out", run_dir,
            "--method", "int8-static", "--no-search", "--calib-size", "32", "--batch-sizes", "1",
            "--min-time", "0.05", "--processes", "1", "--threads", "1"]
    code, out = run(*args)
    assert code == 2 and "normalisation is unknown" in out and not run_dir.exists()
    code, out = run(*args, "--preset", "inception", "--classes", foreign_dir["classes"])
    assert code == 0, out
    rep = json.loads((run_dir / "report.json").read_text())
    rows = [r for r in rep["rows"] if r["runtime"] == "onnxruntime"]
    assert {r["method"] for r in rows} == {"onnx fp32", "int8-static"}   # --no-search: no mixed graph
    fp32 = next(r for r in rows if r["method"] == "onnx fp32")
    assert fp32["artifact"] == str(foreign_dir["dynamic"]) and fp32["d_accuracy_pts"] == 0.0
    assert all(r["p50_b1_ms"] > 0 and 0 <= r["accuracy"] <= 1 for r in rows)
    assert rep["models"][0]["foreign"]["sha256"] == sha256_file(foreign_dir["dynamic"])
    assert "Not made by fopt" in (run_dir / "report.md").read_text()
    assert listing(foreign_dir["dir"]) == before


def test_export_a_foreign_torchscript_to_onnx(foreign_dir, tiny_checkpoint, synth_dataset, tmp_path):
    from fopt.evaluation import evaluate_artifact

    ts, out = foreign_dir["torchscript"], tmp_path / "exp"
    code, text = run("export", ts, "--onnx")
    assert code == 2 and "--out" in text
    code, text = run("export", ts, "--onnx", "--out", out, "--input-shape", "1x3x32x32", "--preset", "inception")
    assert code == 0, text
    card = read_card(out / "scripted.onnx")
    assert card["parent"]["sha256"] == sha256_file(ts) and card["metrics"]["parity"]["passed"] is True
    ref = evaluate_artifact(tiny_checkpoint, synth_dataset)
    assert evaluate_artifact(out / "scripted.onnx", synth_dataset)["accuracy"] == ref["accuracy"]
