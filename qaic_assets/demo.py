"""The main job behind `make demo`: materialize the whole matrix in the local Dagster instance.

Runs, in order: observe `qaic_sdk`; `source_models`; one calibration run per batch partition; one
compile run per (batch, target) partition. Each run executes its steps in parallel (multiprocess
executor) within the `qaic_compile` pool, and is recorded in the instance, so the UI
(`make ui`) shows the same materializations afterwards. Ends with a table of what was built.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

import dagster as dg

from qaic_assets.defs.keys import ACCURACY_CHECK_NAME, binary_key
from qaic_assets.settings import Settings, load_settings
from qaic_assets.defs.executor import execution_run_config


#: How the multiprocess executor starts a step's process (env QAIC_ASSETS_START_METHOD overrides).
#: `forkserver` forks every step from one server process per demo that has already imported dagster
#: and built the definitions (PRELOAD); Dagster's default, `spawn`, starts a fresh interpreter per step
#: that imports them again: ~1.5-3 s per step on a loaded 2-core machine, about half of the
#: orchestration overhead of the default matrix (docs/BENCHMARKS.md).
START_METHOD_ENV = "QAIC_ASSETS_START_METHOD"
DEFAULT_START_METHOD = "forkserver"
PRELOAD = ["dagster", "qaic_assets.definitions"]


def start_method(choice: str | None = None) -> str:
    method = choice or os.environ.get(START_METHOD_ENV) or DEFAULT_START_METHOD
    return method if method in multiprocessing.get_all_start_methods() else "spawn"


def instance_modules(instance: dg.DagsterInstance | None) -> list[str]:
    """The modules a step process imports to open `instance` (its storages and compute log manager:
    SQLAlchemy, Alembic, ... ~0.5 s), so that the forkserver imports them once instead."""
    if instance is None:
        return []
    modules = set()
    for name in ("run_storage", "event_log_storage", "schedule_storage", "compute_log_manager"):
        try:
            modules.add(type(getattr(instance, name)).__module__)
        except Exception:  # noqa: BLE001 - a storage that cannot be inspected is just not preloaded
            continue
    return sorted(modules)


def run_config(max_concurrent: int = 2, method: str | None = None,
               instance: dg.DagsterInstance | None = None) -> dict:
    """Run config of a demo run: the deployment's execution config (deploy.execution_run_config), with
    the step start method set when it is the multiprocess executor, and console logs at WARNING."""
    config = execution_run_config(max_concurrent)
    multiprocess = config.get("execution", {}).get("config", {}).get("multiprocess")
    if multiprocess is not None:
        method = start_method(method)
        preload = [PRELOAD[0], *instance_modules(instance), *PRELOAD[1:]]
        multiprocess["start_method"] = {method: {"preload_modules": preload} if method == "forkserver" else {}}
    return {**config, "loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def job_for(name: str) -> dg.JobDefinition:
    """Reconstructor for step subprocesses: the named job of the project's definitions."""
    from qaic_assets.definitions import defs

    return defs.resolve_job_def(name)


def run_job(instance: dg.DagsterInstance, name: str, partition: str | None = None,
            max_concurrent: int = 2, method: str | None = None) -> dg.ExecuteJobResult:
    from qaic_assets.defs.jobs import partition_run_tags

    tags = partition_run_tags(partition)
    job = dg.build_reconstructable_job(__name__, "job_for", reconstructable_args=(name,))
    config = run_config(max_concurrent, method, instance)
    with dg.execute_job(job, instance=instance, run_config=config, tags=tags) as result:
        return result


def materialize_matrix(config: Settings, instance: dg.DagsterInstance,
                       method: str | None = None) -> list[tuple[str, str | None, bool]]:
    """Every run of the default matrix, in dependency order; returns (job, partition, success).
    `method`: the step start method (default: start_method())."""
    from qaic_assets.defs.jobs import OBSERVE_JOB, SOURCES_JOB, matrix_jobs

    runs: list[tuple[str, str | None]] = [(OBSERVE_JOB, None), (SOURCES_JOB, None)]
    groups: dict[tuple[str, str], str] = {}
    for model, jobs in matrix_jobs(config).items():
        groups.setdefault(jobs, model)
    for (calib_job, compile_job), model in groups.items():
        matrix = config.matrix_of(model)
        if any(config.model(m).quantize for m, j in matrix_jobs(config).items() if j[0] == calib_job):
            runs += [(calib_job, b) for b in matrix.batch_keys]
        runs += [(compile_job, f"{b}|{t}") for b in matrix.batch_keys for t in matrix.targets]
    outcomes = []
    for name, partition in runs:
        started = time.monotonic()
        result = run_job(instance, name, partition, method=method)
        label = f"{name} {partition or ''}".strip()
        print(f"[{'ok' if result.success else 'FAILED'}] {label} ({time.monotonic() - started:.1f}s)",
              flush=True)
        outcomes.append((name, partition, result.success))
    return outcomes


def built_table(config: Settings, instance: dg.DagsterInstance) -> list[dict]:
    """The latest materialization of every compiled partition, read back from the instance."""
    rows = []
    for model in config.model_names:
        key = binary_key(model)
        matrix = config.matrix_of(model)
        for b in matrix.batch_keys:
            for t in matrix.targets:
                partition = f"{b}|{t}"
                records = instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
                ).records
                if not records:
                    rows.append({"model": model, "partition": partition, "status": "missing"})
                    continue
                meta = records[0].asset_materialization.metadata
                check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
                    [dg.AssetCheckKey(key, ACCURACY_CHECK_NAME)]
                ).get(dg.AssetCheckKey(key, ACCURACY_CHECK_NAME))
                rows.append({
                    "model": model, "partition": partition, "status": "built",
                    "size_mb": meta["size_bytes"].value / 2**20,
                    "compile_s": meta["duration_s"].value,
                    "sha256": meta["sha256"].value[:12],
                    "backend": meta["backend"].value,
                    "check": check.status.value if check else "-",
                })
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\n{'model':<10} {'partition':<22} {'backend':<7} {'size MB':>8} {'compile s':>9} "
          f"{'sha256':<12}  check")
    for r in rows:
        if r["status"] != "built":
            print(f"{r['model']:<10} {r['partition']:<22} {'missing'}")
            continue
        print(f"{r['model']:<10} {r['partition']:<22} {r['backend']:<7} {r['size_mb']:>8.2f} "
              f"{r['compile_s']:>9.2f} {r['sha256']:<12}  {r['check']}")


def main() -> int:
    config = load_settings()
    started = time.monotonic()
    with dg.DagsterInstance.get() as instance:
        outcomes = materialize_matrix(config, instance)
        rows = built_table(config, instance)
    print_table(rows)
    failed = [f"{n} {p or ''}" for n, p, ok in outcomes if not ok]
    print(f"\n{sum(r['status'] == 'built' for r in rows)}/{len(rows)} compiled binaries in "
          f"{time.monotonic() - started:.0f}s; artifacts under {config.storage_root}; "
          "see them in the UI with `make ui`.")
    if failed:
        print("failed runs: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
