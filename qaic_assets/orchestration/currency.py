"""Is each compiled binary built with the SDK observed now? The `sdk_current` check, per partition.

After an SDK upgrade the catalog must not show the old binaries as current: every built partition of
`<model>/compiled_binary` carries the check `sdk_current`:

- the compile step reports it with the build: passed when the binary was built with the compiler of
  the latest `qaic_sdk` observation;
- when a new SDK version is observed, `observe_qaic_sdk_sensor` (orchestration/automation.py) requests
  one run of the job `report_sdk_current`, which reports it for every built partition: failed (WARN)
  "built with Apps SDK 1.18.2.0.5, current Apps SDK 1.18.2.0.6: recompile pending" where it is not
  current; the automation's recompile then reports it passed. (A run, not the sensor's own events:
  Dagster 1.13's SQLite storage refuses a second run-less result of one check on one partition, a
  unique key of (check, run, partition) with no run.)
- a recompile that fails reports it failed (ERROR) with the run and the message: "recompile for Apps
  SDK 1.18.2.0.6 failed in run X: <message>; serving the binary built with Apps SDK 1.18.2.0.5".

A check, not Dagster's staleness: Dagster does not compute staleness across an unpartitioned source
(qaic_sdk) and thousands of partitions, and a staleness badge cannot say that a recompile failed.
"""

from __future__ import annotations

import dagster as dg

from qaic_assets.orchestration.keys import SDK_CURRENT, binary_key
from qaic_assets.orchestration.lineage import latest_by_partition, latest_check_by_partition
from qaic_assets.orchestration.toolchain import DATA_VERSION_TAG, last_found_observation
from qaic_assets.settings import Settings


def _value(metadata, name: str):
    """A metadata entry's value (stored entries are MetadataValues, a step's own are plain)."""
    value = metadata.get(name)
    return getattr(value, "value", value)


def sdk_words(backend: str | None, version: str | None, platform: str | None) -> str:
    """"Apps SDK 1.18.2.0.5, Platform SDK 1.18.2.0.5", or "CPU reference compiler <version>"."""
    if backend == "cpu":
        return f"CPU reference compiler {version}"
    return f"Apps SDK {version}" + (f", Platform SDK {platform}" if platform and platform != "not installed" else "")


def built_with(metadata) -> tuple[str | None, str | None, str | None]:
    """(backend, compiler version, Platform SDK version) a build recorded in its metadata."""
    return _value(metadata, "backend"), _value(metadata, "sdk_version"), _value(metadata, "platform_sdk_version")


def observed(observation: dg.AssetObservation | None) -> tuple[str | None, str | None, str | None]:
    """(backend, compiler version, Platform SDK version) of an observation that found the compiler."""
    if observation is None:
        return None, None, None
    meta = observation.metadata
    return (_value(meta, "backend"), (observation.tags or {}).get(DATA_VERSION_TAG) or _value(meta, "version"),
            _value(meta, "platform_sdk_version"))


def is_current(built: tuple, now: tuple) -> bool:
    """Same backend and compiler version, and the same Platform SDK where both recorded one."""
    same_platform = built[2] is None or now[2] is None or built[2] == now[2]
    return built[:2] == now[:2] and same_platform


def verdict(built: tuple, now: tuple, *, failed_run: str | None = None, message: str | None = None) -> dict:
    """The `sdk_current` result of a binary built with `built` while `now` is observed: passed, or not
    current (WARN: "recompile pending"), or (`failed_run`) its recompile failed (ERROR). The description
    says it all (both SDKs, the run); no metadata repeats it: every built partition gets one per build
    and one per SDK change."""
    if failed_run is not None:
        return {"passed": False, "severity": dg.AssetCheckSeverity.ERROR,
                "description": f"recompile for {sdk_words(*now)} failed in run {failed_run}: {message}; "
                               f"serving the binary built with {sdk_words(*built)}"}
    current = is_current(built, now)
    return {"passed": current, "severity": dg.AssetCheckSeverity.WARN,
            "description": f"built with {sdk_words(*built)}, the SDK observed now" if current else
                           f"built with {sdk_words(*built)}, current {sdk_words(*now)}: recompile pending"}


def currency_evaluations(config: Settings, instance: dg.DagsterInstance, now: tuple) -> list[dg.AssetCheckEvaluation]:
    """`sdk_current` of every built partition against `now` (observed(...) of the latest observation
    that found the compiler), in a few queries per model (orchestration/lineage.latest_by_partition)."""
    results = []
    for model in config.model_names:
        key = binary_key(model)
        records = latest_by_partition(instance, key, [p.key for p in config.matrix_of(model).binary_partitions])
        for partition, record in sorted(records.items()):
            results.append(dg.AssetCheckEvaluation(
                asset_key=key, check_name=SDK_CURRENT, partition=partition,
                **verdict(built_with(record.asset_materialization.metadata), now)))
    return results


def current_verdict(instance: dg.DagsterInstance, metadata: dict) -> dict:
    """The verdict of a binary just built (its materialization `metadata`) against the latest
    observation; without one (the build recorded the first), it is current."""
    built = built_with(metadata)
    now = observed(last_found_observation(instance))
    return verdict(built, now if now[1] is not None else built)


def report_failed_recompile(context: dg.AssetExecutionContext, key: dg.AssetKey, partition: str, message: str) -> None:
    """A failed build of a partition that has a binary: its `sdk_current` says the recompile failed,
    with the run and the message, and which binary is served meanwhile. (A first build that fails has
    no binary to judge: nothing is reported.)"""
    served = latest_by_partition(context.instance, key, [partition]).get(partition)
    if served is None:
        return
    built = built_with(served.asset_materialization.metadata)
    now = observed(last_found_observation(context.instance))
    context.log_event(dg.AssetCheckEvaluation(
        asset_key=key, check_name=SDK_CURRENT, partition=partition,
        **verdict(built, now if now[1] is not None else built, failed_run=context.run.run_id,
                  message=message.splitlines()[0].rstrip(".") if message else message)))


CURRENCY_JOB = "report_sdk_current"


def currency_job(config: Settings) -> dg.JobDefinition:
    """The run the observation sensor requests when the observed compiler changed: `sdk_current` of
    every built binary partition against the latest observation that found the compiler."""

    @dg.op(name="sdk_current_report", description="sdk_current of every built binary against the observed SDK")
    def report_sdk_current(context) -> None:  # (an OpExecutionContext)
        now = observed(last_found_observation(context.instance))
        if now[1] is None:
            return
        for evaluation in currency_evaluations(config, context.instance, now):
            context.log_event(evaluation)

    @dg.job(name=CURRENCY_JOB, description="Marks each built binary current or not after an SDK observation "
            "(requested by observe_qaic_sdk_sensor)")
    def report_sdk_current_job():
        report_sdk_current()

    return report_sdk_current_job


def latest_currency(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, dg.AssetCheckEvaluation]:
    """partition -> the latest `sdk_current` result of that binary partition: what the asset's Checks
    tab shows, and what `qaic-assets status` and `lineage` print."""
    records = latest_check_by_partition(instance, dg.AssetCheckKey(key, SDK_CURRENT))
    return {partition: record.event.dagster_event.event_specific_data for partition, record in records.items()
            if partition and record.event is not None and record.event.dagster_event is not None}


def currency_line(result: dg.AssetCheckEvaluation) -> str:
    """One line for a terminal: "current: built with ..." or "NOT CURRENT: <what the check says>"."""
    return ("current: " if result.passed else "NOT CURRENT: ") + (result.description or "")
