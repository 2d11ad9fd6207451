"""Which compiler is in use and its versions: the SDK's qaic-compile or qaic-exec, or the CPU reference
compiler.

An SDK root (``/opt/qti-aic``) holds the compiler in ``exec/`` (``qaic-compile`` on newer SDKs,
``qaic-exec`` on older ones; same flags), the runner in ``exec/qaic-runner``, the tools in ``tools/``
(``qaic-qpc``, ``qaic-util``) and the versions in ``versions/apps.xml`` (Apps SDK: the compiler) and
``versions/platform.xml`` (Platform SDK: runtime, runner, tools). A version is ``ci_build/base_version``,
plus ``.`` + ``ci_build/build_id`` when there is one (CM's get-qaic-apps-sdk / get-qaic-platform-sdk).

``backend: auto`` uses the SDK when its root exists, else the CPU reference compiler; an SDK root that
exists without a compiler is an error listing what it holds, never a silent switch to the CPU.
``compiler: auto`` prefers ``qaic-compile`` and falls back to ``qaic-exec``.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from qaic_assets import files

COMPILERS = ("qaic-compile", "qaic-exec")  # `compiler: auto` takes the first one present
CPU_COMPILER = "qaic-exec-cpu"
TOOL_DIRS = {"qaic-runner": ("exec", "tools"), "qaic-qpc": ("tools", "exec"), "qaic-util": ("tools", "exec")}
NOT_INSTALLED = "not installed"


class SdkError(RuntimeError):
    """The SDK is missing or unreadable; the message names the file and the fix."""


def compiler_path(sdk_root: Path, name: str = "qaic-exec") -> Path:
    return Path(sdk_root) / "exec" / name


def qaic_exec_path(sdk_root: Path) -> Path:
    """The compiler ``compiler: auto`` would run (``exec/qaic-exec`` when there is none)."""
    found = found_compilers(sdk_root)
    return compiler_path(sdk_root, found[0] if found else "qaic-exec")


def found_compilers(sdk_root: Path) -> list[str]:
    return [name for name in COMPILERS if compiler_path(sdk_root, name).is_file()]


def sdk_present(sdk_root: Path) -> bool:
    return bool(found_compilers(sdk_root))


def tool_path(sdk_root: Path, name: str) -> Path | None:
    """``qaic-runner`` / ``qaic-qpc`` / ``qaic-util`` in the SDK root, or None when absent."""
    for folder in TOOL_DIRS[name]:
        path = Path(sdk_root) / folder / name
        if path.is_file():
            return path
    return None


def describe_root(sdk_root: Path) -> str:
    """What an SDK root holds (for error messages): the files of exec/, tools/ and versions/."""
    root = Path(sdk_root)
    parts = []
    for folder in ("exec", "tools", "versions"):
        d = root / folder
        names = sorted(p.name for p in d.iterdir())[:12] if d.is_dir() else []
        parts.append(f"{folder}/: {', '.join(names) if names else 'nothing'}")
    return "; ".join(parts)


def choose_compiler(sdk_root: Path, choice: str = "auto") -> Path:
    """The compiler executable for ``choice`` (auto, qaic-compile or qaic-exec); SdkError when absent."""
    root = Path(sdk_root)
    if choice == "auto":
        found = found_compilers(root)
        if found:
            return compiler_path(root, found[0])
        missing = ", ".join(f"{compiler_path(root, n)} does not exist" for n in COMPILERS)
        raise SdkError(
            f"backend qaic needs the Cloud AI 100 Apps SDK compiler, but {root} holds neither qaic-compile nor "
            f"qaic-exec ({missing}; found {describe_root(root)}): install the Apps SDK, set QAIC_SDK_ROOT to "
            "its root, or set `backend: cpu`")
    if choice not in COMPILERS:
        raise SdkError(f"compiler {choice!r} is not one of auto, {', '.join(COMPILERS)}: fix `compiler:`")
    path = compiler_path(root, choice)
    if not path.is_file():
        others = [n for n in found_compilers(root) if n != choice]
        alt = f" (this SDK has {others[0]}: set `compiler: {others[0]}` or `auto`)" if others else ""
        raise SdkError(f"backend qaic needs the Cloud AI 100 Apps SDK, but {path} does not exist{alt}; found "
                       f"{describe_root(root)}: install the Apps SDK or set QAIC_SDK_ROOT to its root")
    return path


def read_version(xml_path: Path, what: str) -> str:
    """``base_version[.build_id]`` of a versions/*.xml file; SdkError naming the file when unusable."""
    try:
        root = ET.fromstring(files.read_bytes(xml_path, files.SMALL_FILE_BYTES))
    except FileNotFoundError:
        raise SdkError(f"SDK version file {xml_path} is missing: reinstall the {what} SDK or fix "
                       "QAIC_SDK_ROOT") from None
    except files.NotReadable as exc:  # a FIFO would block the read forever
        raise SdkError(f"SDK version file {xml_path} {exc.strerror}: reinstall the {what} SDK or fix "
                       "QAIC_SDK_ROOT") from None
    except (ET.ParseError, OSError) as exc:
        raise SdkError(f"SDK version file {xml_path} is not valid XML ({exc}): reinstall the {what} SDK") from None
    base = (root.findtext("ci_build/base_version") or "").strip()
    build = (root.findtext("ci_build/build_id") or "").strip()
    if not base:
        raise SdkError(f"SDK version file {xml_path} lacks ci_build/base_version: reinstall the {what} SDK")
    return f"{base}.{build}" if build else base


def sdk_version(sdk_root: Path) -> str:
    """The Apps SDK (compiler) version: the data version of `qaic_sdk` and part of every cache key."""
    return read_version(Path(sdk_root) / "versions" / "apps.xml", "Apps")


def platform_version(sdk_root: Path) -> str:
    """The Platform SDK (runtime, runner, tools) version; "not installed" without platform.xml and
    "unreadable" with a broken one (recorded, never a reason to stop a compile)."""
    path = Path(sdk_root) / "versions" / "platform.xml"
    if not path.exists():
        return NOT_INSTALLED
    try:
        return read_version(path, "Platform")
    except SdkError:
        return "unreadable"


def package_version() -> str:
    try:
        return metadata.version("qaic_assets")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class Backend:
    """A compiler with qaic-exec's contract: how to call it and what its outputs are called."""

    name: str  # "qaic" or "cpu"
    executable: str
    version: str  # the compiler version (Apps SDK for qaic): cache keys and the data version
    binary_file: str  # what -aic-binary-dir must contain after a successful compile
    compiler: str = CPU_COMPILER  # qaic-compile, qaic-exec or qaic-exec-cpu
    platform_version: str = NOT_INSTALLED
    sdk_root: str | None = None

    def describe(self) -> dict:
        """What is recorded in manifests and metadata about the compiler."""
        return {"backend": self.name, "compiler": self.compiler, "executable": self.executable,
                "apps_version": self.version if self.name == "qaic" else NOT_INSTALLED,
                "platform_version": self.platform_version, "compiler_version": self.version}


def cpu_backend() -> Backend:
    import onnxruntime

    exe = Path(sys.executable).with_name(CPU_COMPILER)
    return Backend(
        name="cpu",
        executable=str(exe),
        version=f"onnxruntime-{onnxruntime.__version__}+qaic_assets-{package_version()}",
        binary_file="programqpc.onnx",
    )


def qaic_backend(sdk_root: Path, *, require: bool = True, compiler: str = "auto") -> Backend:
    """The SDK backend. With require=False (planning) a missing SDK still yields the would-be argv."""
    root = Path(sdk_root)
    try:
        exe = choose_compiler(root, compiler)
    except SdkError:
        if require:
            raise
        exe = compiler_path(root, COMPILERS[1] if compiler == "auto" else compiler)
        return Backend("qaic", str(exe), "not-installed", "programqpc.bin", exe.name, NOT_INSTALLED, str(root))
    return Backend("qaic", str(exe), sdk_version(root), "programqpc.bin", exe.name, platform_version(root), str(root))


def backend_name(choice: str, sdk_root: Path, *, sdk_seen: bool = False) -> str:
    """The one place `backend: auto` is decided: the SDK when its root exists, else the CPU reference
    compiler, except once the SDK has been seen (`sdk_seen`, from the `qaic_sdk` observations): then a
    missing root is a missing SDK, not a reason to rebuild everything with the CPU compiler. Reads no
    version file."""
    if choice == "cpu":
        return "cpu"
    return "cpu" if choice == "auto" and not sdk_seen and not Path(sdk_root).exists() else "qaic"


def select_backend(choice: str, sdk_root: Path, *, require: bool = True, compiler: str = "auto") -> Backend:
    if backend_name(choice, sdk_root) == "cpu":
        return cpu_backend()
    return qaic_backend(sdk_root, require=require, compiler=compiler)


def settings_backend(config, *, calibrate: bool = False, require: bool = True) -> Backend:
    """The backend of a Settings object for compiling, or (``calibrate``) for calibrating: the same
    executable unless `calibration_compiler` names another."""
    choice = getattr(config, "compiler", "auto")
    if calibrate and getattr(config, "calibration_compiler", None):
        choice = config.calibration_compiler
    return select_backend(config.backend, config.sdk_root, require=require, compiler=choice)
