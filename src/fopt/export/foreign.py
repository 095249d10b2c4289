"""A TorchScript file fopt did not make, exported to a parity-checked ONNX file it can optimize.

The file's card (from `fopt.describe`: its input size, normalisation and classes as the user
stated them) becomes the ONNX file's card, with the TorchScript file and its sha256 as the parent.
The graph is checked and shape-inferred as every fopt export is; parity compares the ONNX file
through ONNX Runtime with the TorchScript program itself on seeded random batches of 1 and 2
(a foreign file records no dataset to take real images from). Nothing is written unless parity
holds, and the TorchScript file is never touched.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fopt.artifacts import (
    atomic_paths,
    card_path,
    image_spec,
    json_text,
    make_card,
    sealed_card,
    set_onnx_card,
)
from fopt.errors import ExportError, InputError, OutputExistsError, first_line
from fopt.export.onnx import (
    DEFAULT_OPSET,
    INPUT_NAME,
    OUTPUT_NAME,
    check_and_infer,
    model_to_onnx,
)
from fopt.export.validate import DEFAULT_ATOL, DEFAULT_RTOL, compare_outputs
from fopt.runtime.base import trust_note
from fopt.runtime.onnxrt import ort_session

PARITY_BATCHES = (1, 2)


def torchscript_to_onnx(source: str | Path, out: str | Path, card: dict[str, Any], *, force: bool = False,
                        opset: int = DEFAULT_OPSET, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                        log: Callable[[str], None] = lambda m: None) -> Path:
    """Export the TorchScript file `source` (described by `card`) to `out`; returns `out`."""
    import onnx
    import torch

    source, out = Path(source), Path(out)
    if out.exists() and not force:
        raise OutputExistsError(f"{out} exists (pass --force to overwrite)")
    spec = image_spec(card, source)
    trust_note(source, "torchscript")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)   # torch.jit.load is deprecated in 2.14
            module = torch.jit.load(str(source), map_location="cpu").eval()
    except Exception as e:
        raise InputError(f"{source}: not a loadable TorchScript file ({first_line(e)})") from None
    proto = check_and_infer(model_to_onnx(module, spec.size, channels=spec.channels, opset=opset))
    parity = _parity(module, proto, spec.channels, spec.size, atol=atol, rtol=rtol, label=out.name)
    onnx_card = make_card(kind="onnx", format="onnx", precision="fp32", input_spec=card["input_spec"],
                          class_names=card.get("class_names"), parent=source, model=card.get("model"),
                          opset=opset, metrics={"parity": parity},
                          **{k: card[k] for k in ("num_classes", "foreign") if card.get(k) is not None})
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_paths(out, card_path(out)) as (tmp, tmp_card):
        set_onnx_card(proto, onnx_card)
        onnx.save(proto, str(tmp))
        tmp_card.write_text(json_text(sealed_card(tmp, onnx_card)))
    log(f"export: {source.name} -> {out} (parity max |diff| {parity['max_abs_diff']:.3g} at batch "
        f"{'/'.join(map(str, PARITY_BATCHES))} on random inputs)")
    return out


def _parity(module, proto, channels: int, size: int, *, atol: float, rtol: float, label: str) -> dict[str, Any]:
    import torch

    rng = np.random.default_rng(0)
    session = ort_session(proto.SerializeToString(), threads=1)
    checks = []
    for b in PARITY_BATCHES:
        x = rng.standard_normal((b, channels, size, size), dtype=np.float32)
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        checks.append(compare_outputs(got, want, atol=atol, rtol=rtol, label=label))
    worst = max(c.max_abs_diff for c in checks)
    if not all(c.within_tolerance for c in checks):
        raise ExportError(f"{label}: the ONNX export differs from the TorchScript program (max |diff| "
                          f"{worst:.3g} > atol {atol:g} + rtol {rtol:g}); nothing was written")
    return {"passed": True, "inputs": "random", "batches": list(PARITY_BATCHES), "max_abs_diff": worst,
            "atol": atol, "rtol": rtol, "reference": "torchscript"}
