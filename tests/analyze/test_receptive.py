"""Receptive field: closed forms for small stacks, published values, max over paths, global context."""

from __future__ import annotations

import numpy as np
import pytest
from analyze_helpers import GraphBuilder, export_preserving_bn

from fopt.analyze.counting import count_graph
from fopt.analyze.graph import prepare_graph
from fopt.analyze.receptive import RF, receptive_field


def rf_of(model, **kw):
    c = count_graph(prepare_graph(model, **kw))
    return receptive_field(c.index, c.layers), c


def stack(layers, size=64, channels=4):
    """Build a chain: ("conv", k, stride, pad, dilation) or ("maxpool", k, stride, pad)."""
    g = GraphBuilder(("batch", channels, size, size))
    for kind, k, s, p, *rest in layers:
        if kind == "conv":
            g.conv(channels, k, stride=s, pads=[p] * 4, dilation=rest[0] if rest else 1)
        else:
            g.op("MaxPool" if kind == "maxpool" else "AveragePool", [g.current], kernel_shape=[k, k],
                 strides=[s, s], pads=[p] * 4)
    return g.build()


def closed_form(layers):
    """r, j, P by the textbook recursion, written out independently of the library."""
    r, j, p_eff = 1, 1, 0
    for _, k, s, p, *rest in layers:
        d = rest[0] if rest else 1
        r += d * (k - 1) * j
        p_eff += p * j
        j *= s
    return r, j, p_eff


CASES = [
    ("three 3x3 stride 1 -> 7", [("conv", 3, 1, 1)] * 3, (7, 1, 3)),
    ("3x3 s2 then 3x3", [("conv", 3, 2, 1), ("conv", 3, 1, 1)], (3 + 2 * 2, 2, 1 + 2)),
    ("dilated 3x3 d2 -> 5", [("conv", 3, 1, 2, 2)], (5, 1, 2)),
    ("5x5 then 2x2 pool s2", [("conv", 5, 1, 2), ("maxpool", 2, 2, 0)], (6, 2, 2)),
    ("7x7 s2 + 3x3 pool s2 (ResNet stem)", [("conv", 7, 2, 3), ("maxpool", 3, 2, 1)], (11, 4, 5)),
    ("unpadded 3x3 x2", [("conv", 3, 1, 0)] * 2, (5, 1, 0)),
    ("avg pool 3x3 s1", [("avgpool", 3, 1, 1)], (3, 1, 1)),
]


@pytest.mark.parametrize("name,layers,expected", CASES, ids=[c[0] for c in CASES])
def test_stacks_match_closed_form(name, layers, expected):
    assert closed_form(layers) == expected   # the table itself is arithmetic, checked once more
    rf, _ = rf_of(stack(layers))
    assert (rf.size, rf.stride, rf.padding, rf.global_) == (*expected, False)
    assert rf.conv_path_size == expected[0]


def test_asymmetric_padding_and_auto_pad():
    g = GraphBuilder(("batch", 2, 16, 16))
    g.conv(2, 3, pads=[0, 2, 1, 0])            # top 0, left 2, bottom 1, right 0
    rf, _ = rf_of(g.build())
    assert rf.size == 3 and rf.padding == [0, 2]   # only the begin side moves the first output's field

    for mode, begin in [("SAME_UPPER", 0), ("SAME_LOWER", 1)]:
        # in 8, stride 2, k 3: out 4, total pad (4-1)*2+3-8 = 1 -> begin 0 (upper) / 1 (lower)
        g = GraphBuilder(("batch", 2, 8, 8))
        g.conv(2, 3, stride=2, auto_pad=mode)
        rf, _ = rf_of(g.build())
        assert (rf.size, rf.stride, rf.padding) == (3, 2, begin), mode


def test_non_square_kernel_reports_per_axis():
    g = GraphBuilder(("batch", 2, 16, 16))
    g.conv(2, (1, 5), pads=[0, 2, 0, 2])
    g.conv(2, (3, 1), pads=[1, 0, 1, 0])
    rf, _ = rf_of(g.build())
    assert rf.size == [3, 5] and rf.padding == [1, 2]


