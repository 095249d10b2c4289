"""`fopt data`: make a dataset table from a raw dataset, or generate a synthetic one.

No torch import here: the library modules are imported inside the commands.
"""

from __future__ import annotations

import click

from fopt.console import csv_option, json_option
from fopt.data.ownership import FORCE_HELP  # light: no torch, no PIL

force_option = click.option("--force", is_flag=True, help=FORCE_HELP)  # the same on both commands


@click.group("data")
def data() -> None:
    """Build a dataset table from DeepFashion/image folders/Fashion-MNIST, or synthesize one.

    Example: fopt data synth data/synth && fopt data build data/synth data/synth-table
    """


@data.command("synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--classes", default=22, show_default=True, type=int,
              help="Number of categories (the study's 22 first, up to all 50).")
@click.option("--per-class", default=None, type=int, help="Images per category.  [default: 150]")
@click.option("--size", default=None, type=int, help="Image side in pixels.  [default: 64]")
@click.option("--seed", default=0, show_default=True, type=int, help="Generator seed (same seed, same bytes).")
@click.option("--preview", type=click.Path(dir_okay=False), help="Also write a PNG contact sheet here.")
@force_option
def synth_cmd(out: str, classes: int, per_class: int | None, size: int | None, seed: int,
              preview: str | None, force: bool) -> None:
    """Generate a synthetic clothing dataset in the DeepFashion layout at OUT.

    Writes OUT/Img/img/<item>/img_*.jpg, OUT/Anno/list_category_cloth.txt,
    OUT/Anno/list_category_img.txt and OUT/Eval/list_eval_partition.txt, exactly like the
    official Category and Attribute Prediction download. Deterministic for a seed.

    \b
    Example: fopt data synth data/synth --classes 22 --per-class 100 --preview synth.png
    """
    from fopt.console import note, print_table, progress
    from fopt.data.categories import synth_category_order
    from fopt.data.synth import DEFAULT_PER_CLASS, DEFAULT_SIZE, synthesize

    per_class = DEFAULT_PER_CLASS if per_class is None else per_class
    size = DEFAULT_SIZE if size is None else size
    with progress() as bar:
        task = bar.add_task("synthesizing", total=classes, info="")
        root = synthesize(out, classes=classes, per_class=per_class, size=size, seed=seed,
                          preview=preview, force=force,
                          progress=lambda done, total: bar.update(task, completed=done))
    print_table([{"classes": classes, "per_class": per_class, "images": classes * per_class,
                  "size_px": size, "seed": seed, "out": str(root)}], title="synthetic DeepFashion-layout dataset")
    note("categories: " + ", ".join(synth_category_order()[:classes]))
    if preview:
        note(f"wrote {preview}")


@data.command("build")
@click.argument("raw", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["auto", "deepfashion", "imagefolder", "fashion-mnist"]),
              default="auto", show_default=True, help="Layout of RAW (auto detects it).")
@click.option("--sampling-threshold", default=None, type=int,
              help="Drop categories with fewer usable images than this (the study used 1000).  [default: 10]")
@click.option("--max-per-class", default=None, type=int, help="Cap each category at this many images (seeded sample).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for the cap sample and the stratified split.")
@click.option("--strict", is_flag=True, help="Missing or undecodable images are an error instead of a warning.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write the class histogram PNG here.")
@force_option
@json_option
@csv_option
def build_cmd(raw: str, out: str, fmt: str, sampling_threshold: int | None, max_per_class: int | None,
              seed: int, strict: bool, plot: str | None, force: bool, json_path: str | None,
              csv_path: str | None) -> None:
    """Build OUT/dataset.csv and OUT/mapping.json from the raw dataset RAW.

    RAW is a DeepFashion Category-and-Attribute download (Anno/, Eval/, Img/img/), a folder
    with one sub-folder per class (optionally under train/ val/ test/), or Fashion-MNIST's
    FashionMNIST/raw/*-ubyte.gz. The official partition is kept when there is one, else a
    stratified 80/10/10 split is made. On bad input nothing is written to OUT. OUT must be new,
    empty or fopt's; an earlier table there is replaced only with --force, and files fopt did
    not write are never touched.

    \b
    Example: fopt data build data/deepfashion-raw data/deepfashion --sampling-threshold 1000 --max-per-class 1000 --plot classes.png
    """
    from fopt.console import note, print_table, progress, warn, write_csv, write_json
    from fopt.data.build import DEFAULT_SAMPLING_THRESHOLD, build_dataset

    threshold = DEFAULT_SAMPLING_THRESHOLD if sampling_threshold is None else sampling_threshold
    with progress() as bar:
        task = bar.add_task("checking images", total=None, info="")
        result = build_dataset(raw, out, fmt=fmt, sampling_threshold=threshold, max_per_class=max_per_class,
                               seed=seed, strict=strict, plot=plot, force=force,
                               progress=lambda done, total: bar.update(task, completed=done, total=total))
    rows = result.count_rows()
    print_table(rows, columns=["label", "class", "train", "val", "test", "total"],
                title=f"{result.format}: {len(result.class_names)} classes, {result.partition} split")
    for w in result.warnings:
        warn(w)
    note(f"wrote {result.out / 'dataset.csv'} and {result.out / 'mapping.json'} (images under {result.root})")
    if plot:
        note(f"wrote {plot}")
    write_json(json_path, {k: v for k, v in result.mapping.items()})
    write_csv(csv_path, rows[:-1], columns=["label", "class", "train", "val", "test", "total"])
