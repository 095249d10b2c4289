"""The raw-dataset layouts `fopt data build` reads: one reader per format, behind `READERS`.

A reader takes RAW (an absolute folder) and returns a `Source`: the candidate images with their
source label and official split, the class names, how the split is to be made, per-class values
for mapping.json, warnings, and, when the images are not files (Fashion-MNIST's IDX arrays), a
writer that puts the kept ones on disk. `fopt.data.build` runs the same steps on every `Source`.

Every problem raises `DataError`/`InputError` in one line naming the file; readers write nothing.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fopt.data import annotations as ann
from fopt.errors import DataError, InputError, first_line
from fopt.registry import Registry

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
IMAGES_DIR = "images"       # where a reader's `write_images` output goes, under OUT
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot")
FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_UBYTE = 0x08            # IDX data type code of unsigned bytes, the only one Fashion-MNIST uses
IDX_MAX_BYTES = 1 << 28     # 256 MiB of payload; the real train images are 47 MB
IDX_MAX_SIDE = 4096         # an IDX image side above this is not an image dataset

# Partition kinds a reader may declare; `fopt.data.build` has one splitter for each.
STRATIFIED, OFFICIAL, OFFICIAL_TRAIN_TEST = None, "official", "official train/test"


@dataclass
class Candidate:
    """One image before filtering. `path` is relative to the layout's root (POSIX)."""
    path: str
    source_label: Any          # DeepFashion 1-based label, folder name, or Fashion-MNIST digit
    split: str | None          # official split, None when the layout has none
    origin: str = ""           # where it came from, for messages ("file:line")
    pixels: Any = None         # images held in memory (Fashion-MNIST): the uint8 array


ImageWriter = Callable[[Path, "list[Candidate]"], None]


@dataclass
class Source:
    """What a layout reader found, and all `build_dataset` needs to know about the layout."""
    format: str
    root: Path | None                       # images resolve as root / path; None: under OUT
    candidates: list[Candidate]
    class_names: dict[Any, str]             # source label -> name, every known category
    partition: str | None                   # STRATIFIED, OFFICIAL or OFFICIAL_TRAIN_TEST
    label_info: dict[str, dict[Any, Any]] = field(default_factory=dict)  # mapping key -> label -> value
    warnings: list[str] = field(default_factory=list)
    # Images held in memory: writes the kept candidates into a folder that becomes OUT/images
    # (candidate paths start with "images/"); None when the images are files under `root`.
    write_images: ImageWriter | None = None


@dataclass(frozen=True)
class Reader:
    read: Callable[[Path], Source]
    detect: Callable[[Path], bool]


READERS: Registry[Reader] = Registry("dataset format")


def detect_format(raw: Path) -> str:
    """The first registered format whose layout `raw` has (image folders, the catch-all, last)."""
    for name, reader in READERS.items():
        if reader.detect(raw):
            return name
    raise InputError(f"{raw}: cannot detect the dataset layout (expected DeepFashion Anno/ and Eval/, "
                     f"FashionMNIST/raw/*-ubyte.gz, or one folder per class); pass --format")


def read_source(raw: Path, fmt: str = "auto") -> Source:
    """Read RAW with the reader of `fmt` ("auto": detect it)."""
    return READERS.get(detect_format(raw) if fmt == "auto" else fmt).read(raw)


# ----------------------------------------------------------------------------- file system helpers

