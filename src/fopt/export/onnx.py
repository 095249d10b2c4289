"""ONNX export: an nn.Module or a fopt checkpoint to a checked, simplified, carded ONNX file.

Default opset 17: accepted by onnxruntime (1.18+), TensorRT 10 and 11, and onnxruntime's QDQ
quantizer (per-channel needs >= 13); it is also the newest opset every runtime we target reads
without a converter, and these CNNs use no operator that a later opset adds or changes. The
TorchScript-based exporter (``dynamo=False``) is used because in torch 2.14 it exports these CNNs
in ~0.2 s with a dynamic batch axis at any opset, while the dynamo exporter takes ~6 s per model
and cannot down-convert below opset 18.

`checkpoint_to_onnx` is the pipeline step: export (input ``input``, output ``logits``, dynamic
batch axis unless a fixed batch is asked for), ``onnx.checker`` full check, shape inference,
onnxsim simplification that is kept only when onnxsim's own check passes *and* the simplified
graph gives the same outputs as the unsimplified one, then the card in ``metadata_props``
(key ``fopt_card``) and beside the file, and the parity check against the checkpoint
(`fopt.export.steps.export_step`).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from fopt.artifacts import set_onnx_card
from fopt.errors import ExportError, UsageError, first_line
from fopt.export.steps import Built, export_step
from fopt.export.validate import ShapeMismatch, compare_outputs
from fopt.runtime.onnxrt import ort_session

DEFAULT_OPSET = 17
MIN_OPSET = 13
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def max_supported_opset() -> int:
    import onnx.defs
    import torch.onnx._constants as c  # noqa: PLC2701 - no public constant for the legacy exporter

    return min(onnx.defs.onnx_opset_version(), getattr(c, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))


def check_opset(opset: int) -> int:
    """`opset` if the installed exporter can produce it, else a one-line UsageError."""
    top = max_supported_opset()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= top:
        raise UsageError(f"opset {opset} cannot be produced here (supported {MIN_OPSET}..{top}; "
                         f"default {DEFAULT_OPSET})")
    return opset


# ----------------------------------------------------------------------------- export-friendly modules

class _PoolMatrix:
    """Adaptive average pooling as two constant matrices (same bins as PyTorch's kernel)."""
    @staticmethod
    def matrix(n_in: int, n_out: int):
        import torch

        m = torch.zeros(n_out, n_in)
        for i in range(n_out):
            start = (i * n_in) // n_out
            end = -((-(i + 1) * n_in) // n_out)  # ceil
            m[i, start:end] = 1.0 / (end - start)
        return m


def _matrix_pool_module(in_hw: tuple[int, int], out_hw: tuple[int, int]):
    import torch
    import torch.nn as nn

    class MatrixAdaptiveAvgPool2d(nn.Module):
        """out = Ph @ x @ Pw^T: exportable for any in/out size, exact for a fixed input size."""
        def __init__(self):
            super().__init__()
            self.register_buffer("ph", _PoolMatrix.matrix(in_hw[0], out_hw[0]))
            self.register_buffer("pw_t", _PoolMatrix.matrix(in_hw[1], out_hw[1]).t().contiguous())

        def forward(self, x):
            return torch.matmul(torch.matmul(self.ph, x), self.pw_t)

    return MatrixAdaptiveAvgPool2d()


@contextlib.contextmanager
def export_friendly(model, dummy) -> Iterator[list[str]]:
    """Temporarily swap modules the ONNX exporter cannot express at this input size.

    The legacy exporter refuses ``AdaptiveAvgPool2d`` whose output size does not divide its input
    size (VGG-16's 7x7 pool after a 1x1 feature map at 32 px). With the spatial size fixed (only
    the batch axis is dynamic) such a pool is exactly two constant matrix products. Yields the
    list of rewrites made (empty for most models); the model is restored on exit.
    """
    import torch
    import torch.nn as nn

    def out_hw(mod, in_hw):
        size = mod.output_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return tuple(i if o is None else int(o) for o, i in zip(size, in_hw))

    pools = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.AdaptiveAvgPool2d) and out_hw(m, (1, 1)) != (1, 1)]
    shapes: dict[str, tuple[int, int]] = {}
    if pools:
        handles = [m.register_forward_pre_hook(
            lambda mod, args, name=name: shapes.__setitem__(name, tuple(args[0].shape[-2:])))
            for name, m in pools]
        try:
            with torch.no_grad():
                model(dummy)
        finally:
            for h in handles:
                h.remove()
    swapped: list[tuple[Any, str, Any]] = []
    notes: list[str] = []
    try:
        for name, m in pools:
            in_hw = shapes.get(name)
            if in_hw is None:
                continue
            o = out_hw(m, in_hw)
            if all(i % k == 0 for i, k in zip(in_hw, o)):
                continue
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            new = _matrix_pool_module(in_hw, o).to(dummy.device)
            setattr(parent, child, new)
            swapped.append((parent, child, m))
            notes.append(f"{name}: AdaptiveAvgPool2d {in_hw[0]}x{in_hw[1]} -> {o[0]}x{o[1]} exported "
                         f"as constant-matrix pooling (exact at this input size)")
        yield notes
    finally:
        for parent, child, original in swapped:
            setattr(parent, child, original)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    # torch 2.14's legacy exporter turns its C++ log on and dumps the whole TorchScript IR to the
    # terminal when a symbolic fails; the error we raise already says what failed.
    import torch

    was_enabled = torch._C._jit_is_onnx_log_enabled()
    original = getattr(torch._C, "_jit_onnx_log", None)
    if original is not None:
        torch._C._jit_onnx_log = lambda *args: None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if original is not None:
            torch._C._jit_onnx_log = original
        torch._C._jit_set_onnx_log_enabled(was_enabled)


