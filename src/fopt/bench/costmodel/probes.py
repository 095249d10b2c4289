"""Micro-benchmarks for `fopt bench --calibrate`: small, synthetic, never a registry model.

- GEMM rate per precision: ONNX Runtime MatMul (FP32) and MatMulInteger (u8 x s8, INT8), torch.mm.
- Memory bandwidth: a numpy copy of a cache-sized and of a DRAM-sized buffer (read + write counted).
- Dispatch overhead: chains of N element-wise nodes on real-sized tensors (ORT, torch). Tiny
  tensors skip the thread pool and make the per-node cost look about 20x too small, so the
  chains run at several sizes and the overhead is the intercept of time per node vs size; and
  what ONNX Runtime's profiler adds per node (`profiler_delta_probe`), shown beside per-layer times.
- Kernel classes: `ProbeNet`, one synthetic network with many independent branches - dense,
  stem, pointwise, depthwise (a grid of spatial sizes, channel counts aligned and not aligned to
  16, k3/k5, stride 1/2), grouped convolutions, squeeze-and-excitation blocks, SiLU/Hardswish/ReLU
  activations, residual adds, pooling and classifier GEMMs at the sizes CNN classifiers use at
  224 px and, `SMALL_BRANCHES`, at 64 px (convolutions on 2x2 to 32x32 pixels, where fixed
  per-call costs dominate); shape-keeping blocks are stacked `REPEAT` deep. It is exported to
  ONNX (and quantized to QDQ INT8 the way `fopt optimize` does);
  `fopt.bench.costmodel.calibrate` times each branch alone.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fopt.bench.measure.profile import parse_ort_profile
from fopt.optimize.quantize import fuse_silu, preprocess
from fopt.runtime.onnxrt import ort_session
from fopt.runtime.timing import StopRule, WallTimer, measure, percentile

# (kind, cin, cout, size, kernel, stride, groups) - sizes are the input's H = W.
REPEAT = 3   # shape-keeping conv blocks are stacked this deep (see `_branch`)
BranchSpec = tuple[str, int, int, int, int, int, int]

FULL_BRANCHES: list[BranchSpec] = [
    # dense 3x3 (C^2 H^2 constant ~ resnet layers), with and without a residual add
    ("conv", 32, 32, 112, 3, 1, 1), ("conv", 64, 64, 56, 3, 1, 1), ("res", 128, 128, 28, 3, 1, 1),
    ("conv", 256, 256, 14, 3, 1, 1), ("res", 512, 512, 7, 3, 1, 1), ("conv", 16, 24, 56, 3, 1, 1),
    # dense 3x3 stride-2 downsampling, channels doubling as the size halves (plain CNNs, ResNets):
    # a stride-2 convolution reads 4x the pixels it writes and runs well below the stride-1 rate
    ("conv", 16, 32, 112, 3, 2, 1), ("conv", 32, 64, 56, 3, 2, 1), ("conv", 64, 128, 56, 3, 2, 1),
    ("conv", 64, 128, 28, 3, 2, 1), ("conv", 128, 256, 28, 3, 2, 1), ("conv", 256, 512, 14, 3, 2, 1),
    # stems: RGB input, stride 2, 16 to 64 output channels
    ("conv", 3, 16, 224, 3, 2, 1), ("conv_silu", 3, 32, 224, 3, 2, 1), ("conv", 3, 64, 224, 7, 2, 1),
    ("conv_hs", 3, 16, 112, 3, 2, 1),
    # pointwise expansions / projections (mobile nets, resnet50 bottlenecks, heads)
    ("conv", 16, 96, 112, 1, 1, 1), ("conv_silu", 24, 144, 56, 1, 1, 1), ("conv", 144, 24, 56, 1, 1, 1),
    ("conv", 40, 240, 28, 1, 1, 1), ("conv_hs", 80, 480, 14, 1, 1, 1), ("conv_silu", 192, 1152, 7, 1, 1, 1),
    ("conv", 64, 256, 56, 1, 1, 1), ("conv", 256, 64, 56, 1, 1, 1), ("conv", 1024, 256, 14, 1, 1, 1),
    ("conv", 320, 1280, 7, 1, 1, 1), ("conv", 16, 16, 56, 1, 1, 1),
    # ... with channel counts that are multiples of 8 but not of 16 (vector remainders)
    ("conv", 24, 72, 56, 1, 1, 1), ("conv_hs", 120, 40, 28, 1, 1, 1), ("conv", 40, 120, 28, 1, 1, 1),
    ("conv_hs", 184, 80, 14, 1, 1, 1), ("conv", 88, 472, 14, 1, 1, 1), ("conv", 952, 160, 7, 1, 1, 1),
    # depthwise: see DEPTHWISE_GRID below
    # grouped (8 and 16 channels per group)
    ("conv", 128, 128, 28, 3, 1, 16), ("conv", 256, 256, 14, 3, 1, 16),
    # squeeze-and-excitation: sigmoid (efficientnet) and hardsigmoid (mobilenet_v3) gates
    ("se_sigmoid", 96, 4, 56, 1, 1, 1), ("se_sigmoid", 240, 10, 28, 1, 1, 1),
    ("se_sigmoid", 672, 28, 14, 1, 1, 1), ("se_sigmoid", 1152, 48, 7, 1, 1, 1),
    ("se_hard", 16, 8, 56, 1, 1, 1), ("se_hard", 120, 32, 28, 1, 1, 1), ("se_hard", 576, 144, 7, 1, 1, 1),
    # activations and residual adds on their own
    ("silu", 32, 32, 112, 1, 1, 1), ("silu", 144, 144, 56, 1, 1, 1), ("silu", 672, 672, 14, 1, 1, 1),
    ("silu", 1280, 1280, 7, 1, 1, 1),
    ("hswish", 16, 16, 112, 1, 1, 1), ("hswish", 240, 240, 28, 1, 1, 1), ("hswish", 960, 960, 7, 1, 1, 1),
    ("add", 24, 24, 56, 1, 1, 1), ("add", 256, 256, 56, 1, 1, 1), ("add", 112, 112, 14, 1, 1, 1),
    # max pooling (chains of `REPEAT`, see `_branch`) at three sizes: a resnet stem's 3x3, a deeper
    # stage's, VGG's 2x2. Priced from one single pool, ONNX Runtime's pools cost nothing
    # (squeezenet's three took about 0.3 ms of 4-5 ms, profiled).
    ("maxpool", 64, 64, 112, 3, 2, 1), ("maxpool", 128, 128, 56, 3, 2, 1), ("maxpool", 256, 256, 28, 2, 2, 1),
    # classifier heads (input is the pooled vector)
    ("linear", 1280, 22, 1, 1, 1, 1), ("linear", 576, 1024, 1, 1, 1, 1), ("linear", 2048, 1000, 1, 1, 1, 1),
]



def _depthwise_grid() -> list[BranchSpec]:
    """Depthwise probes on a regular grid: at each spatial size a channel count that is a multiple
    of 16 and one that is 8 less (both multiples of 8, as mobile nets round them), 3x3 stride 1
    for both, 5x5 for the second, and a 3x3 stride-2 downsampling for the first above 14 px."""
    base = {112: 32, 56: 96, 28: 192, 14: 480, 7: 960}
    out: list[BranchSpec] = []
    for h, c in base.items():
        odd = c - 8
        out += [("conv", c, c, h, 3, 1, c), ("conv_hs", odd, odd, h, 3, 1, odd), ("conv_silu", odd, odd, h, 5, 1, odd)]
        if h > 14:
            out.append(("conv", c, c, h, 3, 2, c))
    return out


FULL_BRANCHES += _depthwise_grid()

# Small inputs (the demo trains and ships at 64 px): a layer at 2x2-16x16 output pixels runs far
# below the rate of the same layer at 224 px sizes (fixed per-call costs, GEMM tiles of a few
# rows); priced from the nearest 224 px probe layers, resnet18 at 64 px came out 35-60% low in
# eager and ONNX Runtime FP32. These put probe layers at the sizes a 64 px input gives each stage
# of a CNN, for each convolution class. `calibrate` keeps them out of the linear class fits.
SMALL_BRANCHES: list[BranchSpec] = [
    ("conv", 3, 64, 64, 7, 2, 1), ("conv_hs", 3, 16, 64, 3, 2, 1), ("conv", 64, 64, 16, 3, 1, 1), ("res", 128, 128, 8, 3, 1, 1), ("conv", 256, 256, 4, 3, 1, 1),
    ("res", 512, 512, 2, 3, 1, 1),
    ("conv", 64, 128, 16, 3, 2, 1), ("conv", 128, 256, 8, 3, 2, 1), ("conv", 256, 512, 4, 3, 2, 1),
    ("conv", 128, 256, 8, 1, 2, 1), ("conv", 96, 24, 8, 1, 1, 1), ("conv", 576, 160, 2, 1, 1, 1),
    ("conv_hs", 96, 96, 8, 3, 1, 96), ("conv", 576, 576, 2, 5, 1, 576),
]
FULL_BRANCHES += SMALL_BRANCHES

# A handful of branches for tests and `quick` calibration: every class, small sizes.
QUICK_BRANCHES: list[BranchSpec] = [
    ("conv", 16, 16, 28, 3, 1, 1), ("res", 32, 32, 14, 3, 1, 1), ("conv", 3, 16, 56, 3, 2, 1),
    ("conv", 16, 64, 28, 1, 1, 1), ("conv_hs", 64, 16, 14, 1, 1, 1), ("conv_silu", 32, 32, 28, 3, 1, 32),
    ("conv", 64, 64, 14, 5, 2, 64), ("conv", 32, 32, 14, 3, 1, 4),
    ("se_sigmoid", 32, 8, 14, 1, 1, 1), ("se_hard", 32, 8, 14, 1, 1, 1),
    ("silu", 32, 32, 28, 1, 1, 1), ("hswish", 32, 32, 28, 1, 1, 1), ("add", 16, 16, 28, 1, 1, 1),
    ("maxpool", 16, 16, 28, 3, 2, 1), ("linear", 128, 22, 1, 1, 1, 1),
]


def _branch(spec: BranchSpec):
    import torch
    import torch.nn as nn

    kind, cin, cout, _size, k, stride, groups = spec
    act = {"conv": nn.ReLU, "conv_hs": nn.Hardswish, "conv_silu": nn.SiLU}.get(kind, nn.ReLU)

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, 1, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(cout)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)) + x)

    class SE(nn.Module):
        def __init__(self, gate):
            super().__init__()
            self.fc1 = nn.Conv2d(cin, cout, 1)
            self.fc2 = nn.Conv2d(cout, cin, 1)
            self.gate = gate

        def forward(self, x):
            s = torch.nn.functional.adaptive_avg_pool2d(x, 1)
            return x * self.gate(self.fc2(torch.relu(self.fc1(s))))

    class Add(nn.Module):
        # Residual adds alone, `REPEAT` deep: in a QDQ graph ONNX Runtime folds the Relu into the
        # quantization and each add runs as QLinearAdd. (With the Add fed by a Sigmoid, the two
        # always had the same elements, and the fit gave the integer add no cost per element.)
        def forward(self, x):
            for _ in range(REPEAT):
                x = x + torch.relu(x)
            return x

    # A block that keeps its shape is repeated: the branch's fixed parts (input reorder or
    # quantization, output reorder or dequantization) are then shared by REPEAT layers, so the
    # time the fit attributes to each layer depends less on how well those parts are modelled.
    repeat = REPEAT if cin == cout and stride == 1 else 1
    if kind in ("conv", "conv_hs", "conv_silu"):
        return nn.Sequential(*[nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                                             nn.BatchNorm2d(cout), act()) for _ in range(repeat)])
    if kind == "res":
        return nn.Sequential(*[Res() for _ in range(repeat)])
    if kind == "se_sigmoid":
        return SE(nn.Sigmoid())
    if kind == "se_hard":
        return SE(nn.Hardsigmoid())
    if kind == "silu":
        return nn.SiLU()
    if kind == "hswish":
        return nn.Hardswish()
    if kind == "add":
        return Add()
    if kind == "maxpool":
        # A chain, each pool reading what the previous one wrote: a single pool always had the
        # same elements as its branch's input ReLU and layout reorder, and the fit then gave
        # ONNX Runtime's pools no cost at all.
        return nn.Sequential(*[nn.MaxPool2d(k, stride, k // 2) for _ in range(REPEAT)])
    if kind == "linear":
        return nn.Sequential(nn.Flatten(), nn.Linear(cin, cout))
    raise ValueError(f"unknown probe kind {kind!r}")


def build_probenet(branches: list[BranchSpec]):
    """The multi-input probe network (eval mode, random weights, BN statistics randomised)."""
    import torch
    import torch.nn as nn

    class ProbeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(_branch(s) for s in branches)

        def forward(self, *xs):
            # The leading ReLU makes each branch's input freshly written, as in a real network.
            return tuple(b(torch.relu(x)) for b, x in zip(self.blocks, xs))

    torch.manual_seed(0)
    return _with_random_bn_statistics(ProbeNet().eval())


def _with_random_bn_statistics(net):
    """`net` with its BatchNorm statistics drawn (random weights have none worth folding)."""
    import torch
    import torch.nn as nn

    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


# A whole network of probe-like layers, run back to back as a model runs them: the stem, nine
# inverted residual blocks (pointwise expansion, depthwise, pointwise projection, residual add
# where the shape allows) and a head. It resembles no particular family; the calibration prices
# it with its own fits and times it (`fopt.bench.costmodel.calibrate._Chain`), because
# ONNX Runtime's INT8 nodes ran 1.5-2.5x slower inside such a chain at batch 1 than inside
# their probe branch's loop.
CHAIN_BLOCKS = [(64, 24, 2), (72, 24, 1), (96, 40, 2), (120, 40, 1), (240, 80, 2), (240, 80, 1),
                (480, 112, 1), (672, 160, 2), (960, 160, 1)]   # (expanded channels, out channels, stride)


def chain_spec(quick: bool = False) -> BranchSpec:
    """The chain network's input, as a probe spec (the stem's), so `probe_inputs` draws it."""
    return ("conv", 3, 16, 64 if quick else 224, 3, 2, 1)


def build_chain(quick: bool = False):
    """The chain network (eval mode, random weights, BN statistics randomised); `quick`: three
    blocks. Its input is ``x0``, shaped by `chain_spec`."""
    import torch
    import torch.nn as nn

    def cbr(cin, cout, k=1, stride=1, groups=1):
        return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    class Inverted(nn.Module):
        def __init__(self, cin, mid, cout, stride):
            super().__init__()
            self.residual = stride == 1 and cin == cout
            self.body = nn.Sequential(*cbr(cin, mid), *cbr(mid, mid, 3, stride, mid),
                                      nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.body(x)
            return x + y if self.residual else y

    torch.manual_seed(0)
    layers, c = cbr(3, 16, 3, 2), 16
    for mid, cout, stride in CHAIN_BLOCKS[:3] if quick else CHAIN_BLOCKS:
        layers.append(Inverted(c, mid, cout, stride))
        c = cout
    layers += [*cbr(c, 4 * c), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * c, 22)]
    return _with_random_bn_statistics(nn.Sequential(*layers).eval())


def probe_inputs(branches: list[BranchSpec], batch: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(_input_shape(s, batch), dtype=np.float32) for s in branches]


def _input_shape(spec: BranchSpec, batch: int) -> tuple[int, int, int, int]:
    return (batch, spec[1], spec[3], spec[3]) if spec[0] != "linear" else (batch, spec[1], 1, 1)


@functools.lru_cache(maxsize=None)
def branch_input(spec: BranchSpec, batch: int, seed: int) -> np.ndarray:
    """The input of one probe branch (read-only, and made once: a calibration asks for each
    about eight times - profiling, timing passes, outliers timed again - and drawing them afresh
    took 15 of its 110 s). `fopt.bench.costmodel.calibrate` clears the cache when it is done."""
    x = probe_inputs([spec], batch, seed)[0]
    x.flags.writeable = False
    return x


def probenet_to_onnx(net, branches: list[BranchSpec], opset: int = 17) -> bytes:
    import torch

    xs = tuple(torch.from_numpy(x) for x in probe_inputs(branches, 1))
    names = [f"x{i}" for i in range(len(branches))]
    outs = [f"y{i}" for i in range(len(branches))]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(net, xs, buf, input_names=names, output_names=outs, opset_version=opset,
                              dynamic_axes={n: {0: "batch"} for n in names + outs},
                              do_constant_folding=True, dynamo=False)
    return buf.getvalue()


def quantize_probe(fp32_path: str, int8_path: str, branches: list[BranchSpec], samples: int = 2) -> None:
    """QDQ INT8 the way `fopt optimize --int8 static` (target ort) makes it: pre-processing, SiLU as
    QuickGelu, per-channel symmetric s8 weights, asymmetric u8 activations."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{f"x{i}": x for i, x in enumerate(probe_inputs(branches, 1, seed=s))}
                            for s in range(samples)])

        def get_next(self):
            return next(self.it, None)

    pre = str(Path(int8_path).with_suffix(".pre.onnx"))
    preprocess(fp32_path, pre)
    model = onnx.load(pre)
    if fuse_silu(model):
        onnx.save(model, pre)
    quantize_static(pre, int8_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


# ----------------------------------------------------------------------------- timing helpers

PROBE_QUANTILE = 25.0

_clock: list[Callable[[], float]] = [time.perf_counter]   # the probes' clock (see `probe_clock`)


@contextlib.contextmanager
def probe_clock(clock: Callable[[], float]):
    """Time every probe inside the block with `clock` (the calibration's --clock)."""
    _clock.append(clock)
    try:
        yield
    finally:
        _clock.pop()


def current_clock() -> Callable[[], float]:
    return _clock[-1]


def time_samples(fn: Callable[[], Any], budget_s: float, min_iters: int = 3) -> list[float]:
    """Seconds per call of fn after a short warm-up, for about `budget_s` seconds."""
    rule = StopRule(min_time_s=budget_s, warmup_iters=1, warmup_s=min(0.05, budget_s / 4),
                    min_iters=min_iters, first_check=10)
    clock = _clock[-1]
    return measure(WallTimer(fn, clock=clock), rule, clock).samples_s


def time_callable(fn: Callable[[], Any], budget_s: float, min_iters: int = 3, q: float = PROBE_QUANTILE) -> float:
    """Typical seconds per call of fn: the `q` percentile of its samples.

    Probes use the 25th percentile rather than the median: on a shared machine another process
    only ever adds time, and a probe that caught it would miscalibrate every later estimate. On a
    quiet machine the two differ by a percent or two."""

    return percentile(sorted(time_samples(fn, budget_s, min_iters)), q)


# ----------------------------------------------------------------------------- GEMM, bandwidth

def _matmul_model(n: int, int8: bool) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:
        b = numpy_helper.from_array(rng.integers(-127, 127, (n, n), dtype=np.int8), "B")
        nodes = [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])]
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        b = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "B")
        nodes = [helper.make_node("MatMul", ["A", "B"], ["Y"])]
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    g = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("A", a_type, [n, n])],
                          [helper.make_tensor_value_info("Y", y_type, [n, n])], initializer=[b])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@dataclass
