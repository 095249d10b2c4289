"""Per-layer precision search for static INT8 (`fopt optimize --int8-static --search`).

INT8 does not pay for every layer. Where a layer does little arithmetic per byte (depthwise
convolutions, squeeze-and-excitation's 1x1 convolutions on a 1x1 map, an RGB stem) the
QuantizeLinear/DequantizeLinear around it and the integer kernel's own overhead can cost more
than the multiply saves, and some classes lose more accuracy than others. Which ones, depends on
the CPU and the runtime (MEASURED.md: on a VNNI machine fopt's INT8 EfficientNet-B0 was no faster
than FP32). So the search measures, on this machine, instead of guessing:

1. Group the compute nodes of the pre-processed FP32 graph by class (`node_classes`; the cost
   model's class names, decided here from the weights' shapes).
2. Quantize the all-INT8 graph, then one variant per class with that class kept FP32. Every
   variant reuses the all-INT8 graph's activation ranges (the calibration cache), so they differ
   only in which nodes are quantized.
3. Time the FP32 graph, the all-INT8 graph and every variant at batch 1 through the chosen
   runtime's runner, in this process, over interleaved rounds (a slow moment hits all of them);
   each one's latency is the median of its round medians. Score each on the calibration images:
   by top-1 accuracy where they are a dataset's labelled train images of the model's own
   classes, else by top-1 agreement with the FP32 graph. Never the validation split the
   artifacts are then reported on; the images did set the ranges, so the score is an
   optimistic, relative measure of what a class costs. (Agreement alone is too strict for a
   model with many near-tied answers: a resnet50 trained briefly on Fashion-MNIST changed 2.7%
   of its answers under INT8 and lost no test accuracy.)
4. Keep FP32 every class whose variant is faster than all-INT8 by more than the rounds' noise.
   Then, while the mixed graph scores more than `max_drop_pts` below FP32, also keep FP32 the
   class that recovers the most score per millisecond it costs, as long as the graph stays
   faster than FP32 (a mixed graph slower than FP32 is never the answer: FP32 is).
5. Quantize the mixed graph into `dst` and measure it beside FP32 and all-INT8 in a last set of
   rounds. Every class's numbers, its decision and why go into the card
   (``quantization.search``).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fopt.errors import UsageError
from fopt.optimize.calib import CalibrationSet
from fopt.optimize.quantize import onnx_to_int8_static, preprocess
from fopt.runtime.base import runner_class

SEARCH_RUNTIMES = ("onnxruntime", "openvino")
ROUNDS = 5                 # interleaved timing rounds per candidate set
ROUND_BUDGET_S = 0.15      # timed runs per candidate per round
MIN_GAIN = 0.03            # a variant must be this much faster (or beat the rounds' noise) to count
SCORE_IMAGES = 256         # calibration images each candidate is scored on
SCORE_BATCH = 16
DEFAULT_MAX_DROP_PTS = 1.0
MAX_SPATIAL_SE = 1         # a conv on a map this small (1x1) is squeeze-and-excitation, not a feature conv
STEM_MAX_CIN = 4           # an RGB(A) stem: too few input channels for the INT8 dot products to fill

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def check_search_settings(runtime: str, max_drop_pts: float) -> None:
    if runtime not in SEARCH_RUNTIMES:
        raise UsageError(f"--search-runtime must be one of {', '.join(SEARCH_RUNTIMES)}, got {runtime!r}")
    if max_drop_pts < 0:
        raise UsageError(f"--search-max-drop must be >= 0 points, got {max_drop_pts}")


# ----------------------------------------------------------------------------- node classes

def _spatial_dims(model) -> dict[str, list[int]]:
    """Static spatial dims (H, W) of every 4-D tensor that shape inference can name."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    dims: dict[str, list[int]] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        shape = vi.type.tensor_type.shape.dim
        if len(shape) == 4 and all(d.HasField("dim_value") for d in shape[2:]):
            dims[vi.name] = [d.dim_value for d in shape[2:]]
    return dims