def model_to_onnx(model, img_size: int, *, channels: int = 3, opset: int = DEFAULT_OPSET,
                  dynamic_batch: bool = True, batch: int = 1, notes: list[str] | None = None) -> Any:
    """Export `model` (eval mode) to an in-memory `onnx.ModelProto` named input/logits.

    `notes`, when given, receives one line per export-friendly rewrite (see `export_friendly`).
    """
    import onnx
    import torch

    check_opset(opset)
    if batch < 1:
        raise UsageError(f"batch must be at least 1, got {batch}")
    if img_size < 1:
        raise UsageError(f"image size must be at least 1, got {img_size}")
    model = model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dummy = torch.randn(batch, channels, img_size, img_size, device=device)
    buf = io.BytesIO()
    dyn = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    try:
        with _quiet_exporter(), export_friendly(model, dummy) as rewrites, torch.no_grad():
            torch.onnx.export(model, (dummy,), buf, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=opset,
                              dynamic_axes=dyn, do_constant_folding=True, dynamo=False)
    except Exception as e:  # exporter failures come in many types; report one line, keep the cause
        first = first_line(e)
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {first}") from e
    if notes is not None:
        notes.extend(rewrites)
    return onnx.load_from_string(buf.getvalue())


# ----------------------------------------------------------------------------- checks, simplify

