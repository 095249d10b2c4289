"""How sure an estimate is: 80% bands from the calibration's own out-of-sample residuals.

An estimate is printed as a central value and an interval that should hold the measured p50
four times in five. The interval is not guessed: it comes from predicting each calibration
probe *without* what was learnt from that probe, and looking at how far off that was.

Residuals are ``log(measured / predicted)`` of one probe equation (a probe branch at one batch;
torch eager's per-call equations are summed per branch and batch first); an equation belongs to the kernel class with the largest
share of its predicted time. Three pools per backend, each stored as its 10th and 90th
percentiles (`LEVEL`):

- ``classes[c]`` (in family): leave-one-probe-out. The probe's own layers are taken out of the
  similarity lookup (`fopt.bench.costmodel.predict.knn_rate`), so a convolution is priced from
  the *other* probe layers, as a model's layer is. (The per-class linear fits keep every
  equation: with dozens of equations per class, one changes them little.)
- ``borrowed`` (a class the calibration did not measure, or an op with no handler):
  leave-one-class-out. The equations a class dominates are refitted without it and predicted
  with the class it falls back to (`CLASS_FALLBACK`), as a model's uncalibrated class is.
- ``far`` (a shape far from every probe layer): the class's probe layers all taken out of the
  lookup, so the linear class fit prices it, as a model's unusual layer is.

A fourth term, ``drift``, is not the model's error but the machine's: each probe is timed in
whole passes minutes apart, and the median move of all probes from one pass to the next is how
far this machine's speed moved in that time (`machine_drift`). Every band is widened by it
(`with_drift`).

A fifth, ``composition``, is the model's error on a whole network rather than on one probe: the
calibration prices a chain of probe-like layers and times it five times over its length
(`fopt.bench.costmodel.calibrate._Chain`). Where its fastest timing was slower than its
estimate, a calibrated band's upper end is widened by that ratio (faster: the lower end), at
the batch size nearest the row's (`widened`).

A sixth, ``spells``, is the machine's again: how much slower the same chain ran at its slowest
timing than at its fastest. This 2-core VM has slow spells, seconds long, with no steal time
counted, in which two intra-op threads run a small network no faster than one: the FP32 chain
at batch 1 took about 2.8 ms, or 3.9-4.7 ms. A measuring process that starts in one is slower by
that much whatever the model's error, so the upper end is widened by it (`widened`). The
``drift`` term above does not see them: each probe keeps its fastest pass.

A model's band (`calibrated_band`) prices each node with its pool: in family its class's
quantiles (``pooled`` when the class has fewer than `MIN_RESIDUALS`), out of family the wider
of its class's and the out-of-family pool's. Node errors are summed as if they moved together
(which the measured misses say they do: a held-out model is underestimated everywhere at
once), so the band is no narrower than its nodes'. The roofline band (`roofline_band`) applies
the spread of the plain per-node roofline over every probe: it knows no classes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fopt.bench.costmodel.fit import fit_joint
from fopt.bench.costmodel.kernels import CLASS_FALLBACK, COMPUTE_CLASSES, NodeWork
from fopt.bench.costmodel.predict import CalibratedEstimate, peak_mac_rate, predict_node

LEVEL = 0.8               # the band's nominal coverage
MIN_RESIDUALS = 5         # fewer residuals than this: a class uses the pooled in-family quantiles
BANDS_VERSION = 4         # stored bands of another version are recomputed


def _quantiles(logs: list[float]) -> list[float] | None:
    """[low, high, n]: the (1-LEVEL)/2 and (1+LEVEL)/2 quantiles of log residuals, widened to
    contain 0 (the band always holds its own estimate)."""
    if not logs:
        return None
    lo, hi = np.quantile(np.asarray(logs), [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return [min(float(lo), 0.0), max(float(hi), 0.0), len(logs)]


def _predict_equation(e: dict[str, Any], fits: dict[str, Any], points: dict[str, list] | None,
                      cap: float | None, run_fixed_s: float) -> tuple[float, str]:
    """(seconds, dominant class) of one probe equation."""
    works = [NodeWork.from_equation_node(n) for n in e["nodes"]]
    secs = [predict_node(nw, fits["classes"], fits.get("dram"), points, cap)[0] for nw in works]
    by_class: dict[str, float] = {}
    for nw, s in zip(works, secs):
        by_class[nw.kernel_class] = by_class.get(nw.kernel_class, 0.0) + s
    dominant = max(by_class, key=by_class.get) if by_class else "noop"
    return sum(secs) + run_fixed_s, dominant


def _blocks(eqs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Torch eager's equations are single ATen calls; a model's error is that of blocks of calls,
    whose independent per-call misses partly cancel. Its calls are merged per probe branch and
    batch (the unit ONNX Runtime's equations already have); other equations pass unchanged."""
    merged: dict[tuple, dict[str, Any]] = {}
    out = []
    for e in eqs:
        if "call" not in e:
            out.append(e)
            continue
        key = (e.get("branch"), e.get("batch"))
        m = merged.get(key)
        if m is None:
            m = merged[key] = {"seconds": 0.0, "nodes": [], "pass_s": list(e.get("pass_s") or [])}
            out.append(m)
        else:   # a block's pass times: its calls' times of the same pass, summed
            ps = e.get("pass_s") or []
            m["pass_s"] = [a + b for a, b in zip(m["pass_s"], ps)] if len(ps) == len(m["pass_s"]) else []
        m["seconds"] += e["seconds"]
        m["nodes"] += e["nodes"]
    return out


