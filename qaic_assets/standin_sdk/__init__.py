"""NOT the Qualcomm Cloud AI 100 SDK: install copies of the stand-in SDK shipped in this folder (README.md).

The stand-in follows the real SDK's layout, its executables' contract and its version files, so the
project's SDK backend can be shown (`make demo-upgrade`) and tested on a machine without the SDK:

    root = install(path)                                   # older generation: exec/qaic-exec, versions/apps.xml
    root = install(path, compiler="qaic-compile", platform=("1.21.0", "12"), tools=True, devices=1)
    set_version(root, "1.19.0", "7")                       # an SDK upgrade (build_id may be None)
    set_failing_models(root, ["my-model"])                 # that model's calls fail on purpose
    read_calls(root)                                       # the invocations recorded in <root>/calls.jsonl

Layout (docs/FORMATS.md "SDK layout"): exec/qaic-exec and/or exec/qaic-compile (the compiler),
exec/qaic-runner, tools/qaic-qpc, tools/qaic-util, versions/apps.xml, versions/platform.xml. The
compiler's grammar goes to lib/python/fake_flags.py; fake-devices.json lists the cards qaic-util reports.
Files are read through importlib.resources (any install, not only a checkout) and installed executable.
Stdlib only, no Dagster: tests/fake_sdk.py, the benchmarks and the demo share it.
"""

from __future__ import annotations

import json
import os
import stat
from importlib.resources import files
from pathlib import Path

#: The shipped folder (README.md, exec/qaic-exec, tools/fake_tools, lib/python/fake_flags.py).
SHIPPED = files(__name__)
COMPILER = "exec/qaic-exec"
TOOLS = "tools/fake_tools"
FLAGS = "lib/python/fake_flags.py"
COMPILER_GENERATIONS = {"qaic-exec": ("qaic-exec",), "qaic-compile": ("qaic-compile",),
                        "both": ("qaic-compile", "qaic-exec")}
#: The fault switch file the stand-in compiler reads in its root (exec/qaic-exec's docstring).
FAIL_MODELS_FILE = "fail-models.txt"
CALLS_FILE = "calls.jsonl"

# the real files' shape (krai/ck-qaic, SDK 1.5.9): root <versions>, build_id optional
_VERSIONS_XML = """<versions>
        <ci_build>
           <base_name>AIC</base_name>
           <base_version>{base_version}</base_version>
{build_id}        </ci_build>
        </versions>
"""


def _install(shipped: str, dst: Path) -> None:
    """Copy a shipped file to `dst` with the executable bits set: a wheel or a copy may not keep them."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(SHIPPED.joinpath(shipped).read_bytes())
    dst.chmod(dst.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | stat.S_IRUSR)


def install(root: Path, version: tuple[str, str | None] = ("1.18.2", "0.5"), *, compiler: str = "qaic-exec",
            platform: tuple[str, str | None] | None = None, tools: bool = False, runner: bool | None = None,
            devices: int = 0, nsp_free: int = 16) -> Path:
    """Lay out an SDK root. ``compiler``: "qaic-exec" (older SDKs), "qaic-compile" (newer) or "both";
    ``version`` = (base_version, build_id) of versions/apps.xml; ``platform`` the same for
    versions/platform.xml (none when None); ``tools``: tools/qaic-qpc and tools/qaic-util; ``runner``
    (default: ``tools``): exec/qaic-runner; ``devices``: cards qaic-util lists. Returns ``root``."""
    root = Path(root)
    for name in COMPILER_GENERATIONS[compiler]:
        _install(COMPILER, root / "exec" / name)
    _install(FLAGS, root / "lib" / "python" / "fake_flags.py")
    if tools:
        _install(TOOLS, root / "tools" / "qaic-qpc")
        _install(TOOLS, root / "tools" / "qaic-util")
    if tools if runner is None else runner:
        _install(TOOLS, root / "exec" / "qaic-runner")
    set_version(root, *version)
    if platform is not None:
        set_version(root, *platform, which="platform")
    if tools or devices:
        set_devices(root, devices, nsp_free=nsp_free)
    return root


def set_version(root: Path, base_version: str, build_id: str | None, which: str = "apps") -> None:
    """(Re)write ``<root>/versions/<which>.xml`` atomically; the version is ``base_version[.build_id]``."""
    versions = Path(root) / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    tmp = versions / f".{which}.xml.tmp"
    build = f"           <build_id>{build_id}</build_id>\n" if build_id is not None else ""
    tmp.write_text(_VERSIONS_XML.format(base_version=base_version, build_id=build), encoding="utf-8")
    os.replace(tmp, versions / f"{which}.xml")


def set_devices(root: Path, count: int, *, nsp_free: int = 16, status: str = "Ready") -> None:
    """The cards `qaic-util -q` lists (QID 0..count-1, 16 NSPs each, ``nsp_free`` of them free)."""
    devs = [{"qid": i, "status": status, "nsp_total": 16, "nsp_free": nsp_free} for i in range(count)]
    (Path(root) / "fake-devices.json").write_text(json.dumps(devs), encoding="utf-8")


def set_failing_models(root: Path, names: list[str]) -> Path:
    """The fault switch: every call of the stand-in compiler for these models (the -model file's name
    without extension, or its folder's name) fails, saying so; an empty list removes the switch."""
    path = Path(root) / FAIL_MODELS_FILE
    if names:
        path.write_text("# stand-in fault switch (qaic_assets/standin_sdk/README.md): these models fail\n"
                        + "".join(f"{n}\n" for n in names), encoding="utf-8")
    else:
        path.unlink(missing_ok=True)
    return path


def compiler_path(root: Path, name: str = "qaic-exec") -> Path:
    """Path of a stand-in compiler inside an installed SDK root."""
    return Path(root) / "exec" / name


def read_calls(root_or_log: Path) -> list[dict]:
    """Recorded invocations: from a calls.jsonl file, or ``<sdk_root>/calls.jsonl``. A tool's record has
    a "tool" key; the compiler's has none."""
    path = Path(root_or_log)
    if path.is_dir():
        path = path / CALLS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_exits(root: Path) -> dict[int, dict]:
    """pid -> {"end", "code"} of the stand-in compiler's normal exits (<root>/calls.exits.jsonl)."""
    path = Path(root) / "calls.exits.jsonl"
    if not path.exists():
        return {}
    return {r["pid"]: r for r in map(json.loads, path.read_text().splitlines()) if r}
