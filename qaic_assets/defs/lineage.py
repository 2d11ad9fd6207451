"""Where a binary came from (read back from the Dagster instance), and importing prebuilt binaries
(the seed's `--register`) as materializations with provenance."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg

from qaic_assets.defs.keys import binary_key, profile_key, source_key
from qaic_assets.settings import Settings, batch_key
from qaic_assets.qaic.commands import BINARY_DIR
from qaic_assets.builder.store import compile_dir
from qaic_assets.builder.process import TERM_GRACE_S
from qaic_assets.builder.outputs import atomic_output_dir, clean_stale_temps, output_lock
from qaic_assets.builder.safe_copy import UnsafeSource, check_tree, copy_checked
from qaic_assets.hashing import sha256_file
from qaic_assets.builder.manifest import write_manifest
from qaic_assets.qaic.sdk import settings_backend


class RegisterError(RuntimeError):
    """A directory that cannot be registered; the message names it and the fix."""


def _records(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None, limit: int = 1):
    flt = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None)
    return instance.fetch_materializations(flt, limit=limit).records


def _values(record, *names: str) -> dict:
    meta = record.asset_materialization.metadata
    values = {name: meta[name].value for name in names if name in meta}
    if "path" in values and "storage_root" in meta:  # stored relative to the root (defs/metadata.py)
        from qaic_assets.defs.metadata import resolve

        values["path"] = str(resolve(meta))
    return values


def lineage(instance: dg.DagsterInstance, model: str, partition: str) -> dict:
    """model sha256 -> profile (path, sha256, calibration list) [-> percentile_choice, with `percentile:
    sweep`] -> binary (path, sha256, SDK, argv, run)."""
    chain: dict = {"model": None, "profile": None, "binary": None}
    binaries = _records(instance, binary_key(model), partition)
    if binaries:
        rec = binaries[0]
        chain["binary"] = {
            **_values(rec, "path", "sha256", "size_bytes", "backend", "sdk_version", "argv",
                      "duration_s", "cached", "built_by_run", "registered_from", "previous_sdk_version",
                      "previous_size_bytes", "previous_duration_s", "size_change_pct",
                      "duration_change_pct"),
            "run_id": rec.run_id or "(registered, no run)",
            "time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.timestamp)),
        }
        used_profile = rec.asset_materialization.metadata.get("profile_sha256")
        used_model = rec.asset_materialization.metadata.get("model_sha256")
        batch = partition.split("|")[0]
        for prof in _records(instance, profile_key(model), batch, limit=50):
            if used_profile is None or _values(prof, "sha256").get("sha256") == used_profile.value:
                chain["profile"] = {**_values(prof, "path", "sha256", "calibration_list",
                                              "calibration_samples", "sdk_version"),
                                    "run_id": prof.run_id}
                break
        percentile = rec.asset_materialization.metadata.get("percentile_choice")
        if percentile is not None:  # `percentile: sweep`: binary <- percentile_choice <- profile
            chosen = _values(rec, "percentile").get("percentile")
            for choice in _records(instance, percentile.value, batch, limit=50):
                values = _values(choice, "chosen_percentile", "chosen_score", "metric", "profile_sha256", "path")
                if values.get("chosen_percentile") == chosen and (
                        used_profile is None or values.get("profile_sha256") == used_profile.value):
                    chain["percentile_choice"] = {**values, "run_id": choice.run_id}
                    break
        for src in _records(instance, source_key(model), None, limit=50):
            if used_model is None or _values(src, "sha256").get("sha256") == used_model.value:
                chain["model"] = {**_values(src, "path", "sha256", "source_kind"), "run_id": src.run_id}
                break
    return chain


def register_binary(config: Settings, instance: dg.DagsterInstance, model: str, batch: int,
                    scenario: str, nsp: int, source: Path) -> dict:
    """Copy a prebuilt `-aic-binary-dir` into the store and record it as a materialization."""
    backend = settings_backend(config, require=False)
    source = source.expanduser().resolve()
    if not source.is_dir():
        raise RegisterError(f"{source} is not a directory: pass the directory qaic-exec wrote with "
                            "-aic-binary-dir")
    try:  # nothing outside the directory, no symlinked binary, no FIFO or device (builder/safe_copy.py)
        files = check_tree(source, backend.binary_file)
    except UnsafeSource as exc:
        raise RegisterError(f"refusing to register {source}: {exc}") from None
    if not (source / backend.binary_file).is_file():
        raise RegisterError(
            f"{source} holds no {backend.binary_file}: pass the directory qaic-exec wrote with "
            "-aic-binary-dir"
        )
    final = compile_dir(config, model, batch, scenario, nsp)
    expected = f"{BINARY_DIR}/{backend.binary_file}"
    # the same lock as the compile op: a register never interleaves with a compile of this partition
    with output_lock(final, config.compile_timeout_s + TERM_GRACE_S + 60.0):
        clean_stale_temps(final.parent, final.name)
        with atomic_output_dir(final, [expected]) as tmp:
            try:
                copy_checked(files, tmp / BINARY_DIR)
            except UnsafeSource as exc:
                raise RegisterError(f"refusing to register {source}: {exc}") from None
            sha = sha256_file(tmp / expected)
            size = (tmp / expected).stat().st_size
            info = {"path": str(final / expected), "sha256": sha, "size_bytes": size}
            write_manifest(tmp, {
                "kind": "compiled_binary", "model": model, "registered_from": str(source),
                "backend": backend.name, "sdk_version": backend.version, "argv": None,
                "output": info, "created_at": time.time(),
            })
    partition = f"{batch_key(batch)}|{scenario}-nsp{nsp}"
    instance.report_runless_asset_event(dg.AssetMaterialization(
        asset_key=binary_key(model),
        partition=dg.MultiPartitionKey({"batch": batch_key(batch), "target": f"{scenario}-nsp{nsp}"}),
        metadata={
            "path": dg.MetadataValue.path(info["path"]), "sha256": sha, "size_bytes": size,
            "registered_from": dg.MetadataValue.path(str(source)), "backend": backend.name,
            "sdk_version": backend.version,
        },
        tags={"dagster/data_version": sha},
    ))
    return info | {"partition": partition}
