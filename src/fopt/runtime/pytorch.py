"""PyTorch runners: a fopt checkpoint in eager mode, and a TorchScript file."""

from __future__ import annotations

from typing import Any

import numpy as np

from fopt.errors import InputError
from fopt.runtime.base import RUNNERS, Runner


class _TorchRunner(Runner):
    model: Any = None

    def _apply_threads(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(int(self.threads))

    def _prepare_impl(self, batch: np.ndarray):
        import torch

        return torch.from_numpy(batch).to(self.device)

    def _run_impl(self, prepared):
        import torch

        with torch.inference_mode():
            return self.model(prepared)

    def synchronize(self) -> None:
        if self.device == "cuda":
            import torch
            torch.cuda.synchronize()

    def _close_impl(self) -> None:
        self.model = None


@RUNNERS.register("checkpoint")
class CheckpointRunner(_TorchRunner):
    """A fopt checkpoint (.pt) rebuilt from the model registry, run in eager mode."""

    backend = "torch-eager"

    def _read_card(self) -> dict[str, Any]:
        from fopt.train.checkpoint import read_checkpoint

        self._raw = read_checkpoint(self.path)  # the card lives inside the checkpoint
        return self._raw["card"]

    def _load_impl(self) -> None:
        from fopt.train.checkpoint import load_checkpoint

        self._apply_threads()
        self.model = load_checkpoint(self.path, device=self.device).model
        self._raw = None


@RUNNERS.register("torchscript")
class TorchScriptRunner(_TorchRunner):
    """A TorchScript archive; its card is embedded (_extra_files) and beside it."""

    backend = "torchscript"

    def _read_card(self) -> dict[str, Any]:
        import json

        from fopt.artifacts import read_card

        card = read_card(self.path, required=False)
        if card is not None:
            return card
        import torch

        extra = {"fopt_card.json": ""}
        try:
            torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra)
        except Exception as e:
            raise InputError(f"{self.path}: not a loadable TorchScript file ({type(e).__name__})") from None
        if not extra["fopt_card.json"]:
            raise InputError(f"{self.path}: TorchScript file has no fopt card (embedded or beside it)")
        return json.loads(extra["fopt_card.json"])

    def _load_impl(self) -> None:
        import torch

        self._apply_threads()
        try:
            self.model = torch.jit.load(str(self.path), map_location=self.device).eval()
        except Exception as e:
            raise InputError(f"{self.path}: not a loadable TorchScript file ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
