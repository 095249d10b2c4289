"""`analyze()` and `fopt analyze`: targets, JSON contract, the EfficientNet-B0 figures, CLI."""

from __future__ import annotations

import csv
import json

import pytest
from analyze_helpers import GraphBuilder, save_onnx
from click.testing import CliRunner

from fopt.analyze.run import analyze
from fopt.cli import cli
from fopt.errors import InputError, UsageError

JSON_KEYS = {"params", "macs", "flops", "weight_bytes", "activation_bytes", "status", "receptive_field",
             "estimate_ms", "layers"}
LAYER_KEYS = {"op_type", "name", "output_shape", "params", "macs", "flops", "bytes_read", "bytes_written",
              "intensity"}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A fopt checkpoint of `tiny` (6 classes, 32 px), written without the data fixtures."""
    import torch

    from fopt.artifacts import InputSpec
    from fopt.checkpoint import save_checkpoint
    from fopt.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny", 6)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, model_name="tiny", model_kwargs={"num_classes": 6},
                    class_names=[f"c{i}" for i in range(6)], input_spec=InputSpec(size=32))
    return path


def test_json_contract_and_serialisable():
    d = analyze("tiny", img_size=32).to_dict()
    assert JSON_KEYS <= set(d)
    assert {"size", "stride", "padding", "global", "conv_path_size"} <= set(d["receptive_field"])
    assert set(d["estimate_ms"]) == {"naive", "roofline"}
    assert all(LAYER_KEYS <= set(row) for row in d["layers"])
    assert d["status"] == "complete" and d["precision"] == "fp32" and d["batch"] == 1
    json.dumps(d)   # plain types only


@pytest.mark.parametrize("name", ["tiny", "mobilenet_v3_small", "resnet18", "efficientnet_b0"])
def test_light_registry_models_analyze_completely(name):
    r = analyze(name, img_size=64, num_classes=22)
    assert r.status == "complete" and r.rf.stride in (16, 32)
    assert 0 < r.estimate.naive_ms < r.estimate.roofline_ms
    assert r.counts.peak_activation_bytes <= r.activation_bytes


def test_num_classes_changes_only_the_head():
    a, b = analyze("resnet18", img_size=64), analyze("resnet18", img_size=64, num_classes=22)
    assert a.params - b.params == (1000 - 22) * (512 + 1)
    assert a.macs - b.macs == (1000 - 22) * 512


def test_efficientnet_b0_at_256_reproduces_the_corrected_seed_figures():
    """The seed study's "0.53 GFLOPs" were MACs: ~0.5 G MACs = ~1.0 G FLOPs of conv/linear work.

    Conv/Gemm MACs are 0.503 G (fvcore gives the same); ptflops' total, which adds BN, activations,
    pooling and biases as MACs, is the 0.535 G the study printed. All FLOPs, element-wise included,
    are 1.05 G. The naive T4 figure divides by the FP32 peak (8.1 TFLOP/s), not the FP64 rate.
    """
    r = analyze("efficientnet_b0", img_size=256, device_spec="t4")
    conv_gemm_macs = sum(x.macs for x in r.layers if x.macs)
    assert 0.49e9 < conv_gemm_macs < 0.54e9
    assert r.flops == pytest.approx(1.06e9, rel=0.03)
    assert 2 * conv_gemm_macs == pytest.approx(1.0e9, rel=0.03)
    assert r.estimate.naive_ms == pytest.approx(1e3 * r.flops / 8.1e12)
    assert r.estimate.roofline_ms > r.estimate.naive_ms
    assert r.rf.global_ is True and r.rf.conv_path_size == _efficientnet_b0_conv_path_rf() == 851


def _efficientnet_b0_conv_path_rf() -> int:
    """The closed form r = 1 + sum_l (k_l - 1) * prod_{m<l} s_m over the chain of convolutions.

    EfficientNet-B0 is a chain (residuals add a shorter path, squeeze-and-excitation is global and
    not on the conv path); only the stem and the depthwise convs have k > 1. From the paper's table:
    stem 3x3/2; stages (k, s, repeats) = (3,1,1) (3,2,2) (5,2,2) (3,2,3) (5,1,3) (5,2,4) (3,1,1), the
    stride on each stage's first block. Jumps 1, 2, 2, 4, 8, 16, 16, 32, 32 give
    1 + 2*1 + 2*2 + 2*(2+4) + 4*(4+8) + 2*(8+16+16) + 4*3*16 + 4*(16+3*32) + 2*32 = 851.
    Computed here from torchvision's modules in definition order (1x1 convs add nothing).
    """
    import torch
    from torchvision.models import efficientnet_b0

    rf, jump = 1, 1
    for m in efficientnet_b0().modules():
        if isinstance(m, torch.nn.Conv2d):
            rf += (m.kernel_size[0] - 1) * m.dilation[0] * jump
            jump *= m.stride[0]
    return rf


def test_checkpoint_target_equals_its_module_and_its_onnx_export(tiny_ckpt, tmp_path):
    import onnx

    from fopt.checkpoint import load_checkpoint
    from fopt.export.onnx import model_to_onnx
    from fopt.models import count_params

    r = analyze(str(tiny_ckpt))
    ckpt = load_checkpoint(tiny_ckpt)
    assert r.source.kind == "checkpoint" and r.counts.input_shape == (1, 3, 32, 32)
    assert r.params == count_params(ckpt.model)
    onnx_path = tmp_path / "tiny.onnx"
    onnx.save(model_to_onnx(ckpt.model, 32), str(onnx_path))
    f = analyze(str(onnx_path))
    assert f.source.kind == "onnx"
    assert (f.macs, f.flops, f.weight_bytes, f.estimate.roofline_ms) == pytest.approx(
        (r.macs, r.flops, r.weight_bytes, r.estimate.roofline_ms))
    with pytest.raises(UsageError, match="6 classes"):
        analyze(str(tiny_ckpt), num_classes=10)
    with pytest.raises(UsageError, match="registry model names only"):
        analyze(str(onnx_path), num_classes=10)


def test_bad_targets_and_options(tmp_path):
    with pytest.raises(UsageError, match="Did you mean 'resnet18'"):
        analyze("resnet81")
    with pytest.raises(InputError, match="no such file"):
        analyze(str(tmp_path / "missing.onnx"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(InputError):
        analyze(str(bad))
    for kwargs in ({"batch": 0}, {"img_size": -1}, {"precision": "fp64"}, {"num_classes": 1}):
        with pytest.raises(UsageError):
            analyze("tiny", **kwargs)


def test_torchscript_from_elsewhere_is_counted_at_the_size_given(tmp_path):
    import torch

    from fopt.models import build_model

    path = tmp_path / "m.pt"
    torch.jit.trace(build_model("tiny", 6).eval(), torch.zeros(1, 3, 32, 32)).save(str(path))
    with pytest.raises(UsageError, match="--img-size"):   # a TorchScript file declares no size
        analyze(str(path))
    counted = analyze(str(path), img_size=32)
    assert counted.source.kind == "torchscript"
    assert counted.macs == analyze("tiny", img_size=32, num_classes=6).macs > 0


def test_precision_what_if_on_a_float_graph():
    fp32, int8 = analyze("tiny", img_size=32), analyze("tiny", img_size=32, precision="int8")
    assert int8.macs == fp32.macs and int8.precision == "int8"
    assert int8.weight_bytes < fp32.weight_bytes / 3
    assert int8.estimate.naive_ms == pytest.approx(fp32.estimate.naive_ms * 8.1 / 130)


# ----------------------------------------------------------------------------- CLI

def invoke(*args):
    return CliRunner().invoke(cli, ["analyze", *args])


def test_cli_summary_files_and_plot(tmp_path):
    j, c, p = tmp_path / "a.json", tmp_path / "a.csv", tmp_path / "roof.png"
    res = invoke("tiny", "--img-size", "32", "--per-layer", "--top", "3", "--json", str(j),
                 "--csv", str(c), "--plot", str(p), "--device-spec", "a100")
    assert res.exit_code == 0, res.output
    assert "receptive field" in res.output and "roofline a100" in res.output
    assert "top 3 layers by estimated time" in res.output and "top 3 layers by MACs" in res.output
    d = json.loads(j.read_text())
    assert JSON_KEYS <= set(d) and d["device"]["name"] == "a100"
    rows = list(csv.DictReader(c.open()))
    assert len(rows) == len(d["layers"]) and {"name", "macs", "bytes_read"} <= set(rows[0])
    assert p.read_bytes()[:4] == b"\x89PNG"


def test_cli_list_devices():
    res = invoke("--list-devices")
    assert res.exit_code == 0
    for name in ("t4", "l4", "a10", "a100", "h100", "h200"):
        assert name in res.output


def test_cli_errors_are_one_line(monkeypatch, tmp_path):
    res = invoke()
    assert res.exit_code == 2 and "missing TARGET" in res.output
    res = invoke("nosuchmodel")
    assert res.exit_code == 2 and res.output.count("error:") == 1

    from fopt.bench.costmodel import cache

    monkeypatch.setattr(cache, "load_machine_calibration", lambda *a, **k: None)
    res = invoke("tiny", "--device-spec", "cpu")
    assert res.exit_code == 2 and "no CPU calibration yet: run `fopt bench --calibrate`" in res.output

    g = GraphBuilder(("batch", 4, 8, 8))
    g.op("FooBar", ["x"], domain="my.domain")
    path = save_onnx(g.build(), tmp_path / "custom.onnx")
    res = invoke(path)
    assert res.exit_code == 0 and "partial" in res.output and "FooBar x1" in res.output
    res = invoke(path, "--strict")
    assert res.exit_code == 2 and "FooBar x1" in res.output
