"""Every registry model exports to TorchScript and ONNX and passes parity (small size by default).

Checkpoints get real BatchNorm statistics (export_testutil) so logits are O(1) and the parity
tolerance actually constrains the export. The fast set covers each architecture family (plain
CNN, residual, inverted residual + SE + hardswish, MBConv + SE + SiLU); the slow set
(FOPT_SLOW=1) adds the heavy and the structurally duplicate models, and 224 px for all.
"""

from __future__ import annotations

import pytest
from export_testutil import logit_scale, make_checkpoint, real_batch

from fopt.export.validate import compare_outputs
from fopt.models import MODELS

FAST = ["tiny", "resnet18", "mobilenet_v3_small", "efficientnet_b0"]
SLOW = ["mobilenet_v3_large", "resnet50", "vgg16", "efficientnet_b7"]


def test_every_registry_model_is_covered():
    assert sorted(FAST + SLOW) == sorted(MODELS.names())


def _export_and_check(name: str, size: int, dataset, folder) -> None:
    import onnx

    from fopt.artifacts import read_card
    from fopt.export.run import export_checkpoint
    from fopt.runtime import open_runner

    ckpt = make_checkpoint(folder, name, size, dataset)
    assert 0.5 < logit_scale(ckpt, dataset, size) < 50  # O(1): parity below is not trivial
    results = export_checkpoint(ckpt, out_dir=folder / "out")
    assert sorted(r.format for r in results) == ["onnx", "torchscript"]
    for r in results:
        assert r.passed, r.parity
        assert r.parity["batch_sizes"] == [1, 8]
        assert r.parity["inputs_kind"] == "real"
        assert r.path.stat().st_size > 0 and r.path.stat().st_size == r.size_bytes
        card = read_card(r.path)
        assert card["format"] == r.format and card["input_spec"]["size"] == size
        assert card["model"]["name"] == name
    onnx_path = next(r.path for r in results if r.format == "onnx")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic (dynamic) batch axis

    # a batch size parity did not use: every runner agrees with the checkpoint (export's own rule)
    x = real_batch(dataset, size, n=3)
    with open_runner(ckpt) as runner:
        ref = runner.infer(x)
    for r in results:
        with open_runner(r.path) as runner:
            cmp = compare_outputs(runner.infer(x), ref, atol=1e-4, rtol=1e-3, label=r.format)
        assert cmp.within_tolerance and cmp.top1_agreement == 1.0, (r.format, cmp)


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_model_exports_with_parity_at_32px(name, synth_dataset, tmp_path):
    _export_and_check(name, 32, synth_dataset, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS.names()))
def test_model_exports_with_parity_at_224px(name, synth_dataset, tmp_path):
    _export_and_check(name, 224, synth_dataset, tmp_path)
