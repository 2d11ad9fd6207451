"""Test helper: lay out a fake Cloud AI 100 SDK (see tests/fake_sdk/qaic-exec for its behaviour).

    root = make_fake_sdk(tmp_path / "sdk")            # <root>/exec/qaic-exec, <root>/versions/apps.xml
    set_fake_sdk_version(root, "1.19.0", "7")          # simulate an SDK upgrade
    read_calls(root)                                   # the invocations recorded in <root>/calls.jsonl
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

FAKE_QAIC_EXEC = Path(__file__).resolve().parent / "fake_sdk" / "qaic-exec"

_APPS_XML = """<?xml version="1.0" encoding="UTF-8"?>
<apps_build>
  <ci_build>
    <base_name>AIC_APPS</base_name>
    <base_version>{base_version}</base_version>
    <build_id>{build_id}</build_id>
  </ci_build>
</apps_build>
"""


def make_fake_sdk(root: Path, version: tuple[str, str] = ("1.18.2", "0.5")) -> Path:
    """Create ``<root>/exec/qaic-exec`` (a copy of the strict fake, executable) and
    ``<root>/versions/apps.xml`` for ``version`` = (base_version, build_id). Returns ``root``."""
    root = Path(root)
    (root / "exec").mkdir(parents=True, exist_ok=True)
    exe = root / "exec" / "qaic-exec"
    shutil.copyfile(FAKE_QAIC_EXEC, exe)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | stat.S_IRUSR)
    set_fake_sdk_version(root, *version)
    return root


def set_fake_sdk_version(root: Path, base_version: str, build_id: str) -> None:
    """(Re)write ``<root>/versions/apps.xml`` atomically; the SDK version is ``base_version.build_id``."""
    versions = Path(root) / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    tmp = versions / ".apps.xml.tmp"
    tmp.write_text(_APPS_XML.format(base_version=base_version, build_id=build_id), encoding="utf-8")
    os.replace(tmp, versions / "apps.xml")


def fake_qaic_exec(root: Path) -> Path:
    """Path of the fake executable inside a fake SDK root."""
    return Path(root) / "exec" / "qaic-exec"


def read_calls(root_or_log: Path) -> list[dict]:
    """Recorded invocations: from a calls.jsonl file, or ``<sdk_root>/calls.jsonl``."""
    path = Path(root_or_log)
    if path.is_dir():
        path = path / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


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
