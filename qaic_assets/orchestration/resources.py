"""The compiler toolchain and the artifact store as Dagster resources.

Their defaults come from the settings (the config file, `QAIC_SDK_ROOT`, `QAIC_ASSETS_STORAGE_ROOT`);
a deployment can bind them per environment (for example `Toolchain(sdk_root=dg.EnvVar(...))`), the
launchpad shows them, and tests pass other instances instead of setting environment variables.
`sdk_root` and the store change where a build runs and writes; the backend is read once, when the
definitions are built, by the graph (kinds, checks) and the builds alike (graph_settings), and a run
asking for another one is refused (effective_settings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import dagster as dg

from qaic_assets.settings import Settings

TOOLCHAIN = "toolchain"
STORE = "artifact_store"


class Toolchain(dg.ConfigurableResource):
    """The compiler: `qaic` (the Apps SDK's qaic-compile or qaic-exec under `sdk_root`), `cpu` (the CPU reference
    compiler), or `auto` (the SDK when installed, else the CPU compiler)."""

    backend: Literal["auto", "qaic", "cpu"] = "auto"
    sdk_root: str = "/opt/qti-aic"
    # which SDK compiler: auto = exec/qaic-compile when the SDK has it, else exec/qaic-exec
    compiler: Literal["auto", "qaic-exec", "qaic-compile"] = "auto"
    calibration_compiler: str | None = None  # auto | qaic-exec | qaic-compile; None: as `compiler`


class ArtifactStore(dg.ConfigurableResource):
    """Where profiles, binaries, stand-in models and check results are written (a shared filesystem
    when compiles run on several hosts)."""

    root: str


def default_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    return {TOOLCHAIN: Toolchain(backend=settings.backend, sdk_root=str(settings.sdk_root),
                                 compiler=settings.compiler, calibration_compiler=settings.calibration_compiler),
            STORE: ArtifactStore(root=str(settings.storage_root))}


def graph_settings(settings: Settings, toolchain: Toolchain) -> Settings:
    """The settings the asset graph is built from: the backend is the toolchain resource's, so the graph
    (kinds, checks) and the builds read the same choice."""
    return settings.model_copy(update={"backend": toolchain.backend})


def effective_settings(settings: Settings, toolchain: Toolchain, store: ArtifactStore) -> Settings:
    """The settings a build uses: the graph's, with the compiler and the storage root of the resources.
    A toolchain whose backend differs from the graph's (changed in the launchpad) is refused: the graph
    would show one backend's checks and kinds and the build use another's."""
    if toolchain.backend != settings.backend:
        raise dg.Failure(
            description=f"the toolchain resource says backend {toolchain.backend!r} but the definitions were "
                        f"loaded with backend {settings.backend!r}: set `backend:` in {settings.source_file} "
                        "(or bind the resource when the definitions are built), not in the launchpad",
            allow_retries=False)
    return settings.model_copy(update={"sdk_root": Path(toolchain.sdk_root),
                                       "compiler": toolchain.compiler,
                                       "calibration_compiler": toolchain.calibration_compiler,
                                       "storage_root": Path(store.root)})
