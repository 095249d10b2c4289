"""TorchScript export: trace checked against eager, script fallback, freezing decision, card."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _inputs(sizes=(1, 4), size=16, channels=3):
    rng = np.random.default_rng(0)
    return [rng.standard_normal((b, channels, size, size)).astype(np.float32) for b in sizes]


def test_export_card_embedded_and_beside(tiny_checkpoint, tmp_path):
    import torch

    from fopt.artifacts import read_card, sha256_file
    from fopt.export.torchscript import CARD_FILE, checkpoint_to_torchscript

    out = tmp_path / "tiny.torchscript.pt"
    r = checkpoint_to_torchscript(tiny_checkpoint, out, log=lambda s: None)
    assert r.path == out and r.passed
    extra = {CARD_FILE: ""}
    torch.jit.load(str(out), _extra_files=extra)
    inside = json.loads(extra[CARD_FILE])
    side = read_card(out)
    assert {k: v for k, v in side.items() if k not in ("sha256", "size_bytes")} == inside
    assert side["sha256"] == sha256_file(out)
    assert (inside["kind"], inside["format"], inside["precision"]) == ("torchscript", "torchscript", "fp32")
    assert inside["parent"]["sha256"] == sha256_file(tiny_checkpoint)
    assert inside["export"]["method"] == "trace"
    assert inside["metrics"]["parity"]["batch_sizes"] == [1, 8]


@pytest.mark.parametrize("freeze, frozen, decided_by", [(True, True, "--freeze"), (False, False, "--no-freeze")])
def test_forced_freeze(tiny_checkpoint, tmp_path, freeze, frozen, decided_by):
    import torch

    from fopt.export.torchscript import checkpoint_to_torchscript

    r = checkpoint_to_torchscript(tiny_checkpoint, tmp_path / "t.pt", freeze=freeze, log=lambda s: None)
    rec = r.details["freeze"]
    assert (rec["frozen"], rec["decided_by"]) == (frozen, decided_by)
    module = torch.jit.load(str(r.path))
    # freezing inlines the weights: a frozen module has no parameters left
    assert (len(list(module.parameters())) == 0) == frozen


def test_measured_freeze_records_timings(tiny_checkpoint, tmp_path):
    from fopt.export.torchscript import checkpoint_to_torchscript

    lines: list[str] = []
    r = checkpoint_to_torchscript(tiny_checkpoint, tmp_path / "t.pt", log=lines.append)
    rec = r.details["freeze"]
    assert rec["decided_by"] == "measured" and rec["frozen_ms"] > 0 and rec["unfrozen_ms"] > 0
    tie = rec["unfrozen_ms"] * 1.05
    if abs(rec["frozen_ms"] - tie) > 2e-4:   # else the record's 4-decimal rounding could flip it
        assert rec["frozen"] == (rec["frozen_ms"] <= tie)
    assert any(line.startswith("torchscript: frozen") for line in lines)


class _BatchDependent:
    """A module whose branch depends on the batch size: a trace at batch 1 is wrong at batch 4."""

    @staticmethod
    def build():
        import torch
        import torch.nn as nn

        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3)

            def forward(self, x):
                y = self.conv(x).mean(dim=(2, 3))
                if x.shape[0] > 1:
                    return y * 2.0
                return y

        torch.manual_seed(0)
        return M().eval()


def test_wrong_trace_falls_back_to_script():
    import torch

    from fopt.export.torchscript import trace_or_script

    model = _BatchDependent.build()
    lines: list[str] = []
    module, method, notes = trace_or_script(model, torch.randn(1, 3, 16, 16), _inputs(),
                                            atol=1e-5, rtol=1e-5, log=lines.append)
    assert method == "script" and any("scripted instead of traced" in n for n in notes)
    x = torch.from_numpy(_inputs()[1])
    torch.testing.assert_close(module(x), model(x))
    assert any("trace is wrong" in line for line in lines)


def test_wrong_trace_and_failing_script_is_export_error(monkeypatch):
    import torch

    from fopt.errors import ExportError
    from fopt.export.torchscript import trace_or_script

    def refuse(model):
        raise RuntimeError("scripting unsupported here")

    monkeypatch.setattr(torch.jit, "script", refuse)
    with pytest.raises(ExportError, match="scripting failed"):
        trace_or_script(_BatchDependent.build(), torch.randn(1, 3, 16, 16), _inputs(),
                        atol=1e-5, rtol=1e-5, log=lambda s: None)


def test_frozen_module_that_differs_is_not_kept(monkeypatch):
    import torch

    from fopt.export import torchscript as ts

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()).eval()
    traced = torch.jit.trace(model, torch.randn(1, 3, 16, 16))

    class Wrong(torch.nn.Module):
        def forward(self, x):
            return model(x) + 1.0

    monkeypatch.setattr(torch.jit, "freeze", lambda m: Wrong())
    module, record, notes = ts.choose_freeze(traced, model, _inputs(), freeze=None, atol=1e-5, rtol=1e-5)
    assert module is traced and record["frozen"] is False
    assert "differs" in notes[0]
