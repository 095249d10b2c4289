"""`fopt data synth`: a deterministic synthetic dataset in the DeepFashion on-disk layout.

The full DeepFashion benchmark cannot be downloaded here, so the demo and the tests use procedural
clothing images written exactly like the official Category and Attribute Prediction download::
    OUT/Img/img/<item folder>/img_00000001.jpg
    OUT/Anno/list_category_cloth.txt     all 50 real categories (count line, header, rows)
    OUT/Anno/list_category_img.txt       img/<item folder>/img_*.jpg  <1-based label>
    OUT/Eval/list_eval_partition.txt     img/<item folder>/img_*.jpg  train|val|test
    OUT/synth.json                       the generator's parameters

Each category has its own silhouette (sleeve length, hem, legs, hood, collar, lapels, cuffs...)
whose proportions vary per item; colour, texture (plain, stripes, dots, checks), scale, rotation,
position, background clutter and pixel noise vary per image. An "item" (one garment) has a few
images, like a shop's photo views, and the partition is by item so no garment is in two splits.
Neighbouring categories (Shorts / Sweatshorts / Cutoffs, Jeans / Sweatpants / Joggers, Cardigan /
Sweater) differ only in details, so a small CNN learns the set well but not perfectly.

Every image is generated from its own seed (seed, label, item, view): the output is byte-identical
for the same arguments, and changing --per-class does not change the images both runs share.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fopt.artifacts import atomic_path, replace_dir
from fopt.data.categories import CATEGORIES, label_of, synth_category_order
from fopt.data.ownership import claim_outputs
from fopt.errors import OutputExistsError, UsageError
from fopt.workdir import scratch_dir

SYNTH_VERSION = 3           # bump when the images change, so cached folders are not reused
IMAGES_PER_ITEM = (1, 3)    # views per garment, inclusive range
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
NAME_WIDTH = 71             # annotation files left-justify image names to 71 characters
DEFAULT_PER_CLASS = 150
DEFAULT_SIZE = 64
JPEG_QUALITY = 90
DETAIL_SCALE = 1.8          # detail line widths relative to the spec values
# What synth writes in OUT, and the paths it writes under each (relative to OUT).
OUTPUTS = {
    "Img": re.compile(r"Img/img/[^/]+/img_\d{8}\.jpg"),
    "Anno": re.compile(r"Anno/list_category_(cloth|img)\.txt"),
    "Eval": re.compile(r"Eval/list_eval_partition\.txt"),
    "synth.json": None,
}


# ----------------------------------------------------------------------------- garment specs
# Ranges are (low, high) sampled uniformly per item; booleans/strings are fixed per category.
# Coordinates are in a unit box (x right, y down), garment centred at x = 0.5.

_UPPER: dict[str, Any] = dict(
    kind="upper", hem=(0.68, 0.8), sw=(0.19, 0.23), flare=(0.95, 1.1), sleeve=(0.0, 0.0),
    sleeve_w=(0.1, 0.13), sleeve_taper=(0.75, 0.95), sleeve_angle=(28, 42), neck="round",
    hood=False, opening=False, lapels=False, hem_band=False, cuffs=False, buttons=0, collar=False,
    straps=False, zip=False, belt=False, high_neck=False, pockets=False,
)
_LOWER: dict[str, Any] = dict(
    kind="lower", leg=(0.75, 0.85), ww=(0.16, 0.19), hip=(1.1, 1.2), crotch=(0.3, 0.34),
    leg_top=(0.5, 0.55), leg_hem=(0.38, 0.45), skirt=False, flare=(1.0, 1.0), cuffs=False,
    frayed=False, drawstring=False, fly=False, pockets=False, pleats=False, waistband=True,
    wrap=False,
)


def _upper(**kw: Any) -> dict[str, Any]:
    return {**_UPPER, **kw}


def _lower(**kw: Any) -> dict[str, Any]:
    return {**_LOWER, **kw}


def _full(top: dict[str, Any], bottom: dict[str, Any], waist: tuple[float, float], **kw: Any) -> dict[str, Any]:
    return {"kind": "full", "top": top, "bottom": bottom, "waist": waist, **kw}


_LONG = dict(sleeve=(0.42, 0.52))
_SHORT = dict(sleeve=(0.14, 0.2))
_SHORTS = dict(leg=(0.3, 0.36), leg_hem=(0.55, 0.65), leg_top=(0.55, 0.6))

SPECS: dict[str, dict[str, Any]] = {
    # upper body
    "Tee": _upper(**_SHORT, neck="round"),
    "Tank": _upper(sw=(0.13, 0.16), neck="scoop", straps=True),
    "Blouse": _upper(**_LONG, sleeve_taper=(0.9, 1.2), flare=(1.1, 1.25), neck="v", buttons=4),
    "Top": _upper(hem=(0.46, 0.54), sleeve=(0.0, 0.12), neck="scoop", flare=(0.9, 1.0)),
    "Sweater": _upper(**_LONG, hem_band=True, cuffs=True, neck="round", flare=(0.92, 1.0)),
    "Cardigan": _upper(**_LONG, opening=True, buttons=5, neck="v", hem_band=True, cuffs=True),
    "Jacket": _upper(**_LONG, zip=True, collar=True, pockets=True, hem=(0.65, 0.74)),
    "Blazer": _upper(**_LONG, lapels=True, buttons=2, pockets=True, neck="v", sleeve_taper=(0.7, 0.85)),
    "Hoodie": _upper(**_LONG, hood=True, hem_band=True, cuffs=True, pockets=True),
    # lower body
    "Jeans": _lower(fly=True, pockets=True, leg_hem=(0.42, 0.48)),
    "Leggings": _lower(ww=(0.13, 0.15), hip=(1.05, 1.1), leg_top=(0.48, 0.5), leg_hem=(0.2, 0.25),
                       waistband=True, leg=(0.85, 0.92)),
    "Joggers": _lower(leg_hem=(0.25, 0.3), cuffs=True, drawstring=True),
    "Sweatpants": _lower(leg_hem=(0.46, 0.52), cuffs=True, drawstring=True, leg=(0.82, 0.9), crotch=(0.26, 0.3)),
    "Shorts": _lower(**_SHORTS, pockets=True),
    "Cutoffs": _lower(**_SHORTS, frayed=True, fly=True),
    "Sweatshorts": _lower(**_SHORTS, drawstring=True),
    "Skirt": _lower(skirt=True, leg=(0.45, 0.65), flare=(1.5, 1.9), pleats=True),
    # full body
    "Dress": _full(_upper(sleeve=(0.0, 0.14), neck="scoop"),
                   _lower(skirt=True, flare=(1.7, 2.3), leg=(0.45, 0.6)), waist=(0.36, 0.42)),
    "Romper": _full(_upper(sleeve=(0.0, 0.15), neck="v"),
                    _lower(**{**_SHORTS, "crotch": (0.14, 0.17)}), waist=(0.36, 0.42)),
    "Jumpsuit": _full(_upper(sleeve=(0.0, 0.1), neck="v", straps=False),
                      _lower(leg=(0.52, 0.56), leg_hem=(0.45, 0.55), crotch=(0.16, 0.2)), waist=(0.36, 0.42)),
    "Kimono": _upper(sleeve=(0.32, 0.4), sleeve_w=(0.2, 0.24), sleeve_taper=(1.25, 1.5),
                     sleeve_angle=(55, 70), hem=(0.86, 0.94), neck="wrap", belt=True, flare=(1.0, 1.05)),
    "Coat": _upper(**_LONG, hem=(0.88, 0.95), collar=True, buttons=4, pockets=True, flare=(1.05, 1.2)),
}

# The other 28 benchmark categories reuse a close silhouette with a telling detail, so
# `--classes` up to 50 works; only the study's 22 were tuned for learnability.
_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "Anorak": ("Hoodie", dict(zip=True, hem=(0.74, 0.82))),
    "Bomber": ("Jacket", dict(collar=False, hem_band=True, cuffs=True)),
    "Button-Down": ("Blouse", dict(collar=True, flare=(0.95, 1.05), buttons=6)),
    "Flannel": ("Blouse", dict(collar=True, pattern="checks", flare=(0.95, 1.05))),
    "Halter": ("Tank", dict(neck="halter")),
    "Henley": ("Tee", dict(buttons=3, sleeve=(0.4, 0.5))),
    "Jersey": ("Tee", dict(sleeve=(0.2, 0.26), flare=(1.1, 1.2), number=True)),
    "Parka": ("Coat", dict(hood=True, zip=True, buttons=0)),
    "Peacoat": ("Coat", dict(hem=(0.76, 0.82), buttons=6, lapels=True)),
    "Poncho": ("Top", dict(cape=True)),
    "Turtleneck": ("Sweater", dict(high_neck=True)),
    "Capris": ("Jeans", dict(leg=(0.55, 0.62), fly=False)),
    "Chinos": ("Jeans", dict(leg_hem=(0.4, 0.44), pleats=True)),
    "Culottes": ("Sweatpants", dict(leg=(0.5, 0.58), leg_hem=(0.7, 0.8), cuffs=False, drawstring=False)),
    "Gauchos": ("Sweatpants", dict(leg=(0.6, 0.68), leg_hem=(0.75, 0.85), cuffs=False)),
    "Jeggings": ("Leggings", dict(fly=True, pockets=True)),
    "Jodhpurs": ("Joggers", dict(hip=(1.35, 1.5), drawstring=False)),
    "Sarong": ("Skirt", dict(wrap=True, pleats=False, flare=(1.2, 1.4), leg=(0.65, 0.8))),
    "Trunks": ("Shorts", dict(leg=(0.18, 0.22), pockets=False, waistband=True)),
    "Caftan": ("Kimono", dict(belt=False, sleeve_angle=(70, 80))),
    "Cape": ("Top", dict(cape=True, hem=(0.8, 0.9))),
    "Coverup": ("Kimono", dict(belt=False, hem=(0.6, 0.7))),
    "Kaftan": ("Kimono", dict(belt=False, neck="v", hem=(0.9, 0.96))),
    "Nightdress": ("Dress", dict(long_skirt=True)),
    "Onesie": ("Jumpsuit", dict(hood=True)),
    "Robe": ("Kimono", dict(sleeve_taper=(1.0, 1.1), hem=(0.8, 0.88))),
    "Shirtdress": ("Dress", dict(buttons=5, collar=True)),
    "Sundress": ("Dress", dict(straps=True)),
}
for _name, (_base, _kw) in _VARIANTS.items():
    _spec = json.loads(json.dumps(SPECS[_base]))  # deep copy (tuples become lists; fine for sampling)
    if _spec["kind"] == "full":
        for _k, _v in _kw.items():
            if _k in ("long_skirt",):
                _spec["bottom"]["leg"] = [0.58, 0.62]
            elif _k in _spec["top"]:
                _spec["top"][_k] = _v
            else:
                _spec[_k] = _v
    else:
        _spec.update(_kw)
    SPECS[_name] = _spec
assert set(SPECS) == {n for n, _ in CATEGORIES}  # a programming invariant, not user input


# Secondary details a real garment may lack (a hoodie without pockets, shorts without a
# drawstring). Dropping one now and then makes a few items genuinely ambiguous between
# neighbouring categories, so even a strong model stays below 100%.
OPTIONAL_DETAILS = ("pockets", "cuffs", "hem_band", "drawstring", "fly", "collar", "zip", "buttons",
                    "belt", "pleats")
DETAIL_DROP_P = 0.1


def _sample(spec: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Draw one item's shape parameters from a spec (ranges -> numbers)."""
    out: dict[str, Any] = {}
    for k, v in spec.items():
        if isinstance(v, dict):
            out[k] = _sample(v, rng)
        elif isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
            out[k] = float(rng.uniform(v[0], v[1]))
        else:
            out[k] = v
    for k in OPTIONAL_DETAILS:
        if out.get(k) and rng.random() < DETAIL_DROP_P:
            out[k] = 0 if k == "buttons" else False
    return out


