"""The CPU compiler quantizes through ONNX Runtime's public API only: ``quantize_static`` with the
profile's ranges as its calibration cache (``save_tensors_data`` + ``calibration_cache_path``, since
onnxruntime 1.27), never the internal ``QDQQuantizer`` whose positional constructor changes between
releases. pyproject.toml's lower bound is the first release with that parameter."""

from __future__ import annotations

import ast
import inspect
import tomllib
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from packaging.requirements import Requirement
from packaging.version import Version

from qaic_assets.cpu_compiler import compile as cpu_compile
from qaic_assets.cpu_compiler.graph import CompilerError

REPO = Path(__file__).resolve().parents[2]


def _ort_requirement() -> Requirement:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    [req] = [Requirement(d) for d in deps if Requirement(d).name == "onnxruntime"]
    return req


def test_the_installed_onnxruntime_is_in_the_required_range_and_takes_precomputed_ranges():
    from onnxruntime.quantization import quantize_static, save_tensors_data  # noqa: F401  (public names)

    req = _ort_requirement()
    installed = metadata.version("onnxruntime")
    assert req.specifier.contains(installed, prereleases=True), f"onnxruntime {installed} is outside {req}"
    assert min(Version(s.version) for s in req.specifier if s.operator == ">=") >= Version("1.27")
    assert "calibration_cache_path" in inspect.signature(quantize_static).parameters


def test_quantize_calls_only_the_public_quantize_static_by_keyword():
    tree = ast.parse(Path(cpu_compile.__file__).read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not names & {"QDQQuantizer", "ONNXQuantizer"}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "quantize_static"]
    assert len(calls) == 1
    assert len(calls[0].args) == 3  # model, output path, no calibration data reader; the rest by name
    assert {k.arg for k in calls[0].keywords} >= {"calibration_cache_path", "op_types_to_quantize", "per_channel",
                                                  "activation_type", "weight_type", "nodes_to_exclude",
                                                  "extra_options"}


def _tiny() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


def test_the_ranges_given_are_the_ranges_used_and_a_missing_one_is_named():
    ranges = {"x": (-1.0, 1.0), "h": (-4.0, 4.0), "y": (0.0, 4.0)}
    qmodel, info = cpu_compile.quantize(_tiny(), ranges, cpu_compile.QuantSettings())
    assert info["ranges_used"] == 3 and info["uint8_activation_tensors"] == 1  # y: Min >= 0
    inits = {i.name: numpy_helper.to_array(i) for i in qmodel.graph.initializer}
    assert float(inits["x_scale"]) == pytest.approx(1.0 / 127) and inits["x_zero_point"].dtype == np.int8
    assert float(inits["h_scale"]) == pytest.approx(4.0 / 127)
    assert float(inits["y_scale"]) == pytest.approx(4.0 / 255) and inits["y_zero_point"] == 0
    assert inits["y_zero_point"].dtype == np.uint8  # symmetric_with_uint8: [0, Max] as uint8
    with pytest.raises(CompilerError, match="the profile has no range for tensor 'h'"):
        cpu_compile.quantize(_tiny(), {"x": (-1.0, 1.0)}, cpu_compile.QuantSettings())