def node_classes(model) -> dict[str, list[str]]:
    """{class: [node names]} for the Conv/Gemm/MatMul nodes of `model`, in graph order.

    conv_stem: few input channels (an RGB stem); conv_se: a 1x1 kernel on a 1x1 map
    (squeeze-and-excitation); conv_dw: one input channel per group (depthwise); conv_grouped: other
    grouped convs; conv_pw: 1x1 kernel; conv_dense: the rest; gemm: Gemm and MatMul (classifier
    heads).
    """
    from onnx import helper

    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}   # shapes, without reading the data
    spatial = _spatial_dims(model)
    out: dict[str, list[str]] = {}
    for n in model.graph.node:
        if n.op_type in ("Gemm", "MatMul"):
            cls = "gemm"
        elif n.op_type == "Conv":
            w = weights.get(n.input[1]) if len(n.input) > 1 else None
            group = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "group"), 1)
            hw = spatial.get(n.input[0])
            if w is None or len(w) != 4:
                cls = "conv_dense"
            elif hw is not None and max(hw) <= MAX_SPATIAL_SE and w[2] * w[3] == 1:
                cls = "conv_se"   # a 3x3 conv on a 1x1 map (resnet18 at 32 px) stays a feature conv
            elif group > 1 and w[1] == 1:
                cls = "conv_dw"
            elif group > 1:
                cls = "conv_grouped"
            elif w[2] * w[3] == 1:
                cls = "conv_pw"
            elif w[1] <= STEM_MAX_CIN:
                cls = "conv_stem"
            else:
                cls = "conv_dense"
        else:
            continue
        if not n.name:
            continue  # the quantizer excludes nodes by name; an unnamed node cannot be kept FP32
        out.setdefault(cls, []).append(n.name)
    return out


# ----------------------------------------------------------------------------- measuring

@dataclass
class _Candidate:
    name: str                       # "fp32", "int8", "keep:conv_dw", "keep:conv_dw+conv_se"
    path: Path
    record: dict[str, Any] = field(default_factory=dict)   # what the quantizer did (empty for fp32)
    rounds_ms: list[float] = field(default_factory=list)
    score: float | None = None      # accuracy on the labelled calibration images, else agreement with FP32

    @property
    def ms(self) -> float:
        return statistics.median(self.rounds_ms)

    @property
    def spread(self) -> float:
        """(max - min) / median of the round medians: how much this machine moved meanwhile."""
        return (max(self.rounds_ms) - min(self.rounds_ms)) / self.ms if self.rounds_ms else 0.0


class _Bench:
    """Opens each candidate once through the runtime's runner and keeps it loaded for the rounds.

    Scores each candidate by its top-1 accuracy on the calibration images when their labels are
    the model's classes (a dataset's train split, fopt's own model), else by its top-1 agreement
    with the FP32 graph (a folder of unlabelled images, a foreign model)."""

    def __init__(self, runtime: str, card: dict[str, Any], threads: int | None, images: np.ndarray,
                 labels: np.ndarray | None):
        self.cls = runner_class("onnx", runtime)
        self.card, self.threads, self.images, self.labels = card, threads, images, labels
        self.runners: dict[str, Any] = {}
        self.fp32_top1: np.ndarray | None = None

    @property
    def scored_by(self) -> str:
        return "accuracy" if self.labels is not None else "agreement"

    def _runner(self, c: _Candidate):
        if c.name not in self.runners:
            self.runners[c.name] = self.cls(c.path, threads=self.threads, card=self.card).load()
        return self.runners[c.name]

    def top1(self, c: _Candidate) -> np.ndarray:
        r = self._runner(c)
        return np.concatenate([r.infer(self.images[i:i + SCORE_BATCH]).argmax(1)
                               for i in range(0, len(self.images), SCORE_BATCH)])

    def score(self, c: _Candidate) -> None:
        """The FP32 candidate first: agreement is measured against its answers."""
        if c.score is None:
            top1 = self.top1(c)
            if self.fp32_top1 is None:
                self.fp32_top1 = top1
            truth = self.labels if self.labels is not None else self.fp32_top1
            c.score = float((top1 == truth).mean())

    def time_rounds(self, cands: Sequence[_Candidate], rounds: int = ROUNDS) -> None:
        from fopt.runtime.timing import StopRule, WallTimer, measure

        rule = StopRule(min_time_s=ROUND_BUDGET_S, warmup_iters=2, warmup_s=0.0, min_iters=3)
        prepared = {c.name: self._runner(c).prepare(self.images[:1]) for c in cands}
        for r in range(rounds):
            order = list(cands) if r % 2 == 0 else list(reversed(cands))  # no candidate always first
            for c in order:
                runner = self._runner(c)
                res = measure(WallTimer(lambda: runner.run_prepared(prepared[c.name]), runner.synchronize), rule)
                c.rounds_ms.append(1000 * statistics.median(res.samples_s))

    def close(self) -> None:
        for r in self.runners.values():
            r.close()
        self.runners.clear()


