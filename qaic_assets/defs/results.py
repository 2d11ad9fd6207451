"""The Dagster side of a build: run config, code versions, failures and metadata.

The build service (qaic_assets/builder/service.py) does the work and raises BuildError; this module turns
its manifest into materialization metadata (numbers as numbers, so the UI plots them) and its errors
into `dg.Failure`s carrying the command and the log tail.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import dagster as dg

from qaic_assets.builder.service import BuildError
from qaic_assets.hashing import hash_json
from qaic_assets.qaic import recipes
from qaic_assets.settings import Settings


class BuildOptions(dg.Config):
    """Run config of the calibrate/compile ops (launchpad: `force: true` to bypass the cache)."""

    force: bool = False


def code_version(config: Settings, model: str, *parts: object) -> str:
    matrix = config.matrix_of(model)
    recipe = recipes.recipe_code_version(config.recipe_of(model), matrix.scenarios, matrix.nsp)
    return hash_json([recipe, *parts], length=16)


@contextlib.contextmanager
def as_failure() -> Iterator[None]:
    """A BuildError becomes a dg.Failure with its message and details (command, log tail, duration)."""
    try:
        yield
    except BuildError as exc:
        details = exc.details
        metadata = {}
        if "command" in details:
            metadata["command"] = dg.MetadataValue.text(details["command"])  # shlex-quoted
        if "log_tail" in details:
            metadata["log_tail"] = dg.MetadataValue.md("```\n" + "\n".join(details["log_tail"]) + "\n```")
        if "duration_s" in details:
            metadata["duration_s"] = details["duration_s"]
        raise dg.Failure(description=str(exc), metadata=metadata) from exc


def build_metadata(config: Settings, manifest: dict, cached: bool) -> dict:
    """Materialization metadata from the manifest: measurements as numbers (the UI plots them), the
    argv as a list plus one shell-quoted line, paths relative to `storage_root` (given once)."""
    from qaic_assets.defs.metadata import command_metadata, storage_root, stored_path

    output = manifest["output"]
    return {
        **command_metadata(manifest["argv"]),
        "backend": manifest["backend"],
        "sdk_version": manifest["sdk_version"],
        **toolchain_metadata(manifest.get("toolchain") or {}),
        "storage_root": storage_root(config),
        "path": stored_path(config, output["path"]),
        "sha256": output["sha256"],
        "size_bytes": output["size_bytes"],
        "duration_s": float(manifest["duration_s"]),
        "peak_rss_mb": round(manifest["peak_rss_bytes"] / 2**20, 1),
        "log_tail": dg.MetadataValue.md("```\n" + "\n".join(manifest["log_tail"]) + "\n```"),
        "worker": manifest["worker"],
        "cached": cached,
        "built_by_run": manifest["run_id"],
    }


def toolchain_metadata(toolchain: dict) -> dict:
    """The compiler and the SDK versions a build used (qaic/sdk.py Backend.describe())."""
    keys = {"compiler": "compiler", "executable": "compiler_executable", "apps_version": "apps_sdk_version",
            "platform_version": "platform_sdk_version"}
    return {label: dg.MetadataValue.text(str(toolchain[key])) for key, label in keys.items() if key in toolchain}