def exists(path: Path) -> bool:
    """Path.exists() that says False for names the OS rejects (too long, NUL) instead of raising."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def inside(path: Path, root: Path) -> bool:
    """True when `path`, with every symlink resolved, is `root` or under it (`root` resolved)."""
    try:
        path.resolve().relative_to(root)
    except (ValueError, OSError, RuntimeError):   # outside, or a symlink loop
        return False
    return True


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
        path = in_img if exists(raw / in_img) or not exists(raw / rel) else rel
        cands.append(Candidate(path, label, split, origin=f"{img_file}:{line}"))
    warnings = []
    if partition is not None:
        unused = len(set(partition) - {r for r, _, _ in labels})
        if unused:
            warnings.append(f"{unused} row(s) of {ann.PARTITION_FILE} name images not in {ann.IMG_FILE}; ignored")
    return Source("deepfashion", raw, cands, {i + 1: n for i, (n, _) in enumerate(categories)},
                  OFFICIAL if partition is not None else STRATIFIED,
                  label_info={"category_types": {i + 1: t for i, (_, t) in enumerate(categories)}},
                  warnings=warnings)


def _is_deepfashion(raw: Path) -> bool:
    return (raw / "Anno").is_dir() or (raw / ann.IMG_FILE).exists()


# ----------------------------------------------------------------------------- image folders

def _listdir(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise InputError(f"{folder}: cannot list the folder ({e.strerror})") from None


def _subfolders(folder: Path, root: Path, outside: list[Path]) -> list[Path]:
    """Visible sub-folders; a symlink that leads out of `root` is not followed (noted in `outside`)."""
    out = []
    for e in _listdir(folder):
        if e.name.startswith("."):
            continue
        if e.is_symlink() and not inside(Path(e.path), root):
            outside.append(Path(e.path))
        elif e.is_dir():
            out.append(Path(e.path))
    return out


def _images_under(folder: Path, root: Path, outside: list[Path]) -> list[Path]:
    """Image files under `folder`, sorted. Hidden entries are ignored, symlinked folders are not
    entered, and a symlink that leads out of `root` is not followed (noted in `outside`)."""
    found = []
    stack = [folder]
    while stack:
        for e in _listdir(stack.pop()):
            if e.name.startswith("."):
                continue
            p = Path(e.path)
            if e.is_symlink() and not inside(p, root):
                outside.append(p)
            elif e.is_dir(follow_symlinks=False):
                stack.append(p)
            elif p.suffix.lower() in IMAGE_EXTENSIONS and e.is_file():
                found.append(p)
    return sorted(found)


def _read_imagefolder(raw: Path) -> Source:
    outside: list[Path] = []
    top = _subfolders(raw, raw, outside)
    if not top:
        raise InputError(f"{raw}: no class folders (an image-folder dataset has one folder per class)")
    split_layout = {d.name.lower() for d in top} <= set(SPLIT_ALIASES) and any(
        SPLIT_ALIASES[d.name.lower()] == "train" for d in top)
    groups: list[tuple[str | None, Path]] = []
    if split_layout:
        for d in top:
            groups += [(SPLIT_ALIASES[d.name.lower()], c) for c in _subfolders(d, raw, outside)]
    else:
        groups = [(None, d) for d in top]
    cands = []
    names: set[str] = set()
    for split, cdir in groups:
        names.add(cdir.name)
        for p in _images_under(cdir, raw, outside):
            cands.append(Candidate(p.relative_to(raw).as_posix(), cdir.name, split, origin=str(p)))
    warnings = []
    if outside:
        warnings.append(f"{len(outside)} symlink(s) leading outside {raw} not followed, e.g. {outside[0]}; skipped")
    if not cands:
        raise InputError(f"{raw}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in the class folders")
    return Source("imagefolder", raw, cands, {n: n for n in sorted(names)},
                  OFFICIAL if split_layout else STRATIFIED, warnings=warnings)


def _is_imagefolder(raw: Path) -> bool:
    return any(d.is_dir() and not d.name.startswith(".") for d in raw.iterdir())


# ----------------------------------------------------------------------------- Fashion-MNIST

def _find_idx_dir(raw: Path) -> Path | None:
    for d in (raw / "FashionMNIST" / "raw", raw / "raw", raw):
        if d.is_dir() and any((d / (FMNIST_FILES["train"][0] + ext)).is_file() for ext in (".gz", "")):
            return d
    return None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array of `ndim` dimensions, its header checked before the payload is
    read, and the payload read with a cap: a lying header is a one-line `DataError`."""
    magic = (IDX_UBYTE << 8) | ndim
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0":
                raise DataError(f"{path}: not an IDX file with magic number {magic}")
            if head[2] != IDX_UBYTE:
                raise DataError(f"{path}: IDX data type code 0x{head[2]:02x} is not unsigned bytes "
                                f"(0x{IDX_UBYTE:02x})")
            if head[3] != ndim:
                raise DataError(f"{path}: IDX file has {head[3]} dimension(s), expected {ndim}")
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DataError(f"{path}: IDX header is truncated")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            size = math.prod(dims)                  # Python ints: cannot overflow
            if size > IDX_MAX_BYTES:
                raise DataError(f"{path}: IDX header says {dims}, {size} bytes of data, more than the "
                                f"{IDX_MAX_BYTES}-byte limit")
            data = f.read(size + 1)                 # one more than the header allows: too long?
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read IDX data ({first_line(e)})") from None
    if len(data) != size:
        held = f"{len(data)} bytes" if len(data) < size else f"more than {size} bytes"
        raise DataError(f"{path}: IDX header says {dims} but the file holds {held} of data")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder / (stem + '.gz')}: Fashion-MNIST file is missing")


