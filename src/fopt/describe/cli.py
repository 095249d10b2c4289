"""`fopt card`: write (or show) the card that tells every command how to feed a model."""

from __future__ import annotations

import json

import click

from fopt.console import force_option, note
from fopt.describe.hints import hint_options


@click.command("card")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--show", is_flag=True, help="Print the card of MODEL (any artifact) as JSON; write nothing.")
@force_option
@hint_options
def card(model, show, force, hints):
    """Write MODEL.json: the card of an ONNX or TorchScript file fopt did not make, so later
    commands (eval, bench, optimize, analyze) need no options for it.

    What the file declares (input name, rank, static dims, element type, output width) is read
    from it; the rest comes from the options and is recorded as assumed. The model file itself
    is never changed. --show prints the card of any artifact, fopt's own included.

    Example: fopt card their.onnx --preset imagenet --classes classes.txt
    Example: fopt card scripted.pt --input-shape 1x3x224x224 --preset inception
    """
    from fopt.artifacts import StaleCardError, card_path, json_text, write_text_atomic
    from fopt.describe.infer import describe_foreign, describe_model, own_card
    from fopt.errors import OutputExistsError

    if show:
        click.echo(json.dumps(describe_model(model, hints), indent=2, default=str))
        return
    try:
        existing = own_card(model)
    except StaleCardError:   # our own card, of an older version of the file: --force replaces it
        existing = None
    if existing is not None and existing.get("kind") != "foreign":
        raise OutputExistsError(f"{model} already has fopt's card (it was made by fopt); "
                                f"`fopt card --show {model}` prints it")
    target = card_path(model)
    if target.exists() and not force:
        raise OutputExistsError(f"{target} exists (pass --force to replace it)")
    described = describe_foreign(model, hints)   # from the file itself: an old card is replaced whole
    write_text_atomic(target, json_text(described))
    note(f"wrote {target}")
    for line in (described.get("foreign") or {}).get("assumed", []):
        note(f"  assumed: {line}")