# ----------------------------------------------------------------------------- the decision

def choose_classes(int8_ms: float, int8_score: float, fp32_ms: float, fp32_score: float, noise: float,
                   variants: dict[str, tuple[float, float]], max_drop_pts: float,
                   score_of: Callable[[list[str]], float]) -> tuple[list[str], dict[str, str], str]:
    """(classes to keep FP32, why each, how the accuracy step ended) from the screen (module
    docstring, step 4).

    `variants`: class -> (ms, score) with that class alone kept FP32, timed in the same rounds as
    `int8_ms` and `fp32_ms`; a score is top-1 accuracy, or agreement with FP32 (then `fp32_score`
    is 1). `noise`: the relative margin a gain must beat. `score_of(keep)` builds and scores the
    graph with the classes `keep` kept FP32 (their effects need not add up). A class is never kept
    for accuracy if the mixed graph would then no longer be faster than FP32 (each kept class's
    cost over all-INT8 counted once): a mixed graph slower than FP32 is never the answer; FP32 is.
    """
    keep = [cls for cls, (ms, _) in variants.items() if ms < int8_ms * (1 - noise)]
    why = {cls: f"{variants[cls][0]:.3g} ms with it FP32 vs {int8_ms:.3g} ms all-INT8: INT8 does not pay"
           for cls in keep}
    score = score_of(keep)
    budget = max_drop_pts / 100

    def cost(classes: list[str]) -> float:
        return int8_ms + sum(max(variants[c][0] - int8_ms, 0.0) for c in classes)

    ended = "within the budget" if fp32_score - score <= budget else ""
    while not ended:
        # score recovered per millisecond it costs (a class that costs nothing counts as 1 us)
        helpful = {cls: (sc - int8_score) / max(ms - int8_ms, 1e-3)
                   for cls, (ms, sc) in variants.items() if cls not in keep and sc > int8_score}
        affordable = {cls: g for cls, g in helpful.items() if cost([*keep, cls]) < fp32_ms * (1 - noise)}
        if not affordable:
            ended = ("no class left that recovers it" if not helpful else
                     f"keeping more of {', '.join(helpful)} FP32 would not be faster than FP32")
            break
        cls = max(affordable, key=affordable.__getitem__)
        keep.append(cls)
        why[cls] = (f"recovers {100 * (variants[cls][1] - int8_score):.2g} pts (all-INT8 is "
                    f"{100 * (fp32_score - int8_score):.2g} pts below FP32)")
        score = score_of(keep)
        if fp32_score - score <= budget:
            ended = "within the budget"
    return keep, why, ended


# ----------------------------------------------------------------------------- the search

