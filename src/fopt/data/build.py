"""`fopt data build`: raw dataset -> clean, split dataset table.

Reads one of three layouts (``fmt``: auto, deepfashion, imagefolder, fashion-mnist), drops
categories with fewer than ``sampling_threshold`` usable images, caps each category at
``max_per_class`` (a deterministic sample for ``seed``), keeps the official partition when there
is one (else a stratified 80/10/10 split) and writes::
    OUT/dataset.csv    path,label,label_name,split   (path relative to mapping["root"])
    OUT/mapping.json   root, classes, counts per class and split, format, source label ids, ...

``label`` is 0-based and contiguous after filtering, in the order of the source labels.
For DeepFashion and image folders ``root`` is RAW itself (absolute), so paths are relative to RAW.
Fashion-MNIST has no image files: its IDX images are written as PNG under ``OUT/images/`` and
``root`` is OUT, so nothing downstream has to know about IDX.

Every check happens before anything is written: on bad input OUT is left as it was.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from fopt import __version__
from fopt.artifacts import (
    replace_dir,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from fopt.data import annotations as ann
from fopt.errors import DataError, InputError, UsageError

FORMATS = ("auto", "deepfashion", "imagefolder", "fashion-mnist")
SPLITS = ("train", "val", "test")
DEFAULT_SAMPLING_THRESHOLD = 10   # below this a class cannot get a val and a test image in 80/10/10
STRATIFIED_FRACTIONS = (0.8, 0.1, 0.1)
FMNIST_VAL_FRACTION = 0.1          # of the official train split, per class
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot")
FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclass
class Candidate:
    """One image before filtering. `path` is relative to the layout's root (POSIX)."""
    path: str
    source_label: Any          # DeepFashion 1-based label, folder name, or Fashion-MNIST digit
    split: str | None          # official split, None when the layout has none
    origin: str = ""           # where it came from, for messages ("file:line")
    pixels: Any = None         # Fashion-MNIST: the 28x28 uint8 array


@dataclass
class Source:
    """What a layout reader found: candidates and how to name/resolve them."""
    format: str
    root: Path                              # images resolve as root / path
    candidates: list[Candidate]
    class_names: dict[Any, str]             # source label -> name, every known category
    partition: str | None                   # None, "official" or "official train/test"
    extra: dict[str, Any] = field(default_factory=dict)


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


# ----------------------------------------------------------------------------- format detection

def detect_format(raw: Path) -> str:
    if (raw / "Anno").is_dir() or (raw / ann.IMG_FILE).exists():
        return "deepfashion"
    if _find_idx_dir(raw) is not None:
        return "fashion-mnist"
    if any(d.is_dir() and not d.name.startswith(".") for d in raw.iterdir()):
        return "imagefolder"
    raise InputError(f"{raw}: cannot detect the dataset layout (expected DeepFashion Anno/ and Eval/, "
                     f"FashionMNIST/raw/*-ubyte.gz, or one folder per class); pass --format")


# ----------------------------------------------------------------------------- DeepFashion

def _read_deepfashion(raw: Path) -> Source:
    categories = ann.read_categories(raw)
    labels = ann.read_image_labels(raw, len(categories))
    partition = ann.read_partition(raw)
    img_file = raw / ann.IMG_FILE
    cands = []
    for rel, label, line in labels:
        split = None
        if partition is not None:
            split = partition.get(rel)
            if split is None:
                raise DataError(f"{raw / ann.PARTITION_FILE}: image {rel!r} ({ann.IMG_FILE} line {line}) "
                                f"has no row in the partition file")
        # annotation paths read img/...: under RAW/Img/ in the official download, under RAW/ in copies
        in_img = "Img/" + rel
        path = in_img if (raw / in_img).exists() or not (raw / rel).exists() else rel
        cands.append(Candidate(path, label, split, origin=f"{img_file}:{line}"))
    extra: dict[str, Any] = {"category_types": {i + 1: t for i, (_, t) in enumerate(categories)}}
    if partition is not None:
        unused = len(set(partition) - {r for r, _, _ in labels})
        if unused:
            extra["partition_unused"] = unused
    return Source("deepfashion", raw, cands, {i + 1: n for i, (n, _) in enumerate(categories)},
                  "official" if partition is not None else None, extra)


