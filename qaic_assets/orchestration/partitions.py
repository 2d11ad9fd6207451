"""Partitions: a profile per batch; a binary per batch x scenario-nsp (Dagster's two dimensions at
most), reaching its batch's profile through the `batch` dimension."""

from __future__ import annotations

import dagster as dg

from qaic_assets.orchestration.beta import our_beta_apis

from qaic_assets.keys import DIMENSIONS, BinaryPartition
from qaic_assets.settings import Settings


def batch_partitions(config: Settings, model: str) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(config.matrix_of(model).batch_keys)


def binary_partitions(config: Settings, model: str) -> dg.MultiPartitionsDefinition:
    matrix = config.matrix_of(model)
    keys = {"batch": matrix.batch_keys, "target": matrix.targets}
    return dg.MultiPartitionsDefinition({d: dg.StaticPartitionsDefinition(keys[d]) for d in DIMENSIONS})


def profile_mapping() -> dg.PartitionMapping:
    with our_beta_apis():
        return dg.MultiToSingleDimensionPartitionMapping("batch")


def binary_partition(key: str | dg.MultiPartitionKey) -> BinaryPartition:
    """The typed partition of a binary's key, also when a run was launched with only the
    `dagster/partition` tag (a plain string like `bs8|offline-nsp14`)."""
    if isinstance(key, dg.MultiPartitionKey):
        return BinaryPartition.from_dimensions(key.keys_by_dimension)
    return BinaryPartition.parse(key)


def multi_partition_key(partition: BinaryPartition) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey(partition.dimensions)