class GemmResult:
    name: str
    n: int
    seconds: float

    @property
    def ops_per_s(self) -> float:
        return 2.0 * self.n ** 3 / self.seconds


def gemm_probes(n: int, threads: int | None, budget_s: float) -> list[GemmResult]:
    import torch

    out = []
    for int8 in (False, True):
        sess = ort_session(_matmul_model(n, int8), threads=threads)
        a = (np.random.default_rng(1).integers(0, 255, (n, n), dtype=np.uint8) if int8
             else np.random.default_rng(1).standard_normal((n, n)).astype(np.float32))
        out.append(GemmResult("onnxruntime/int8" if int8 else "onnxruntime/fp32", n,
                              time_callable(lambda: sess.run(None, {"A": a}), budget_s)))
        sess = None   # released before the next session is built
    ta, tb = torch.randn(n, n), torch.randn(n, n)
    with torch.inference_mode():
        out.append(GemmResult("torch-eager/fp32", n, time_callable(lambda: torch.mm(ta, tb), budget_s)))
    return out


def bandwidth_probe(nbytes: int, budget_s: float) -> float:
    """Bytes per second of np.copyto over `nbytes` (read + write counted)."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    sec = time_callable(lambda: np.copyto(dst, src), budget_s)
    return 2.0 * src.nbytes / sec


# ----------------------------------------------------------------------------- dispatch overhead

def _relu_chain(length: int, elements: int) -> bytes:
    from onnx import TensorProto, helper

    nodes, prev = [], "x"
    for i in range(length):
        nodes.append(helper.make_node("Relu", [prev], [f"y{i}"]))
        prev = f"y{i}"
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, elements])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, elements])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _intercept_slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    a = np.vstack([np.ones(len(xs)), np.asarray(xs, dtype=float)]).T
    (c, m), *_ = np.linalg.lstsq(a, np.asarray(ys, dtype=float), rcond=None)
    return float(c), float(m)


def overhead_probes(threads: int | None, budget_s: float, sizes: tuple[int, ...] = (50_000, 200_000),
                    length: int = 25) -> dict[str, Any]:
    """Per-node cost vs tensor size for ORT and torch chains; the intercept is the dispatch overhead."""
    import torch

    res: dict[str, Any] = {"chain_length": length, "sizes": list(sizes)}
    ort_node, torch_node = {}, {}
    run_fixed = None
    for e in (16, *sizes):
        t = {}
        for length_ in (1, length):
            sess = ort_session(_relu_chain(length_, e), threads=threads)
            x = np.random.default_rng(0).standard_normal((1, e)).astype(np.float32)
            t[length_] = time_callable(lambda: sess.run(None, {"x": x}), budget_s)
            sess = None   # released before the next session is built
        ort_node[e] = (t[length] - t[1]) / (length - 1)
        if e == 16:
            run_fixed = t[1] - ort_node[e]
        xt = torch.randn(1, e)
        chain = torch.nn.Sequential(*[torch.nn.ReLU() for _ in range(length)])
        with torch.inference_mode():
            torch_node[e] = time_callable(lambda: chain(xt), budget_s) / length
    res["onnxruntime_node_s"] = {str(k): v for k, v in ort_node.items()}
    res["torch_module_s"] = {str(k): v for k, v in torch_node.items()}
    res["onnxruntime_run_fixed_s"] = max(0.0, run_fixed or 0.0)
    c, _ = _intercept_slope(list(sizes), [ort_node[e] for e in sizes])
    res["onnxruntime_dispatch_s"] = max(0.0, c)
    c, _ = _intercept_slope(list(sizes), [torch_node[e] for e in sizes])
    res["torch_dispatch_s"] = max(0.0, c)
    return res


def profiler_delta_probe(threads: int | None, *, elements: int = 100_000, length: int = 25,
                         runs: int = 200) -> dict[str, float]:
    """What ONNX Runtime's profiler adds per node: a chain of real-sized Relu nodes, profiled vs not.

    Runs are short (a fraction of a millisecond), so taking the 25th percentile over many of them
    keeps the runs that another process did not disturb."""
    model = _relu_chain(length, elements)
    x = np.random.default_rng(0).standard_normal((1, elements)).astype(np.float32)
    plain = ort_session(model, threads=threads)
    unprof: list[float] = []
    for _ in range(20):
        plain.run(None, {"x": x})
    for _ in range(runs):
        t0 = time.perf_counter()
        plain.run(None, {"x": x})
        unprof.append(time.perf_counter() - t0)
    del plain
    with tempfile.TemporaryDirectory(prefix="fopt-delta-") as tmp:
        prof = ort_session(model, threads=threads, profile_prefix=str(Path(tmp) / "p"))
        for _ in range(runs + 1):
            prof.run(None, {"x": x})
        events = json.loads(Path(prof.end_profiling()).read_text())
        del prof
    # per-run node sums: a node's durations come back per run in run order
    per_node, _ = parse_ort_profile(events, skip_runs=1, quantile=50.0)
    per_run = [sum(rec["durs"][i] for rec in per_node.values()) / 1e3 for i in range(runs)
               if all(len(rec["durs"]) > i for rec in per_node.values())]
    prof_s = percentile(sorted(per_run), PROBE_QUANTILE)
    unprof_s = percentile(sorted(unprof), PROBE_QUANTILE)
    return {"elements": elements, "length": length, "runs": runs, "profiled_node_sum_s": prof_s,
            "unprofiled_run_s": unprof_s, "delta_s": (prof_s - unprof_s) / length}
