"""Partition keys, typed: `bs8` (a profile's batch) and `bs8|offline-nsp14` (a binary's batch x target).

The one place that formats and parses them. A binary's key is Dagster's multi-partition key string:
its dimensions `batch` and `target` joined by `|` in the order of their names (Dagster sorts them),
which `BinaryPartition.dimensions` gives and `parse` reads back. No dagster import: the build layer
names its work by these keys too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCENARIOS = ("offline", "server", "singlestream", "multistream")


def dagster_name(model: str) -> str:
    """A model's name where Dagster allows only letters, digits and '_' (group, op and job names):
    '-' and '.' become '_'. Two models with the same Dagster name are refused at config load."""
    return re.sub(r"[^A-Za-z0-9_]", "_", model)
#: the dimensions of a binary's partitions, in the order Dagster joins them (sorted by name)
DIMENSIONS = ("batch", "target")
SEPARATOR = "|"


def batch_key(batch: int) -> str:
    return f"bs{batch}"


def parse_batch_key(key: str) -> int:
    if not (key.startswith("bs") and key[2:].isdigit() and int(key[2:]) > 0):
        raise ValueError(f"batch {key!r} is not like 'bs8'")
    return int(key[2:])


def target_key(scenario: str, nsp: int) -> str:
    return f"{scenario}-nsp{nsp}"


def parse_target_key(key: str) -> tuple[str, int]:
    scenario, _, nsp = key.rpartition("-nsp")
    if scenario not in SCENARIOS or not nsp.isdigit():
        raise ValueError(f"target {key!r} is not like 'offline-nsp14'")
    return scenario, int(nsp)


@dataclass(frozen=True)
class BinaryPartition:
    """One compiled binary's partition: batch size x (scenario, NSP count)."""

    batch: int
    scenario: str
    nsp: int

    @property
    def batch_key(self) -> str:
        return batch_key(self.batch)

    @property
    def target_key(self) -> str:
        return target_key(self.scenario, self.nsp)

    @property
    def dimensions(self) -> dict[str, str]:
        """{"batch": "bs8", "target": "offline-nsp14"}: what a Dagster MultiPartitionKey is built from."""
        return {"batch": self.batch_key, "target": self.target_key}

    @property
    def key(self) -> str:
        return SEPARATOR.join(self.dimensions[d] for d in DIMENSIONS)

    def __str__(self) -> str:
        return self.key

    @classmethod
    def from_dimensions(cls, dimensions: dict[str, str]) -> BinaryPartition:
        if set(dimensions) != set(DIMENSIONS):
            raise ValueError(f"partition {dimensions!r} has not the dimensions {DIMENSIONS}")
        return cls(parse_batch_key(dimensions["batch"]), *parse_target_key(dimensions["target"]))

    @classmethod
    def parse(cls, key: str) -> BinaryPartition:
        """`bs8|offline-nsp14` -> BinaryPartition(8, "offline", 14); a clear ValueError otherwise."""
        parts = str(key).split(SEPARATOR)
        if len(parts) != len(DIMENSIONS):
            raise ValueError(f"partition {key!r} is not like 'bs8|offline-nsp14'")
        try:
            return cls.from_dimensions(dict(zip(DIMENSIONS, parts)))
        except ValueError as exc:
            raise ValueError(f"partition {key!r} is not like 'bs8|offline-nsp14': {exc}") from None
