"""PyTorch runners: a fopt checkpoint in eager mode, and a TorchScript file."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from fopt.artifacts import read_card
from fopt.checkpoint import load_checkpoint, read_checkpoint
from fopt.errors import InputError, one_line
from fopt.runtime.base import FOREIGN_HINT, RUNNERS, Runner

CARD_FILE = "fopt_card.json"  # the _extra_files key `fopt export` writes the card under


def embedded_torchscript_card(path) -> dict[str, Any] | None:
    """The card inside a TorchScript archive (``<archive>/extra/fopt_card.json``), or None.

    Read straight from the zip, so the model is not deserialised just to learn how to feed it.
    """
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith(f"/extra/{CARD_FILE}")]
            raw = z.read(names[0]) if names else None
    except (OSError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: not a loadable TorchScript file ({type(e).__name__})") from None
    if not raw:
        return None
    try:
        card = json.loads(raw)
    except json.JSONDecodeError:
        raise InputError(f"{path}: its embedded {CARD_FILE} is not valid JSON") from None
    return card if isinstance(card, dict) and "format" in card else None


class _TorchRunner(Runner):
    runtime = "torch"
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
    format = "checkpoint"
    backend = "torch-eager"

    def _read_card(self) -> dict[str, Any]:
        self._raw = read_checkpoint(self.path)  # the card lives inside the checkpoint
        return self._raw["card"]

    def _load_impl(self) -> None:
        self._apply_threads()
        self.model = load_checkpoint(self.path, device=self.device).model
        self._raw = None


@RUNNERS.register("torchscript")
class TorchScriptRunner(_TorchRunner):
    """A TorchScript archive; its card is embedded (_extra_files) and beside it.

    Trust: ``torch.jit.load`` runs the serialized program (its code and whatever operators it
    calls) with your permissions; unlike a checkpoint, it is not loaded ``weights_only``. Load
    TorchScript files only from sources you trust. A file fopt did not write (no sidecar card
    whose sha256 is the file's) gets a one-line note when it is loaded, once per file.
    """
    format = "torchscript"
    backend = "torchscript"

    def _run_impl(self, prepared):
        import torch

        # Not inference_mode: under it TorchScript's profiling executor never settles on an
        # optimized plan and every call stays ~400x slower (measured: 60 ms vs 0.14 ms, tiny).
        with torch.no_grad():
            return self.model(prepared)

    def _read_card(self) -> dict[str, Any]:
        card = read_card(self.path, required=False)
        if card is None:
            card = embedded_torchscript_card(self.path)
        if card is None:
            raise InputError(f"{self.path}: TorchScript file has no fopt card (neither "
                             f"{self.path.name}.json beside it nor {CARD_FILE} inside it){FOREIGN_HINT}")
        return card

    def _load_impl(self) -> None:
        import torch

        self._apply_threads()
        try:
            with warnings.catch_warnings():
                # torch 2.14 marks torch.jit.load deprecated; TorchScript is still the format we ship
                warnings.simplefilter("ignore", FutureWarning)
                self.model = torch.jit.load(str(self.path), map_location=self.device).eval()
        except Exception as e:
            raise InputError(f"{self.path}: not a loadable TorchScript file ({one_line(e)})") from None
