"""Which compiler is in use, and its version: the SDK's qaic-exec or the CPU reference compiler.

The SDK is present when `<sdk_root>/exec/qaic-exec` exists; its version is `ci_build/base_version`
+ "." + `ci_build/build_id` from `<sdk_root>/versions/apps.xml` (the seed's get-qaic-apps-sdk).
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


class SdkError(RuntimeError):
    """The SDK is missing or unreadable; the message names the file and the fix."""


def qaic_exec_path(sdk_root: Path) -> Path:
    return Path(sdk_root) / "exec" / "qaic-exec"


def sdk_present(sdk_root: Path) -> bool:
    return qaic_exec_path(sdk_root).is_file()


def sdk_version(sdk_root: Path) -> str:
    apps_xml = Path(sdk_root) / "versions" / "apps.xml"
    try:
        root = ET.parse(apps_xml).getroot()
    except FileNotFoundError:
        raise SdkError(
            f"SDK version file {apps_xml} is missing: reinstall the Apps SDK or fix QAIC_SDK_ROOT"
        ) from None
    except ET.ParseError as exc:
        raise SdkError(f"SDK version file {apps_xml} is not valid XML ({exc}): reinstall the Apps SDK") from None
    base = root.findtext("ci_build/base_version")
    build = root.findtext("ci_build/build_id")
    if not base or not build:
        raise SdkError(
            f"SDK version file {apps_xml} lacks ci_build/base_version or ci_build/build_id: "
            "reinstall the Apps SDK"
        )
    return f"{base.strip()}.{build.strip()}"


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
    version: str
    binary_file: str  # what -aic-binary-dir must contain after a successful compile


def cpu_backend() -> Backend:
    import onnxruntime

    exe = Path(sys.executable).with_name("qaic-exec-cpu")
    return Backend(
        name="cpu",
        executable=str(exe),
        version=f"onnxruntime-{onnxruntime.__version__}+qaic_assets-{package_version()}",
        binary_file="programqpc.onnx",
    )


def qaic_backend(sdk_root: Path, *, require: bool = True) -> Backend:
    """The SDK backend. With require=False (planning) a missing SDK still yields the would-be argv."""
    exe = qaic_exec_path(sdk_root)
    if sdk_present(sdk_root):
        version = sdk_version(sdk_root)
    elif require:
        raise SdkError(
            f"backend qaic needs the Cloud AI 100 Apps SDK, but {exe} does not exist: "
            "install the SDK, set QAIC_SDK_ROOT to its root, or set `backend: cpu` / `auto`"
        )
    else:
        version = "not-installed"
    return Backend(name="qaic", executable=str(exe), version=version, binary_file="programqpc.bin")


def backend_name(choice: str, sdk_root: Path) -> str:
    """`auto`: the SDK when present, else the CPU reference compiler. Reads no version file."""
    return "cpu" if choice == "cpu" or (choice == "auto" and not sdk_present(sdk_root)) else "qaic"


def select_backend(choice: str, sdk_root: Path, *, require: bool = True) -> Backend:
    if backend_name(choice, sdk_root) == "cpu":
        return cpu_backend()
    return qaic_backend(sdk_root, require=require)
