"""Compile for the CPU reference compiler: qaic-exec's compile contract on ONNX Runtime.

With ``-load-profile`` the output ``<aic-binary-dir>/programqpc.onnx`` is a real int8 QDQ ONNX model
quantized with ONNX Runtime's ``QDQQuantizer`` fed the ranges FROM THE PROFILE (``TensorsData`` built
from it; nothing is re-calibrated). A one-step compile (``-input-list-file``, no ``-load-profile``) gets
the profile of calibrate.py's run over the list in memory instead: the same model as ``-dump-profile``
then ``-load-profile``. A tensor ORT must quantize that the profile has no usable range for is an
error naming it, the nodes that write or read it and the fixes (never an fp32 fallback). Without a
profile it is the fp32 model, or fp16 with ``-convert-to-fp16`` (``onnxruntime.transformers.float16``,
graph inputs/outputs kept fp32 so the same raw files feed it). Dims are fixed by ``-batchsize`` /
``-onnx-define-symbol`` and the graph is pruned to ``-output-node-name`` in every case.
``qaic-exec-cpu.json`` beside it records what was done.

Flag -> ONNX Runtime mapping
---------------------------
Schemas (``-quantization-schema`` sets both; ``-quantization-schema-activations`` /
``-quantization-schema-constants`` override one side; default ``symmetric_with_uint8`` as qaic-exec):

================================  ========================================================================
activations ``symmetric``         QInt8, ``ActivationSymmetric=True`` (zero point 0, range +-max|x|)
activations ``asymmetric``        QUInt8, ``ActivationSymmetric=False`` (zero point from Min/Max)
activations ``symmetric_with_uint8``  QInt8 symmetric; every tensor whose range has Min >= 0 (ReLU outputs,
                                  image inputs) gets a ``TensorQuantOverrides`` entry QUInt8 asymmetric,
                                  which for [0, Max] gives zero point 0: Glow's SymmetricWithUnsigned
constants ``symmetric`` and ``symmetric_with_uint8``  QInt8, ``WeightSymmetric=True``
constants ``asymmetric``          QInt8, ``WeightSymmetric=False`` (int8 with a zero point, as Glow; ORT has
                                  no int8-activation/uint8-weight mode). Per-channel weights are always
                                  symmetric in ORT.
================================  ========================================================================

* ``-quantization-precision=Int16`` uses QInt16/QUInt16 instead (ONNX opset 21 Q/DQ).
* ``-quantization-precision-bias=Int32``: biases of Conv/Gemm quantized to int32 (ORT ``QuantizeBias``);
  ``Int8`` has no ORT equivalent and is recorded under ``not_applied``.
* ``-enable-channelwise``: ``per_channel=True`` (per output channel weight scales).
* ``-quantization-calibration=None``: ranges are the profile's Min/Max. ``=Percentile`` with
  ``-percentile-calibration-value=V``: ranges from the profile histogram, as ORT's percentile
  calibrator: symmetric activations take the V-th percentile of |x| (range [-t, t] clipped to
  [Min, Max]); asymmetric ones cut (100-V)/2 % on each side. Within a bin counts are taken as uniform.
* ``-execute-nodes-in-fp16=Op,..``: those op types are removed from ``op_types_to_quantize``; they run
  in float (fp32 on CPU: ORT has no general fp16 CPU kernels).
* ``-node-precision-info=file``: the nodes producing the listed tensors (``FP16NodeInstanceNames``,
  ``FP32NodeInstanceNames``) go to ``nodes_to_exclude``.
* ``-output-node-name=N``: graph outputs become node N's outputs (or tensor N), unused nodes dropped.
* ``-convert-to-fp16`` with ``-load-profile``: float parts stay fp32 on CPU (recorded as not applied).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import helper

from qaic_assets import files
from qaic_assets.cpu_compiler import graph
from qaic_assets.cpu_compiler.graph import CompilerError
from qaic_assets.qaic.formats import profiles
from qaic_assets.cpu_compiler.ranges import match_profile, profile_ranges

BINARY_FILE = "programqpc.onnx"
INFO_FILE = "qaic-exec-cpu.json"
DEFAULT_SCHEMA = "symmetric_with_uint8"


# --------------------------------------------------------------------------------------- settings


@dataclass
class QuantSettings:
    schema_activations: str = DEFAULT_SCHEMA
    schema_constants: str = DEFAULT_SCHEMA
    precision: str = "Int8"
    bias_precision: str = "Int32"
    per_channel: bool = False
    calibration: str = "None"
    percentile: float | None = None
    fp16_op_types: list[str] = field(default_factory=list)
    float_tensors: list[str] = field(default_factory=list)  # node-precision: keep their producers float

    @property
    def activations_symmetric(self) -> bool:
        return self.schema_activations != "asymmetric"


def read_node_precision(path: str | Path) -> list[str]:
    """Tensor names from a node-precision YAML (FP16NodeInstanceNames + FP32NodeInstanceNames)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(files.read_text(path, files.SMALL_FILE_BYTES)) or {}
    except FileNotFoundError:
        raise CompilerError(f"node-precision file {path} does not exist: fix -node-precision-info") from None
    except files.NotReadable as exc:
        raise CompilerError(f"node-precision file {path} {exc.strerror}: fix -node-precision-info") from None
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise CompilerError(f"node-precision file {path} is not readable YAML ({exc})") from None
    if not isinstance(doc, dict):
        raise CompilerError(f"node-precision file {path} must be a mapping with FP16NodeInstanceNames / "
                            "FP32NodeInstanceNames lists")
    names: list[str] = []
    for key in ("FP16NodeInstanceNames", "FP32NodeInstanceNames"):
        v = doc.get(key) or []
        # names only: str() of lists nested by YAML aliases (an alias bomb) would take hours
        if not isinstance(v, list) or any(isinstance(x, (list, dict)) for x in v):
            raise CompilerError(f"node-precision file {path}: {key} must be a list of tensor names")
        names += [str(x) for x in v]
    return names