def test_residual_takes_the_maximum_over_paths():
    g = GraphBuilder(("batch", 4, 32, 32))
    a = g.conv(4, 3)
    b = g.conv(4, 3)
    g.op("Add", ["x", b])                      # identity shortcut (r=1) + two 3x3 (r=5)
    g.conv(4, 3)
    rf, _ = rf_of(g.build())
    assert rf.size == 5 + 2
    assert a

    # two branches with different kernels joined by Concat: the wider one wins
    g = GraphBuilder(("batch", 4, 32, 32))
    left = g.conv(4, 5, src="x")
    right = g.conv(4, 1, src="x", cin=4)
    g.op("Concat", [left, right], axis=1)
    rf, _ = rf_of(g.build())
    assert (rf.size, rf.padding) == (5, 2)


def test_union_of_off_centre_fields():
    fields = [RF((3,), (1,), (0,)), RF((3,), (1,), (2,))]   # [0, 2] and [-2, 0] in input pixels
    u = RF.union(fields)
    assert (u.size, u.padding) == ((5,), (2,))                # [-2, 2]


def test_squeeze_excitation_makes_the_body_global():
    g = GraphBuilder(("batch", 8, 16, 16))
    body = g.conv(8, 3)
    pooled = g.op("GlobalAveragePool", [body])
    gate = g.op("Sigmoid", [g.conv(8, 1, src=pooled, pads=[0, 0, 0, 0])])
    g.op("Mul", [body, gate])
    feat = g.conv(8, 3)
    head = g.op("GlobalAveragePool", [feat])
    g.op("Flatten", [head])
    rf, c = rf_of(g.build())
    assert rf.global_ is True and rf.size is None
    assert rf.conv_path_size == 5 and rf.stride == 1      # the conv path beside the global context
    assert rf.feature_map == feat
    per_layer = {x.name: x.rf for x in c.layers}
    assert any(v and v["global"] for v in per_layer.values())
    first_conv = c.layers[0]
    assert first_conv.rf == {"size": 3, "stride": 1, "padding": 1, "global": False}


def test_attention_matmul_is_global():
    g = GraphBuilder(("batch", 4, 8, 8))
    a = g.conv(4, 3)
    q = g.op("Reshape", [a, g.init(np.array([1, 4, 64], dtype=np.int64), "s")])
    kt = g.op("Transpose", [q], perm=[0, 2, 1])
    attn = g.op("MatMul", [kt, q])                          # 64x64 position mixing
    rf_graph = g.build([attn])
    c = count_graph(prepare_graph(rf_graph))
    layer = next(x for x in c.layers if x.op_type == "MatMul")
    receptive_field(c.index, c.layers)
    assert layer.rf["global"] is True


def test_vgg16_features_published_value():
    """VGG-16 through the last pooling layer: RF 212, stride 32, padding 90 (Araujo et al. 2019)."""
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["D"])        # vgg16().features without building the 120M-param head
    rf, _ = rf_of(export_preserving_bn(features, 64))  # RF does not depend on the input size
    assert (rf.size, rf.stride, rf.padding, rf.global_) == (212, 32, 90, False)


def _resnet_rf(blocks_per_stage, convs_3x3_per_block):
    """torchvision ResNets (v1.5): stem 7x7/2 + pool 3x3/2 gives r 11, jump 4; every 3x3 conv adds
    2 x jump, and the first 3x3 of stages 2-4 carries the stride 2 (so it runs at the old jump)."""
    r, j = 11, 4
    for stage, blocks in enumerate(blocks_per_stage):
        for conv in range(blocks * convs_3x3_per_block):
            r += 2 * j
            if conv == 0 and stage > 0:
                j *= 2
    return r, j


@pytest.mark.parametrize("name,blocks,convs,expected", [
    ("resnet18", [2, 2, 2, 2], 2, 435),
    # 427 for v1.5; the original v1 (stride in the first 1x1) gives the 483 in Araujo et al.
    ("resnet50", [3, 4, 6, 3], 1, 427),
])
def test_resnet_closed_form(name, blocks, convs, expected):
    from fopt.models import build_model

    r, j = _resnet_rf(blocks, convs)
    assert r == expected
    rf, _ = rf_of(export_preserving_bn(build_model(name, 10), 64))
    assert (rf.size, rf.stride, rf.padding, rf.global_) == (r, j, (r - 1) // 2, False)


def test_efficientnet_b0_is_global_with_a_conv_path():
    from fopt.models import build_model

    rf, _ = rf_of(export_preserving_bn(build_model("efficientnet_b0", 10), 64))
    assert rf.global_ is True and rf.size is None
    assert isinstance(rf.conv_path_size, int) and rf.conv_path_size > 224 and rf.stride == 32
