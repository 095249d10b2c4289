"""`analyze`: params, MACs, FLOPs, memory traffic, receptive field and a roofline estimate.

Everything is computed on the ONNX graph, because that is what ONNX Runtime and TensorRT execute.
A registry model name or a checkpoint is exported in memory first. That export keeps BatchNorm
nodes (``TrainingMode.PRESERVE`` on an eval-mode model) instead of folding them as
`fopt.export.onnx.model_to_onnx` does for deployment: the graph then carries every parameter of
the PyTorch model (``params == sum(p.numel())``), and the counting engine models the Conv+BN
folding, so MACs, FLOPs, bytes and the estimate equal those of the exported file. An ONNX file is
counted as it is: a deployment export has its BNs folded, so its ``params`` are the folded count
(a BN-followed Conv keeps C bias values where PyTorch had 2C BN parameters).

The counting convention is in `fopt.analyze.counting`, the receptive-field rules in
`fopt.analyze.receptive`, the estimate in `fopt.analyze.roofline`, device ceilings in
`fopt.analyze.devices`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fopt.analyze.counting import (
    CONSTANT_FOLDABLE,
    CONSTANT_FOLDABLE_REASON,
    IGNORED_OPS,
    PRECISIONS,
    GraphCount,
    Layer,
    count_graph,
)
from fopt.analyze.devices import DeviceSpec, get_device_spec
from fopt.analyze.graph import concretize, strip_weights
from fopt.analyze.receptive import ReceptiveField, receptive_field
from fopt.analyze.roofline import LatencyEstimate, estimate_layers
from fopt.artifacts import detect_format
from fopt.checkpoint import load_checkpoint
from fopt.describe.infer import own_card
from fopt.errors import (
    AnalysisIncomplete,
    ExportError,
    InputError,
    UsageError,
    first_line,
)
from fopt.export.onnx import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME
from fopt.models import MODELS, build_model
from fopt.runtime.base import trust_note

CONVENTION = ("macs = multiply-accumulates of Conv/Gemm/MatMul; flops = 2*macs + per-element counts "
              "of element-wise/activation/norm/pool ops; bytes at the node's precision "
              "(fp32 4, fp16 2, int8 1, int8 biases 4); see fopt.analyze.counting")


@dataclass
class Source:
    """Where the analysed graph came from."""
    target: str
    kind: str                 # model | checkpoint | onnx | torchscript | module | graph
    model_name: str | None
    img_size: int | None
    channels: int = 3

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "kind": self.kind, "model": self.model_name,
                "img_size": self.img_size}


@dataclass
class AnalysisResult:
    source: Source
    device: DeviceSpec
    counts: GraphCount
    rf: ReceptiveField
    estimate: LatencyEstimate
    _stripped: Any = field(repr=False, default=None)
    _consts: frozenset[str] = field(repr=False, default=frozenset())

    # ---- totals
    @property
    def layers(self) -> list[Layer]:
        return self.counts.layers

    @property
    def precision(self) -> str:
        return self.counts.precision

    @property
    def batch(self) -> int:
        return self.counts.batch

    @property
    def img_size(self) -> int | None:
        shape = self.counts.input_shape
        return shape[2] if len(shape) == 4 and shape[2] == shape[3] else self.source.img_size

    @property
    def params(self) -> int:
        return self.counts.params

    @property
    def macs(self) -> int:
        return self.counts.macs

    @property
    def flops(self) -> int:
        return self.counts.flops

    @property
    def weight_bytes(self) -> int:
        return self.counts.weight_bytes

    @property
    def activation_bytes(self) -> int:
        return self.counts.activation_bytes

    @property
    def status(self) -> str:
        return self.counts.status

    def at(self, *, batch: int | None = None, precision: str | None = None,
           device: DeviceSpec | str | None = None) -> "AnalysisResult":
        """The same graph recounted at another batch size / precision / device (milliseconds)."""
        if (batch in (None, self.batch) and precision in (None, self.precision)
                and device in (None, self.device, self.device.name)):
            return self
        return _analyze_graph(self._stripped, self._consts, self.source,
                              batch=batch or self.batch, precision=precision or self.precision,
                              device=device or self.device, strict=False)

    def layer_rows(self) -> list[dict[str, Any]]:
        """One flat dict per node: counts, receptive field and roofline time."""
        times = {n.name: n for n in self.estimate.nodes}
        rows = []
        for layer in self.layers:
            d = layer.to_dict()
            est = times.get(layer.name)
            d["estimate_ms"] = est.time_ms if est else 0.0
            d["bound"] = est.bound if est else None
            rows.append(d)
        return rows

    def to_dict(self) -> dict[str, Any]:
        ignored = {op: {"count": n, "reason": IGNORED_OPS.get(op, CONSTANT_FOLDABLE_REASON
                                                               if op == CONSTANT_FOLDABLE else "")}
                   for op, n in self.counts.ignored.items()}
        c = self.counts
        return {
            **self.source.to_dict(),
            "input_shape": list(c.input_shape), "batch": self.batch, "precision": self.precision,
            "quantized": c.quantized, "status": self.status,
            "unsupported": c.unsupported, "missing_shapes": c.missing_shapes, "ignored": ignored,
            "params": self.params, "macs": self.macs, "flops": self.flops,
            "weight_bytes": self.weight_bytes, "activation_bytes": self.activation_bytes,
            "peak_activation_bytes": c.peak_activation_bytes,
            "bytes_read": c.bytes_read, "bytes_written": c.bytes_written,
            "nodes": len(c.layers), "nodes_executed": c.n_executed,
            "receptive_field": self.rf.to_dict(),
            "device": self.device.to_dict(),
            "estimate_ms": {"naive": self.estimate.naive_ms, "roofline": self.estimate.roofline_ms},
            "estimate": self.estimate.summary(),
            "convention": CONVENTION,
            "layers": self.layer_rows(),
        }


# ----------------------------------------------------------------------------- targets

def module_to_analysis_onnx(model, img_size: int, channels: int = 3):
    """Export an nn.Module in memory for analysis, keeping BatchNorm nodes (see module docstring)."""
    import onnx
    import torch

    model = model.eval().cpu()
    dummy = torch.zeros(1, channels, img_size, img_size)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad():
                torch.onnx.export(model, (dummy,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  opset_version=DEFAULT_OPSET, do_constant_folding=True, dynamo=False,
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                                  training=torch.onnx.TrainingMode.PRESERVE)
    except Exception as e:  # exporter failures come in many types; one line, cause kept
        first = first_line(e)
        if "adaptive_avg_pool2d" in first:
            first = (f"AdaptiveAvgPool2d cannot be exported at {img_size} px: its output grid must "
                     f"divide the feature map (e.g. vgg16 needs a multiple of 224); pass another --img-size")
        raise ExportError(f"in-memory ONNX export failed for {type(model).__name__}: {first}") from e
    return onnx.load_from_string(buf.getvalue())


def _load_onnx(path: Path):
    import onnx

    try:
        # weights' values are never needed: their shapes are in the initializer headers
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise InputError(f"{path}: not a readable ONNX file ({type(e).__name__})") from None


def load_target(target: Any, *, img_size: int | None = None,
                num_classes: int | None = None) -> tuple[Any, Source]:
    """Resolve a target to an ONNX ModelProto: registry name, checkpoint, ONNX file, nn.Module or ModelProto."""
    if hasattr(target, "graph") and hasattr(target, "opset_import"):
        _no_num_classes(num_classes, "an ONNX graph")
        return target, Source("<onnx graph>", "graph", None, img_size)
    if hasattr(target, "state_dict") and hasattr(target, "forward"):
        if img_size is None:
            raise UsageError("analyzing an nn.Module needs img_size")
        _no_num_classes(num_classes, "an nn.Module")
        return module_to_analysis_onnx(target, img_size), Source(type(target).__name__, "module", None, img_size)
    text = str(target)
    path = Path(text)
    if path.exists():
        fmt = detect_format(path)
        if fmt == "onnx":
            _no_num_classes(num_classes, "an ONNX file")
            return _load_onnx(path), Source(text, "onnx", None, img_size)
        if fmt == "checkpoint":
            ckpt = load_checkpoint(path)
            n_classes = len(ckpt.class_names)
            if num_classes is not None and num_classes != n_classes:
                raise UsageError(f"{path} has {n_classes} classes; drop --num-classes (got {num_classes})")
            spec = ckpt.input_spec
            size = img_size or spec.size
            return (module_to_analysis_onnx(ckpt.model, size, spec.channels),
                    Source(text, "checkpoint", ckpt.model_name, size, spec.channels))
        if fmt == "torchscript":
            _no_num_classes(num_classes, "a TorchScript file")
            return _torchscript_target(path, img_size)
        raise UsageError(f"{path} is a {fmt} artifact; analyze works on ONNX graphs: pass the "
                         f"checkpoint it came from or its .onnx export")

    if text not in MODELS and ("/" in text or "." in text):
        raise InputError(f"{text}: no such file (and not a registry model)")
    entry = MODELS.get(text)  # unknown name: UsageError listing the registry, with a suggestion
    size = img_size or entry.default_size
    model = build_model(text, num_classes or 1000)
    return module_to_analysis_onnx(model, size), Source(text, "model", text, size)


def _torchscript_target(path: Path, img_size: int | None) -> tuple[Any, Source]:
    """A TorchScript file, exported in memory at its card's size (or `img_size`). Loading it runs
    the program inside, so a file fopt did not write gets the same one-line note as its runner."""
    import torch

    spec = (own_card(path, "torchscript") or {}).get("input_spec") or {}
    size = img_size or spec.get("size")
    if not size:
        raise UsageError(f"{path}: a TorchScript file declares no input size; pass --img-size")
    trust_note(path, "torchscript")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)   # torch.jit.load is deprecated in 2.14
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise InputError(f"{path}: not a loadable TorchScript file ({first_line(e)})") from None
    channels = int(spec.get("channels", 3))
    return (module_to_analysis_onnx(module, int(size), channels),
            Source(str(path), "torchscript", None, int(size), channels))


def _no_num_classes(num_classes: int | None, what: str) -> None:
    if num_classes is not None:
        raise UsageError(f"--num-classes applies to registry model names only, not to {what}")


# ----------------------------------------------------------------------------- analysis

def analyze(target: Any, *, img_size: int | None = None, num_classes: int | None = None,
            batch: int | None = None, precision: str | None = None,
            device_spec: DeviceSpec | str = "t4", strict: bool = False) -> AnalysisResult:
    """Count a model or artifact and estimate its latency on a device.

    target: a registry model name (random weights; ``num_classes`` default 1000, i.e. torchvision's
    own network), a fopt checkpoint, an ONNX file (QDQ INT8 files count at int8), an nn.Module
    (needs ``img_size``) or an onnx.ModelProto. ``precision`` None means the graph's own (int8 for
    quantized graphs, fp16 for float16 graphs, else fp32); an FP32 graph may be counted at fp16 or
    int8 as a what-if. ``batch`` None means the graph's static batch, else 1. With ``strict`` a
    partial count (unsupported op types, unknown shapes) raises `AnalysisIncomplete`.
    """
    if batch is not None and batch < 1:
        raise UsageError(f"--batch must be >= 1, got {batch}")
    if img_size is not None and img_size < 1:
        raise UsageError(f"--img-size must be >= 1, got {img_size}")
    if num_classes is not None and num_classes < 2:
        raise UsageError(f"--num-classes must be >= 2, got {num_classes}")
    if precision is not None and precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = get_device_spec(device_spec)   # fail early, before a long export
    model, source = load_target(target, img_size=img_size, num_classes=num_classes)
    stripped, consts = strip_weights(model)
    del model
    return _analyze_graph(stripped, consts, source, batch=batch, precision=precision, device=device,
                          strict=strict)


def _analyze_graph(stripped, consts, source: Source, *, batch, precision, device, strict) -> AnalysisResult:
    device = get_device_spec(device)
    prepared = concretize(stripped, consts, batch=batch, img_size=source.img_size)
    counts = count_graph(prepared, precision)
    rf = receptive_field(counts.index, counts.layers)
    estimate = estimate_layers(counts.layers, device, counts.precision, counts.batch)
    result = AnalysisResult(source, device, counts, rf, estimate, stripped, consts)
    if strict and counts.status != "complete":
        parts = []
        if counts.unsupported:
            parts.append("unsupported op types " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.unsupported.items())))
        if counts.missing_shapes:
            parts.append("unknown shapes at " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.missing_shapes.items())))
        raise AnalysisIncomplete(f"analysis of {source.target} is partial: {'; '.join(parts)} "
                                 f"(drop --strict to get the partial counts)")
    return result