# ----------------------------------------------------------------------------- image folders

def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _read_imagefolder(raw: Path) -> Source:
    top = sorted(d for d in raw.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not top:
        raise InputError(f"{raw}: no class folders (an image-folder dataset has one folder per class)")
    split_layout = {d.name.lower() for d in top} <= set(SPLIT_ALIASES) and any(
        SPLIT_ALIASES[d.name.lower()] == "train" for d in top)
    groups: list[tuple[str | None, Path]] = []
    if split_layout:
        for d in top:
            groups += [(SPLIT_ALIASES[d.name.lower()], c) for c in sorted(d.iterdir())
                       if c.is_dir() and not c.name.startswith(".")]
    else:
        groups = [(None, d) for d in top]
    cands = []
    names: set[str] = set()
    for split, cdir in groups:
        names.add(cdir.name)
        for p in _images_under(cdir):
            cands.append(Candidate(p.relative_to(raw).as_posix(), cdir.name, split, origin=str(p)))
    if not cands:
        raise InputError(f"{raw}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in the class folders")
    return Source("imagefolder", raw, cands, {n: n for n in sorted(names)},
                  "official" if split_layout else None)


# ----------------------------------------------------------------------------- Fashion-MNIST

def _find_idx_dir(raw: Path) -> Path | None:
    for d in (raw / "FashionMNIST" / "raw", raw / "raw", raw):
        if d.is_dir() and any((d / (FMNIST_FILES["train"][0] + ext)).is_file() for ext in (".gz", "")):
            return d
    return None


def _read_idx(folder: Path, stem: str, magic: int) -> np.ndarray:
    for name in (stem + ".gz", stem):
        path = folder / name
        if path.is_file():
            break
    else:
        raise DataError(f"{folder / (stem + '.gz')}: Fashion-MNIST file is missing")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX data ({e})") from e
    ndim = magic & 0xFF
    if len(data) < 4 + 4 * ndim or struct.unpack(">I", data[:4])[0] != magic:
        raise DataError(f"{path}: not an IDX file with magic number {magic}")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: IDX header says {dims} but the file holds {body.size} bytes of data")
    return body.reshape(dims)


def _read_fashion_mnist(raw: Path) -> Source:
    folder = _find_idx_dir(raw)
    if folder is None:
        raise DataError(f"{raw}: no Fashion-MNIST IDX files (expected FashionMNIST/raw/"
                        f"{FMNIST_FILES['train'][0]}.gz)")
    cands = []
    for split, (img_stem, lab_stem) in FMNIST_FILES.items():
        images = _read_idx(folder, img_stem, 2051)
        labels = _read_idx(folder, lab_stem, 2049)
        if len(images) != len(labels):
            raise DataError(f"{folder / lab_stem}: {len(labels)} labels for {len(images)} images")
        bad = np.flatnonzero(labels > 9)
        if bad.size:
            raise DataError(f"{folder / lab_stem}: label {labels[bad[0]]} at index {bad[0]} is outside 0..9")
        origin = str(folder / img_stem)
        cands += [Candidate(f"images/{split}/{i:05d}.png", lab, split, origin=f"{origin}[{i}]", pixels=images[i])
                  for i, lab in enumerate(labels.tolist())]
    return Source("fashion-mnist", raw, cands, dict(enumerate(FMNIST_CLASSES)), "official train/test",
                  {"idx_dir": str(folder.resolve())})


READERS: dict[str, Callable[[Path], Source]] = {
    "deepfashion": _read_deepfashion, "imagefolder": _read_imagefolder, "fashion-mnist": _read_fashion_mnist,
}


# ----------------------------------------------------------------------------- image checks

def check_image(path: Path) -> str | None:
    """None when `path` decodes as an image, else the reason ("missing", "undecodable: ...")."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as im:
            im.draft("RGB", (32, 32))  # JPEG: decode at reduced scale; still reads every byte
            im.load()
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
        reasons = list(pool.map(check_image, paths)) if pool else [check_image(p) for p in paths]
        for i, reason in zip(chunk.tolist(), reasons):
            if reason is None:
                if need is None or len(keep) < need:
                    keep.append(i)
            else:
                skipped.append({"path": cands[i].path, "reason": reason, "origin": cands[i].origin})
    return sorted(keep)


# ----------------------------------------------------------------------------- splits

def _stratified(n: int, rng: np.random.Generator, fractions: Sequence[float]) -> list[str]:
    n_val = round(n * fractions[1])
    n_test = round(n * fractions[2])
    if n >= 3:  # every split that should exist gets at least one image of every class
        n_val = max(1, n_val) if fractions[1] > 0 else 0
        n_test = max(1, n_test) if fractions[2] > 0 else 0
    splits = ["train"] * (n - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    return [splits[i] for i in np.argsort(rng.permutation(n))]


# ----------------------------------------------------------------------------- the build

def build_dataset(raw: str | os.PathLike, out: str | os.PathLike, fmt: str = "auto",
                  sampling_threshold: int = DEFAULT_SAMPLING_THRESHOLD,
                  max_per_class: int | None = None, seed: int = 0, strict: bool = False,
                  plot: str | os.PathLike | None = None, check_images: bool = True,
                  progress: Callable[[int, int], None] | None = None) -> BuildResult:
    """Build OUT/dataset.csv and OUT/mapping.json from the raw dataset at `raw`.

    Missing or undecodable image files are skipped with a warning (an error with `strict`);
    only images that would be used are opened, so a cap makes a big dataset quick to build.
    `plot` writes the class histogram PNG. Raises InputError/DataError/UsageError before
    writing anything.
    """
    raw = Path(raw)
    out = Path(out)
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
    raw_abs = raw.resolve()
    if fmt == "auto":
        fmt = detect_format(raw_abs)
    src = READERS[fmt](raw_abs)
    warnings: list[str] = []

    by_label: dict[Any, list[int]] = {}
    for i, c in enumerate(src.candidates):
        by_label.setdefault(c.source_label, []).append(i)
    source_order = sorted(by_label, key=_sort_key(src))

    # select usable images per class: threshold on usable images, then the cap
    skipped: list[dict[str, str]] = []
    kept: dict[Any, list[int]] = {}
    dropped: dict[str, int] = {}
    check = check_images and src.format != "fashion-mnist"
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) if check else _null() as pool:
        for k, lab in enumerate(source_order):
            idx = by_label[lab]
            sub = [src.candidates[i] for i in idx]
            need = None if max_per_class is None else max(max_per_class, sampling_threshold)
            rng = np.random.default_rng([seed, k]) if max_per_class is not None else None
            chosen = _select(sub, src.root, need, rng, check, skipped, pool)
            if progress:
                progress(k + 1, len(source_order))
            if len(chosen) < sampling_threshold:
                dropped[src.class_names[lab]] = len(chosen)
                continue
            if max_per_class is not None and len(chosen) > max_per_class:
                chosen = sorted(np.random.default_rng([seed, k, 1]).choice(chosen, max_per_class, replace=False).tolist())
            kept[lab] = [idx[j] for j in chosen]
    if skipped:
        first = skipped[0]
        msg = (f"{len(skipped)} image file(s) missing or undecodable, e.g. {src.root / first['path']} "
               f"({first['reason']}; listed in {first['origin']})")
        if strict:
            raise DataError(msg + "; without --strict they are skipped")
        warnings.append(msg + "; skipped (see mapping.json 'skipped')")
    if len(kept) < 2:
        sizes = sorted(((len(by_label[lab]), src.class_names[lab]) for lab in by_label), reverse=True)
        biggest = ", ".join(f"{n} {name}" for n, name in sizes[:3])
        raise DataError(f"--sampling-threshold {sampling_threshold} leaves {len(kept)} class(es); at least 2 "
                        f"are needed (largest classes: {biggest})")
    if dropped:
        warnings.append(f"dropped {len(dropped)} class(es) with fewer than {sampling_threshold} images: "
                        + ", ".join(f"{n} ({c})" for n, c in dropped.items()))

    # labels and splits
    labels = [lab for lab in source_order if lab in kept]
    rows = []
    for new_label, lab in enumerate(labels):
        idx = kept[lab]
        name = src.class_names[lab]
        if src.partition == "official":
            splits = [src.candidates[i].split for i in idx]
        elif src.partition == "official train/test":
            splits = [src.candidates[i].split for i in idx]
            train_pos = [p for p, s in enumerate(splits) if s == "train"]
            carved = _stratified(len(train_pos), np.random.default_rng([seed, new_label, 2]),
                                 (1 - FMNIST_VAL_FRACTION, FMNIST_VAL_FRACTION, 0.0))
            for p, s in zip(train_pos, carved):
                splits[p] = s
        else:
            splits = _stratified(len(idx), np.random.default_rng([seed, new_label, 2]), STRATIFIED_FRACTIONS)
        for i, split in zip(idx, splits):
            rows.append((src.candidates[i].path, new_label, name, split, i))
    table = pd.DataFrame(rows, columns=["path", "label", "label_name", "split", "_cand"])
    class_names = [src.class_names[lab] for lab in labels]
    if len(set(class_names)) != len(class_names):
        raise DataError(f"{raw}: two categories share a name; class names must be unique")
    counts = {}
    for name in class_names:
        sub = table[table.label_name == name]
        counts[name] = {s: int((sub.split == s).sum()) for s in SPLITS}
        counts[name]["total"] = int(len(sub))
    for s in SPLITS:
        if not (table.split == s).any():
            warnings.append(f"the {s} split is empty")
    partition_kind = {"official": "official", "official train/test": "official train/test + stratified val"}.get(
        src.partition or "", "stratified 80/10/10")
    if src.extra.get("partition_unused"):
        warnings.append(f"{src.extra['partition_unused']} row(s) of {ann.PARTITION_FILE} name images not in "
                        f"{ann.IMG_FILE}; ignored")

    root = out.resolve() if src.format == "fashion-mnist" else raw_abs
    mapping = {
        "format": src.format,
        "root": str(root),
        "source": str(raw_abs),
        "classes": class_names,
        "labels": {str(i): n for i, n in enumerate(class_names)},
        "source_labels": [_jsonable(lab) for lab in labels],
        "counts": counts,
        "split_totals": {s: int((table.split == s).sum()) for s in SPLITS} | {"total": int(len(table))},
        "partition": partition_kind,
        "sampling_threshold": sampling_threshold,
        "max_per_class": max_per_class,
        "seed": seed,
        "dropped_classes": dropped,
        "skipped": skipped,
        "fopt_version": __version__,
    }
    if "category_types" in src.extra:
        mapping["category_types"] = [src.extra["category_types"][lab] for lab in labels]

    plot_png = render_class_histogram(counts, sampling_threshold, title=f"{raw_abs.name} ({src.format})") if plot else None

    # ---- everything is checked: write
    out.mkdir(parents=True, exist_ok=True)
    if src.format == "fashion-mnist":
        _write_fmnist_pngs(out, [src.candidates[i] for i in table["_cand"]])
    table = table.drop(columns="_cand")
    write_text_atomic(out / "dataset.csv", table.to_csv(index=False, lineterminator="\n"))
    write_json_atomic(out / "mapping.json", mapping)
    if plot_png is not None:
        write_bytes_atomic(plot, plot_png)
    return BuildResult(out=out, table=table, class_names=class_names, counts=counts, warnings=warnings,
                       format=src.format, root=root, partition=partition_kind, dropped=dropped,
                       skipped=skipped, mapping=mapping)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _sort_key(src: Source) -> Callable[[Any], Any]:
    if src.format == "imagefolder":
        return lambda lab: str(lab)
    return lambda lab: lab


def _jsonable(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x


def _write_fmnist_pngs(out: Path, cands: list[Candidate]) -> None:
    """Write the kept Fashion-MNIST images as PNG into OUT/images, replacing an older copy whole."""
    from PIL import Image

    tmp = Path(tempfile.mkdtemp(prefix=".images.", suffix=".tmp", dir=out))
    try:
        for split in FMNIST_FILES:
            (tmp / split).mkdir()

        def save(c: Candidate) -> None:
            Image.fromarray(c.pixels, "L").save(tmp / Path(c.path).relative_to("images"), format="PNG")

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(save, cands))

        replace_dir(tmp, out / "images")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


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
