"""Fitting the calibration: one linear model per kernel class from the probes' equations.

`fit_joint` solves all probe equations at once (``overhead_s + work * sec_per_work`` per class,
plus a shared cost per byte beyond the cache); `fit_with_retiming` times outlying probes again
through a callback; `rate_points` keeps each probe convolution's achieved rate with its shape
features for the similarity lookup of `fopt.bench.costmodel.predict.knn_rate`; `fit_gap` prices
what an eager forward costs beyond its ATen calls.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from fopt.bench.costmodel.kernels import COMPUTE_CLASSES, NodeWork
from fopt.bench.costmodel.predict import fused_act_s, predict_node

DEFAULT_CACHE_BYTES = 16 * 2 ** 20   # half of a 32 MiB L3, when the machine does not say


def fit_joint(equations: list[dict[str, Any]], run_fixed_s: float = 0.0,
              cache_bytes: float | None = None) -> dict[str, Any]:
    """Fit every equation (a probe's executed nodes and its measured time) at once.

    Model, per node of class c: ``overhead_s[c] + work * sec_per_work[c]
    + max(0, bytes - cache_bytes) * dram_sec_per_byte``; an equation's prediction is the sum
    over its nodes plus ``run_fixed_s``. The last term is shared by all classes: what a node
    pays once its tensors no longer fit in the cache (``cache_bytes``, half the L3 by default).
    Relative (1/t) weights, non-negative least squares (scipy's NNLS). Equations marked
    ``lookup_only`` (the small-input probes) stay out: they only give `rate_points`.

    Returns ``{"classes": {c: fit}, "dram": {...}, "residuals": [prediction / measured - 1]}``.
    """
    from scipy.optimize import nnls


    thr = float(cache_bytes if cache_bytes is not None else DEFAULT_CACHE_BYTES)
    works = {id(e): [NodeWork.from_equation_node(n) for n in e["nodes"]] for e in equations}
    classes = sorted({nw.kernel_class for ws in works.values() for nw in ws}
                     | {nw.fused_act[0] for ws in works.values() for nw in ws if nw.fused_act})
    cols: list[tuple[str, str]] = []
    for c in classes:
        cols.append((c, "o"))
        if c != "noop":
            cols.append((c, "s"))
    cols.append(("dram", "s"))
    index = {col: j for j, col in enumerate(cols)}
    usable = [e for e in equations if e["seconds"] - run_fixed_s > 0 and e["nodes"] and not e.get("lookup_only")]
    if not usable:
        raise ValueError("no usable probe measurements to fit")
    a = np.zeros((len(usable), len(cols)))
    for r, e in enumerate(usable):
        t = e["seconds"]
        for nw in works[id(e)]:
            a[r, index[(nw.kernel_class, "o")]] += 1.0 / t
            if (nw.kernel_class, "s") in index:
                a[r, index[(nw.kernel_class, "s")]] += nw.work / t
            if nw.fused_act:   # the fused activation's elements, at its own class's rate
                a[r, index[(nw.fused_act[0], "s")]] += nw.fused_act[1] / t
            a[r, index[("dram", "s")]] += max(0.0, nw.bytes_moved - thr) / t
    y = np.array([1.0 - run_fixed_s / e["seconds"] for e in usable])
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    x, _ = nnls(a / scale, y)
    x = x / scale
    resid = list((a @ x - y) / np.maximum(y, 1e-12))
    fits: dict[str, dict] = {}
    for c in classes:
        rows = [r for r, e in enumerate(usable) if any(n[0] == c for n in e["nodes"])]
        fits[c] = {"overhead_s": float(x[index[(c, "o")]]),
                   "sec_per_work": float(x[index[(c, "s")]]) if (c, "s") in index else 0.0,
                   "n": int(sum(1 for e in usable for n in e["nodes"] if n[0] == c)),
                   "rel_rmse": float(np.sqrt(np.mean([resid[r] ** 2 for r in rows]))) if rows else 0.0}
    return {"classes": fits, "dram": {"cache_bytes": thr, "sec_per_byte": float(x[index[("dram", "s")]])},
            "residuals": resid, "used": usable}


def fit_gap(samples: list[tuple[int, float, float]]) -> dict[str, float]:
    """Non-negative least squares of seconds = ops * per_op_s + bytes * per_byte_s."""
    from scipy.optimize import nnls

    if not samples:
        return {"per_op_s": 0.0, "per_byte_s": 0.0}
    a = np.array([[n, nbytes] for n, nbytes, _ in samples], dtype=float)
    y = np.array([max(0.0, sec) for _, _, sec in samples])
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    x, _ = nnls(a / scale, y)
    x = x / scale
    return {"per_op_s": float(x[0]), "per_byte_s": float(x[1])}


RETIME_BELOW = -0.5      # a probe twice as slow as the fit predicts is timed again...


RETIME_ROUNDS = 1        # ...once, keeping its fastest timing


RETIME_SHARE = 0.1       # and at most this share of the probes


def fit_with_retiming(equations: list[dict[str, Any]], run_fixed_s: float, cache_bytes: float,
                      retime: Callable[[list[dict[str, Any]]], None] | None) -> dict[str, Any]:
    """`fit_joint`, then time again the probes the fit says are much slower than their peers.

    Another process on the machine only ever makes a probe slower, and one slow probe skews its
    class; a second timing of the outliers, keeping the fastest, removes most of that."""
    fit = fit_joint(equations, run_fixed_s, cache_bytes)
    for _ in range(RETIME_ROUNDS if retime else 0):
        worst = sorted((r, k) for k, r in enumerate(fit["residuals"]) if r < RETIME_BELOW)
        suspects = [fit["used"][k] for _, k in worst[: max(1, int(RETIME_SHARE * len(fit["used"])))]]
        if not suspects:
            break
        retime(suspects)
        fit = fit_joint(equations, run_fixed_s, cache_bytes)
    return fit


def rate_points(equations: list[dict[str, Any]], fit: dict[str, Any], run_fixed_s: float = 0.0) -> dict[str, list]:
    """Achieved rate of every compute node in the probes, with its shape features.

    An equation's time beyond the linear prediction of all its nodes is attributed to its
    compute nodes (convolutions, GEMMs) in proportion to their predicted share; the rest of its
    nodes (element-wise, layout, Q/DQ) keep their linear prediction. The estimate later looks up
    the rate of the most similar probe layers (`fopt.bench.costmodel.predict.knn_rate`)."""

    out: dict[str, list] = {}
    for e in equations:
        nodes = e["nodes"]
        works = [NodeWork.from_equation_node(n) for n in nodes]
        preds = [predict_node(nw, fit["classes"], fit["dram"])[0] for nw in works]
        compute = [i for i, nw in enumerate(works) if nw.kernel_class in COMPUTE_CLASSES and nw.work > 0 and nw.features]
        if not compute:
            continue
        # shares by predicted time; by work where the linear fit gave the class nothing
        weight = {i: preds[i] for i in compute} if sum(preds[i] for i in compute) > 0 else \
            {i: works[i].work for i in compute}
        total = sum(weight.values())
        rest = (e["seconds"] - run_fixed_s) - sum(preds)
        same: dict[tuple, list[float]] = {}   # the repeated layers of a branch make one point
        for i in compute:
            t = max(0.2 * preds[i], preds[i] + rest * weight[i] / total)
            t -= min(0.8 * t, fused_act_s(works[i], fit["classes"]))   # the convolution's own time
            if t > 0:
                acc = same.setdefault((works[i].kernel_class, works[i].features), [0.0, 0.0])
                acc[0] += works[i].work
                acc[1] += t
        for (cls, feats), (work, t) in same.items():
            out.setdefault(cls, []).append([*feats, work / t])
    return out
