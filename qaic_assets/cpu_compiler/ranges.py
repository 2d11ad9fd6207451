"""From a profile to quantization ranges for qaic-exec-cpu: the profile's entries mapped onto the
model's tensors (``match_profile``), then Min/Max or a percentile range from the histogram per tensor
(``profile_ranges``; see compile.py's module doc for the flags)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from qaic_assets.cpu_compiler import graph
from qaic_assets.cpu_compiler.graph import CompilerError
from qaic_assets.qaic.formats import profiles
from qaic_assets.qaic.formats.profiles import ProfileEntry


def _cdf(entry: ProfileEntry) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(entry.histogram, dtype=np.float64)
    edges = np.linspace(entry.min, entry.max, h.size + 1)
    return edges, np.concatenate(([0.0], np.cumsum(h)))


def _invert(xs: np.ndarray, cdf: np.ndarray, q: float) -> float:
    """Smallest x with piecewise-linear CDF(x) >= q (cdf nondecreasing over xs)."""
    i = int(np.searchsorted(cdf, q, side="left"))
    if i <= 0:
        return float(xs[0])
    if i >= cdf.size:
        return float(xs[-1])
    c0, c1 = cdf[i - 1], cdf[i]
    frac = 0.0 if c1 <= c0 else (q - c0) / (c1 - c0)
    return float(xs[i - 1] + frac * (xs[i] - xs[i - 1]))


def percentile_range(entry: ProfileEntry, percentile: float, *, symmetric: bool) -> tuple[float, float]:
    """The percentile range of a profile entry computed from its histogram (see module doc)."""
    if not 0 < percentile <= 100:
        raise CompilerError(f"-percentile-calibration-value={percentile}: must be in (0, 100], e.g. 99.99")
    if not entry.histogram or sum(entry.histogram) <= 0 or entry.max <= entry.min:
        return entry.min, entry.max
    edges, cdf = _cdf(entry)
    total = cdf[-1]
    if symmetric:
        # F(t) = mass with |x| <= t; piecewise linear between the |edges|
        ts = np.unique(np.concatenate(([0.0], np.abs(edges))))
        ts = ts[ts <= max(abs(entry.min), abs(entry.max))]
        f = np.interp(ts, edges, cdf) - np.interp(-ts, edges, cdf)
        f = np.maximum.accumulate(f)
        t = _invert(ts, f, percentile / 100.0 * total)
        return max(-t, entry.min), min(t, entry.max)
    cut = (100.0 - percentile) / 200.0 * total
    lo = _invert(edges, cdf, cut)
    hi = _invert(edges, cdf, total - cut)
    return lo, max(hi, lo)


def profile_ranges(entries: Sequence[ProfileEntry], calibration: str, percentile: float | None,
                   *, symmetric: bool) -> dict[str, tuple[float, float]]:
    if calibration == "Percentile":
        if percentile is None:
            raise CompilerError("-quantization-calibration=Percentile needs -percentile-calibration-value=<V>")
        return {e.name: percentile_range(e, percentile, symmetric=symmetric) for e in entries}
    return {e.name: (e.min, e.max) for e in entries}


def match_profile(profile: profiles.Profile, model: onnx.ModelProto, model_hash: int,
                  model_path: str | Path) -> tuple[list[ProfileEntry], dict]:
    """The profile's entries renamed to the model's float tensors (``name:N`` -> output N of the node
    producing ``name``); entries naming nothing here (compiler-internal nodes, constants, pruned parts)
    are skipped and counted, entries the reader set aside (Min/Max ``-nan``) are counted as unusable and
    named. Refused: a profile qaic-exec-cpu wrote for another graph, and one with no entry for this
    model. The SDK's own graph hash is Glow's: recorded, never compared."""
    ours = profiles.graph_hash_text(model_hash)
    if profile.written_by_us and profile.graph_hash is not None and profile.graph_hash != ours:
        raise CompilerError(
            f"profile {profile.path} was written by {profile.tools_version} for another model (graph hash "
            f"{profile.graph_hash}, model {model_path} has {ours}): recalibrate {model_path} "
            "(-dump-profile) or fix -load-profile")
    wanted = set(graph.float_tensors(model))
    used, skipped = profiles.match_entries(profile.entries, graph.name_table(model), wanted)
    if not used:
        raise CompilerError(
            f"profile {profile.path} has no entry for any tensor of model {model_path} (its names: "
            f"{', '.join(e.name for e in profile.entries[:5])}, ...; {len(profile.unusable)} unusable): it profiles "
            "another model; recalibrate this model or fix -load-profile")
    entries = [ProfileEntry(t, e.min, e.max, e.histogram) for t, e in used.items()]
    info = {"path": profile.path, "layout": profile.layout, "tools_version": profile.tools_version,
            "graph_hash": profile.graph_hash, "model_graph_hash": ours,
            "graph_hash_checked": profile.written_by_us and profile.graph_hash is not None,
            "entries": len(profile.entries) + len(profile.unusable), "entries_used": len(used),
            "entries_skipped": len(skipped), "skipped_examples": skipped[:10],
            "entries_unusable": len(profile.unusable), "unusable_names": list(profile.unusable)}
    return entries, info
