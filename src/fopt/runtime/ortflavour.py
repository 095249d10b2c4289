"""Which ONNX Runtime is installed: the one check before fopt imports ``onnxruntime``.

ONNX Runtime ships as several distributions (``onnxruntime`` for the CPU, ``onnxruntime-gpu`` for
the CUDA and TensorRT providers, and others) that all install the same ``onnxruntime`` import
folder. Two of them installed together overwrite each other's files: whichever pip wrote last
wins, and with ``onnxruntime`` over ``onnxruntime-gpu`` the CUDA provider silently disappears.
`import_onnxruntime` therefore checks, once per process, that exactly one flavour is installed
and says which; fopt's extras install one (``pip install -e '.[cpu]'`` or ``'.[gpu]'``).
"""

from __future__ import annotations

import importlib.metadata as md
from typing import Any

from fopt.errors import MissingDependency

# Distributions that provide the `onnxruntime` import package, and what each flavour runs on.
FLAVOURS: dict[str, str] = {
    "onnxruntime": "CPU",
    "onnxruntime-gpu": "CUDA/TensorRT",
    "onnxruntime-openvino": "OpenVINO",
    "onnxruntime-directml": "DirectML",
    "onnxruntime-rocm": "ROCm",
    "onnxruntime-qnn": "QNN",
    "onnxruntime-training": "training",
    "ort-nightly": "CPU nightly",
    "ort-nightly-gpu": "CUDA nightly",
}
INSTALL_LINE = "pip install -e '.[cpu]' (or '.[gpu]' for CUDA and TensorRT)"
_CHECKED: str | None = None


def installed_flavours() -> dict[str, str]:
    """{distribution: version} of every installed ONNX Runtime flavour."""
    out = {}
    for dist in FLAVOURS:
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


def check_flavours(installed: dict[str, str] | None = None) -> str:
    """The one installed flavour as ``"onnxruntime-gpu 1.22.0 (CUDA/TensorRT)"``; none or several
    is a MissingDependency whose one line says what to run."""
    installed = installed_flavours() if installed is None else installed
    if not installed:
        raise MissingDependency(f"onnxruntime is not installed: {INSTALL_LINE}")
    if len(installed) > 1:
        names = " ".join(sorted(installed))
        found = ", ".join(f"{d} {v}" for d, v in sorted(installed.items()))
        raise MissingDependency(f"several ONNX Runtime flavours are installed ({found}); they share one "
                                f"import folder and break each other: pip uninstall -y {names}, then "
                                f"{INSTALL_LINE}")
    (dist, version), = installed.items()
    return f"{dist} {version} ({FLAVOURS[dist]})"


def active_flavour() -> str:
    """The flavour line of this process (checked on first use)."""
    global _CHECKED
    if _CHECKED is None:
        _CHECKED = check_flavours()
    return _CHECKED


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, after `active_flavour` has checked the installation."""
    active_flavour()
    import onnxruntime

    return onnxruntime
