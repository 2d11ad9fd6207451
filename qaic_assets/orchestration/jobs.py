"""The project's jobs: observe the SDK, fetch the sources, the SDK canary (`canary`, not on the CPU
backend), and per group of models sharing a matrix one calibration job and one compile job (a Dagster
job runs one partition of assets that share a partitions definition, so a model with its own matrix
gets jobs of its own)."""

from __future__ import annotations

from collections import defaultdict

import dagster as dg

from qaic_assets.orchestration.keys import SDK_KEY, binary_key, profile_key, source_key
from qaic_assets.orchestration.percentile import choice_key
from qaic_assets.keys import SEPARATOR, BinaryPartition, dagster_name
from qaic_assets.settings import Settings

OBSERVE_JOB = "observe_qaic_sdk"
SOURCES_JOB = "source_models"


def matrix_jobs(config: Settings) -> dict[str, tuple[str, str]]:
    """Per model: (calibration job, compile job) names."""
    jobs = {}
    for model in config.model_names:
        prefix = "" if config.model(model).matrix is None else f"{dagster_name(model)}_"
        jobs[model] = (f"{prefix}calibration_profiles", f"{prefix}compiled_binaries")
    return jobs


def observe_job() -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(OBSERVE_JOB, selection=[SDK_KEY], description="Observe the compiler version.")


def build_jobs(config: Settings) -> list[dg.UnresolvedAssetJobDefinition]:
    selections: dict[str, list[dg.AssetKey]] = defaultdict(list)
    for model, (calib_job, compile_job) in matrix_jobs(config).items():
        if config.model(model).calibrates:
            selections[calib_job].append(profile_key(model))
            if config.model(model).sweeps_percentile:  # same batch partitions: runs after the profile
                selections[calib_job].append(choice_key(model))
        selections[compile_job].append(binary_key(model))
    canary = []
    if config.backend != "cpu":  # the SDK canary (orchestration/canary.py): a candidate SDK's root as config
        from qaic_assets.orchestration.canary import canary_job

        canary = [canary_job()]
    return [
        dg.define_asset_job(SOURCES_JOB, selection=[source_key(m) for m in config.model_names],
                            description="Fetch, verify and describe every source model."),
    ] + [dg.define_asset_job(name, selection=keys) for name, keys in selections.items()] + canary


#: Dagster's tags of a run over a range of partitions (a single-run backfill's), first and last key
RANGE_START_TAG, RANGE_END_TAG = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def range_run_tags(first: str, last: str) -> dict[str, str]:
    """Tags of a run over the partitions first..last, in the partitions definition's order."""
    return {RANGE_START_TAG: first, RANGE_END_TAG: last}


def partition_run_tags(partition: str | None) -> dict[str, str]:
    """Tags of a run of one partition. `dagster/partition` alone is enough to run it (scripts and the
    GraphQL API send only that); a binary partition also gets its dimensions under Dagster's public
    tag names (`dagster/partition/batch`, `dagster/partition/target`), which the UI filters runs by."""
    if not partition:
        return {}
    tags = {"dagster/partition": partition}
    if SEPARATOR in partition:
        dimensions = BinaryPartition.parse(partition).dimensions
        tags |= {f"dagster/partition/{dim}": value for dim, value in dimensions.items()}
    return tags