def machine_drift(eqs: list[dict[str, Any]]) -> list[float] | None:
    """[-d, d, n]: how far this machine's speed moved between whole timing passes, minutes apart.
    d is |the median over probes of log(this pass / the previous pass)|: each probe's own timing
    noise is already in the residuals, while a move of the whole machine (the VM's neighbours,
    its clock) shifts every probe at once, and a later measurement with them. None without two
    passes."""
    moves = []
    for e in eqs:
        ps = [p for p in e.get("pass_s") or [] if p > 0]
        moves += [math.log(b / a) for a, b in zip(ps, ps[1:])]
    if not moves:
        return None
    d = abs(float(np.median(moves)))
    return [-d, d, len(moves)]


def _without(points: dict[str, list], cls: str, feats: set[tuple] | None) -> dict[str, list]:
    """`points` with class `cls`'s points at `feats` removed (all of them when `feats` is None)."""
    out = dict(points)
    if cls in out:
        dim = len(next(iter(feats))) if feats else 0
        out[cls] = [] if feats is None else [p for p in out[cls] if tuple(p[:dim]) not in feats]
    return out


def residual_bands(backend: dict[str, Any], cap: float | None) -> dict[str, Any]:
    """The band quantiles of one calibrated backend (module doc), from its stored equations."""
    eqs = _blocks([e for e in backend.get("equations", []) if e.get("seconds") and e.get("nodes")])
    fixed = float(backend.get("run_fixed_s", 0.0))
    points = backend.get("rate_points") or {}
    fits = {"classes": backend["classes"], "dram": backend.get("dram")}
    in_family: dict[str, list[float]] = {}
    far: list[float] = []
    dominant_of: list[str] = []
    for e in eqs:
        _, dom = _predict_equation(e, fits, points, cap, fixed)
        dominant_of.append(dom)
        own = {tuple(n[3]) for n in e["nodes"] if len(n) > 3 and n[3] and n[0] == dom}
        loo = _without(points, dom, own) if own else points
        pred, _ = _predict_equation(e, fits, loo, cap, fixed)
        if pred > 0:
            in_family.setdefault(dom, []).append(math.log(e["seconds"] / pred))
        if dom in COMPUTE_CLASSES and own:
            pred_far, _ = _predict_equation(e, fits, _without(points, dom, None), cap, fixed)
            if pred_far > 0:
                far.append(math.log(e["seconds"] / pred_far))
    borrowed: list[float] = []
    cache_bytes = (backend.get("dram") or {}).get("cache_bytes")
    for cls in sorted(set(dominant_of)):
        if cls not in CLASS_FALLBACK:
            continue
        mine = [e for e, d in zip(eqs, dominant_of) if d == cls]
        rest = [e for e, d in zip(eqs, dominant_of) if d != cls]
        try:
            refit = fit_joint(rest, fixed, cache_bytes)
        except ValueError:
            continue
        refit["classes"].pop(cls, None)
        loco_points = _without(points, cls, None)
        for e in mine:
            pred, _ = _predict_equation(e, refit, loco_points, cap, fixed)
            if pred > 0:
                borrowed.append(math.log(e["seconds"] / pred))
    all_in = [r for rs in in_family.values() for r in rs]
    return {"version": BANDS_VERSION, "level": LEVEL,
            "classes": {c: _quantiles(rs) for c, rs in sorted(in_family.items())},
            "pooled": _quantiles(all_in), "far": _quantiles(far), "borrowed": _quantiles(borrowed),
            "roofline": _quantiles(_roofline_residuals(eqs, backend)),
            "drift": machine_drift(eqs), "composition": backend.get("composition"),
            "spells": chain_spells(backend)}


