"""Calibration for the CPU reference compiler: qaic-exec's ``-dump-profile`` on ONNX Runtime.

One pass over the calibration list: the model (dims fixed by ``-batchsize`` / ``-onnx-define-symbol``,
optionally pruned to ``-output-node-name``) is run with every float tensor that could be quantized
exposed as an extra graph output, and each batch's activations are folded into per-tensor running
statistics (min, max and a ``bins``-bin histogram over [min, max]) before the next batch runs. Nothing
is kept across batches except those statistics, so memory is one batch of activations.

The histogram is streamed Glow-style: it always spans the running [min, max]; when a batch widens the
range, the old counts are redistributed onto the new bins in proportion to their overlap (a piecewise
linear CDF), then the batch is counted on the new bins. This avoids a second pass over the data.

This module also holds the model helpers shared with compile and accuracy checks:
``load_model``, ``fix_dims``, ``prune_to_output``, ``input_specs``, ``float_tensors``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper

from qaic_assets import rawdata
from qaic_assets.rawdata import InputSpec

DEFAULT_BINS = 512
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)


class CompilerError(RuntimeError):
    """A user-fixable problem (missing file, bad model, bad flag value); the message names it and the fix."""


# --------------------------------------------------------------------------------------------- model


def load_model(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise CompilerError(f"model {path} does not exist: fix -model or materialize the source model")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises various types
        raise CompilerError(f"model {path} is not a readable ONNX file ({exc}): fix -model") from None


def _initializer_names(graph: onnx.GraphProto) -> set[str]:
    return {i.name for i in graph.initializer}


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are fed at run time (not initializers listed as inputs by old exporters)."""
    inits = _initializer_names(model.graph)
    return [i for i in model.graph.input if i.name not in inits]