# ----------------------------------------------------------------------------- drawing

class _Canvas:
    """Garment mask + detail layer in unit coordinates on a square canvas of `px` pixels."""
    def __init__(self, px: int):
        self.px = px
        self.mask = Image.new("L", (px, px), 0)
        self.detail = Image.new("L", (px, px), 0)    # 255 = dark detail line
        self.light = Image.new("L", (px, px), 0)     # 255 = light detail (fringe, face opening)
        self.dm = ImageDraw.Draw(self.mask)
        self.dd = ImageDraw.Draw(self.detail)
        self.dl = ImageDraw.Draw(self.light)

    def p(self, x: float, y: float) -> tuple[float, float]:
        return (x * self.px, y * self.px)

    def poly(self, pts, fill: int = 255) -> None:
        self.dm.polygon([self.p(*q) for q in pts], fill=fill)

    def ellipse(self, cx, cy, rx, ry, fill: int = 255, layer: str = "mask") -> None:
        box = [self.p(cx - rx, cy - ry), self.p(cx + rx, cy + ry)]
        {"mask": self.dm, "detail": self.dd, "light": self.dl}[layer].ellipse(box, fill=fill)

    def line(self, pts, width: float = 0.012, layer: str = "detail") -> None:
        # details must survive the 2x downsample at small sizes: at least ~1.5 output pixels
        w = max(3, int(round(width * DETAIL_SCALE * self.px)))
        {"mask": self.dm, "detail": self.dd, "light": self.dl}[layer].line(
            [self.p(*q) for q in pts], fill=255, width=w)

    def rect(self, x0, y0, x1, y1, layer: str = "mask") -> None:
        {"mask": self.dm, "detail": self.dd, "light": self.dl}[layer].rectangle(
            [self.p(x0, y0), self.p(x1, y1)], fill=255)


