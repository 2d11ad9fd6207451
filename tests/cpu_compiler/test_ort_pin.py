"""The CPU compiler drives ONNX Runtime's ``QDQQuantizer`` (exported by onnxruntime.quantization but
undocumented; ``quantize_static`` would save and re-infer the model, slower and twice the memory) by
keyword, with ``update_opset_version`` / ``add_infer_metadata``. Those are pinned: pyproject.toml
names the tested series, and these tests fail on another series or when a parameter we pass is gone."""

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

from qaic_assets.cpu_compiler import compile as cpu_compile
from qaic_assets.cpu_compiler.graph import CompilerError

REPO = Path(__file__).resolve().parents[2]
TESTED_SERIES = "1.32."


def _ort_requirement() -> Requirement:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    [req] = [Requirement(d) for d in deps if Requirement(d).name == "onnxruntime"]
    return req


def test_the_installed_onnxruntime_is_the_tested_series_and_pyproject_pins_it():
    installed = metadata.version("onnxruntime")
    assert installed.startswith(TESTED_SERIES), (
        f"onnxruntime {installed} is not the tested {TESTED_SERIES}x: check cpu_compiler/compile.py's "
        "QDQQuantizer call against it, run the CPU compiler tests, then update TESTED_SERIES and pyproject")
    req = _ort_requirement()
    assert req.specifier.contains(installed), f"onnxruntime {installed} is outside pyproject's {req}"
    assert not req.specifier.contains("1.33.0") and not req.specifier.contains("1.31.1"), \
        f"pyproject's {req} admits an untested series"


def test_every_keyword_the_compiler_passes_is_a_parameter_of_the_installed_onnxruntime():
    from onnxruntime.quantization import QDQQuantizer
    from onnxruntime.quantization.quant_utils import add_infer_metadata, update_opset_version  # noqa: F401

    tree = ast.parse(Path(cpu_compile.__file__).read_text())
    calls = {getattr(n.func, "id", ""): n for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for name, func in (("QDQQuantizer", QDQQuantizer.__init__), ("update_opset_version", update_opset_version)):
        call = calls[name]
        params = inspect.signature(func).parameters
        assert {k.arg for k in call.keywords} <= set(params), f"{name}: {set(k.arg for k in call.keywords) - set(params)}"
    assert not calls["QDQQuantizer"].args, "QDQQuantizer by keyword only (its positional order changes)"


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
    with pytest.raises(CompilerError, match="the profile has no usable range for tensor 'h'"):
        cpu_compile.quantize(_tiny(), {"x": (-1.0, 1.0)}, cpu_compile.QuantSettings())
