"""Test helper: the stand-in Cloud AI 100 SDK shipped with the package (qaic_assets/standin_sdk: its
README.md, exec/qaic-exec and tools/fake_tools say how the executables behave), under the names the
tests use, plus the tiny one-model project most tests build on it.

    root = make_fake_sdk(tmp_path / "sdk")               # older generation: exec/qaic-exec, versions/apps.xml
    root = make_fake_sdk(tmp_path / "sdk", compiler="qaic-compile", platform=("1.21.0", "12"), tools=True,
                         devices=1)                      # newer: exec/qaic-compile, platform.xml, tools, a card
    set_fake_sdk_version(root, "1.19.0", "7")             # simulate an SDK upgrade (build_id may be None)
    read_calls(root)                                      # the invocations recorded in <root>/calls.jsonl

One stand-in for the demo (`make demo-upgrade`) and the tests: the helpers are the package's own.
"""

from __future__ import annotations

from pathlib import Path

from qaic_assets import standin_sdk
from qaic_assets.standin_sdk import COMPILER_GENERATIONS, read_calls, read_exits
from qaic_assets.standin_sdk import compiler_path as fake_qaic_exec
from qaic_assets.standin_sdk import install as make_fake_sdk
from qaic_assets.standin_sdk import set_devices as set_fake_devices
from qaic_assets.standin_sdk import set_version as set_fake_sdk_version

__all__ = ["COMPILER_GENERATIONS", "FAKE_DIR", "FAKE_QAIC_EXEC", "FAKE_TOOLS", "TINY_CONFIG", "fake_qaic_exec",
           "make_fake_sdk", "read_calls", "read_exits", "set_fake_devices", "set_fake_sdk_version", "tiny_model",
           "write_tiny_files"]

#: The shipped stand-in's files (a checkout's or an installed package's).
FAKE_DIR = Path(str(standin_sdk.SHIPPED))
FAKE_QAIC_EXEC = FAKE_DIR / standin_sdk.COMPILER
FAKE_TOOLS = FAKE_DIR / standin_sdk.TOOLS


TINY_CONFIG = """
storage_root: store
backend: {backend}
profiling_threads: 2
compile_timeout_s: 30
matrix: {{scenarios: [offline, singlestream], nsp: [14], batch: {batch}}}
models:
  tiny:
    recipe: resnet50
    source: {{path: tiny.onnx}}
    calibration: {{list: cal/cal.txt}}
"""


def tiny_model(path: Path) -> Path:
    """input [batch_size, 4] -> MatMul -> ArgMax: enough for the fake SDK and the size checks."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.arange(12, dtype=np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"]),
         helper.make_node("ArgMax", ["logits"], ["ArgMax"], name="ArgMax", axis=1, keepdims=0)],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch_size", 4])],
        [helper.make_tensor_value_info("ArgMax", TensorProto.INT64, ["batch_size"])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def write_tiny_files(root: Path, config: str | None = None) -> Path:
    """A one-model project under `root`: fake SDK, tiny model, 5 calibration samples, `qaic.yaml`
    (TINY_CONFIG on the fake SDK unless `config` is given). Returns the SDK root."""
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    sdk = make_fake_sdk(root / "sdk")
    tiny_model(root / "tiny.onnx")
    cal = root / "cal"
    cal.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        rng.standard_normal(4).astype(np.float32).tofile(cal / f"{i}.raw")
    (cal / "cal.txt").write_text("".join(f"{i}.raw\n" for i in range(5)))
    (root / "qaic.yaml").write_text(config if config is not None else TINY_CONFIG.format(backend="qaic", batch=[1, 2]))
    return sdk
