"""ONNX model helpers of the CPU compiler, shared by calibration, compile and the accuracy check:
load, fix dims (-batchsize, -onnx-define-symbol), prune to -output-node-name, list the float tensors
that can be quantized."""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from qaic_assets import files
from qaic_assets.qaic.formats.profiles import NameTable, output_name
from qaic_assets.qaic.formats.rawdata import InputSpec

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)


class CompilerError(RuntimeError):
    """A user-fixable problem (missing file, bad model, bad flag value); the message names it and the fix."""




def load_model(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    try:
        files.require_regular(path)  # onnx opens it itself: a FIFO would block that open forever
        return onnx.load(str(path))
    except FileNotFoundError:
        raise CompilerError(f"model {path} does not exist: fix -model or materialize the source model") from None
    except files.NotReadable as exc:
        raise CompilerError(f"model {path} {exc.strerror}: fix -model") from None
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
    return prepare_model_hashed(path, batch=batch, symbols=symbols, output_node_name=output_node_name)[0]


def prepare_model_hashed(path: str | Path, *, batch: int | None, symbols: Mapping[str, int] | None,
                         output_node_name: str | None = None) -> tuple[onnx.ModelProto, int]:
    """``prepare_model`` and the ``graph_hash`` of the model as loaded (before pruning / fixing dims)."""
    model = load_model(path)
    digest = graph_hash(model)
    if output_node_name:
        model = prune_to_output(model, output_node_name, inplace=True)
    return fix_dims(model, batch, symbols, inplace=True), digest


def graph_hash(model: onnx.ModelProto) -> int:
    """64 bits of sha256 over the graph (nodes, inputs, outputs, initializers with their values): the
    ``GraphPreLowerHash`` of the profiles qaic-exec-cpu writes, so a profile of another model is
    recognised. (The SDK's hash is Glow's, over its own graph, and cannot be recomputed here.)"""
    h = hashlib.sha256()
    g = model.graph
    for part in (*g.node, *g.input, *g.output, *g.initializer, *g.sparse_initializer):
        blob = part.SerializeToString()  # one tensor at a time: memory stays bounded
        h.update(len(blob).to_bytes(8, "little"))
        h.update(blob)
    return int.from_bytes(h.digest()[:8], "big")


def name_table(model: onnx.ModelProto) -> NameTable:
    """The model's names for mapping profile entries (``name:N``) onto its tensors."""
    nodes = {n.name: list(n.output) for n in model.graph.node if n.name}
    producer = {o: list(n.output) for n in model.graph.node for o in n.output if o}
    return NameTable(nodes, producer, [i.name for i in real_inputs(model)])


def profile_names(model: onnx.ModelProto, tensors: list[str]) -> dict[str, str]:
    """tensor -> its profile name: ``<first output of its node>:<result#>``, graph inputs ``<name>:0``."""
    producer = {o: list(n.output) for n in model.graph.node for o in n.output if o}
    return {t: output_name(t, producer.get(t)) for t in tensors}


