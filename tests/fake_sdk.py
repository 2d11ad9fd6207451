"""Test helper: lay out a stand-in Cloud AI 100 SDK root as a real one is laid out (see
tests/fake_sdk/qaic-exec and tests/fake_sdk/fake_tools for the executables' behaviour).

    root = make_fake_sdk(tmp_path / "sdk")               # older generation: exec/qaic-exec, versions/apps.xml
    root = make_fake_sdk(tmp_path / "sdk", compiler="qaic-compile", platform=("1.21.0", "12"), tools=True,
                         devices=1)                      # newer: exec/qaic-compile, platform.xml, tools, a card
    set_fake_sdk_version(root, "1.19.0", "7")             # simulate an SDK upgrade (build_id may be None)
    read_calls(root)                                      # the invocations recorded in <root>/calls.jsonl

Layout (docs/FORMATS.md "SDK layout"): exec/qaic-exec and/or exec/qaic-compile (the compiler),
exec/qaic-runner, tools/qaic-qpc, tools/qaic-util, versions/apps.xml, versions/platform.xml. The stand-ins'
shared grammar goes to lib/python/fake_flags.py; fake-devices.json lists the cards qaic-util reports.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

FAKE_DIR = Path(__file__).resolve().parent / "fake_sdk"
FAKE_QAIC_EXEC = FAKE_DIR / "qaic-exec"
FAKE_TOOLS = FAKE_DIR / "fake_tools"
COMPILER_GENERATIONS = {"qaic-exec": ("qaic-exec",), "qaic-compile": ("qaic-compile",),
                        "both": ("qaic-compile", "qaic-exec")}

# the real files' shape (krai/ck-qaic, SDK 1.5.9): root <versions>, build_id optional
_VERSIONS_XML = """<versions>
        <ci_build>
           <base_name>AIC</base_name>
           <base_version>{base_version}</base_version>
{build_id}        </ci_build>
        </versions>
"""


def _install(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    dst.chmod(dst.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | stat.S_IRUSR)


def make_fake_sdk(root: Path, version: tuple[str, str | None] = ("1.18.2", "0.5"), *, compiler: str = "qaic-exec",
                  platform: tuple[str, str | None] | None = None, tools: bool = False, runner: bool | None = None,
                  devices: int = 0, nsp_free: int = 16) -> Path:
    """Lay out an SDK root. ``compiler``: "qaic-exec" (older SDKs), "qaic-compile" (newer) or "both";
    ``version`` = (base_version, build_id) of versions/apps.xml; ``platform`` the same for
    versions/platform.xml (none when None); ``tools``: tools/qaic-qpc and tools/qaic-util; ``runner``
    (default: ``tools``): exec/qaic-runner; ``devices``: cards qaic-util lists. Returns ``root``."""
    root = Path(root)
    for name in COMPILER_GENERATIONS[compiler]:
        _install(FAKE_QAIC_EXEC, root / "exec" / name)
    _install(FAKE_DIR / "fake_flags.py", root / "lib" / "python" / "fake_flags.py")
    if tools:
        _install(FAKE_TOOLS, root / "tools" / "qaic-qpc")
        _install(FAKE_TOOLS, root / "tools" / "qaic-util")
    if tools if runner is None else runner:
        _install(FAKE_TOOLS, root / "exec" / "qaic-runner")
    set_fake_sdk_version(root, *version)
    if platform is not None:
        set_fake_sdk_version(root, *platform, which="platform")
    if tools or devices:
        set_fake_devices(root, devices, nsp_free=nsp_free)
    return root


def set_fake_sdk_version(root: Path, base_version: str, build_id: str | None, which: str = "apps") -> None:
    """(Re)write ``<root>/versions/<which>.xml`` atomically; the version is ``base_version[.build_id]``."""
    versions = Path(root) / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    tmp = versions / f".{which}.xml.tmp"
    build = f"           <build_id>{build_id}</build_id>\n" if build_id is not None else ""
    tmp.write_text(_VERSIONS_XML.format(base_version=base_version, build_id=build), encoding="utf-8")
    os.replace(tmp, versions / f"{which}.xml")


def set_fake_devices(root: Path, count: int, *, nsp_free: int = 16, status: str = "Ready") -> None:
    """The cards `qaic-util -q` lists (QID 0..count-1, 16 NSPs each, ``nsp_free`` of them free)."""
    devs = [{"qid": i, "status": status, "nsp_total": 16, "nsp_free": nsp_free} for i in range(count)]
    (Path(root) / "fake-devices.json").write_text(json.dumps(devs), encoding="utf-8")


def fake_qaic_exec(root: Path, name: str = "qaic-exec") -> Path:
    """Path of a stand-in compiler inside a fake SDK root."""
    return Path(root) / "exec" / name


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


def read_exits(sdk: Path) -> dict[int, dict]:
    """pid -> {"end", "code"} of the fake compiler's normal exits (tests/fake_sdk/qaic-exec)."""
    path = sdk / "calls.exits.jsonl"
    if not path.exists():
        return {}
    return {r["pid"]: r for r in map(json.loads, path.read_text().splitlines()) if r}


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