def _draw_upper(c: _Canvas, s: dict[str, Any], top: float, bottom: float | None = None) -> None:
    """Torso from shoulders at y=`top` to the hem (or `bottom` for a dress's bodice)."""
    cx = 0.5
    sh_y = top + 0.05
    hem_y = bottom if bottom is not None else s["hem"]
    sw, hw = s["sw"], s["sw"] * s["flare"]
    if s.get("cape"):
        c.poly([(cx - 0.06, top), (cx + 0.06, top), (cx + 0.4, hem_y), (cx - 0.4, hem_y)])
        c.ellipse(cx, top + 0.01, 0.06, 0.035, fill=0)
        c.line([(cx - 0.4, hem_y - 0.04), (cx + 0.4, hem_y - 0.04)], width=0.01)
        return
    c.poly([(cx - sw, sh_y), (cx + sw, sh_y), (cx + hw, hem_y), (cx - hw, hem_y)])
    # sleeves: quadrilaterals from the shoulder, angled down and out
    if s["sleeve"] > 0.01:
        a = math.radians(s["sleeve_angle"])
        for side in (-1, 1):
            dx, dy = side * math.sin(a), math.cos(a)
            x0, y0 = cx + side * (sw - 0.01), sh_y
            w0, w1 = s["sleeve_w"], s["sleeve_w"] * s["sleeve_taper"]
            L = s["sleeve"]
            p_top = (x0, y0)
            p_arm = (x0 - side * 0.01, y0 + w0 * 1.2)
            p_end_lo = (p_arm[0] + dx * L, p_arm[1] + dy * L)
            p_end_hi = (p_end_lo[0] + side * w1 * math.cos(a), p_end_lo[1] - w1 * math.sin(a))
            c.poly([p_top, p_end_hi, p_end_lo, p_arm])
            if s["cuffs"]:
                t = 0.9
                q0 = (p_arm[0] + dx * L * t, p_arm[1] + dy * L * t)
                q1 = (q0[0] + side * w1 * math.cos(a), q0[1] - w1 * math.sin(a))
                c.line([q0, q1], width=0.01)
    # straps (tank, sundress) / neckline cut-outs
    if s["straps"] or s["neck"] == "halter":
        if s["neck"] == "halter":
            c.poly([(cx - 0.03, top - 0.03), (cx + 0.03, top - 0.03), (cx + sw, sh_y + 0.06), (cx - sw, sh_y + 0.06)])
        else:
            for side in (-1, 1):
                c.rect(cx + side * (sw - 0.02) - 0.02, top - 0.03, cx + side * (sw - 0.02) + 0.02, sh_y + 0.02)
        c.ellipse(cx, sh_y, sw - 0.04, 0.07, fill=0)
    elif s["neck"] == "round":
        c.ellipse(cx, sh_y - 0.005, 0.06, 0.035, fill=0)
    elif s["neck"] == "scoop":
        c.ellipse(cx, sh_y, 0.09, 0.06, fill=0)
    elif s["neck"] in ("v", "wrap"):
        depth = 0.18 if s["neck"] == "v" else 0.24
        c.poly([(cx - 0.065, sh_y - 0.01), (cx + 0.065, sh_y - 0.01), (cx, sh_y + depth)], fill=0)
        if s["neck"] == "wrap":
            c.line([(cx - 0.07, sh_y), (cx + 0.05, sh_y + depth + 0.12)], width=0.012)
    if s["high_neck"]:
        c.rect(cx - 0.06, top - 0.03, cx + 0.06, sh_y + 0.01)
        c.line([(cx - 0.06, sh_y + 0.01), (cx + 0.06, sh_y + 0.01)], width=0.008)
    if s["hood"]:
        c.ellipse(cx, top - 0.02, 0.1, 0.08)
        c.ellipse(cx, top - 0.01, 0.055, 0.05, layer="light")
    if s["collar"]:
        for side in (-1, 1):
            c.line([(cx + side * 0.07, sh_y - 0.015), (cx + side * 0.02, sh_y + 0.06)], width=0.015)
    if s["lapels"]:
        for side in (-1, 1):
            c.line([(cx + side * 0.065, sh_y), (cx + side * 0.1, sh_y + 0.1), (cx, sh_y + 0.26)], width=0.014)
    end = hem_y
    if s["opening"] or s["zip"]:
        c.line([(cx, sh_y + 0.05), (cx, end)], width=0.012 if s["zip"] else 0.008)
    if s["zip"]:
        c.rect(cx - 0.012, sh_y + 0.02, cx + 0.012, sh_y + 0.05, layer="light")
    n = int(s["buttons"])
    if n:
        y0 = sh_y + (0.2 if s["lapels"] else 0.06)
        for i in range(n):
            y = y0 + (end - 0.05 - y0) * (i / max(1, n - 1) if n > 1 else 0.3)
            if s["lapels"] and n <= 2:
                y = y0 + 0.08 * (i + 1)
            c.ellipse(cx + (0.025 if s["opening"] else 0.0), y, 0.02, 0.02, layer="detail")
    if s["hem_band"]:
        c.line([(cx - hw + 0.01, end - 0.04), (cx + hw - 0.01, end - 0.04)], width=0.012)
    if s["pockets"]:
        for side in (-1, 1):
            px = cx + side * hw * 0.55
            c.line([(px - 0.05, end - 0.14), (px + 0.05, end - 0.14)], width=0.01)
    if s["belt"]:
        by = top + (end - top) * 0.45
        c.rect(cx - hw - 0.005, by - 0.025, cx + hw + 0.005, by + 0.025, layer="detail")
    if s.get("number"):
        c.rect(cx - 0.05, sh_y + 0.12, cx - 0.035, sh_y + 0.26, layer="light")
        c.rect(cx + 0.01, sh_y + 0.12, cx + 0.055, sh_y + 0.26, layer="light")