def _read_fashion_mnist(raw: Path) -> Source:
    folder = _find_idx_dir(raw)
    if folder is None:
        raise DataError(f"{raw}: no Fashion-MNIST IDX files (expected FashionMNIST/raw/"
                        f"{FMNIST_FILES['train'][0]}.gz)")
    cands = []
    for split, (img_stem, lab_stem) in FMNIST_FILES.items():
        img_path = _idx_file(folder, img_stem)
        images = read_idx(img_path, 3)
        if not all(1 <= side <= IDX_MAX_SIDE for side in images.shape[1:]):
            raise DataError(f"{img_path}: IDX images of {images.shape[1]}x{images.shape[2]} pixels "
                            f"(each side must be 1..{IDX_MAX_SIDE})")
        lab_path = _idx_file(folder, lab_stem)
        labels = read_idx(lab_path, 1)
        if len(images) != len(labels):
            raise DataError(f"{lab_path}: {len(labels)} labels for {len(images)} images")
        bad = np.flatnonzero(labels > 9)
        if bad.size:
            raise DataError(f"{lab_path}: label {labels[bad[0]]} at index {bad[0]} is outside 0..9")
        origin = str(folder / img_stem)
        cands += [Candidate(f"{IMAGES_DIR}/{split}/{i:05d}.png", lab, split, origin=f"{origin}[{i}]",
                            pixels=images[i])
                  for i, lab in enumerate(labels.tolist())]
    return Source("fashion-mnist", None, cands, dict(enumerate(FMNIST_CLASSES)), OFFICIAL_TRAIN_TEST,
                  write_images=_write_pngs)


def _write_pngs(folder: Path, cands: list[Candidate]) -> None:
    """Save in-memory grey images as PNG under `folder` (paths relative to OUT/images)."""
    from PIL import Image

    rels = [Path(c.path).relative_to(IMAGES_DIR) for c in cands]
    for parent in sorted({r.parent for r in rels}):
        (folder / parent).mkdir(parents=True, exist_ok=True)

    def save(job: tuple[Candidate, Path]) -> None:
        Image.fromarray(job[0].pixels, "L").save(folder / job[1], format="PNG")

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(save, zip(cands, rels)))


def _is_fashion_mnist(raw: Path) -> bool:
    return _find_idx_dir(raw) is not None


# Detection tries these in order: image folders, the catch-all, come last.
READERS.add("deepfashion", Reader(_read_deepfashion, _is_deepfashion))
READERS.add("fashion-mnist", Reader(_read_fashion_mnist, _is_fashion_mnist))
READERS.add("imagefolder", Reader(_read_imagefolder, _is_imagefolder))
