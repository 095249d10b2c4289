"""Image transform presets shared by training, evaluation, export checks and calibration.

Normalisation: the study normalised every channel with mean 0.5 and std 0.5 (inputs in [-1, 1]);
that is the default here and what a checkpoint's input spec records, so later stages can
reproduce the exact input.

Eval preset: a plain resize of the whole image to ``img_size`` x ``img_size`` (no centre crop).
DeepFashion photos are not square and a garment often reaches the image border (sleeves, hems);
a centre crop would cut off exactly the parts that tell Cardigan from Sweater or Shorts from
Cutoffs, while the small aspect change of a plain resize is something the train preset's
random-resized-crop already teaches the model to tolerate.

Train preset: light augmentation suited to clothing: a random resized crop that keeps most of
the garment (60-100% of the area), horizontal flips (garments are left-right symmetric; vertical
flips are not realistic), and mild colour jitter (colour is weak evidence of category but lighting
varies); then the same normalisation.
"""

from __future__ import annotations

from typing import Any, Sequence

DEFAULT_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
DEFAULT_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
TRAIN_CROP_SCALE = (0.6, 1.0)
TRAIN_CROP_RATIO = (3 / 4, 4 / 3)
COLOR_JITTER = dict(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02)


def build_transform(img_size: int, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD,
                    train: bool = False):
    """PIL RGB image -> normalised float32 CHW tensor (see the module docstring for the presets)."""
    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(list(mean), list(std))]
    if train:
        return T.Compose([
            T.RandomResizedCrop(img_size, scale=TRAIN_CROP_SCALE, ratio=TRAIN_CROP_RATIO, antialias=True),
            T.RandomHorizontalFlip(),
            T.ColorJitter(**COLOR_JITTER),
            *norm,
        ])
    return T.Compose([T.Resize((img_size, img_size), antialias=True), *norm])


def transform_spec(img_size: int, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD,
                   train: bool = False) -> dict[str, Any]:
    """A JSON-able description of `build_transform`'s preset, for cards and reports."""
    spec: dict[str, Any] = {"size": img_size, "mean": list(mean), "std": list(std), "layout": "NCHW",
                            "resize": "plain resize to size x size (no crop)", "colour": "RGB"}
    if train:
        spec["augment"] = {"random_resized_crop": {"scale": list(TRAIN_CROP_SCALE), "ratio": list(TRAIN_CROP_RATIO)},
                           "horizontal_flip": 0.5, "color_jitter": COLOR_JITTER}
    return spec


def normalize_array(batch, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD):
    """uint8 NHWC or float [0,1] NCHW numpy batch -> normalised float32 NCHW (for non-PIL inputs)."""
    import numpy as np

    x = np.asarray(batch)
    if x.dtype == np.uint8:
        x = x.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    return ((x - m) / s).astype(np.float32)