def _draw_lower(c: _Canvas, s: dict[str, Any], top: float) -> None:
    """Trousers/shorts/skirt from the waistband at y=`top`."""
    cx = 0.5
    ww = s["ww"]
    hem_y = min(0.98, top + s["leg"])
    if s["skirt"]:
        hw = ww * s["flare"]
        c.poly([(cx - ww, top), (cx + ww, top), (cx + hw, hem_y), (cx - hw, hem_y)])
        if s["pleats"]:
            for t in (-0.6, -0.2, 0.2, 0.6):
                c.line([(cx + t * ww, top + 0.06), (cx + t * hw, hem_y)], width=0.006)
        if s["wrap"]:
            c.line([(cx + ww * 0.6, top + 0.02), (cx - hw * 0.3, hem_y)], width=0.012)
    else:
        hip_y = top + 0.12
        hipw = ww * s["hip"]
        crotch_y = top + s["crotch"]
        if crotch_y > hem_y - 0.04:
            crotch_y = hem_y - 0.04
        leg_top = hipw * 2 * s["leg_top"]          # leg width at the crotch
        leg_hem = leg_top * s["leg_hem"] / 0.5      # leg width at the hem (relative)
        o_hem = min(hipw + (leg_hem - leg_top) * 0.5, 0.42)
        i_hem = max(o_hem - leg_hem, 0.01)
        c.poly([(cx - ww, top), (cx + ww, top), (cx + hipw, hip_y), (cx + o_hem, hem_y),
                (cx + i_hem, hem_y), (cx, crotch_y), (cx - i_hem, hem_y), (cx - o_hem, hem_y),
                (cx - hipw, hip_y)])
        if s["cuffs"]:
            for side in (-1, 1):
                xa, xb = sorted((cx + side * (i_hem - 0.012), cx + side * (o_hem + 0.012)))
                c.rect(xa, hem_y - 0.05, xb, hem_y)
                c.line([(xa, hem_y - 0.05), (xb, hem_y - 0.05)], width=0.008)
        if s["frayed"]:
            rng_pts = 7
            for side in (-1, 1):
                xa, xb = sorted((cx + side * i_hem, cx + side * o_hem))
                pts = [(xa + (xb - xa) * k / rng_pts, hem_y + (0.025 if k % 2 else 0.0)) for k in range(rng_pts + 1)]
                c.poly([(xa, hem_y - 0.01)] + pts + [(xb, hem_y - 0.01)])
                c.line([(xa, hem_y - 0.005), (xb, hem_y - 0.005)], width=0.012, layer="light")
        if s["fly"]:
            c.line([(cx + 0.02, top + 0.04), (cx + 0.02, crotch_y - 0.05), (cx, crotch_y - 0.02)], width=0.008)
        if s["pleats"]:
            for side in (-1, 1):
                c.line([(cx + side * hipw * 0.5, top + 0.04), (cx + side * (i_hem + o_hem) / 2, hem_y - 0.05)], width=0.005)
        if s["pockets"]:
            for side in (-1, 1):
                c.line([(cx + side * ww * 0.5, top + 0.04), (cx + side * hipw * 0.95, hip_y - 0.02)], width=0.009)
    if s["waistband"]:
        c.line([(cx - ww, top + 0.03), (cx + ww, top + 0.03)], width=0.01)
    if s["drawstring"]:
        c.line([(cx - 0.015, top + 0.03), (cx - 0.03, top + 0.13)], width=0.008, layer="mask")
        c.line([(cx + 0.015, top + 0.03), (cx + 0.03, top + 0.13)], width=0.008, layer="mask")
        c.line([(cx - 0.015, top + 0.03), (cx - 0.03, top + 0.13)], width=0.006, layer="light")
        c.line([(cx + 0.015, top + 0.03), (cx + 0.03, top + 0.13)], width=0.006, layer="light")