def search_int8(src: str | Path, dst: str | Path, *, calibration: CalibrationSet, card: dict[str, Any],
                runtime: str = "onnxruntime", threads: int | None = None,
                max_drop_pts: float = DEFAULT_MAX_DROP_PTS, exclude: Sequence[str] = (),
                calibration_cache: str | Path | None = None, log: Log = _quiet,
                **static_settings: Any) -> dict[str, Any]:
    """Static INT8 with the node classes kept FP32 that measurably do not pay (module docstring).

    `static_settings` go to every `onnx_to_int8_static` call (target, calib_method, ...); `exclude`
    names nodes the user keeps FP32 in every candidate. Returns the mixed graph's static record
    with ``search`` added."""
    import onnx

    check_search_settings(runtime, max_drop_pts)
    t0 = time.perf_counter()
    images = calibration.images[:SCORE_IMAGES]
    labelled = calibration.labels is not None and calibration.class_names == card.get("class_names")
    labels = calibration.labels[:SCORE_IMAGES] if labelled else None
    with tempfile.TemporaryDirectory(prefix="fopt-search-") as tmp:
        work = Path(tmp)
        pre = work / "pre.onnx"
        preprocess(src, pre)   # the quantizer names nodes as in its pre-processed graph
        classes = node_classes(onnx.load(str(pre)))
        cache = Path(calibration_cache) if calibration_cache else work / "calibration.json"

        def quantize(name: str, keep: Sequence[str]) -> _Candidate:
            path = work / f"{name.replace(':', '-')}.onnx"
            nodes = [n for cls in keep for n in classes[cls]]
            record = onnx_to_int8_static(src, path, calibration=calibration, calibration_cache=cache,
                                         exclude=list(dict.fromkeys([*exclude, *nodes])), **static_settings)
            return _Candidate(name, path, record)

        log(f"search: {sum(map(len, classes.values()))} compute nodes in {len(classes)} classes "
            f"({', '.join(f'{k} {len(v)}' for k, v in classes.items())}); timing on {runtime}")
        fp32 = _Candidate("fp32", Path(src))
        int8 = quantize("int8", [])
        variants = {cls: quantize(f"keep:{cls}", [cls]) for cls in classes}
        bench = _Bench(runtime, card, threads, images, labels)
        log(f"search: {len(variants) + 1} INT8 graphs quantized ({time.perf_counter() - t0:.0f} s); scoring "
            f"{bench.scored_by} on {len(images)} calibration images and timing {ROUNDS} interleaved rounds")
        try:
            for c in (fp32, int8, *variants.values()):
                bench.score(c)
            bench.time_rounds([fp32, int8, *variants.values()])
            noise = max(MIN_GAIN, int8.spread / 2)
            log(f"search: all-INT8 {int8.ms:.3g} ms, FP32 {fp32.ms:.3g} ms (noise {100 * noise:.0f}%); with one "
                f"class FP32: " + ", ".join(f"{cls} {v.ms:.3g} ms" for cls, v in variants.items()))
            built = {(): int8, **{(cls,): v for cls, v in variants.items()}}

            def score_of(keep: list[str]) -> float:
                key = tuple(keep)
                if key not in built:
                    built[key] = quantize("keep:" + "+".join(keep), keep)
                    bench.score(built[key])
                return built[key].score

            keep, why, ended = choose_classes(int8.ms, int8.score, fp32.ms, fp32.score, noise,
                                              {cls: (v.ms, v.score) for cls, v in variants.items()},
                                              max_drop_pts, score_of)
            mixed = built[tuple(keep)]
            log(f"search: keeping FP32: {', '.join(keep) or 'nothing'} ({ended}); timing the result")
            # the screen's numbers stay as decided on; the result is timed afresh, side by side
            final = {c.name: _Candidate(c.name, c.path) for c in (fp32, int8, mixed)}
            bench.time_rounds(list(final.values()))
        finally:
            bench.close()
        shutil.copyfile(mixed.path, dst)
        record = dict(mixed.record)

    rows = [{"class": cls, "nodes": len(classes[cls]), "ms_with_it_fp32": round(v.ms, 4),
             "score_with_it_fp32": round(v.score, 4), "kept_fp32": cls in keep,
             "why": why.get(cls, "INT8 pays: no measurable gain from FP32")}
            for cls, v in variants.items()]
    record["search"] = {
        "runtime": runtime, "threads": threads, "batch": 1, "rounds": ROUNDS,
        "scored_by": bench.scored_by, "score_images": int(len(images)), "max_drop_pts": max_drop_pts,
        "kept_fp32_classes": keep, "classes": rows, "accuracy_step": ended,
        # the screen: every class variant timed in the same rounds as these two
        "screen": {"fp32_ms": round(fp32.ms, 4), "int8_ms": round(int8.ms, 4), "noise": round(noise, 4)},
        # the result, timed afresh in its own rounds
        "fp32_ms": round(final["fp32"].ms, 4), "int8_ms": round(final["int8"].ms, 4),
        "mixed_ms": round(final[mixed.name].ms, 4),
        "fp32_score": round(fp32.score, 4), "int8_score": round(int8.score, 4),
        "mixed_score": round(mixed.score, 4),
        "seconds": round(time.perf_counter() - t0, 1),
        "note": ("latency: batch 1, median of round medians in one process; score: top-1 "
                 + ("accuracy on the calibration images (train split, their labels)" if labelled else
                    "agreement with the FP32 graph on the calibration images")),
    }
    return record
