"""`fopt data build`: raw dataset -> clean, split dataset table.

Reads one of the layouts in `fopt.data.readers.READERS` (``fmt``: auto, deepfashion,
fashion-mnist, imagefolder), drops categories with fewer than ``sampling_threshold`` usable
images, caps each category at ``max_per_class`` (a deterministic sample for ``seed``), keeps the
official partition when there is one (else a stratified 80/10/10 split) and writes::
    OUT/dataset.csv    path,label,label_name,split   (path relative to mapping["root"])
    OUT/mapping.json   root, classes, counts per class and split, format, source label ids, ...

``label`` is 0-based and contiguous after filtering, in the order of the source labels.
For DeepFashion and image folders ``root`` is RAW itself (absolute), so paths are relative to RAW.
Fashion-MNIST has no image files: its IDX images are written as PNG under ``OUT/images/`` and
``root`` is OUT, so nothing downstream has to know about IDX.

The steps, the same for every format: read the annotations (`read_source`), select the usable
images and classes (`select_classes`), split them (`split_table`), describe the result
(`make_mapping`), write it (`write_outputs`). Every check happens before anything is written:
on bad input OUT is left as it was. OUT is fopt's (`fopt.data.ownership`): a folder with the
user's files is refused, and an earlier table is replaced only with ``force``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import warnings as _warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from fopt import __version__
from fopt.artifacts import (
    json_text,
    replace_dir,
    write_bytes_atomic,
    write_files_atomic,
)
from fopt.data.ownership import claim_outputs
from fopt.data.readers import (
    FMNIST_CLASSES,
    IMAGE_EXTENSIONS,
    IMAGES_DIR,
    OFFICIAL,
    OFFICIAL_TRAIN_TEST,
    READERS,
    STRATIFIED,
    Candidate,
    Source,
    detect_format,
    inside,
    read_source,
)
from fopt.errors import DataError, InputError, UsageError
from fopt.workdir import scratch_dir

__all__ = ["FMNIST_CLASSES", "IMAGE_EXTENSIONS", "READERS", "FORMATS", "BuildResult", "Candidate",
           "Source", "build_dataset", "check_image", "detect_format", "read_source",
           "render_class_histogram"]

FORMATS = ("auto", *READERS.names())
SPLITS = ("train", "val", "test")
DEFAULT_SAMPLING_THRESHOLD = 10   # below this a class cannot get a val and a test image in 80/10/10
STRATIFIED_FRACTIONS = (0.8, 0.1, 0.1)
FMNIST_VAL_FRACTION = 0.1          # of an official train split without val, per class
MAX_IMAGE_PIXELS = 89_478_485      # PIL's decompression-bomb warning limit: larger is refused
PARTITION_NAMES = {OFFICIAL: "official", OFFICIAL_TRAIN_TEST: "official train/test + stratified val",
                   STRATIFIED: "stratified 80/10/10"}
# What build writes in OUT, and the paths it writes under each (relative to OUT).
OUTPUTS = {"dataset.csv": None, "mapping.json": None,
           IMAGES_DIR: re.compile(rf"{IMAGES_DIR}/(train|val|test)/\d+\.png")}


@dataclass
class BuildResult:
    out: Path
    table: pd.DataFrame
    class_names: list[str]
    counts: dict[str, dict[str, int]]       # class name -> {"train","val","test","total"}
    warnings: list[str]
    format: str = ""
    root: Path | None = None
    partition: str = ""
    dropped: dict[str, int] = field(default_factory=dict)   # class dropped by threshold -> images
    skipped: list[dict[str, str]] = field(default_factory=list)
    mapping: dict[str, Any] = field(default_factory=dict)

    def count_rows(self) -> list[dict[str, Any]]:
        """Per-class rows for a table: label, name, train, val, test, total."""
        rows = [{"label": i, "class": n, **self.counts[n]} for i, n in enumerate(self.class_names)]
        total = {s: sum(r[s] for r in rows) for s in (*SPLITS, "total")}
        rows.append({"label": "", "class": "all", **total})
        return rows


# ----------------------------------------------------------------------------- image checks

def check_image(path: Path, root: Path | None = None) -> str | None:
    """None when `path` decodes as an image, else the reason ("missing", "undecodable: ...").

    With `root` (resolved), a path that leads out of it through a symlink is refused unread."""
    from PIL import Image, UnidentifiedImageError

    try:
        if not path.is_file():
            return "missing"
    except (OSError, ValueError) as e:   # a name the OS rejects (too long, NUL byte)
        return f"missing: {' '.join(str(e).split()) or type(e).__name__}"
    if root is not None and not inside(path, root):
        return "symlink leading outside the dataset (not followed)"
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                return f"too large: {w}x{h} pixels (more than {MAX_IMAGE_PIXELS})"
            im.draft("RGB", (32, 32))  # JPEG: decode at reduced scale; still reads every byte
            im.load()
    except Image.DecompressionBombError as e:
        return f"too large: {' '.join(str(e).split())}"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"undecodable: {' '.join(str(e).split()) or type(e).__name__}"
    return None


def _select(cands: list[Candidate], root: Path, need: int | None, rng: np.random.Generator | None,
            check: bool, skipped: list[dict[str, str]], pool: ThreadPoolExecutor | None) -> list[int]:
    """Indices (into `cands`) of up to `need` usable images, in a seeded random order if `rng`."""
    order = rng.permutation(len(cands)) if rng is not None else np.arange(len(cands))
    if not check:
        return sorted(order[:need].tolist() if need is not None else order.tolist())
    keep: list[int] = []
    pos = 0
    while pos < len(order) and (need is None or len(keep) < need):
        chunk = order[pos:pos + (max(need - len(keep), 16) if need is not None else 512)]
        pos += len(chunk)
        paths = [root / cands[i].path for i in chunk]
        reasons = list(pool.map(check_image, paths, [root] * len(paths))) if pool else \
            [check_image(p, root) for p in paths]
        for i, reason in zip(chunk.tolist(), reasons):
            if reason is None:
                if need is None or len(keep) < need:
                    keep.append(i)
            else:
                skipped.append({"path": cands[i].path, "reason": reason, "origin": cands[i].origin})
    return sorted(keep)


# ----------------------------------------------------------------------------- step: select classes

@dataclass
class Selection:
    labels: list[Any]                       # kept source labels, in source order
    kept: dict[Any, list[int]]              # source label -> candidate indices
    dropped: dict[str, int]                 # class name -> usable images (below the threshold)
    skipped: list[dict[str, str]]           # unusable image files


def select_classes(src: Source, sampling_threshold: int, max_per_class: int | None, seed: int,
                   check_images: bool = True,
                   progress: Callable[[int, int], None] | None = None) -> Selection:
    """Per class: the usable images (decoded when `check_images` and they are files), the class
    dropped when fewer than `sampling_threshold`, else capped at `max_per_class` (seeded)."""
    from PIL import Image

    by_label: dict[Any, list[int]] = {}
    for i, c in enumerate(src.candidates):
        by_label.setdefault(c.source_label, []).append(i)
    source_order = sorted(by_label)
    skipped: list[dict[str, str]] = []
    kept: dict[Any, list[int]] = {}
    dropped: dict[str, int] = {}
    check = check_images and src.write_images is None and src.root is not None
    root = src.root if src.root is not None else Path(".")
    with contextlib.nullcontext() if not check else _warnings.catch_warnings():
        if check:   # sizes over the limit are refused by check_image, not warned about by PIL
            _warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) if check else \
                contextlib.nullcontext() as pool:
            for k, lab in enumerate(source_order):
                idx = by_label[lab]
                sub = [src.candidates[i] for i in idx]
                need = None if max_per_class is None else max(max_per_class, sampling_threshold)
                rng = np.random.default_rng([seed, k]) if max_per_class is not None else None
                chosen = _select(sub, root, need, rng, check, skipped, pool)
                if progress:
                    progress(k + 1, len(source_order))
                if len(chosen) < sampling_threshold:
                    dropped[src.class_names[lab]] = len(chosen)
                    continue
                if max_per_class is not None and len(chosen) > max_per_class:
                    chosen = sorted(np.random.default_rng([seed, k, 1]).choice(
                        chosen, max_per_class, replace=False).tolist())
                kept[lab] = [idx[j] for j in chosen]
    if len(kept) < 2:
        sizes = sorted(((len(by_label[lab]), src.class_names[lab]) for lab in by_label), reverse=True)
        biggest = ", ".join(f"{n} {name}" for n, name in sizes[:3])
        raise DataError(f"--sampling-threshold {sampling_threshold} leaves {len(kept)} class(es); at least 2 "
                        f"are needed (largest classes: {biggest})")
    return Selection([lab for lab in source_order if lab in kept], kept, dropped, skipped)


# ----------------------------------------------------------------------------- step: split

def _stratified(n: int, rng: np.random.Generator, fractions: Sequence[float]) -> list[str]:
    n_val = round(n * fractions[1])
    n_test = round(n * fractions[2])
    if n >= 3:  # every split that should exist gets at least one image of every class
        n_val = max(1, n_val) if fractions[1] > 0 else 0
        n_test = max(1, n_test) if fractions[2] > 0 else 0
    splits = ["train"] * (n - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    return [splits[i] for i in np.argsort(rng.permutation(n))]


def _split_official(official: list[str | None], rng: np.random.Generator) -> list[str]:
    return [s or "train" for s in official]


def _split_carve_val(official: list[str | None], rng: np.random.Generator) -> list[str]:
    """The official train/test split, with a stratified val carved out of train."""
    splits = [s or "train" for s in official]
    train_pos = [p for p, s in enumerate(splits) if s == "train"]
    carved = _stratified(len(train_pos), rng, (1 - FMNIST_VAL_FRACTION, FMNIST_VAL_FRACTION, 0.0))
    for p, s in zip(train_pos, carved):
        splits[p] = s
    return splits


def _split_stratified(official: list[str | None], rng: np.random.Generator) -> list[str]:
    return _stratified(len(official), rng, STRATIFIED_FRACTIONS)


SPLITTERS: dict[str | None, Callable[[list[str | None], np.random.Generator], list[str]]] = {
    OFFICIAL: _split_official, OFFICIAL_TRAIN_TEST: _split_carve_val, STRATIFIED: _split_stratified,
}


def split_table(src: Source, sel: Selection, seed: int) -> pd.DataFrame:
    """path, label, label_name, split (and _cand, the candidate index) of every kept image."""
    splitter = SPLITTERS[src.partition]
    rows = []
    for new_label, lab in enumerate(sel.labels):
        idx = sel.kept[lab]
        name = src.class_names[lab]
        splits = splitter([src.candidates[i].split for i in idx], np.random.default_rng([seed, new_label, 2]))
        rows += [(src.candidates[i].path, new_label, name, split, i) for i, split in zip(idx, splits)]
    table = pd.DataFrame(rows, columns=["path", "label", "label_name", "split", "_cand"])
    names = [src.class_names[lab] for lab in sel.labels]
    if len(set(names)) != len(names):
        raise DataError(f"{src.root or 'the dataset'}: two categories share a name; class names must be unique")
    return table


def count_splits(table: pd.DataFrame, class_names: list[str]) -> dict[str, dict[str, int]]:
    counts = {}
    for name in class_names:
        sub = table[table.label_name == name]
        counts[name] = {s: int((sub.split == s).sum()) for s in SPLITS}
        counts[name]["total"] = int(len(sub))
    return counts


def split_warnings(table: pd.DataFrame, counts: dict[str, dict[str, int]]) -> list[str]:
    """An empty split, and classes with no train image (a model cannot learn them)."""
    out = [f"the {s} split is empty" for s in SPLITS if not (table.split == s).any()]
    untrained = [n for n, c in counts.items() if c["train"] == 0]
    if untrained and (table.split == "train").any():
        out.append(f"{len(untrained)} class(es) have no train image, so a model cannot learn them: "
                   + ", ".join(f"{n} ({counts[n]['total']} in val/test)" for n in untrained))
    return out


# ----------------------------------------------------------------------------- step: describe

def make_mapping(src: Source, sel: Selection, table: pd.DataFrame, counts: dict[str, dict[str, int]],
                 root: Path, raw: Path, params: dict[str, Any]) -> dict[str, Any]:
    class_names = [src.class_names[lab] for lab in sel.labels]
    mapping = {
        "format": src.format,
        "root": str(root),
        "source": str(raw),
        "classes": class_names,
        "labels": {str(i): n for i, n in enumerate(class_names)},
        "source_labels": [_jsonable(lab) for lab in sel.labels],
        "counts": counts,
        "split_totals": {s: int((table.split == s).sum()) for s in SPLITS} | {"total": int(len(table))},
        "partition": PARTITION_NAMES[src.partition],
        **params,
        "dropped_classes": sel.dropped,
        "skipped": sel.skipped,
        "fopt_version": __version__,
    }
    for key, per_label in src.label_info.items():
        mapping[key] = [per_label[lab] for lab in sel.labels]
    return mapping


def _jsonable(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x


# ----------------------------------------------------------------------------- step: write

def write_outputs(out: Path, src: Source, table: pd.DataFrame, mapping: dict[str, Any],
                  force: bool = False) -> pd.DataFrame:
    """Write the images a reader holds in memory, dataset.csv and mapping.json into OUT.

    Returns the table without its candidate column."""
    with claim_outputs(out, OUTPUTS, force=force, what="dataset table") as owned:
        images = out / IMAGES_DIR
        if src.write_images is not None:
            tmp = scratch_dir(out, IMAGES_DIR)
            try:
                src.write_images(tmp, [src.candidates[i] for i in table["_cand"]])
                replace_dir(tmp, images)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp)
        elif images.exists():
            owned.remove(images)       # an earlier build's converted images; this table does not use them
        table = table.drop(columns="_cand")
        # both or neither: a table and a mapping from two different builds would disagree
        write_files_atomic({out / "dataset.csv": table.to_csv(index=False, lineterminator="\n"),
                            out / "mapping.json": json_text(mapping)})
    return table


# ----------------------------------------------------------------------------- the build

def _check_arguments(raw: Path, out: Path, fmt: str, sampling_threshold: int,
                     max_per_class: int | None) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if sampling_threshold < 0:
        raise UsageError(f"--sampling-threshold must be >= 0, got {sampling_threshold}")
    if max_per_class is not None and max_per_class < 1:
        raise UsageError(f"--max-per-class must be >= 1, got {max_per_class}")
    if not raw.exists():
        raise InputError(f"{raw}: raw dataset folder does not exist")
    if not raw.is_dir():
        raise InputError(f"{raw}: raw dataset must be a folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: output exists and is not a folder")


def build_dataset(raw: str | os.PathLike, out: str | os.PathLike, fmt: str = "auto",
                  sampling_threshold: int = DEFAULT_SAMPLING_THRESHOLD,
                  max_per_class: int | None = None, seed: int = 0, strict: bool = False,
                  plot: str | os.PathLike | None = None, check_images: bool = True,
                  progress: Callable[[int, int], None] | None = None, force: bool = False) -> BuildResult:
    """Build OUT/dataset.csv and OUT/mapping.json from the raw dataset at `raw`.

    Missing or undecodable image files are skipped with a warning (an error with `strict`);
    only images that would be used are opened, so a cap makes a big dataset quick to build.
    `plot` writes the class histogram PNG. Raises InputError/DataError/UsageError before
    writing anything; OutputExistsError when OUT holds files fopt did not write, or an earlier
    table and not `force`; BusyError while another process writes OUT.
    """
    raw, out = Path(raw), Path(out)
    _check_arguments(raw, out, fmt, sampling_threshold, max_per_class)
    raw_abs, out_abs = raw.resolve(), out.resolve()

    src = read_source(raw_abs, fmt)
    sel = select_classes(src, sampling_threshold, max_per_class, seed, check_images, progress)
    warnings = list(src.warnings)
    if sel.skipped:
        first = sel.skipped[0]
        msg = (f"{len(sel.skipped)} image file(s) missing or undecodable, e.g. {raw_abs / first['path']} "
               f"({first['reason']}; listed in {first['origin']})")
        if strict:
            raise DataError(msg + "; without --strict they are skipped")
        warnings.append(msg + "; skipped (see mapping.json 'skipped')")
    if sel.dropped:
        warnings.append(f"dropped {len(sel.dropped)} class(es) with fewer than {sampling_threshold} images: "
                        + ", ".join(f"{n} ({c})" for n, c in sel.dropped.items()))

    table = split_table(src, sel, seed)
    class_names = [src.class_names[lab] for lab in sel.labels]
    counts = count_splits(table, class_names)
    warnings += split_warnings(table, counts)
    root = src.root if src.root is not None else out_abs
    mapping = make_mapping(src, sel, table, counts, root, raw_abs,
                           {"sampling_threshold": sampling_threshold, "max_per_class": max_per_class,
                            "seed": seed})
    plot_png = render_class_histogram(counts, sampling_threshold,
                                      title=f"{raw_abs.name} ({src.format})") if plot else None

    # ---- everything is checked: write
    table = write_outputs(out, src, table, mapping, force=force)
    if plot_png is not None:
        write_bytes_atomic(plot, plot_png)
    return BuildResult(out=out, table=table, class_names=class_names, counts=counts, warnings=warnings,
                       format=src.format, root=root, partition=mapping["partition"], dropped=sel.dropped,
                       skipped=sel.skipped, mapping=mapping)


def render_class_histogram(counts: dict[str, dict[str, int]], threshold: int | None = None,
                           title: str = "") -> bytes:
    """PNG bytes of the per-class image counts (stacked by split, largest class first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(counts, key=lambda n: -counts[n]["total"])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(names) + 2), 4.2), dpi=120)
    bottom = np.zeros(len(names))
    for split, colour in zip(SPLITS, ("#4c72b0", "#dd8452", "#55a868")):
        vals = np.array([counts[n][split] for n in names], dtype=float)
        ax.bar(names, vals, bottom=bottom, label=split, color=colour)
        bottom += vals
    if threshold:
        ax.axhline(threshold, color="k", linestyle="--", linewidth=1, label=f"threshold {threshold}")
    ax.set_ylabel("images")
    ax.set_title(title or "images per class")
    ax.tick_params(axis="x", labelrotation=60)
    for lab in ax.get_xticklabels():
        lab.set_horizontalalignment("right")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