# -------------------------------------------------------------------------------------- quantizing


@contextmanager
def _quiet_ort_logging():
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(old)


def _no_range(model: onnx.ModelProto, tensor: str, op_types: list[str], exclude: set[str],
              where: str) -> CompilerError:
    """The error for a tensor to quantize that ``where`` has no usable range for: the tensor, the
    quantized nodes writing or reading it, and the two fixes."""
    nodes = [n for n in model.graph.node if n.op_type in op_types and n.name not in exclude
             and (tensor in n.output or tensor in n.input)]
    outs = ", ".join(dict.fromkeys(n.output[0] for n in nodes))
    ops = ",".join(dict.fromkeys(n.op_type for n in nodes))
    return CompilerError(
        f"{where} has no usable range for tensor {tensor!r} (written or read by "
        f"{', '.join(f'{n.op_type} node {n.name!r}' for n in nodes) or 'no quantized node'}): recalibrate this "
        "model (-dump-profile with the same -batchsize, -onnx-define-symbol and -output-node-name), or keep "
        f"those nodes in float: -node-precision-info with FP32NodeInstanceNames: [{outs}], or "
        f"-execute-nodes-in-fp16={ops}")


def quantize(model: onnx.ModelProto, ranges: Mapping[str, tuple[float, float]], s: QuantSettings,
             log: Callable[[str], None] = lambda m: None, where: str = "the profile") -> tuple[onnx.ModelProto, dict]:
    """QDQ-quantize ``model`` (dims fixed, shape-inferred, owned: modified) with the given ranges.

    ONNX Runtime's ``QDQQuantizer`` (exported, undocumented), by keyword: ``quantize_static`` can take the
    ranges (as a calibration cache) but saves the model and runs shape inference on the file again,
    which cost 20 % more time and twice the memory on the RetinaNet stand-in for the same graph
    (docs/BENCHMARKS.md). pyproject.toml pins the tested onnxruntime series;
    tests/cpu_compiler/test_ort_pin.py fails on another one."""
    from onnxruntime.quantization import CalibrationMethod, QDQQuantizer, QuantType, TensorData, TensorsData
    from onnxruntime.quantization.quant_utils import add_infer_metadata, update_opset_version
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    wide = s.precision == "Int16"
    signed, unsigned = (QuantType.QInt16, QuantType.QUInt16) if wide else (QuantType.QInt8, QuantType.QUInt8)
    act_type = unsigned if s.schema_activations == "asymmetric" else signed
    weight_type = signed
    weight_symmetric = s.schema_constants != "asymmetric"

    graph.name_nodes(model)
    known = {vi.name for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    data = {}
    overrides: dict[str, list[dict]] = {}
    for name, (lo, hi) in ranges.items():
        if name not in known:
            continue
        data[name] = TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32))
        if s.schema_activations == "symmetric_with_uint8" and lo >= 0:
            overrides[name] = [{"quant_type": unsigned, "symmetric": False}]
    tensors = TensorsData(CalibrationMethod.MinMax, data)

    all_ops = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    fp16 = set(s.fp16_op_types)
    op_types = [o for o in all_ops if o not in fp16]
    producer = {o: n.name for n in model.graph.node for o in n.output}
    exclude = sorted({producer[t] for t in s.float_tensors if t in producer})
    missing = [t for t in s.float_tensors if t not in producer]
    if missing:
        log(f"WARNING: node-precision tensors not produced by any node (ignored): {', '.join(missing[:10])}")
    for n in model.graph.node:  # ORT replaces a Softmax output's range by [0, 1], and fails when there is none
        if n.op_type == "Softmax" and n.op_type in op_types and n.name not in exclude and n.output[0] not in data:
            raise _no_range(model, n.output[0], op_types, set(exclude), where)

    extra = {
        "ActivationSymmetric": s.activations_symmetric,
        "WeightSymmetric": weight_symmetric,
        "QuantizeBias": True,
        "TensorQuantOverrides": overrides,
    }
    with _quiet_ort_logging():
        model = update_opset_version(model, weight_type, act_type, tensor_quant_overrides=overrides)
        add_infer_metadata(model)  # value_info is complete (fix_dims): skip ORT's save/reload inference
        quantizer = QDQQuantizer(model=model, per_channel=s.per_channel, reduce_range=False,
                                 weight_qType=weight_type, activation_qType=act_type, tensors_range=tensors,
                                 nodes_to_quantize=[], nodes_to_exclude=exclude, op_types_to_quantize=op_types,
                                 extra_options=extra)
        try:
            qmodel = quantizer.quantize_model()
        except ValueError as exc:
            msg = str(exc)
            if "Quantization parameters are not specified" in msg:
                tensor = msg.split("param ", 1)[-1].split(". ", 1)[0]
                raise _no_range(model, tensor, op_types, set(exclude), where) from None
            raise
    counts = _qdq_counts(qmodel)
    info = {
        "activation_type": act_type.name,
        "weight_type": weight_type.name,
        "activation_symmetric": s.activations_symmetric,
        "weight_symmetric": weight_symmetric or s.per_channel,
        "per_channel": s.per_channel,
        "calibration": s.calibration,
        "percentile": s.percentile,
        "profile_tensors": len(ranges),
        "ranges_used": len(data),
        "uint8_activation_tensors": len(overrides),
        "op_types_quantized": op_types,
        "op_types_kept_float": sorted(fp16),
        "nodes_kept_float": exclude,
        **counts,
    }
    return qmodel, info


