"""The optimize-method registry and the one wrapper every method runs through.

A method is a pure function ``fn(src, dst, **settings) -> record`` that writes one artifact to
`dst` and returns the settings it used. `produce` wraps it: it checks the target does not exist
(unless forced), runs the function into a temporary file beside the target, checks the result
(non-empty; ONNX files load and pass the checker), embeds the card in ONNX outputs, renames the
file into place and writes the sidecar card. On any failure nothing is left behind: no temporary
file, no half-written artifact, no card.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fopt.artifacts import (
    atomic_paths,
    card_path,
    json_text,
    make_card,
    sealed_card,
    set_onnx_card,
)
from fopt.errors import (
    FoptError,
    OutputExistsError,
    environment_error_message,
    one_line,
)
from fopt.onnxgraph import check_onnx
from fopt.registry import Registry


class OptimizeError(FoptError):
    """An optimization step failed inside its library (quantizer, converter, TensorRT builder)."""


@dataclass(frozen=True)
class Method:
    name: str                       # CLI name (--int8-static -> "int8-static")
    func: Callable[..., dict]       # pure function (src, dst, **settings) -> settings record
    suffix: str                     # "<stem><suffix>" is the output file name
    format: str                     # card format: "onnx" | "tensorrt"
    precision: str                  # "int8" | "fp16"; None = the source's precision (engines)
    description: str
    companions: tuple[str, ...] = ()  # suffixes of files written beside the target (IR: ".bin");
                                      # the function gets a temporary path for each after `dst`


def _lazy(module: str, attr: str) -> Callable[..., dict]:
    """Import the implementation only when the method runs (keeps `fopt --help` light)."""
    def call(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    call.__name__ = attr
    call.__qualname__ = attr
    return call


METHODS: Registry[Method] = Registry("optimize method")
for _m in (
    Method("int8-dynamic", _lazy("fopt.optimize.quantize", "onnx_to_int8_dynamic"), ".int8-dynamic.onnx",
           "onnx", "int8", "Dynamic INT8 (onnxruntime quantize_dynamic), MatMul/Gemm by default"),
    Method("int8-static", _lazy("fopt.optimize.quantize", "onnx_to_int8_static"), ".int8.onnx",
           "onnx", "int8", "Static QDQ INT8 calibrated on real images, for ONNX Runtime on CPU"),
    Method("int8-static-trt", _lazy("fopt.optimize.quantize", "onnx_to_int8_static"), ".int8-trt.onnx",
           "onnx", "int8", "Static QDQ INT8 with symmetric int8 activations, for TensorRT"),
    Method("int8-mixed", _lazy("fopt.optimize.search", "search_int8"), ".int8-mixed.onnx",
           "onnx", "int8", "Static QDQ INT8 with the node classes kept FP32 where INT8 measurably does not pay"),
    Method("fp16", _lazy("fopt.optimize.fp16", "onnx_to_fp16"), ".fp16.onnx",
           "onnx", "fp16", "FP16 weights/compute with FP32 inputs/outputs, for GPUs"),
    Method("tensorrt", _lazy("fopt.optimize.tensorrt", "onnx_to_engine"), ".engine",
           "tensorrt", "", "TensorRT engine (precision from the ONNX file)"),
    Method("openvino", _lazy("fopt.optimize.openvino", "onnx_to_openvino"), ".openvino.xml",
           "openvino", "fp32", "OpenVINO IR, FP32 weights, for OpenVINO on CPU", (".bin",)),
    Method("openvino-int8", _lazy("fopt.optimize.openvino", "onnx_to_openvino_int8"), ".openvino-int8.xml",
           "openvino", "int8", "OpenVINO IR, NNCF post-training INT8 calibrated on real images", (".bin",)),
):
    METHODS.add(_m.name, _m)


def output_path(method: Method, source: Path, out_dir: Path) -> Path:
    """model.onnx -> OUT/model.int8.onnx; model.fp16.onnx -> OUT/model.fp16.engine."""
    stem = source.name[:-len(".onnx")] if source.name.endswith(".onnx") else source.stem
    return out_dir / f"{stem}{method.suffix}"


@dataclass
class Produced:
    method: str
    path: Path
    card: dict[str, Any]
    seconds: float
    record: dict[str, Any]


def produce(method: Method, source: Path, target: Path, parent_card: dict[str, Any], /, *,
            force: bool = False, precision: str | None = None, card_extra: dict[str, Any] | None = None,
            **settings: Any) -> Produced:
    """Run `method` on `source` into `target` atomically and write its card (module docstring)."""
    if target.exists() and not force:
        raise OutputExistsError(f"{target} exists (pass --force to overwrite)")
    t0 = time.perf_counter()
    precision = precision or method.precision or parent_card.get("precision", "fp32")
    try:  # the artifact and its card replace the previous pair together, or not at all
        companions = [target.with_suffix(s) for s in method.companions]
        with atomic_paths(target, *companions, card_path(target)) as (tmp, *tmp_companions, tmp_card):
            record = method.func(source, tmp, *tmp_companions, **settings)
            seconds = time.perf_counter() - t0
            card = _card(method, source, parent_card, precision, record, seconds, card_extra)
            _check_and_embed(tmp, method.format, card)
            tmp_card.write_text(json_text(sealed_card(tmp, card)))
    except FoptError:
        raise
    except Exception as e:  # a library failure: one line here, the traceback with --debug
        why = environment_error_message(e) or one_line(e)   # a full disk says so, in plain words
        raise OptimizeError(f"{method.name} failed on {source.name}: {why}") from e
    return Produced(method.name, target, card, round(seconds, 3), record)


def _card(method: Method, source: Path, parent_card: dict[str, Any], precision: str,
          record: dict[str, Any], seconds: float, extra: dict[str, Any] | None) -> dict[str, Any]:
    key = {"tensorrt": "tensorrt", "openvino": "openvino"}.get(method.format) or (
        "fp16" if method.name == "fp16" else "quantization")
    return make_card(
        kind="optimized", format=method.format, precision=precision,
        input_spec=parent_card["input_spec"], class_names=parent_card["class_names"],
        parent=source, model=parent_card.get("model"),
        opset=parent_card.get("opset") if method.format == "onnx" else None,
        method=method.name, optimize={"method": method.name, "seconds": round(seconds, 3),
                                      "source_precision": parent_card.get("precision", "fp32")},
        **_carried(parent_card), **{key: record}, **(extra or {}))


def _carried(parent_card: dict[str, Any]) -> dict[str, Any]:
    """What a child of a model fopt did not make keeps from its card: the input tensor, the output
    width, and the foreign file with the assumptions it was run under."""
    return {k: parent_card[k] for k in ("input", "num_classes", "foreign") if parent_card.get(k) is not None}


def _check_and_embed(tmp: Path, fmt: str, card: dict[str, Any]) -> None:
    if not tmp.exists() or tmp.stat().st_size == 0:
        raise OptimizeError(f"the optimizer wrote nothing to {tmp.name}")
    if fmt != "onnx":
        return
    import onnx


    model = onnx.load(str(tmp))
    set_onnx_card(model, card)
    onnx.save(model, str(tmp))
    try:
        check_onnx(tmp)
    except FoptError as e:
        raise OptimizeError(f"{card['method']} produced an invalid ONNX model: {e}") from None
