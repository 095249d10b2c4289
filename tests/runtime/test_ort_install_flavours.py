"""setup.cfg installs exactly one ONNX Runtime flavour per extra set (issue 18, defect 1): the CPU
one with `.[cpu]` (what `make install` uses), the GPU one with `.[gpu]`, never both."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _reqs(text: str) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", ln.strip(), 1)[0].lower()
            for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")}


def test_each_extra_set_gives_one_flavour():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    base = _reqs(cfg["options"]["install_requires"])
    extras = {k: _reqs(v) for k, v in cfg["options.extras_require"].items()}
    flavours = {"onnxruntime", "onnxruntime-gpu"}
    assert not base & flavours, "install_requires must not pick a flavour"
    assert not extras["dev"] & flavours
    assert extras["cpu"] & flavours == {"onnxruntime"} and extras["gpu"] & flavours == {"onnxruntime-gpu"}
    make = (ROOT / "Makefile").read_text()
    assert "-e '.[dev,cpu]'" in make and "-e '.[dev]'" not in make
