"""Where a binary came from (read back from the Dagster instance), and importing prebuilt binaries
(the seed's `--register`) as materializations with provenance."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import dagster as dg

from qaic_assets.builder import service
from qaic_assets.orchestration.keys import binary_key, profile_key, source_key
from qaic_assets.orchestration.partitions import multi_partition_key
from qaic_assets.keys import BinaryPartition
from qaic_assets.settings import Settings


def _records(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None, limit: int = 1):
    flt = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None)
    return instance.fetch_materializations(flt, limit=limit).records


#: records read per query by latest_by_partition (one query per page, not one per partition)
PAGE = 1000


def latest_by_partition(instance: dg.DagsterInstance, key: dg.AssetKey, partitions) -> dict:
    """partition -> its latest materialization record, for many partitions of one asset in a few
    queries (newest first, page by page, until each partition has its record or the history ends):
    a query per partition costs a new SQLite connection each, seconds at thousands of partitions."""
    wanted = set(partitions)
    found: dict = {}
    cursor = None
    while wanted - found.keys():
        page = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=sorted(wanted - found.keys())),
            limit=PAGE, cursor=cursor)
        for record in page.records:
            found.setdefault(record.partition_key, record)
        if not page.has_more:
            break
        cursor = page.cursor
    return found


def latest_check_by_partition(instance: dg.DagsterInstance, check_key: dg.AssetCheckKey) -> dict:
    """partition (None: an unpartitioned check) -> the latest execution record of that check, a page
    of PAGE records per query."""
    latest: dict = {}
    cursor = None
    while True:
        # non-public: no public API reads check results (tests/test_layers.py NON_PUBLIC: event_log_storage)
        page = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=PAGE, cursor=cursor)
        for record in page:  # newest first
            latest.setdefault(record.partition, record)
        if len(page) < PAGE:
            return latest
        cursor = page[-1].id


def _values(record, *names: str) -> dict:
    meta = record.asset_materialization.metadata
    values = {name: meta[name].value for name in names if name in meta}
    if "path" in values and "storage_root" in meta:  # stored relative to the root (orchestration/metadata.py)
        from qaic_assets.orchestration.metadata import resolve

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
            **_values(rec, "path", "sha256", "size_bytes", "backend", "sdk_version", "command",
                      "duration_s", "cached", "built_by_run", "same_build_as", "registered_from", "previous_sdk_version",
                      "previous_size_bytes", "previous_duration_s", "size_change_pct",
                      "duration_change_pct"),
            "run_id": rec.run_id or "(registered, no run)",
            "time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.timestamp)),
        }
        if "command" in chain["binary"]:  # recorded shell-quoted once: the argv is its exact split
            chain["binary"]["argv"] = shlex.split(chain["binary"].pop("command"))
        used_profile = rec.asset_materialization.metadata.get("profile_sha256")
        used_model = rec.asset_materialization.metadata.get("model_sha256")
        batch = BinaryPartition.parse(partition).batch_key
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


def register_binary(config: Settings, instance: dg.DagsterInstance, model: str, partition: BinaryPartition,
                    source: Path) -> dict:
    """Copy a prebuilt `-aic-binary-dir` into the store (the build layer: same lock, temporary directory
    and manifest as a compile) and record it as a materialization of that partition."""
    manifest = service.register_binary(config, model, partition, source)
    output = manifest["output"]
    instance.report_runless_asset_event(dg.AssetMaterialization(
        asset_key=binary_key(model),
        partition=multi_partition_key(partition),
        metadata={
            "path": dg.MetadataValue.path(output["path"]), "sha256": output["sha256"],
            "size_bytes": output["size_bytes"],
            "registered_from": dg.MetadataValue.path(manifest["registered_from"]),
            "backend": manifest["backend"], "sdk_version": manifest["sdk_version"],
        },
        tags={"dagster/data_version": output["sha256"]},
    ))
    return output | {"partition": partition.key}