def _draw_garment(spec: dict[str, Any], px: int) -> _Canvas:
    c = _Canvas(px)
    if spec["kind"] == "upper":
        _draw_upper(c, spec, top=0.08)
    elif spec["kind"] == "lower":
        _draw_lower(c, spec, top=0.08)
    else:
        waist = spec["waist"]
        top = dict(spec["top"])
        for k in ("hood", "buttons", "collar", "straps"):
            if k in spec:
                top[k] = spec[k]
        bottom = dict(spec["bottom"])
        bottom["ww"] = top["sw"] * 0.85
        _draw_lower(c, bottom, top=waist - 0.02)
        _draw_upper(c, top, top=0.04, bottom=waist + 0.01)
        c.line([(0.5 - bottom["ww"], waist), (0.5 + bottom["ww"], waist)], width=0.01)
    return c


# ----------------------------------------------------------------------------- colours, textures

def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1))
    return int(r * 255), int(g * 255), int(b * 255)


def _item_style(rng: np.random.Generator, category: str, spec: dict[str, Any]) -> dict[str, Any]:
    if category in ("Jeans", "Cutoffs", "Jeggings") and rng.random() < 0.6:
        base = _hsv(rng.uniform(0.57, 0.63), rng.uniform(0.4, 0.7), rng.uniform(0.3, 0.75))
    else:
        base = _hsv(rng.random(), rng.uniform(0.0, 0.9), rng.uniform(0.2, 0.95))
    pattern = spec.get("pattern") or rng.choice(["plain", "plain", "stripes", "dots", "checks"])
    accent = _hsv(rng.random(), rng.uniform(0.0, 0.9), rng.uniform(0.1, 1.0))
    return {"base": base, "accent": accent, "pattern": str(pattern),
            "period": float(rng.uniform(0.04, 0.1)), "angle": float(rng.choice([0, 90, 45, -45]) + rng.uniform(-8, 8))}


