"""ONNX -> OpenVINO IR: FP32 (``onnx_to_openvino``) and NNCF post-training INT8 (``onnx_to_openvino_int8``).

An IR is two files, the graph (``.xml``) and its weights (``.bin``, same name); `produce` writes
both atomically with the card. The FP32 IR keeps FP32 weights (``compress_to_fp16=False``:
OpenVINO would otherwise store FP16 weights by default, an accuracy change nobody asked for).

The INT8 IR comes from ``nncf.quantize`` over an ``nncf.Dataset`` of the same real calibration
images static INT8 uses (`fopt.optimize.calib`: same ``--calib-size``, same refusal below 32), fed
one image at a time. NNCF's defaults are kept (the performance preset: symmetric INT8 weights and
activations; its overflow fix for CPUs without VNNI on the first layer), and recorded in the card.

The card also records the weights file's sha256 and size, so a swapped or truncated ``.bin`` is
detectable (`fopt.runtime.openvino.check_ir_files` checks the size before loading).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

from fopt.artifacts import sha256_file
from fopt.errors import MissingDependency
from fopt.runtime.openvino import import_openvino, openvino_unavailable_reason
from fopt.workdir import scratch_dir

NNCF_HINT = "pip install fopt[openvino]"


def require_openvino() -> None:
    """OpenVINO (and NNCF) importable and running on this CPU, else one line saying what to do."""
    reason = openvino_unavailable_reason()
    if reason:
        raise MissingDependency(reason)
    if importlib.util.find_spec("nncf") is None:   # found, not imported: importing it takes seconds
        raise MissingDependency(f"NNCF is not installed (OpenVINO INT8 needs it): {NNCF_HINT}")


def _save_ir(model: Any, dst: Path, dst_bin: Path) -> dict[str, Any]:
    """Save `model` as IR into the two (temporary) paths `dst` (.xml) and `dst_bin` (.bin).

    OpenVINO names the .bin after the .xml, so it saves into a scratch folder beside them first
    and the two files are then moved onto the paths `produce` commits together."""
    ov = import_openvino()
    tmp = scratch_dir(Path(dst).parent, "ir")
    try:
        xml = tmp / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        os.replace(xml, dst)
        os.replace(xml.with_suffix(".bin"), dst_bin)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"openvino": ov.__version__.split("-")[0], "compress_to_fp16": False,
            "weights": {"sha256": sha256_file(dst_bin), "size_bytes": Path(dst_bin).stat().st_size}}


def onnx_to_openvino(src: str | Path, dst: str | Path, dst_bin: str | Path) -> dict[str, Any]:
    """OpenVINO IR with FP32 weights from an ONNX file (`ov.convert_model`)."""
    ov = import_openvino()
    model = ov.convert_model(str(src))
    return {"converter": "openvino.convert_model", **_save_ir(model, Path(dst), Path(dst_bin))}


def onnx_to_openvino_int8(src: str | Path, dst: str | Path, dst_bin: str | Path, *,
                          calibration: Any, subset_size: int | None = None) -> dict[str, Any]:
    """NNCF post-training INT8 IR from an FP32 ONNX file, calibrated on `calibration.images`."""
    import nncf

    ov = import_openvino()
    model = ov.convert_model(str(src))
    images = calibration.images
    n = int(subset_size or len(images))
    dataset = nncf.Dataset([images[i:i + 1] for i in range(len(images))])
    quantized = nncf.quantize(model, dataset, subset_size=n)
    return {"quantizer": "nncf.quantize", "nncf": nncf.__version__, "subset_size": n,
            "preset": "performance (NNCF default)", **_save_ir(quantized, Path(dst), Path(dst_bin))}
