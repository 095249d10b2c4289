"""The DeepFashion Category and Attribute Prediction benchmark's category list.

`CATEGORIES` is the benchmark's ``Anno/list_category_cloth.txt`` in order: the 1-based row index
is the category label used by ``list_category_img.txt``. Type 1 = upper body, 2 = lower body,
3 = full body. `STUDY_CATEGORIES` are the 22 categories with at least 1,000 images that the
original study kept (the synthetic generator uses them first).
"""

from __future__ import annotations

CATEGORIES: tuple[tuple[str, int], ...] = (
    ("Anorak", 1), ("Blazer", 1), ("Blouse", 1), ("Bomber", 1), ("Button-Down", 1),
    ("Cardigan", 1), ("Flannel", 1), ("Halter", 1), ("Henley", 1), ("Hoodie", 1),
    ("Jacket", 1), ("Jersey", 1), ("Parka", 1), ("Peacoat", 1), ("Poncho", 1),
    ("Sweater", 1), ("Tank", 1), ("Tee", 1), ("Top", 1), ("Turtleneck", 1),
    ("Capris", 2), ("Chinos", 2), ("Culottes", 2), ("Cutoffs", 2), ("Gauchos", 2),
    ("Jeans", 2), ("Jeggings", 2), ("Jodhpurs", 2), ("Joggers", 2), ("Leggings", 2),
    ("Sarong", 2), ("Shorts", 2), ("Skirt", 2), ("Sweatpants", 2), ("Sweatshorts", 2),
    ("Trunks", 2),
    ("Caftan", 3), ("Cape", 3), ("Coat", 3), ("Coverup", 3), ("Dress", 3), ("Jumpsuit", 3),
    ("Kaftan", 3), ("Kimono", 3), ("Nightdress", 3), ("Onesie", 3), ("Robe", 3), ("Romper", 3),
    ("Shirtdress", 3), ("Sundress", 3),
)

CATEGORY_TYPES = {1: "upper-body", 2: "lower-body", 3: "full-body"}

# The study's 22 categories (>= 1,000 images in the full benchmark), most frequent first.
STUDY_CATEGORIES: tuple[str, ...] = (
    "Dress", "Tee", "Blouse", "Shorts", "Tank", "Skirt", "Cardigan", "Sweater", "Jacket", "Top",
    "Blazer", "Romper", "Jeans", "Jumpsuit", "Leggings", "Joggers", "Hoodie", "Sweatpants",
    "Kimono", "Coat", "Cutoffs", "Sweatshorts",
)


def label_of(name: str) -> int:
    """1-based benchmark label of a category name."""
    for i, (n, _) in enumerate(CATEGORIES, start=1):
        if n == name:
            return i
    raise KeyError(name)


def synth_category_order() -> list[str]:
    """Categories in the order `fopt data synth --classes N` takes them."""
    rest = [n for n, _ in CATEGORIES if n not in STUDY_CATEGORIES]
    return list(STUDY_CATEGORIES) + rest
