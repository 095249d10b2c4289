"""`fopt export`: parse options, call `fopt.export.steps.export_checkpoint`, print the table.

No torch/onnx/onnxruntime import at module level: `fopt --help` stays light.
"""

from __future__ import annotations

import click

from fopt.console import force_option, json_option, print_table, write_json
from fopt.describe.hints import hint_options


def _batch(ctx, param, value: str) -> int | None:
    """'dynamic' -> None (dynamic batch axis); a positive integer -> that fixed batch."""
    if value is None or value.lower() == "dynamic":
        return None
    try:
        n = int(value)
    except ValueError:
        raise click.BadParameter(f"expected 'dynamic' or a positive integer, got {value!r}") from None
    if n < 1:
        raise click.BadParameter(f"expected 'dynamic' or a positive integer, got {value!r}")
    return n


def _is_torchscript(path: str) -> bool:
    """True for a TorchScript file; anything else goes to the checkpoint reader and its errors."""
    from fopt.artifacts import detect_format
    from fopt.errors import FoptError

    try:
        return detect_format(path) == "torchscript"
    except FoptError:
        return False


@click.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False), required=False)
@click.option("--model", "model_name", help="Export a model fopt did not train: torchvision:NAME, timm:NAME "
                                            "or a registry name (with --weights FILE).")
@click.option("--module", "module", help="Export your own nn.Module: package.module:factory, called as "
                                        "factory(num_classes=N) from this environment.")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="With --model/--module: a state_dict file, a checkpoint holding one (state_dict, model, "
                   "ema, model_state_dict) or a fopt checkpoint; loaded weights_only, every key must fit.")
@click.option("--num-classes", type=click.IntRange(min=2), default=None,
              help="With --model/--module: the classifier's width (default: the --classes count).")
@click.option("--onnx", "want_onnx", is_flag=True, help="Export ONNX (<stem>.onnx).")
@click.option("--torchscript", "want_ts", is_flag=True, help="Export TorchScript (<stem>.torchscript.pt).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Output folder (default: the checkpoint's folder).")
@json_option
@click.option("--opset", type=int, default=None,
              help="ONNX opset (default 17: read by onnxruntime >= 1.18 and TensorRT 10/11, and enough "
                   "for per-channel QDQ INT8; the exporter here produces 13..20).")
@click.option("--batch", "batch", default="dynamic", show_default=True, callback=_batch,
              help="'dynamic' for a dynamic batch axis, or a fixed batch size N.")
@click.option("--img-size", type=int, default=None, help="Input size in pixels (default: the checkpoint's).")
@click.option("--simplify/--no-simplify", default=True, show_default=True,
              help="ONNX: simplify with onnxsim (kept only if its outputs are unchanged).")
@click.option("--freeze/--no-freeze", default=None,
              help="TorchScript: force torch.jit.freeze on or off (default: freeze if not slower, measured).")
@click.option("--atol", type=float, default=None, help="Parity absolute tolerance (default 1e-4).")
@click.option("--rtol", type=float, default=None, help="Parity relative tolerance (default 1e-3).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the parity check runs (export itself always runs on the CPU).")
@force_option
@hint_options(only=("input_shape", "mean", "std", "preset", "classes"))
def export(checkpoint, model_name, module, weights, num_classes, want_onnx, want_ts, out_dir, json_path, opset,
           batch, img_size, simplify, freeze, atol, rtol, device, force, hints):
    """Export a checkpoint to TorchScript and/or ONNX, each proven equal to the checkpoint.

    Both formats when neither --onnx nor --torchscript is given. ONNX: input 'input', output
    'logits', dynamic batch axis, onnx.checker full check, shape inference, onnxsim when it keeps
    the outputs. TorchScript: traced (scripted when the trace is wrong), frozen when not slower.
    Each file gets its card embedded and beside it (<file>.json). Parity runs both files and the
    checkpoint through their runners on real images of the checkpoint's dataset (random inputs
    when it is unreachable) at batch 1 and 8; over tolerance exits with status 2 and keeps no file.

    Default opset 17: the newest opset that onnxruntime (1.18+), TensorRT 10 and 11 and the INT8
    quantizer all accept, and these CNNs need nothing newer.

    A model fopt did not train: --model torchvision:NAME or timm:NAME with --weights FILE, or
    --module package.module:factory, plus --num-classes or --classes, and --out. It is first saved
    as a fopt checkpoint in --out (its card names the weights file and what was assumed, e.g.
    ImageNet normalisation unless --preset/--mean/--std say otherwise), then exported from there.

    Example: fopt export artifacts/run1/best.pt --onnx --out artifacts/run1
    Example: fopt export --model timm:resnet18 --weights w.pth --classes classes.txt --onnx --out out/
    """
    from pathlib import Path

    from fopt.errors import UsageError
    from fopt.export.onnx import DEFAULT_OPSET
    from fopt.export.run import export_checkpoint

    if module:
        if model_name:
            raise UsageError("give --model or --module, not both")
        model_name = f"module:{module}"
    if model_name:
        if checkpoint:
            raise UsageError(f"give a CHECKPOINT or --model/--module, not both ({checkpoint})")
        if not out_dir:
            raise UsageError("--model/--module need --out DIR (fopt does not write beside your weights)")
        from fopt.export.imported import import_model

        checkpoint = import_model(model_name, out_dir, weights=weights, num_classes=num_classes,
                                  img_size=img_size, hints=hints, force=force,
                                  log=lambda m: click.echo(m, err=True))
    elif checkpoint is None:
        raise UsageError("give a CHECKPOINT to export, or --model NAME / --module package.module:factory")
    elif _is_torchscript(checkpoint):   # a TorchScript file (from elsewhere) -> ONNX
        from fopt.describe.infer import describe_model
        from fopt.export.foreign import torchscript_to_onnx

        if not out_dir or want_ts:
            raise UsageError(f"{checkpoint} is TorchScript: export it with --onnx --out DIR (fopt does not "
                             f"write beside a file it did not make)")
        out = torchscript_to_onnx(checkpoint, Path(out_dir) / f"{Path(checkpoint).stem}.onnx",
                                  describe_model(checkpoint, hints), force=force, opset=opset or DEFAULT_OPSET,
                                  log=lambda m: click.echo(m, err=True))
        write_json(json_path, {"source": str(checkpoint), "onnx": str(out)})
        return
    elif weights or num_classes or not hints.empty:
        raise UsageError("--weights, --num-classes, --classes and the normalisation options go with "
                         "--model/--module; a fopt checkpoint's card already says them")

    formats = [f for f, on in (("torchscript", want_ts), ("onnx", want_onnx)) if on] or ["torchscript", "onnx"]
    results = export_checkpoint(checkpoint, formats, out_dir, img_size=img_size,
                                dynamic_batch=batch is None, batch=batch or 1, atol=atol, rtol=rtol,
                                device=device, force=force, opset=opset, simplify=simplify, freeze=freeze)
    print_table([r.row() for r in results], title="export",
                headers={"size_mb": "MB", "inputs": "parity inputs", "max_abs_diff": "max |diff|",
                         "top1_agree": "top-1 agree"})
    write_json(json_path, {"checkpoint": str(checkpoint), "results": [r.to_dict() for r in results]})