def _roofline_residuals(eqs: list[dict[str, Any]], backend: dict[str, Any]) -> list[float]:
    """log(measured / per-node roofline) of every probe, the roofline priced as `fopt.analyze`
    prices a node: max(FLOPs / peak, bytes / bandwidth) + overhead, with this backend's rates
    (`roofline_rates`)."""
    rates = backend.get("roofline_rates")
    if not rates:
        return []
    out = []
    for e in eqs:
        t = rates["run_fixed_s"]
        for n in e["nodes"]:
            nw = NodeWork.from_equation_node(n)
            flops = 2.0 * nw.work if nw.kernel_class in COMPUTE_CLASSES else nw.work
            t += max(flops / rates["peak_flops"], nw.bytes_moved / rates["bandwidth"]) + rates["node_s"]
        out.append(math.log(e["seconds"] / t))
    return out


def bands_for(cal: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The band quantiles of backend `key` of `cal`: stored by `fopt bench --calibrate`, else
    computed from its equations now and kept on `cal` for the next row."""
    backend = (cal.get("backends") or {}).get(key)
    if backend is None:
        return None
    stored = backend.get("bands")
    if stored and stored.get("version") == BANDS_VERSION:
        return stored
    backend.setdefault("roofline_rates", roofline_rates(cal, key))
    cap = peak_mac_rate(cal, key.rsplit("/", 1)[1])
    backend["bands"] = residual_bands(backend, cap * 1.25 if cap else None)
    return backend["bands"]


def roofline_rates(cal: dict[str, Any], key: str) -> dict[str, float] | None:
    """The rates `fopt.analyze`'s CPU roofline uses for this precision (its device spec)."""
    s = cal.get("summary") or {}
    precision = key.rsplit("/", 1)[1]
    peak = (s.get("peak_flops") or {}).get(precision) or (s.get("peak_flops") or {}).get("fp32")
    if not peak or not s.get("mem_bandwidth"):
        return None
    return {"peak_flops": float(peak), "bandwidth": float(s["mem_bandwidth"]),
            "node_s": float(s.get("per_node_overhead_s") or 0.0),
            "run_fixed_s": float((cal.get("backends") or {}).get(key, {}).get("run_fixed_s", 0.0))}


# ----------------------------------------------------------------------------- a model's band

def _node_quantiles(kernel_class: str, out_of_family: bool, bands: dict[str, Any]) -> list[float]:
    own = bands["classes"].get(kernel_class)
    if own is None or own[2] < MIN_RESIDUALS:
        own = bands.get("pooled") or [0.0, 0.0, 0]
    if not out_of_family:
        return own
    pool = bands.get("borrowed") or bands.get("far") or own
    return [min(own[0], pool[0]), max(own[1], pool[1]), pool[2]]


def calibrated_band(ce: CalibratedEstimate, bands: dict[str, Any],
                    batch: int | None = None) -> tuple[float, float, list[str]] | None:
    """(low_ms, high_ms, notes) of a calibrated estimate at `batch`: each node's estimate times its
    pool's quantile factors, summed (module doc), widened by the machine's drift and by the
    chain's composition error; notes say which nodes widened it and by how much.
    None when the calibration holds no residuals (no probe equations): no band beats a made-up one."""
    if not bands.get("pooled"):
        return None
    lo = hi = ce.fixed_ms
    lo_in = hi_in = ce.fixed_ms
    why: dict[str, float] = {}
    for n in ce.nodes:
        reason = None
        if n.unknown_op:
            reason = f"op {n.op} has no handler"
        elif n.fit_class.endswith("no similar probe layer)"):
            reason = f"{n.kernel_class} shape far from every probe layer"
        elif n.fit_class != n.kernel_class and n.kernel_class != "noop":
            reason = f"class {n.kernel_class} not calibrated"
        q = _node_quantiles(n.kernel_class, reason is not None, bands)
        q_in = _node_quantiles(n.kernel_class, False, bands)
        lo += n.estimate_ms * math.exp(q[0])
        hi += n.estimate_ms * math.exp(q[1])
        lo_in += n.estimate_ms * math.exp(q_in[0])
        hi_in += n.estimate_ms * math.exp(q_in[1])
        if reason:
            why[reason] = why.get(reason, 0.0) + n.estimate_ms
    lo, hi = with_drift(ce.total_ms, lo, hi, bands)
    lo_in, hi_in = with_drift(ce.total_ms, lo_in, hi_in, bands)
    notes = []
    # The chain network's two terms (module doc): its miss, and the machine's slow spells.
    chain_terms = (("composition", lambda r, b: f"a whole network of probe layers ran x{r:.2f} its estimate on "
                                                f"this backend (calibration, batch {b})"),
                   ("spells", lambda r, b: f"this machine's speed moves: the same network of probe layers ran up "
                                           f"to x{r:.2f} slower at one point of the calibration than at another "
                                           f"(batch {b})"))
    for term, says in chain_terms:
        found = at_nearest_batch(bands.get(term), batch)
        if found is None:
            continue
        chain_batch, ratio = found
        before = (lo, hi)
        lo, hi = widened(ce.total_ms, lo, hi, ratio)
        lo_in, hi_in = widened(ce.total_ms, lo_in, hi_in, ratio)
        if (lo, hi) != before:
            notes.append(f"band widened from [{before[0]:.3g}, {before[1]:.3g}] to [{lo:.3g}, {hi:.3g}] ms: "
                         + says(ratio, chain_batch))
    if why and ce.total_ms > 0:
        parts = ", ".join(f"{k} ({100 * v / ce.total_ms:.0f}% of the estimate)" for k, v in sorted(why.items()))
        notes.append(f"band widened from [{lo_in:.3g}, {hi_in:.3g}] to [{lo:.3g}, {hi:.3g}] ms: out-of-family "
                     f"work: {parts}")
    return lo, hi, notes


def roofline_band(roofline_ms: float, bands: dict[str, Any]) -> tuple[float, float] | None:
    """The roofline estimate times its probe residuals' quantile factors, widened by the
    machine's drift (None without residuals)."""
    q = bands.get("roofline")
    if not q or roofline_ms is None:
        return None
    return with_drift(roofline_ms, roofline_ms * math.exp(q[0]), roofline_ms * math.exp(q[1]), bands)


def with_drift(center: float, lo: float, hi: float, bands: dict[str, Any]) -> tuple[float, float]:
    """[lo, hi] around `center`, widened by the machine's drift (``drift``, `machine_drift`). The
    residual quantiles say how far the model misses a probe timed then; a later measurement
    also moves with the machine, independently of the model's error, so the two add in
    quadrature in log space."""
    r = bands.get("drift")
    if not r or center <= 0 or lo <= 0 or hi <= 0:
        return lo, hi
    down, up = math.log(lo / center), math.log(hi / center)
    return center * math.exp(-math.hypot(down, r[0])), center * math.exp(math.hypot(up, r[1]))


def chain_spells(backend: dict[str, Any]) -> dict[str, float] | None:
    """{batch: slowest / fastest timing} of the calibration's chain network (``spells``, module
    doc), in batch order; None for a calibration that timed it once or not at all."""
    timings = backend.get("composition_timings_s") or {}
    out = {b: max(t) / min(t) for b, t in sorted(timings.items(), key=lambda kv: int(kv[0]))
           if len(t) > 1 and min(t) > 0}
    return out or None


def at_nearest_batch(per_batch: dict[str, float] | None, batch: int | None) -> tuple[str, float] | None:
    """(batch, ratio) of a per-batch ratio (the chain's ``composition`` or ``spells``) at the
    batch size nearest `batch` (in log2; the smallest when `batch` is None), None without one."""
    comp = {b: float(r) for b, r in (per_batch or {}).items() if r and r > 0}
    if not comp:
        return None
    if batch is None or batch < 1:
        b = min(comp, key=int)
    else:
        b = min(comp, key=lambda b: (abs(math.log2(int(b)) - math.log2(batch)), int(b)))
    return b, comp[b]


def widened(center: float, lo: float, hi: float, ratio: float) -> tuple[float, float]:
    """[lo, hi] widened on the side a ratio of measured to expected time points (the chain's
    ``composition`` or ``spells``): slower widens the upper end, faster the lower one, in
    quadrature in log space with what is there (the node residuals and drift measure other
    misses)."""
    if center <= 0 or lo <= 0 or hi <= 0 or ratio <= 0 or ratio == 1:
        return lo, hi
    r = math.log(ratio)
    if r > 0:
        return lo, center * math.exp(math.hypot(math.log(hi / center), r))
    return center * math.exp(-math.hypot(math.log(lo / center), r)), hi