def check_and_infer(proto) -> Any:
    """``onnx.checker`` full check plus strict shape inference; returns the inferred model."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True,
                                                     data_prop=True)
    except Exception as e:  # checker/inference errors have several types; one line, keep the cause
        first = first_line(e)
        raise ExportError(f"the exported ONNX graph fails onnx.checker: {first}") from e
    return inferred


def graph_stats(proto) -> dict[str, int]:
    return {"nodes": len(proto.graph.node), "bytes": proto.ByteSize()}


def _ort_outputs(proto, inputs: list) -> list:
    sess = ort_session(proto.SerializeToString(), threads=1)
    return [sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0] for x in inputs]


@dataclass
class SimplifyReport:
    applied: bool
    before: dict[str, int]
    after: dict[str, int] | None = None
    reason: str | None = None         # why the simplified graph was not kept
    max_abs_diff: float | None = None  # simplified vs unsimplified, ORT CPU

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "before": self.before, "after": self.after,
                "reason": self.reason, "max_abs_diff": self.max_abs_diff}

    def line(self) -> str:
        def mb(n: int) -> str:
            return f"{n / 1e6:.2f} MB"

        b = self.before
        if self.applied and self.after:
            a = self.after
            return (f"onnxsim: {b['nodes']} -> {a['nodes']} nodes, {mb(b['bytes'])} -> {mb(a['bytes'])}")
        return f"onnxsim: not applied ({self.reason}); keeping {b['nodes']} nodes, {mb(b['bytes'])}"


def simplify_onnx(proto, inputs: list, *, atol: float, rtol: float) -> tuple[Any, SimplifyReport]:
    """Simplify with onnxsim; keep the result only if its check passes and outputs are unchanged.

    `inputs` are float32 NCHW arrays the comparison runs on (batch 1 and a larger batch when the
    axis is dynamic). On any failure the unsimplified `proto` comes back with the reason.
    """
    before = graph_stats(proto)
    try:
        import onnxsim
    except ImportError:
        return proto, SimplifyReport(False, before, reason="onnxsim is not installed")
    shape = list(inputs[-1].shape)
    try:
        # onnxsim prints its check progress; our report says the same in one line. One random
        # check is enough there: the comparison below on real inputs at both batch sizes is the
        # real test, and each onnxsim check costs two ORT sessions (~6 s for VGG-16).
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            simplified, ok = onnxsim.simplify(proto, check_n=1, test_input_shapes={INPUT_NAME: shape},
                                              check_atol=atol, check_rtol=rtol)
    except Exception as e:  # onnxsim raises many types; a failed simplification is not fatal
        first = first_line(e)
        return proto, SimplifyReport(False, before, reason=f"onnxsim failed: {first[:160]}")
    if not ok:
        return proto, SimplifyReport(False, before, reason="onnxsim's own check failed")
    try:
        check_and_infer(simplified)
        ref, got = _ort_outputs(proto, inputs), _ort_outputs(simplified, inputs)
    except Exception as e:  # a simplified graph ORT cannot load is a failed simplification
        first = first_line(e)
        return proto, SimplifyReport(False, before, reason=f"simplified graph is invalid: {first[:160]}")

    try:
        checks = [compare_outputs(a, b, atol=atol, rtol=rtol, label="simplified graph") for a, b in zip(got, ref)]
    except ShapeMismatch as e:
        return proto, SimplifyReport(False, before, reason=f"it changed output shapes ({e})")
    diff = max(c.max_abs_diff for c in checks)
    if not all(c.within_tolerance for c in checks):
        return proto, SimplifyReport(False, before, reason=f"it changed outputs (max abs diff {diff:.3g})",
                                     max_abs_diff=diff)
    return simplified, SimplifyReport(True, before, graph_stats(simplified), max_abs_diff=diff)


# ----------------------------------------------------------------------------- card

def _saver(proto) -> Callable[[Path, dict[str, Any]], None]:
    import onnx

    def save(path: Path, card: dict[str, Any]) -> None:
        set_onnx_card(proto, card)
        onnx.save(proto, str(path))

    return save


# ----------------------------------------------------------------------------- the step

@export_step("onnx", suffix=".onnx")
def checkpoint_to_onnx(ckpt, *, img_size: int, batch_sizes: tuple[int, ...], sample_inputs: list,
                       opset: int = DEFAULT_OPSET, dynamic_batch: bool = True, batch: int = 1,
                       simplify: bool = True, atol: float, rtol: float, log: Callable[[str], None]) -> Built:
    """Checkpoint -> ONNX (checked, shape-inferred, optionally simplified).

    Called through `export_step`, which loads the checkpoint, checks the output path, saves with
    the card, runs parity and moves the file into place; see `fopt.export.steps`.
    """
    check_opset(opset)
    rewrites: list[str] = []
    proto = model_to_onnx(ckpt.model, img_size, channels=ckpt.input_spec.channels, opset=opset,
                          dynamic_batch=dynamic_batch, batch=batch, notes=rewrites)
    for r in rewrites:
        log(f"onnx: {r}")
    proto = check_and_infer(proto)
    details: dict[str, Any] = {"opset": opset, "dynamic_batch": dynamic_batch,
                               "batch": None if dynamic_batch else batch, "rewrites": rewrites,
                               "input_name": INPUT_NAME, "output_name": OUTPUT_NAME}
    if simplify:
        proto, report = simplify_onnx(proto, sample_inputs, atol=atol, rtol=rtol)
        log(report.line())
        details["simplify"] = report.to_dict()
        notes = [] if report.applied else [f"unsimplified model kept: {report.reason}"]
    else:
        details["simplify"] = {"applied": False, "before": graph_stats(proto), "after": None,
                               "reason": "--no-simplify", "max_abs_diff": None}
        notes = []
    details["nodes"] = len(proto.graph.node)
    return Built(save=_saver(proto), card_extra={"opset": opset, "export": details}, notes=notes)