def _qdq_counts(model: onnx.ModelProto) -> dict:
    inits = {i.name for i in model.graph.initializer}
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    weights = {n.input[0] for n in dq if n.input[0] in inits}
    return {
        "quantize_linear_nodes": len(q),
        "dequantize_linear_nodes": len(dq),
        "quantized_activations": len({n.input[0] for n in q}),
        "quantized_constants": len(weights),
        "quantized_tensors": len({n.input[0] for n in q}) + len(weights),
    }


# ----------------------------------------------------------------------------------------- compile


def _io(vis) -> list[dict]:
    out = []
    for vi in vis:
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
        out.append({"name": vi.name, "dtype": helper.tensor_dtype_to_np_dtype(tt.elem_type).name
                    if tt.elem_type else None, "shape": dims})
    return out


def compile_model(
    model_path: str | Path,
    binary_dir: str | Path,
    *,
    profile_path: str | Path | None = None,
    profile: profiles.Profile | None = None,
    batch: int | None = None,
    symbols: Mapping[str, int] | None = None,
    output_node_name: str | None = None,
    settings: QuantSettings | None = None,
    node_precision_path: str | Path | None = None,
    convert_to_fp16: bool = False,
    record: dict | None = None,
    log: Callable[[str], None] = lambda m: None,
) -> dict:
    """Write ``programqpc.onnx`` and ``qaic-exec-cpu.json`` into ``binary_dir``; returns the JSON dict.

    The ranges come from ``profile_path`` or from ``profile`` (in memory: a one-step compile's inline
    calibration). ``record`` holds caller facts for the JSON (argv, effective flags, applied /
    not-applicable flags, inline_calibration).

    JSON keys: tool, backend ("cpu"), onnxruntime, onnx (versions), model, profile, output, mode
    (int8 | int16 | fp16 | fp32), argv, effective_flags, applied {flag: what it does},
    not_applicable_on_cpu {flag: what it means on the card}, not_applied {flag: why}, inputs and outputs
    [{name, dtype, shape}] (fixed shapes), quantization (null when not quantized: types, symmetry,
    per_channel, calibration, percentile, profile_tensors, ranges_used, uint8_activation_tensors,
    op_types_quantized, op_types_kept_float, nodes_kept_float, quantize_linear_nodes,
    dequantize_linear_nodes, quantized_activations, quantized_constants, quantized_tensors),
    profile_info (null without a profile: path, layout, tools_version, graph_hash, model_graph_hash,
    graph_hash_checked, entries, entries_used, entries_skipped, skipped_examples, entries_unusable,
    unusable_names), inline_calibration (null unless one-step: input_list_file, samples, batches, tensors),
    seconds.
    """
    import onnxruntime as ort

    t0 = time.perf_counter()
    s = settings or QuantSettings()
    if node_precision_path is not None:
        s.float_tensors = read_node_precision(node_precision_path)
    if profile_path is not None:
        profile = profiles.read_profile(profile_path)
    where = f"profile {profile_path}" if profile_path is not None else "the inline calibration"
    model, model_hash = graph.prepare_model_hashed(model_path, batch=batch, symbols=symbols,
                                                   output_node_name=output_node_name)
    specs = graph.input_specs(model)
    not_applied: dict[str, str] = {}
    quant_info = None
    profile_info = None
    entries = None
    if profile is not None:
        entries, profile_info = match_profile(profile, model, model_hash, model_path)
        log(f"compile: {where} ({profile.layout}, {profile.tools_version or 'no tools version'}): "
            f"{profile_info['entries_used']} entries used, {profile_info['entries_skipped']} skipped, "
            f"{profile_info['entries_unusable']} unusable")
        ranges = profile_ranges(entries, s.calibration, s.percentile, symmetric=s.activations_symmetric)
        if s.bias_precision != "Int32":
            not_applied["quantization-precision-bias"] = "ORT QDQ quantizes biases to int32 only"
        if convert_to_fp16:
            not_applied["convert-to-fp16"] = "with a profile, float parts run in fp32 on CPU"
        model, quant_info = quantize(model, ranges, s, log, where)
        mode = "int16" if s.precision == "Int16" else "int8"
        log(f"compile: quantized {quant_info['quantized_tensors']} tensors "
            f"({quant_info['quantized_activations']} activations, {quant_info['quantized_constants']} constants)")
    elif convert_to_fp16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        with _quiet_ort_logging():
            model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
        mode = "fp16"
    else:
        mode = "fp32"
    if entries is None:
        for flag in ("quantization-schema", "quantization-schema-activations", "quantization-schema-constants",
                     "quantization-precision", "quantization-precision-bias", "quantization-calibration",
                     "percentile-calibration-value", "enable-channelwise", "execute-nodes-in-fp16",
                     "node-precision-info"):
            if record and flag in record.get("effective_flags", {}):
                not_applied[flag] = "no -load-profile: the model is not quantized"
    out_dir = Path(binary_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CompilerError(f"cannot create -aic-binary-dir {out_dir} ({exc})") from None
    out = out_dir / BINARY_FILE
    from onnxruntime.quantization.onnx_model import ONNXModel

    ONNXModel(model).topological_sort()  # QDQ nodes are appended last; ONNX requires producers first
    if model.ByteSize() >= 2**31 - 1024:  # protobuf limit: weights go to programqpc.onnx.data
        onnx.save(model, str(out), save_as_external_data=True, location=BINARY_FILE + ".data")
    else:
        onnx.save(model, str(out))
    info = {
        "tool": "qaic-exec-cpu",
        "backend": "cpu",
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "model": str(model_path),
        "profile": str(profile_path) if profile_path is not None else None,
        "output": BINARY_FILE,
        "mode": mode,
        **(record or {}),
        "not_applied": not_applied,
        "inputs": [{"name": sp.name, "dtype": np.dtype(sp.dtype).name, "shape": list(sp.shape)} for sp in specs],
        "outputs": _io(model.graph.output),
        "quantization": quant_info,
        "profile_info": profile_info,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
    log(f"compile: wrote {out} ({out.stat().st_size} bytes, {mode})")
    return info
