"""Partitions: a profile per batch; a binary per batch x scenario-nsp (Dagster's two dimensions at
most), reaching its batch's profile through the `batch` dimension."""

from __future__ import annotations

import dagster as dg

from qaic_assets.defs.beta import our_beta_apis

from qaic_assets.settings import Settings, parse_batch_key, parse_target_key


def batch_partitions(config: Settings, model: str) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(config.matrix_of(model).batch_keys)


def binary_partitions(config: Settings, model: str) -> dg.MultiPartitionsDefinition:
    matrix = config.matrix_of(model)
    return dg.MultiPartitionsDefinition({
        "batch": dg.StaticPartitionsDefinition(matrix.batch_keys),
        "target": dg.StaticPartitionsDefinition(matrix.targets),
    })


def profile_mapping() -> dg.PartitionMapping:
    with our_beta_apis():
        return dg.MultiToSingleDimensionPartitionMapping("batch")


def binary_partition(key: str | dg.MultiPartitionKey) -> tuple[int, str, int]:
    """(batch, scenario, nsp) of a binary partition key, also when a run was launched with only the
    `dagster/partition` tag (a plain string like `bs8|offline-nsp14`)."""
    keys = key.keys_by_dimension if isinstance(key, dg.MultiPartitionKey) else dict(
        zip(("batch", "target"), str(key).split("|")))
    if set(keys) != {"batch", "target"}:
        raise ValueError(f"partition {key!r} is not like 'bs8|offline-nsp14'")
    return (parse_batch_key(keys["batch"]), *parse_target_key(keys["target"]))
