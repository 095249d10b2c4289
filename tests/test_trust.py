"""Checkpoint safety rests on torch.load(weights_only=True), a safe boundary only from torch 2.6."""

import configparser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"


def _floors() -> dict[str, Version]:
    cfg = configparser.ConfigParser()
    cfg.read(SETUP_CFG)
    reqs = [Requirement(line) for line in cfg["options"]["install_requires"].splitlines() if line.strip()]
    out = {}
    for r in reqs:
        lows = [Version(s.version) for s in r.specifier if s.operator in (">=", "==", "~=")]
        if lows:
            out[r.name] = max(lows)
    return out


def test_torch_floor_is_the_first_release_with_a_safe_weights_only_load():
    floors = _floors()
    assert floors["torch"] >= Version("2.6")
    assert floors["torchvision"] >= Version("0.21")   # the torchvision built against torch 2.6