def fix_dims(model: onnx.ModelProto, batch: int | None, symbols: Mapping[str, int] | None = None, *,
             inplace: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` with fixed dims: batch -> first dim of every graph input (and any dim named
    ``batch_size``), symbols -> their values; graph outputs follow through shape inference.

    The result carries inferred ``value_info`` for every tensor ONNX can type.
    """
    if not inplace:
        model = copy.deepcopy(model)
    symbols = dict(symbols or {})
    if batch is not None:
        symbols["batch_size"] = batch
    changed_fixed_batch = False
    for inp in real_inputs(model):
        dims = inp.type.tensor_type.shape.dim
        if batch is not None and len(dims) > 0:
            d0 = dims[0]
            if d0.HasField("dim_param") and d0.dim_param:
                symbols[d0.dim_param] = batch  # that symbol is the batch wherever it appears
            elif d0.HasField("dim_value") and d0.dim_value != batch:
                changed_fixed_batch = True
            d0.Clear()
            d0.dim_value = batch
    for vi in [*model.graph.input, *model.graph.output]:
        if not vi.type.HasField("tensor_type"):
            continue
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in symbols:
                value = symbols[d.dim_param]
                d.Clear()
                d.dim_value = value
    if changed_fixed_batch:  # the model's outputs had the old fixed batch: let inference redo them
        for out in model.graph.output:
            if out.type.HasField("tensor_type") and len(out.type.tensor_type.shape.dim) > 0:
                out.type.tensor_type.shape.dim[0].Clear()
    del model.graph.value_info[:]
    infer_shapes(model)
    return model


_LIGHT_INIT_ELEMS = 64  # initializers larger than this are shown to shape inference as typed inputs only


def infer_shapes(model: onnx.ModelProto) -> None:
    """ONNX shape inference, in place, without serializing the weights: large initializers are given to
    inference as typed graph inputs (only small ones can matter to data propagation, e.g. Reshape shapes).
    Fills value_info and the graph outputs' types/shapes."""
    g = model.graph
    light = onnx.ModelProto()
    for f in ("ir_version", "producer_name", "domain", "model_version"):
        setattr(light, f, getattr(model, f))
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    lg = light.graph
    lg.name = g.name
    lg.node.extend(g.node)
    lg.output.extend(g.output)
    lg.input.extend(g.input)
    inputs = {i.name for i in g.input}
    for init in g.initializer:
        n = math.prod(init.dims)
        if n <= _LIGHT_INIT_ELEMS:
            lg.initializer.append(init)
        elif init.name not in inputs:
            lg.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    lg.sparse_initializer.extend(g.sparse_initializer)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001
        raise CompilerError(f"shape inference failed ({exc}): check -batchsize / -onnx-define-symbol") from None
    del g.value_info[:]
    g.value_info.extend(inferred.graph.value_info)
    del g.output[:]
    g.output.extend(inferred.graph.output)


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """Name, numpy dtype and fixed shape of every fed input; errors on a dim still symbolic."""
    specs = []
    for inp in real_inputs(model):
        tt = inp.type.tensor_type
        shape = []
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(int(d.dim_value))
            else:
                sym = d.dim_param or "?"
                raise CompilerError(
                    f"input {inp.name!r} dim {i} is symbolic ({sym!r}): give -onnx-define-symbol={sym},<value>"
                    + (" or -batchsize=<n>" if i == 0 else "")
                )
        specs.append(InputSpec(inp.name, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)), tuple(shape)))
    return specs


def prune_to_output(model: onnx.ModelProto, output_node_name: str, *, inplace: bool = False) -> onnx.ModelProto:
    """Keep only what computes ``output_node_name``'s outputs (a node name, or else a tensor name),
    which become the graph's only outputs."""
    graph = model.graph
    node = next((n for n in graph.node if n.name == output_node_name), None)
    if node is not None:
        targets = [o for o in node.output if o]
    elif any(output_node_name in n.output for n in graph.node) or output_node_name in {i.name for i in graph.input}:
        targets = [output_node_name]
    else:
        names = [n.name for n in graph.node if n.name][-8:]
        raise CompilerError(
            f"-output-node-name={output_node_name}: no node or tensor of that name in the model "
            f"(graph outputs: {', '.join(o.name for o in graph.output)}; last nodes: {', '.join(names)})"
        )
    if not inplace:
        model = copy.deepcopy(model)
    graph = model.graph
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    keep, stack = set(), list(targets)
    seen = set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        i = producer.get(t)
        if i is not None and i not in keep:
            keep.add(i)
            n = graph.node[i]
            stack.extend(x for x in n.input if x)
            for attr in n.attribute:  # subgraph inputs captured from the outer scope
                for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    stack.extend(x for sn in g.node for x in sn.input if x)
    nodes = [n for i, n in enumerate(graph.node) if i in keep]
    vis = {v.name: v for v in [*graph.value_info, *graph.output, *graph.input]}
    outs = []
    for t in targets:
        vi = copy.deepcopy(vis[t]) if t in vis else helper.make_empty_tensor_value_info(t)
        outs.append(vi)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend(outs)
    used = {x for n in nodes for x in n.input} | seen
    kept_inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    kept_inputs = [i for i in graph.input if i.name in used]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    return model


def name_nodes(model: onnx.ModelProto) -> None:
    """Give unnamed nodes unique names (ORT's quantizer addresses nodes by name)."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in taken:
                name += "_"
            n.name = name
            taken.add(name)


def float_tensors(model: onnx.ModelProto) -> list[str]:
    """Every float tensor that could be quantized: fed graph inputs and node outputs of float type
    (fp32/fp16), in graph order; initializers excluded. Needs inferred value_info (``fix_dims``)."""
    g = model.graph
    types = {}
    for vi in [*g.value_info, *g.output, *g.input]:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    inits = _initializer_names(g)
    names: list[str] = []
    seen: set[str] = set()
    for inp in real_inputs(model):
        if types.get(inp.name) in FLOAT_TYPES and inp.name not in seen:
            names.append(inp.name)
            seen.add(inp.name)
    for n in g.node:
        for o in n.output:
            if o and o not in seen and o not in inits and types.get(o) in FLOAT_TYPES:
                names.append(o)
                seen.add(o)
    return names


# ops whose first output holds exactly the values of their first input (a permutation / view)
VALUE_PRESERVING_OPS = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity",
                                  "DepthToSpace", "SpaceToDepth"})


def value_aliases(model: onnx.ModelProto, tensors: set[str]) -> dict[str, str]:
    """tensor -> earlier tensor with the same multiset of values (through VALUE_PRESERVING_OPS), so its
    min/max/histogram need not be measured twice."""
    alias: dict[str, str] = {}
    for n in model.graph.node:
        if n.op_type in VALUE_PRESERVING_OPS and n.domain in ("", "ai.onnx") and n.input and n.output:
            src, dst = n.input[0], n.output[0]
            if src in tensors and dst in tensors and dst not in alias:
                alias[dst] = alias.get(src, src)
    return alias


def prepare_model(path: str | Path, *, batch: int | None, symbols: Mapping[str, int] | None,
                  output_node_name: str | None = None) -> onnx.ModelProto:
    """load -> prune to output node -> fix dims (shape-inferred)."""
    model = load_model(path)
    if output_node_name:
        model = prune_to_output(model, output_node_name, inplace=True)
    return fix_dims(model, batch, symbols, inplace=True)


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


def _count(x: np.ndarray, lo: float, hi: float, bins: int, owned: bool) -> np.ndarray:
    if hi <= lo:
        out = np.zeros(bins, dtype=np.float64)
        out[0] = x.size
        return out
    scale = np.float32(bins / (hi - lo))
    lo32 = np.float32(lo)
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


# ------------------------------------------------------------------------------------------ profile


@dataclass
class ProfileEntry:
    name: str
    min: float
    max: float
    histogram: list[float]


def write_profile(path: str | Path, entries: Sequence[ProfileEntry]) -> None:
    """Glow-style profile YAML (a list of NodeOutputName, Min, Max, Histogram), written directly
    (PyYAML's emitter takes ~1 s for a ResNet-50 profile); names are JSON strings, valid YAML."""
    out = ["---\n"]
    for e in entries:
        hist = ", ".join(str(int(v)) if float(v).is_integer() else repr(float(v)) for v in e.histogram)
        out.append(f"- NodeOutputName: {json.dumps(e.name)}\n  Min: {_yaml_float(e.min)}\n"
                   f"  Max: {_yaml_float(e.max)}\n  Histogram: [{hist}]\n")
    Path(path).write_text("".join(out))


def _yaml_float(v: float) -> str:
    v = float(v)
    if math.isnan(v):
        return ".nan"
    if math.isinf(v):
        return ".inf" if v > 0 else "-.inf"
    return repr(v)


def read_profile(path: str | Path) -> list[ProfileEntry]:
    """Read a profile YAML; raises CompilerError naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise CompilerError(f"profile {path} does not exist: run calibration (-dump-profile) first or fix -load-profile")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CompilerError(f"profile {path} is unreadable ({exc}): regenerate it with -dump-profile") from None
    fast = _read_profile_fast(text)
    if fast is not None:
        return fast
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        doc = yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        raise CompilerError(f"profile {path} is not readable YAML ({exc}): regenerate it with -dump-profile") from None
    if not isinstance(doc, list) or not doc:
        raise CompilerError(f"profile {path} is not a non-empty YAML list of NodeOutputName/Min/Max entries")
    out = []
    for i, e in enumerate(doc):
        try:
            hist = [float(v) for v in (e.get("Histogram") or [])]
            out.append(ProfileEntry(str(e["NodeOutputName"]), float(e["Min"]), float(e["Max"]), hist))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CompilerError(f"profile {path} entry {i} lacks NodeOutputName/Min/Max: regenerate it") from None
        if not out[-1].min <= out[-1].max:
            raise CompilerError(f"profile {path} entry {out[-1].name!r} has Min > Max: regenerate it")
    return out


def _read_profile_fast(text: str) -> list[ProfileEntry] | None:
    """Parse the exact layout ``write_profile`` emits (10x faster than PyYAML); None if it differs."""
    lines = text.splitlines()
    if not lines or lines[0] != "---" or (len(lines) - 1) % 4 or len(lines) < 5:
        return None
    out = []
    try:
        for i in range(1, len(lines), 4):
            a, b, c, d = lines[i:i + 4]
            if not (a.startswith('- NodeOutputName: "') and b.startswith("  Min: ") and c.startswith("  Max: ")
                    and d.startswith("  Histogram: [") and d.endswith("]")):
                return None
            name = json.loads(a[len("- NodeOutputName: "):])
            lo, hi = float(b[7:]), float(c[7:])
            body = d[len("  Histogram: ["):-1]
            hist = np.array(body.split(","), dtype=np.float64).tolist() if body.strip() else []
            if not lo <= hi:
                return None
            out.append(ProfileEntry(name, lo, hi, hist))
    except ValueError:
        return None
    return out


# -------------------------------------------------------------------------------------- calibration


@dataclass
class CalibrationResult:
    entries: list[ProfileEntry]
    batches: int
    samples: int
    seconds_run: float
    seconds_stats: float
    input_specs: list[InputSpec]


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
    """Run the calibration set through the model and write the profile (when ``profile_path``)."""
    import onnxruntime as ort

    if bins < 1:
        raise CompilerError(f"-num-histogram-bins={bins}: needs a positive number of bins")
    model = prepare_model(model_path, batch=batch, symbols=symbols, output_node_name=output_node_name)
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
    # qaic_compile pool), and spinning threads burn the cores those need; two concurrent calibrations
    # on 2 cores ran 1.75x slower with spinning (docs/BENCHMARKS.md). Results are unchanged.
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

    # numpy releases the GIL in the elementwise steps of a histogram update: a few threads, one tensor
    # each, overlap them (as many as the profiling threads, at most 4)
    workers = max(1, min(int(threads or os.cpu_count() or 1), 4))
    pool = ThreadPoolExecutor(workers) if workers > 1 else None

    def fold(feeds, values):
        t = time.perf_counter()
        for name in fed:
            stats[name].update(feeds[name])
        jobs = zip(outputs, values)
        if pool is None:
            for name, v in jobs:
                stats[name].update(v, owned=True)
        else:
            for _ in pool.map(lambda nv: stats[nv[0]].update(nv[1], owned=True), jobs):
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
    for t in tensors:
        h = stats[t]
        if h.hist is None:  # empty or all non-finite: nothing observed
            entries.append(ProfileEntry(t, 0.0, 0.0, [0] * bins))
        else:
            entries.append(ProfileEntry(t, h.lo, h.hi, h.counts()))
    if profile_path is not None:
        try:
            write_profile(profile_path, entries)
        except OSError as exc:
            raise CompilerError(f"cannot write profile {profile_path} ({exc}): fix -dump-profile") from None
    return CalibrationResult(entries, n_batches, n_samples, t_run, t_stats, specs)
