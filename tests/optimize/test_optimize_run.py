"""`fopt optimize` end to end: artifacts, cards, the result table, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fopt.artifacts import onnx_card_from_proto, read_card, sha256_file
from fopt.cli import cli
from fopt.errors import OutputExistsError, UsageError
from fopt.onnxgraph import graph_summary, load_onnx, param_count
from fopt.optimize.base import METHODS, OptimizeError, output_path, produce
from fopt.describe.infer import own_card
from fopt.optimize.lineage import lineage_dataset
from fopt.optimize.run import OptimizeOptions, optimize_onnx


def fopt(*args) -> tuple[int, str]:
    res = CliRunner().invoke(cli, [str(a) for a in args])
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def full_run(tiny_onnx, tmp_path_factory):
    """One run of int8-dynamic + int8-static (both flavours) + fp16 with evaluation."""
    out = tmp_path_factory.mktemp("opt_out")
    code, output = fopt("optimize", tiny_onnx, "--int8-dynamic", "--int8-static", "--fp16",
                        "--int8-target", "both", "--calib-size", "32", "--out", out,
                        "--json", out / "result.json", "--csv", out / "rows.csv", "--threads", "1")
    assert code == 0, output
    return out, json.loads((out / "result.json").read_text()), output


def test_full_run_writes_every_artifact_with_its_card(full_run, tiny_onnx):
    out, result, output = full_run
    names = {"tiny.int8-dynamic.onnx": "int8", "tiny.int8.onnx": "int8", "tiny.int8-trt.onnx": "int8",
             "tiny.fp16.onnx": "fp16"}
    parent_sha = sha256_file(tiny_onnx)
    for name, precision in names.items():
        path = out / name
        card = read_card(path)
        assert card["kind"] == "optimized" and card["format"] == "onnx"
        assert card["precision"] == precision
        assert card["parent"]["sha256"] == parent_sha
        assert card["sha256"] == sha256_file(path) and card["size_bytes"] == path.stat().st_size
        assert card["class_names"] == read_card(tiny_onnx)["class_names"]
        assert card["input_spec"]["size"] == 32
        # Metrics measured on the val split, with deltas against the FP32 parent.
        val = card["metrics"]["val"]
        assert val["split"] == "val" and 0 <= val["accuracy"] <= 1 and val["n"] > 0
        assert card["metrics"]["delta_vs_parent_pts"]["accuracy"] == pytest.approx(
            100 * (val["accuracy"] - result["parent"]["metrics"]["accuracy"]), abs=0.01)
        assert card["metrics"]["latency_b1_quick"]["label"] == "quick"
        # The ONNX file embeds the same card (without the metrics measured afterwards).
        emb = onnx_card_from_proto(load_onnx(path, load_weights=False))
        assert emb["method"] == card["method"] and emb["parent"] == card["parent"]
    static = read_card(out / "tiny.int8.onnx")
    assert static["quantization"]["calib_method"] == "avg-minmax"
    assert static["quantization"]["per_channel"] is True
    assert static["calibration"]["n"] == 32 and static["calibration"]["split"] == "train"
    assert static["calibration"]["from"] == "lineage"
    assert read_card(out / "tiny.int8-trt.onnx")["quantization"]["target"] == "tensorrt"
    assert read_card(out / "tiny.int8-dynamic.onnx")["quantization"]["op_types"] == ["MatMul", "Gemm"]
    assert read_card(out / "tiny.fp16.onnx")["fp16"]["keep_io_types"] is True


def test_full_run_table_and_json(full_run, tiny_onnx):
    out, result, output = full_run
    rows = result["rows"]
    assert [r["method"] for r in rows] == ["parent", "int8-dynamic", "int8-static-trt", "int8-static", "fp16"]
    parent = rows[0]
    assert parent["d_accuracy_pts"] == 0 and parent["speedup"] == 1.0
    # Same weights at every precision; INT8 files are smaller.
    assert len({r["params"] for r in rows}) == 1 and parent["params"] == param_count(load_onnx(tiny_onnx))
    by = {r["method"]: r for r in rows}
    assert by["int8-static"]["size_mb"] < parent["size_mb"] / 2.5
    assert by["fp16"]["size_mb"] < parent["size_mb"] * 0.6
    for r in rows:
        assert r["accuracy_pct"] is not None and r["latency_b1_ms"] > 0
        assert r["d_macro_f1_pts"] == pytest.approx(r["macro_f1_pct"] - parent["macro_f1_pct"], abs=0.02)
    assert "fp32 parent" in output and "int8 static" in output and "ΔF1" in output
    assert (out / "rows.csv").read_text().splitlines()[0].startswith("label,artifact")
    static = next(a for a in result["artifacts"] if a["method"] == "int8-static")
    assert static["graph"]["float_compute_nodes"] == []
    assert static["ort_executed_ops"]["QLinearConv"] == 4


def test_existing_outputs_need_force(full_run, tiny_onnx):
    out, _, _ = full_run
    before = sha256_file(out / "tiny.fp16.onnx")
    code, output = fopt("optimize", tiny_onnx, "--fp16", "--out", out, "--no-eval", "--no-latency")
    assert code == 2 and "exists (pass --force" in output
    assert sha256_file(out / "tiny.fp16.onnx") == before


def test_lineage_dataset_through_checkpoint(tiny_onnx, synth_dataset):
    assert lineage_dataset(own_card(tiny_onnx)) == Path(synth_dataset)


def test_onnx_card_embedded_when_sidecar_is_gone(model_copy, tiny_onnx):
    path = model_copy(tiny_onnx)
    path.with_name(path.name + ".json").unlink()
    assert own_card(path)["format"] == "onnx"


def test_registry_names_and_output_paths(tmp_path):
    assert set(METHODS.names()) == {"int8-dynamic", "int8-static", "int8-static-trt", "int8-mixed", "fp16",
                                    "tensorrt", "openvino", "openvino-int8"}
    src = Path("m.onnx")
    assert output_path(METHODS.get("int8-static"), src, tmp_path) == tmp_path / "m.int8.onnx"
    assert output_path(METHODS.get("tensorrt"), Path("m.fp16.onnx"), tmp_path) == tmp_path / "m.fp16.engine"


@pytest.mark.parametrize("name", ["int8-dynamic", "fp16"])
def test_produce_leaves_nothing_on_failure(name, tiny_onnx, tmp_path, monkeypatch):
    method = METHODS.get(name)

    def broken(src, dst, **kw):
        Path(dst).write_bytes(b"half a model")
        raise RuntimeError("converter crashed\nsecond line")

    target = tmp_path / f"tiny{method.suffix}"
    with pytest.raises(OptimizeError, match=f"{name} failed on tiny.onnx: RuntimeError: converter crashed$"):
        produce(method.__class__(**{**method.__dict__, "func": broken}), tiny_onnx, target,
                read_card(tiny_onnx))
    assert list(tmp_path.iterdir()) == []


def test_produce_rejects_invalid_onnx_output(tiny_onnx, tmp_path):
    method = METHODS.get("fp16")

    def garbage(src, dst, **kw):
        Path(dst).write_bytes(b"\x08\x01garbage")
        return {}

    with pytest.raises(OptimizeError):
        produce(method.__class__(**{**method.__dict__, "func": garbage}), tiny_onnx,
                tmp_path / "t.fp16.onnx", read_card(tiny_onnx))
    assert list(tmp_path.iterdir()) == []


def test_fp16_graph_keeps_fp32_io_and_runs_on_cpu(model_copy, tiny_onnx):
    import onnxruntime as ort
    from onnx import TensorProto

    path = model_copy(tiny_onnx)
    optimize_onnx(path, OptimizeOptions(methods=("fp16",), evaluate=False, latency=False))
    fp16 = path.with_name("tiny.fp16.onnx")
    model = load_onnx(fp16)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    floats = [i for i in model.graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    assert floats and all(i.data_type == TensorProto.FLOAT16 for i in floats)
    assert graph_summary(model)["op_counts"]["Cast"] == 2  # FP32 -> FP16 in, FP16 -> FP32 out
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = ort.InferenceSession(str(fp16), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert got.dtype == np.float32 and np.allclose(got, ref, atol=2e-2, rtol=2e-2)


# ----------------------------------------------------------------------------- bad input

def _no_outputs(folder: Path, stem: str = "tiny") -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(stem + ".") and p.name not in
                (f"{stem}.onnx", f"{stem}.onnx.json")]


def test_non_onnx_file(tmp_path):
    f = tmp_path / "model.onnx"
    f.write_text("this is not a model")
    code, output = fopt("optimize", f, "--int8-dynamic")
    assert code == 2 and output.count("\n") == 1 and "not a readable ONNX model" in output


def test_truncated_onnx_file(model_copy, tiny_onnx):
    path = model_copy(tiny_onnx)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    code, output = fopt("optimize", path, "--int8-static")
    assert code == 2 and output.startswith("error: ") and output.count("\n") == 1
    assert _no_outputs(path.parent)


def test_missing_file(tmp_path):
    code, output = fopt("optimize", tmp_path / "nope.onnx", "--fp16")
    assert code == 2 and "no such file" in output


def test_already_quantized_input(full_run, model_copy):
    out, _, _ = full_run
    q = model_copy(out / "tiny.int8.onnx")
    for flag in ("--int8-static", "--int8-dynamic", "--fp16"):
        code, output = fopt("optimize", q, flag, "--no-eval")
        assert code == 2 and "already quantized" in output and output.count("\n") == 1
    f16 = model_copy(out / "tiny.fp16.onnx")
    code, output = fopt("optimize", f16, "--int8-static")
    assert code == 2 and "already FP16" in output


def test_calibration_too_small_and_empty_folder(model_copy, tiny_onnx, tmp_path):
    path = model_copy(tiny_onnx)
    code, output = fopt("optimize", path, "--int8-static", "--calib-size", "8")
    assert code == 2 and "at least 32" in output
    empty = tmp_path / "empty_calib"
    empty.mkdir()
    code, output = fopt("optimize", path, "--int8-static", "--int8-dynamic", "--calib-data", empty)
    assert code == 2 and "0 image(s)" in output and output.count("\n") == 1
    # Calibration is checked before any method runs: not even the dynamic model was written.
    assert _no_outputs(path.parent)


def test_no_calibration_data_anywhere(model_copy, silu_onnx, tmp_path):
    path = model_copy(silu_onnx)
    card = json.loads(path.with_name(path.name + ".json").read_text())
    card.pop("config")
    path.with_name(path.name + ".json").write_text(json.dumps(card))
    code, output = fopt("optimize", path, "--int8-static", "--no-eval")
    assert code == 2 and "--calib-data" in output


def test_tensorrt_without_gpu_is_one_line(model_copy, tiny_onnx):
    path = model_copy(tiny_onnx)
    code, output = fopt("optimize", path, "--tensorrt", "--fp16")
    assert code == 2 and output.count("\n") == 1
    assert "CUDA GPU" in output or "pip install fopt[gpu]" in output
    assert _no_outputs(path.parent)


def test_all_skips_tensorrt_with_a_note(model_copy, tiny_onnx):
    path = model_copy(tiny_onnx)
    result = optimize_onnx(path, OptimizeOptions(all_methods=True, calib_size=32, evaluate=False,
                                                 latency=False))
    made = ["int8-dynamic", "int8-static", "int8-mixed", "fp16"]   # --all includes the precision search
    if not any(n.startswith("skipping --openvino") for n in result["notes"]):
        made += ["openvino", "openvino-int8"]   # --all includes OpenVINO wherever it runs
    assert [a["method"] for a in result["artifacts"]] == made
    assert any(n.startswith("skipping --tensorrt") for n in result["notes"])


def test_no_method_is_a_usage_error(tiny_onnx):
    code, output = fopt("optimize", tiny_onnx)
    assert code == 2 and "no method chosen" in output


def test_onnx_without_card(model_copy, tiny_onnx):
    import onnx

    path = model_copy(tiny_onnx)
    path.with_name(path.name + ".json").unlink()
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, str(path))
    # a model fopt did not make: it never writes beside it unless asked
    with pytest.raises(UsageError, match="pass --out"):
        optimize_onnx(path, OptimizeOptions(methods=("fp16",)))
    out = path.parent / "out"
    result = optimize_onnx(path, OptimizeOptions(methods=("fp16",), out_dir=str(out), latency=False))
    card = read_card(out / "tiny.fp16.onnx")
    assert card["parent"]["sha256"] == sha256_file(path) and card["foreign"]["sha256"] == sha256_file(path)
    assert result["rows"][1]["d_accuracy_pts"] is None   # no --eval: not measured
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, "out"])


def test_output_exists_checked_before_work(model_copy, tiny_onnx):
    path = model_copy(tiny_onnx)
    path.with_name("tiny.fp16.onnx").write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        optimize_onnx(path, OptimizeOptions(methods=("int8-dynamic", "fp16"), evaluate=False))
    assert not path.with_name("tiny.int8-dynamic.onnx").exists()


def test_optimizes_what_fopt_export_writes(tiny_checkpoint, tmp_path):
    """The real export (card with the checkpoint as parent) feeds optimize; lineage finds the data."""
    from fopt.export.run import export_checkpoint

    onnx_path = Path(export_checkpoint(tiny_checkpoint, ("onnx",), tmp_path)[0].path)
    result = optimize_onnx(onnx_path, OptimizeOptions(methods=("int8-static",), calib_size=32,
                                                      latency=False, threads=1))
    assert result["dataset_from"] == "lineage"
    row = result["rows"][1]
    assert row["method"] == "int8-static" and row["accuracy_pct"] is not None
    assert read_card(onnx_path.with_name(onnx_path.stem + ".int8.onnx"))["calibration"]["from"] == "lineage"


def test_eval_dataset_with_other_classes_is_refused_before_writing(model_copy, tiny_onnx, tmp_path):
    from fopt.data.build import build_dataset
    from fopt.data.synth import synthesize

    other = tmp_path / "other"
    synthesize(tmp_path / "raw3", classes=3, per_class=12, size=32, seed=1)
    build_dataset(tmp_path / "raw3", other)
    path = model_copy(tiny_onnx)
    code, output = fopt("optimize", path, "--fp16", "--eval", other)
    assert code == 2 and "differ from the ones" in output
    assert _no_outputs(path.parent)
