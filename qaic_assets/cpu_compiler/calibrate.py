"""Calibration for the CPU reference compiler: qaic-exec's ``-dump-profile`` on ONNX Runtime.

One pass over the calibration list: the model (dims fixed by ``-batchsize`` / ``-onnx-define-symbol``,
optionally pruned to ``-output-node-name``) is run with every float tensor that could be quantized
exposed as an extra graph output, and each batch's activations are folded into per-tensor running
statistics (min, max and a ``bins``-bin histogram over [min, max]) before the next batch runs. Nothing
is kept across batches except those statistics, so memory is one batch of activations.

The histogram is streamed Glow-style: it always spans the running [min, max]; when a batch widens the
range, the old counts are redistributed onto the new bins in proportion to their overlap (a piecewise
linear CDF), then the batch is counted on the new bins. This avoids a second pass over the data.
The counting loop is C (_bins.c, built at install; faster than numpy's five passes and outside the
GIL: docs/BENCHMARKS.md), with numpy doing the same arithmetic when the library was not built.

The model helpers shared with compile and the accuracy check are in graph.py; the profile format
in qaic/formats/profiles.py.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import helper

from qaic_assets.cpu_compiler.graph import (
    CompilerError,
    float_tensors,
    input_specs,
    prepare_model_hashed,
    profile_names,
    value_aliases,
)
from qaic_assets.qaic.formats import rawdata
from qaic_assets.qaic.formats.profiles import (
    OUR_TOOL,
    Profile,
    ProfileEntry,
    graph_hash_text,
    sort_entries,
    write_profile,
)
from qaic_assets.qaic.formats.rawdata import InputSpec

DEFAULT_BINS = 512
# -------------------------------------------------------------------------------------- statistics


class RangeHistogram:
    """Running min/max and a fixed-bin-count histogram over [min, max] of one tensor, streamed."""

    __slots__ = ("bins", "lo", "hi", "hist")

    def __init__(self, bins: int = DEFAULT_BINS):
        self.bins = int(bins)
        self.lo = math.inf
        self.hi = -math.inf
        self.hist: np.ndarray | None = None  # float64 counts (fractional after a range change)

    def update(self, x: np.ndarray, *, owned: bool = False) -> None:
        """Fold ``x`` in. With ``owned=True`` the array may be overwritten (saves a copy)."""
        if x.dtype != np.float32:
            x, owned = x.astype(np.float32), True
        x = x.reshape(-1)
        if x.size == 0:
            return
        mn, mx = float(x.min()), float(x.max())
        if not (math.isfinite(mn) and math.isfinite(mx)):
            x, owned = x[np.isfinite(x)], True
            if x.size == 0:
                return
            mn, mx = float(x.min()), float(x.max())
        if self.hist is None:
            self.lo, self.hi = mn, mx
            self.hist = np.zeros(self.bins, dtype=np.float64)
        elif mn < self.lo or mx > self.hi:
            lo, hi = min(mn, self.lo), max(mx, self.hi)
            self.hist = rebin(self.hist, self.lo, self.hi, lo, hi)
            self.lo, self.hi = lo, hi
        self.hist += _count(x, self.lo, self.hi, self.bins, owned)

    def counts(self) -> list[int]:
        """Integer counts (cumulative rounding keeps the total exact)."""
        if self.hist is None:
            return [0] * self.bins
        c = np.round(np.cumsum(self.hist)).astype(np.int64)
        return np.diff(c, prepend=0).tolist()


_CHUNK = 1 << 18  # elements per histogram chunk: keeps temporaries in cache
_INLINE_ELEMENTS = 1 << 16  # smaller tensors are folded in the calling thread (a hand-off costs more)


def _load_count_bins():
    """The C counting loop (_bins.c, built at install by setup.py), or None when it was not built."""
    import ctypes
    from importlib.machinery import EXTENSION_SUFFIXES

    for suffix in EXTENSION_SUFFIXES:
        path = Path(__file__).with_name(f"_bins{suffix}")
        if path.is_file():
            try:
                fn = ctypes.CDLL(str(path)).qaic_count_bins
            except (OSError, AttributeError):
                return None
            fn.restype = None
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_float, ctypes.c_int64,
                           ctypes.c_void_p, ctypes.c_void_p]
            return fn
    return None


#: qaic_count_bins from _bins.c (None: count with numpy, slower)
C_COUNT_BINS = _load_count_bins()


def _count(x: np.ndarray, lo: float, hi: float, bins: int, owned: bool) -> np.ndarray:
    """Counts of the finite float32 values `x` (all within [lo, hi]) on `bins` equal bins over [lo, hi]."""
    if hi <= lo:
        out = np.zeros(bins, dtype=np.float64)
        out[0] = x.size
        return out
    with np.errstate(over="ignore"):
        scale = np.float32(bins / (hi - lo))
    if not np.isfinite(scale):  # a range below float32's resolution for this many bins: bin in float64
        idx = np.minimum(((x.astype(np.float64) - lo) * (bins / (hi - lo))).astype(np.intp), bins - 1)
        return np.bincount(idx, minlength=bins).astype(np.float64)
    lo32 = np.float32(lo)
    if C_COUNT_BINS is not None:  # (x - lo) * scale is now in [0, bins]: _bins.c's preconditions
        x = np.ascontiguousarray(x)
        counts = np.zeros(bins, dtype=np.int64)
        scratch = np.zeros(4 * bins, dtype=np.int64)  # named: alive until the call returns
        C_COUNT_BINS(x.ctypes.data, x.size, lo32, scale, bins, scratch.ctypes.data, counts.ctypes.data)
        return counts.astype(np.float64)
    total = np.zeros(bins + 1, dtype=np.int64)
    n = x.size
    buf = None if owned else np.empty(min(n, _CHUNK), dtype=np.float32)
    idx = np.empty(min(n, _CHUNK), dtype=np.intp)
    for s in range(0, n, _CHUNK):
        chunk = x[s:s + _CHUNK]
        t = chunk if owned else buf[: chunk.size]
        np.subtract(chunk, lo32, out=t)
        np.multiply(t, scale, out=t)
        ii = idx[: chunk.size]
        np.copyto(ii, t, casting="unsafe")  # truncation == floor for t >= 0; x == hi lands in bin `bins`
        total += np.bincount(ii, minlength=bins + 1)
    total[bins - 1] += total[bins]
    return total[:bins].astype(np.float64)


def rebin(hist: np.ndarray, lo: float, hi: float, new_lo: float, new_hi: float) -> np.ndarray:
    """Redistribute a histogram over [lo, hi] onto the same number of bins over [new_lo, new_hi]
    (which contains it), assuming counts are uniform within a bin."""
    bins = hist.size
    new_edges = np.linspace(new_lo, new_hi, bins + 1)
    if hi <= lo:  # all mass at one point
        out = np.zeros(bins, dtype=np.float64)
        j = min(int((lo - new_lo) / (new_hi - new_lo) * bins), bins - 1) if new_hi > new_lo else 0
        out[j] = hist.sum()
        return out
    edges = np.linspace(lo, hi, bins + 1)
    cdf = np.concatenate(([0.0], np.cumsum(hist)))
    new_cdf = np.interp(new_edges, edges, cdf)
    return np.diff(new_cdf)


# -------------------------------------------------------------------------------------- calibration


def tools_version() -> str:
    """The GlowToolsVersion document of our profiles: names qaic-exec-cpu and its versions."""
    import onnxruntime

    from qaic_assets.qaic.sdk import package_version

    return f"{OUR_TOOL} {package_version()} onnxruntime-{onnxruntime.__version__}"


@dataclass
class CalibrationResult:
    entries: list[ProfileEntry]
    batches: int
    samples: int
    seconds_run: float
    seconds_stats: float
    input_specs: list[InputSpec]
    graph_hash: int

    def profile(self) -> Profile:
        """The profile as -load-profile reads back the file -dump-profile writes (one-step quantization)."""
        return Profile(sort_entries(self.entries), tools_version(), graph_hash_text(self.graph_hash), "glow")


def calibrate(
    model_path: str | Path,
    input_list: str | Path,
    profile_path: str | Path | None,
    *,
    batch: int | None = None,
    symbols: Mapping[str, int] | None = None,
    output_node_name: str | None = None,
    bins: int = DEFAULT_BINS,
    threads: int | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> CalibrationResult:
    """Run the calibration set through the model and write the profile (when ``profile_path``; the
    result's ``profile()`` is the same profile in memory)."""
    import onnxruntime as ort

    if bins < 1:
        raise CompilerError(f"-num-histogram-bins={bins}: needs a positive number of bins")
    model, model_hash = prepare_model_hashed(model_path, batch=batch, symbols=symbols,
                                             output_node_name=output_node_name)
    specs = input_specs(model)
    lines = rawdata.read_input_list(input_list)
    if not lines:
        raise CompilerError(f"input list file {input_list} has no lines: add calibration samples")
    tensors = float_tensors(model)
    input_names = {s.name for s in specs}
    alias = value_aliases(model, set(tensors))
    fed = [t for t in tensors if t in input_names]
    outputs = [t for t in tensors if t not in input_names and t not in alias]

    # expose every float intermediate as an output (the model is ours: edit it in place)
    aug = model
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*aug.graph.value_info, *aug.graph.output]
             if vi.type.HasField("tensor_type")}
    existing = {o.name for o in aug.graph.output}
    for t in outputs:
        if t not in existing:
            aug.graph.output.append(helper.make_tensor_value_info(t, types[t], None))
    del aug.graph.value_info[:]
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    # no spin-waiting between ops: calibrations run beside other compiler/check processes (the
    # qaic_compile pool), and spinning threads burn the cores those need (measured: docs/BENCHMARKS.md).
    # Results are unchanged.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # basic (constant folding, redundant node removal): the exposed intermediates block fusions anyway,
    # and layout transforms would insert a reorder per exposed output
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    t0 = time.perf_counter()
    try:
        sess = ort.InferenceSession(aug.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise CompilerError(f"ONNX Runtime cannot load model {model_path} ({exc})") from None
    log(f"calibrate: {len(tensors)} float tensors ({len(alias)} value-preserving copies), inputs "
        + ", ".join(f"{s.name}{list(s.shape)}" for s in specs)
        + f", session {time.perf_counter() - t0:.2f}s")

    stats = {t: RangeHistogram(bins) for t in tensors if t not in alias}
    for t, root in alias.items():
        stats[t] = stats[root]  # same multiset of values: same statistics
    t_run = t_stats = 0.0
    n_batches = n_samples = 0

    # a histogram update runs outside the GIL (the C counting loop via ctypes; numpy's elementwise
    # steps): a few threads, one big tensor each, overlap them (as many as the profiling threads, at
    # most 4); a small tensor is folded in this thread, as handing it over costs more than its update
    workers = max(1, min(int(threads or os.cpu_count() or 1), 4))
    pool = ThreadPoolExecutor(workers) if workers > 1 else None

    def fold(feeds, values):
        t = time.perf_counter()
        for name in fed:
            stats[name].update(feeds[name])
        big = []
        for name, v in zip(outputs, values):
            if pool is None or v.size < _INLINE_ELEMENTS:
                stats[name].update(v, owned=True)
            else:
                big.append((name, v))
        if big:
            for _ in pool.map(lambda nv: stats[nv[0]].update(nv[1], owned=True), big):
                pass
        return time.perf_counter() - t

    for arrays, n_real in rawdata.iter_batches(lines, specs, list_name=f"input list {input_list}"):
        feeds = {s.name: a for s, a in zip(specs, arrays)}
        t1 = time.perf_counter()
        try:
            values = sess.run(outputs, feeds)
        except Exception as exc:  # noqa: BLE001
            raise CompilerError(f"ONNX Runtime failed on calibration batch {n_batches + 1} ({exc})") from None
        t2 = time.perf_counter()
        ts = fold(feeds, values)
        del values  # one batch of activations alive at a time
        t_run += t2 - t1
        t_stats += ts
        n_batches += 1
        n_samples += n_real
        log(f"calibrate: batch {n_batches} ({n_real} samples) run {t2 - t1:.2f}s stats {ts:.2f}s")

    if pool is not None:
        pool.shutdown()
    entries = []
    names = profile_names(model, tensors)  # the SDK's `<node output>:<result#>` names
    for t in tensors:
        h = stats[t]
        if h.hist is None:  # empty or all non-finite: nothing observed
            entries.append(ProfileEntry(names[t], 0.0, 0.0, [0] * bins))
        else:
            entries.append(ProfileEntry(names[t], h.lo, h.hi, h.counts()))
    if profile_path is not None:
        try:
            write_profile(profile_path, entries, tools_version=tools_version(), graph_hash=model_hash)
        except OSError as exc:
            raise CompilerError(f"cannot write profile {profile_path} ({exc}): fix -dump-profile") from None
    return CalibrationResult(entries, n_batches, n_samples, t_run, t_stats, specs, model_hash)
