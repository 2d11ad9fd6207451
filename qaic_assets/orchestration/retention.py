"""Retention: the runs an instance can forget, and forgetting them (`qaic-assets prune`).

Every build adds runs and events, and an SDK upgrade adds the whole matrix again: without retention
DAGSTER_HOME grows with every upgrade. A run is superseded when it succeeded and none of its asset
events is the latest of its kind: every partition it materialized has a later materialization, every
observation a later one, every check result a later result for the same check and partition.
Deleting such a run loses no binary's lineage (the run of each latest materialization stays, with its
check results and logs), no `sdk_current` verdict (a failed recompile's verdict names a failed run,
and failed or canceled runs are never pruned: they are what the UI says went wrong) and nothing the
automation reads (it compares latest events). Sensor and schedule ticks are Dagster's own
`retention` setting (the shipped dagster.yaml files set it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from qaic_assets.orchestration.lineage import latest_by_partition, latest_check_by_partition

def holders(instance: dg.DagsterInstance, defs: dg.Definitions) -> set[str]:
    """The runs holding the latest event of some asset, asset partition or check partition."""
    graph = defs.resolve_asset_graph()
    keep: set[str] = set()
    checks: set[dg.AssetCheckKey] = set()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        checks |= set(node.assets_def.check_keys)
        if node.partitions_def is not None:
            keep |= {r.run_id for r in latest_by_partition(instance, key, node.partitions_def.get_partition_keys()).values()}
        else:
            keep |= {r.run_id for r in instance.fetch_materializations(key, limit=1).records}
        keep |= {r.run_id for r in instance.fetch_observations(key, limit=1).records}
    for check_key in checks:
        keep |= {r.run_id for r in latest_check_by_partition(instance, check_key).values()}
    return keep


@dataclass
class Pruned:
    runs: list[str]  # the superseded runs (deleted unless a dry run)
    kept: int  # finished runs kept
    bytes_freed: int  # run shard files removed (SQLite storage)


def prune(instance: dg.DagsterInstance, defs: dg.Definitions, *, dry_run: bool = False) -> Pruned:
    """Delete the superseded runs (module docstring). The runs are listed before the latest events
    are read, so a run that finishes meanwhile is judged next time, never deleted while it is latest."""
    succeeded = [r.dagster_run.run_id for r in
                 instance.get_run_records(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))]
    finished = len(instance.get_run_records(filters=dg.RunsFilter(statuses=[
        dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED])))
    keep = holders(instance, defs)
    superseded = [run_id for run_id in succeeded if run_id not in keep]
    freed = 0
    if not dry_run:
        home = os.environ.get("DAGSTER_HOME")
        shards = Path(home) / "history" / "runs" if home else None
        for run_id in superseded:
            instance.delete_run(run_id)
            # Dagster's SQLite storage deletes a run's events but keeps its emptied shard file (an empty
            # schema, ~150 KB) in $DAGSTER_HOME/history/runs: removed here. Postgres has no such file.
            shard = shards / f"{run_id}.db" if shards else None
            if shard is not None and shard.is_file():
                freed += shard.stat().st_size
                shard.unlink()
    return Pruned(superseded, finished - len(superseded), freed)