def _texture(style: dict[str, Any], px: int) -> Image.Image:
    base = np.array(style["base"], dtype=np.float32)
    accent = np.array(style["accent"], dtype=np.float32)
    img = np.empty((px, px, 3), dtype=np.float32)
    img[:] = base
    yy, xx = np.mgrid[0:px, 0:px].astype(np.float32) / px
    period = style["period"]
    a = math.radians(style["angle"])
    u = xx * math.cos(a) + yy * math.sin(a)
    v = -xx * math.sin(a) + yy * math.cos(a)
    if style["pattern"] == "stripes":
        m = (np.mod(u, period) < period * 0.45)
    elif style["pattern"] == "checks":
        m = (np.mod(u, period) < period * 0.5) ^ (np.mod(v, period) < period * 0.5)
    elif style["pattern"] == "dots":
        du = np.mod(u, period) - period / 2
        dv = np.mod(v, period) - period / 2
        m = (du * du + dv * dv) < (period * 0.22) ** 2
    else:
        m = np.zeros((px, px), dtype=bool)
    img[m] = accent
    # soft shading so the garment is not a flat cut-out
    img *= (0.85 + 0.3 * (1 - yy))[..., None] * 0.9
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _background(rng: np.random.Generator, px: int) -> Image.Image:
    c0 = np.array(_hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.35, 1.0)), np.float32)
    c1 = np.array(_hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.35, 1.0)), np.float32)
    t = np.linspace(0, 1, px, dtype=np.float32)[:, None, None]
    img = Image.fromarray((c0 * (1 - t) + c1 * t).repeat(px, axis=1).astype(np.uint8), "RGB")
    layer = Image.new("RGB", (px, px))
    alpha = Image.new("L", (px, px), 0)
    dl, da = ImageDraw.Draw(layer), ImageDraw.Draw(alpha)
    for _ in range(int(rng.integers(2, 7))):
        col = _hsv(rng.random(), rng.uniform(0, 1), rng.uniform(0.1, 1))
        a = int(rng.uniform(30, 110))
        x0, y0 = rng.uniform(-0.2, 1.0, size=2) * px
        w, h = rng.uniform(0.05, 0.35, size=2) * px
        box = [x0, y0, x0 + w, y0 + h]
        kind = rng.integers(0, 3)
        if kind == 0:
            dl.rectangle(box, fill=col); da.rectangle(box, fill=a)
        elif kind == 1:
            dl.ellipse(box, fill=col); da.ellipse(box, fill=a)
        else:
            lw = int(rng.uniform(0.01, 0.04) * px) + 1
            dl.line(box, fill=col, width=lw); da.line(box, fill=a, width=lw)
    return Image.composite(layer, img, alpha)


