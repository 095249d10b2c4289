"""A model fopt did not train, made into a fopt checkpoint so that every export path applies to it.

``fopt export --model timm:NAME --weights FILE`` (or ``torchvision:NAME``, or ``--module
package.module:factory``) builds the architecture from the model registry, loads the weights
strictly (`fopt.models.load_weights`: ``weights_only``, every key accounted for) and saves a
checkpoint into the output folder. Its card names the weights file and its sha256 as the parent
and lists what was assumed (normalisation, class names), so the exported files' lineage starts at
the user's weights. Export then runs as for any checkpoint, parity check included.
"""

from __future__ import annotations

from pathlib import Path
from fopt.artifacts import InputSpec
from fopt.checkpoint import save_checkpoint
from fopt.describe.hints import ModelHints
from fopt.errors import OutputExistsError, UsageError
from fopt.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODELS,
    build_model,
    count_params,
    folder_name,
    load_weights,
)


def checkpoint_name(model: str) -> str:
    """timm:resnet18 -> resnet18.pt; module:pkg.nets:make_net -> make_net.pt."""
    return f"{folder_name(model.rsplit(':', 1)[-1])}.pt"


def import_model(model: str, out_dir: str | Path, *, weights: str | Path | None = None,
                 num_classes: int | None = None, img_size: int | None = None,
                 hints: ModelHints | None = None, force: bool = False,
                 log=lambda msg: None) -> Path:
    """Write ``out_dir/<name>.pt``, a fopt checkpoint of registry `model` with `weights`; returns it."""
    hints = hints or ModelHints()
    names = hints.class_names
    if num_classes is None and names is None:
        raise UsageError(f"--model {model}: give --num-classes N or --classes FILE (the classifier's width)")
    if num_classes is not None and names is not None and len(names) != num_classes:
        raise UsageError(f"--classes has {len(names)} names but --num-classes is {num_classes}")
    n = num_classes or len(names)  # type: ignore[arg-type]
    entry = MODELS.get(model)
    size = int(img_size or entry.default_size)
    if size < 8:
        raise UsageError(f"--img-size must be >= 8, got {size}")
    target = Path(out_dir) / checkpoint_name(model)
    if target.exists() and not force:
        raise OutputExistsError(f"{target} exists (pass --force to overwrite)")

    assumed: list[str] = []
    net = build_model(model, n)
    if weights is not None:
        loaded = load_weights(net, weights, model)
        log(f"import: loaded {loaded['tensors']} tensors from {weights} into {model}")
    else:
        assumed.append("no --weights: the network has random initial weights")
    mean, std = _normalisation(model, hints, assumed)
    if names is None:
        names = [f"class_{i}" for i in range(n)]
        assumed.append(f"no --classes: outputs named class_0..class_{n - 1}")
    spec = InputSpec(size=size, channels=3, mean=mean, std=std)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    save_checkpoint(target, net, model_name=model, model_kwargs={"num_classes": n}, class_names=names,
                    input_spec=spec, parent=weights,
                    config={"imported": {"model": model, "weights": str(weights) if weights else None,
                                         "params": count_params(net), "assumed": assumed}})
    for line in assumed:
        log(f"import: assumed {line}")
    log(f"import: wrote {target}")
    return target


def _normalisation(model: str, hints: ModelHints, assumed: list[str]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    stated = hints.normalisation(3)
    if stated is not None:
        return stated[0], stated[1]
    if model.startswith("timm:"):
        import timm

        cfg = timm.get_pretrained_cfg(model.split(":", 1)[1])
        if cfg is not None and getattr(cfg, "mean", None) and getattr(cfg, "std", None):
            assumed.append(f"normalisation mean {list(cfg.mean)} std {list(cfg.std)} from timm's config")
            return tuple(cfg.mean), tuple(cfg.std)
    assumed.append("normalisation: ImageNet mean/std (pass --preset or --mean/--std if the weights differ)")
    return IMAGENET_MEAN, IMAGENET_STD

