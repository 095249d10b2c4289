"""Output noise from libraries: FP16 clamping warnings become one count, and a static INT8 file
has no dead initializers (onnxruntime would warn "Removing initializer ..." on every load)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest


def _onnx_with_extreme_weights(path):
    import onnx
    import torch

    from fopt.export.onnx import model_to_onnx

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))
    with torch.no_grad():
        w = net[0].weight
        w[0, 0, 0, 0], w[0, 0, 0, 1], w[1, 0, 0, 0] = 1e-9, -3e-9, 2e4   # 2 tiny, 1 huge
        net[2].weight[0, 0] = -5e4                                       # another huge one
    onnx.save(model_to_onnx(net.eval(), 8), str(path))
    return path


def test_fp16_clamping_is_one_counted_note_not_dozens_of_warnings(tmp_path):
    from fopt.optimize.fp16 import onnx_to_fp16

    src = _onnx_with_extreme_weights(tmp_path / "m.onnx")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = onnx_to_fp16(src, tmp_path / "m.fp16.onnx")
    assert not [w for w in caught if "truncated" in str(w.message)], [str(w.message) for w in caught]
    assert rec["clamped_values"] == 4 and rec["clamped_tensors"] == 2
    assert rec["note"].startswith("4 weight value(s) in 2 tensor(s) outside the FP16 range")
    assert "\n" not in rec["note"]


def test_fp16_without_extreme_weights_has_no_note(tmp_path):
    import onnx
    import torch

    from fopt.export.onnx import model_to_onnx
    from fopt.optimize.fp16 import onnx_to_fp16

    torch.manual_seed(0)
    onnx.save(model_to_onnx(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten()), 8),
              str(tmp_path / "m.onnx"))
    rec = onnx_to_fp16(tmp_path / "m.onnx", tmp_path / "o.onnx")
    assert rec["clamped_values"] == 0 and "note" not in rec


@pytest.fixture(scope="module")
def tiny_fp32_onnx(tiny_checkpoint, tmp_path_factory):
    import onnx

    from fopt.checkpoint import load_checkpoint
    from fopt.export.onnx import model_to_onnx

    ck = load_checkpoint(tiny_checkpoint)
    path = tmp_path_factory.mktemp("quiet") / "tiny.onnx"
    onnx.save(model_to_onnx(ck.model.eval(), ck.input_spec.size), str(path))
    return path, ck.input_spec


@pytest.mark.parametrize("target", ["ort", "tensorrt"], ids=["ort-flavour", "trt-flavour"])
def test_static_int8_file_has_no_unused_initializer(tiny_fp32_onnx, synth_dataset, tmp_path, target):
    import onnx

    from fopt.optimize.calib import MIN_CALIB, load_calibration_set
    from fopt.optimize.quantize import onnx_to_int8_static

    src, spec = tiny_fp32_onnx
    calib = load_calibration_set(synth_dataset, spec, n=MIN_CALIB)
    out = tmp_path / "tiny.int8.onnx"
    rec = onnx_to_int8_static(src, out, calibration=calib, target=target)
    model = onnx.load(str(out))
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    unused = [i.name for i in model.graph.initializer if i.name not in used]
    assert unused == [], unused
    assert rec["graph_rewrites"]["fp32_outputs"] == 1 and rec["unused_initializers_removed"] >= 1
    import onnxruntime as ort

    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.zeros((1, 3, spec.size, spec.size), np.float32)
    assert s.run(None, {s.get_inputs()[0].name: x})[0].shape[0] == 1


def test_drop_unused_initializers_keeps_what_subgraphs_and_outputs_read():
    from onnx import TensorProto, helper, numpy_helper

    from fopt.optimize.quantize import drop_unused_initializers

    init = [numpy_helper.from_array(np.ones(2, np.float32), n) for n in ("a", "dead", "sub", "out")]
    then = helper.make_graph([helper.make_node("Identity", ["sub"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    g = helper.make_graph(
        [helper.make_node("Add", ["x", "a"], ["y"]),
         helper.make_node("If", ["c"], ["z"], then_branch=then, else_branch=then)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
              helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])], initializer=init)
    model = helper.make_model(g)
    assert drop_unused_initializers(model) == 1
    assert sorted(i.name for i in model.graph.initializer) == ["a", "out", "sub"]