def render_image(category: str, item_params: dict[str, Any], style: dict[str, Any],
                 rng: np.random.Generator, size: int) -> Image.Image:
    """One RGB image of `size` px: the item's garment posed on a cluttered background."""
    px = size * 2  # draw at 2x and downsample: cheap anti-aliasing
    canvas = _draw_garment(item_params, px)
    tex = _texture(style, px)
    dark = Image.new("RGB", (px, px), tuple(int(x * 0.35) for x in style["base"]))
    light = Image.new("RGB", (px, px), tuple(min(255, int(x * 0.5 + 140)) for x in style["base"]))
    tex = Image.composite(dark, tex, canvas.detail)
    tex = Image.composite(light, tex, canvas.light)
    mask = canvas.mask.filter(ImageFilter.GaussianBlur(0.6))
    # pose: rotation, scale, mirror, position
    angle = float(rng.uniform(-8, 8))
    scale = float(rng.uniform(0.8, 1.0))
    if rng.random() < 0.5:
        mask, tex = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT), tex.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    mask = mask.rotate(angle, resample=Image.Resampling.BILINEAR)
    tex = tex.rotate(angle, resample=Image.Resampling.BILINEAR)
    g = max(8, int(px * scale))
    mask = mask.resize((g, g), Image.Resampling.BILINEAR)
    tex = tex.resize((g, g), Image.Resampling.BILINEAR)
    slack = px - g
    ox = int(rng.uniform(-0.08, 1.08) * slack) if slack > 0 else 0
    oy = int(rng.uniform(-0.08, 1.08) * slack) if slack > 0 else 0
    bg = _background(rng, px)
    bg.paste(tex, (ox, oy), mask)
    img = bg.resize((size, size), Image.Resampling.BOX)
    # lighting and sensor noise
    arr = np.asarray(img, dtype=np.float32)
    arr = arr * float(rng.uniform(0.75, 1.2)) + float(rng.uniform(-20, 20))
    arr += rng.normal(0.0, float(rng.uniform(1, 6)), size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


# ----------------------------------------------------------------------------- the dataset

def _params(classes: int, per_class: int, size: int, seed: int) -> dict[str, Any]:
    return {"generator": "fopt.data.synth", "version": SYNTH_VERSION, "classes": classes,
            "per_class": per_class, "size": size, "seed": seed}


def _item_sizes(rng: np.random.Generator, per_class: int) -> list[int]:
    sizes: list[int] = []
    left = per_class
    while left > 0:
        n = int(rng.integers(IMAGES_PER_ITEM[0], IMAGES_PER_ITEM[1] + 1))
        sizes.append(min(n, left))
        left -= n
    return sizes


def _item_splits(rng: np.random.Generator, n_items: int) -> list[str]:
    """Whole items to val/test (about 10% each, at least one each when there are 3+ items)."""
    n_val = max(1, round(n_items * SPLIT_FRACTIONS[1])) if n_items >= 3 else 0
    n_test = max(1, round(n_items * SPLIT_FRACTIONS[2])) if n_items >= 3 else 0
    splits = ["train"] * (n_items - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    order = rng.permutation(n_items)
    return [splits[i] for i in np.argsort(order)]


def _check_args(classes: int, per_class: int, size: int) -> None:
    if not 2 <= classes <= len(CATEGORIES):
        raise UsageError(f"--classes must be between 2 and {len(CATEGORIES)} (the benchmark's categories), got {classes}")
    if per_class < 1:
        raise UsageError(f"--per-class must be at least 1, got {per_class}")
    if not 16 <= size <= 512:
        raise UsageError(f"--size must be between 16 and 512 pixels, got {size}")


def synthesize(out_dir: str | os.PathLike, classes: int = 22, per_class: int = DEFAULT_PER_CLASS,
               size: int = DEFAULT_SIZE, seed: int = 0, preview: str | os.PathLike | None = None,
               force: bool = False, progress: Any = None) -> Path:
    """Write the synthetic DeepFashion-layout tree to `out_dir` and return it (resolved).

    `out_dir` may be missing or empty. If it already holds a synthetic set made with the same
    arguments it is reused as is (generation is deterministic). An earlier set made with other
    arguments is replaced only with `force`, and only what fopt wrote (`fopt.data.ownership`):
    a folder holding files fopt did not make is refused. The tree is built in a scratch folder
    inside `out_dir` and renamed into place, so a killed run leaves nothing that looks complete.
    `preview` writes a PNG contact sheet (one row per class). `progress(done, total)` is called
    after each class when given.
    """
    _check_args(classes, per_class, size)
    out = Path(out_dir).resolve()              # "." has no name to build a scratch folder from
    params = _params(classes, per_class, size, seed)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder")
    if not force and _made_with(out, params):
        if preview:
            write_preview(out, preview)
        return out
    with claim_outputs(out, OUTPUTS, force=force, what="synthetic dataset folder"):
        tmp = scratch_dir(out, "synth")
        try:
            _write_tree(tmp, params, progress)
            for name in OUTPUTS:
                if (tmp / name).is_dir():
                    replace_dir(tmp / name, out / name)
                else:
                    os.replace(tmp / name, out / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if preview:
        write_preview(out, preview)
    return out


def _made_with(out: Path, params: dict[str, Any]) -> bool:
    """True when `out` holds a synthetic set made with `params` (its synth.json says so)."""
    try:
        return json.loads((out / "synth.json").read_text()) == params
    except (OSError, ValueError):
        return False


def _write_tree(root: Path, params: dict[str, Any], progress: Any = None) -> None:
    classes, per_class, size, seed = params["classes"], params["per_class"], params["size"], params["seed"]
    names = synth_category_order()[:classes]
    (root / "Img" / "img").mkdir(parents=True)
    (root / "Anno").mkdir()
    (root / "Eval").mkdir()
    img_rows: list[tuple[str, int]] = []
    part_rows: list[tuple[str, str]] = []
    counter = 0  # DeepFashion numbers images per folder; folders are unique per item
    for ci, name in enumerate(names):
        label = label_of(name)
        class_rng = np.random.default_rng([seed, label, 0])
        sizes = _item_sizes(class_rng, per_class)
        splits = _item_splits(class_rng, len(sizes))
        for item, (n_views, split) in enumerate(zip(sizes, splits)):
            item_rng = np.random.default_rng([seed, label, item + 1, 0])
            shape = _sample(SPECS[name], item_rng)
            style = _item_style(item_rng, name, SPECS[name])
            adjective = {"plain": "Classic", "stripes": "Striped", "dots": "Dotted", "checks": "Checked"}[style["pattern"]]
            folder = f"{adjective}_{name}_{item + 1:04d}"
            (root / "Img" / "img" / folder).mkdir()
            for view in range(n_views):
                counter += 1
                rng = np.random.default_rng([seed, label, item + 1, view + 1])
                img = render_image(name, shape, style, rng, size)
                rel = f"img/{folder}/img_{view + 1:08d}.jpg"
                img.save(root / "Img" / rel, format="JPEG", quality=JPEG_QUALITY)
                img_rows.append((rel, label))
                part_rows.append((rel, split))
        if progress:
            progress(ci + 1, classes)
    _write_annotations(root, img_rows, part_rows)
    (root / "synth.json").write_text(json.dumps(params, indent=2) + "\n")


def _write_annotations(root: Path, img_rows: list[tuple[str, int]], part_rows: list[tuple[str, str]]) -> None:
    cloth = [str(len(CATEGORIES)), "category_name  category_type"]
    cloth += [f"{n.ljust(15)}{t}" for n, t in CATEGORIES]
    (root / "Anno" / "list_category_cloth.txt").write_text("\n".join(cloth) + "\n")
    img = [str(len(img_rows)), "image_name  category_label"]
    img += [f"{p.ljust(NAME_WIDTH)}{lab}" for p, lab in img_rows]
    (root / "Anno" / "list_category_img.txt").write_text("\n".join(img) + "\n")
    part = [str(len(part_rows)), "image_name  evaluation_status"]
    part += [f"{p.ljust(NAME_WIDTH)}{s}" for p, s in part_rows]
    (root / "Eval" / "list_eval_partition.txt").write_text("\n".join(part) + "\n")


def write_preview(root: str | os.PathLike, path: str | os.PathLike, per_row: int = 8, thumb: int = 64) -> Path:
    """Contact sheet of a DeepFashion-layout tree: one row per category, its first images."""
    root = Path(root)
    rows: dict[int, list[str]] = {}
    lines = (root / "Anno" / "list_category_img.txt").read_text().splitlines()[2:]
    for line in lines:
        rel, lab = line.split()
        rows.setdefault(int(lab), []).append(rel)
    base = root / "Img" if (root / "Img" / "img").is_dir() else root
    label_w = 110
    sheet = Image.new("RGB", (label_w + per_row * (thumb + 2), len(rows) * (thumb + 2)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (lab, rels) in enumerate(sorted(rows.items())):
        y = r * (thumb + 2)
        draw.text((4, y + thumb // 2 - 6), f"{lab} {CATEGORIES[lab - 1][0]}", fill=(0, 0, 0))
        for k, rel in enumerate(rels[:per_row]):
            with Image.open(base / rel) as im:
                sheet.paste(im.convert("RGB").resize((thumb, thumb)), (label_w + k * (thumb + 2), y))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)
