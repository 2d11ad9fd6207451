"""The main job behind `make demo`: materialize the whole matrix in the local Dagster instance.

Runs, in order: observe `qaic_sdk`; `source_models`; one calibration run per batch partition; one
compile run per (batch, target) partition. Each run executes its steps in parallel (multiprocess
executor) within the `qaic_compile` pool, and is recorded in the instance, so the UI
(`make ui`) shows the same materializations afterwards. Ends with a table of what was built.

Quiet and alive: a step found up to date before its run is launched (defs/freshness.py) is not run
at all; the others are followed from the event log (defs/progress.py: a live display on a terminal,
one line per step otherwise). Dagster's own console output (the step processes' DEBUG lines,
tracebacks) goes to a log file named at the end; a failed step's message is printed in its line.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from qaic_assets.defs.executor import execution_run_config
from qaic_assets.defs.freshness import Freshness, Step
from qaic_assets.defs.keys import ACCURACY_CHECK_NAME, SDK_KEY, binary_key, profile_key, source_key
from qaic_assets.defs.progress import UP_TO_DATE, PlainProgress, RunFollower, progress_for
from qaic_assets.settings import Settings, load_settings

DEMO_TAG = "qaic_assets/demo_run"


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
            max_concurrent: int = 2, method: str | None = None, *, tags: dict | None = None,
            asset_selection: list[dg.AssetKey] | None = None) -> dg.ExecuteJobResult:
    from qaic_assets.defs.jobs import partition_run_tags

    tags = {**(tags or {}), **partition_run_tags(partition)}
    job = dg.build_reconstructable_job(__name__, "job_for", reconstructable_args=(name,))
    config = run_config(max_concurrent, method, instance)
    with dg.execute_job(job, instance=instance, run_config=config, tags=tags, asset_selection=asset_selection) as result:
        return result


@dataclass
class PlannedRun:
    job: str
    partition: str | None
    steps: list[Step] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.job} {self.partition or ''}".strip()


def plan_runs(config: Settings) -> list[PlannedRun]:
    """Every run of the default matrix, in dependency order, with the asset partitions each makes."""
    from qaic_assets.defs.jobs import OBSERVE_JOB, SOURCES_JOB, matrix_jobs

    runs = [PlannedRun(OBSERVE_JOB, None, [Step(SDK_KEY)]),
            PlannedRun(SOURCES_JOB, None, [Step(source_key(m), m) for m in config.model_names])]
    groups: dict[tuple[str, str], list[str]] = {}
    for model, jobs in matrix_jobs(config).items():
        groups.setdefault(jobs, []).append(model)
    for (calib_job, compile_job), models in groups.items():
        matrix = config.matrix_of(models[0])
        quantized = [m for m in models if config.model(m).quantize]
        if quantized:
            runs += [PlannedRun(calib_job, b, [Step(profile_key(m), m, b) for m in quantized])
                     for b in matrix.batch_keys]
        runs += [PlannedRun(compile_job, f"{b}|{t}", [Step(binary_key(m), m, f"{b}|{t}") for m in models])
                 for b in matrix.batch_keys for t in matrix.targets]
    return runs


def step_label(step: Step) -> str:
    what = "/".join(step.key.path)
    return f"{what} {step.partition}" if step.partition else what


def _step_keys(defs: dg.Definitions, steps: list[Step]) -> dict[str, Step]:
    """Dagster's step key of each asset (its op name), as the event log names it."""
    graph = defs.resolve_asset_graph()
    return {graph.get(s.key).assets_def.node_def.name: s for s in steps}


def materialize_matrix(config: Settings, instance: dg.DagsterInstance, method: str | None = None,
                       progress: PlainProgress | None = None) -> list[tuple[str, str | None, bool]]:
    """Every run of the default matrix, in dependency order; returns (job, partition, success).
    A run whose steps are all up to date is not launched (success, no run); `method`: the step start
    method (default: start_method())."""
    from qaic_assets.definitions import defs

    runs = plan_runs(config)
    graph = defs.resolve_asset_graph()
    freshness = Freshness(config, instance, {s.key: graph.get(s.key).code_version for r in runs for s in r.steps})
    progress = progress or PlainProgress(len(runs), sum(len(r.steps) for r in runs))
    outcomes = []
    for run in runs:
        stale = [s for s in run.steps if not freshness.up_to_date(s)]
        for s in run.steps:
            if s not in stale:
                progress.step_done(step_label(s), UP_TO_DATE)
        if not stale:
            progress.run_done()
            outcomes.append((run.job, run.partition, True))
            continue
        token = uuid.uuid4().hex
        labels = {key: step_label(s) for key, s in _step_keys(defs, stale).items()}
        with RunFollower(instance, (DEMO_TAG, token), labels, progress):
            result = run_job(instance, run.job, run.partition, method=method, tags={DEMO_TAG: token},
                             asset_selection=[s.key for s in stale])
        progress.run_done()
        outcomes.append((run.job, run.partition, result.success))
    return outcomes


def _latest_checks(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, str]:
    """Partition -> status of its latest accuracy check (the check is per partition)."""
    check_key = dg.AssetCheckKey(key, ACCURACY_CHECK_NAME)
    latest: dict[str, str] = {}
    for record in instance.event_log_storage.get_asset_check_execution_history(check_key, limit=500):
        if record.partition is not None:
            latest.setdefault(record.partition, record.status.value)  # newest first
    return latest


def built_table(config: Settings, instance: dg.DagsterInstance) -> list[dict]:
    """The latest materialization of every compiled partition, read back from the instance."""
    rows = []
    for model in config.model_names:
        key = binary_key(model)
        checks = _latest_checks(instance, key)
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
                same = meta.get("same_build_as")
                rows.append({
                    "model": model, "partition": partition, "status": "built",
                    "size_mb": meta["size_bytes"].value / 2**20,
                    "compile_s": meta["duration_s"].value,
                    "sha256": meta["sha256"].value[:12],
                    "backend": meta["backend"].value,
                    "check": checks.get(partition, "-"),
                    "note": f"same build as {same.value}" if same else "",
                })
    return rows


def print_table(rows: list[dict], out=None) -> None:
    out = out or sys.stdout
    print(f"\n{'model':<10} {'partition':<22} {'backend':<7} {'size MB':>8} {'compile s':>9} "
          f"{'sha256':<12}  {'check':<9} note", file=out)
    for r in rows:
        if r["status"] != "built":
            print(f"{r['model']:<10} {r['partition']:<22} {'missing'}", file=out)
            continue
        print(f"{r['model']:<10} {r['partition']:<22} {r['backend']:<7} {r['size_mb']:>8.2f} "
              f"{r['compile_s']:>9.2f} {r['sha256']:<12}  {r['check']:<9} {r['note']}".rstrip(), file=out)


@contextlib.contextmanager
def dagster_output_to(log: Path):
    """Send this process's stderr, and so the step processes' (they inherit it), to `log`: Dagster's
    console lines and tracebacks are kept there, not shown over the progress display."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log, "ab") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def main() -> int:
    config = load_settings()
    started = time.monotonic()
    with dg.DagsterInstance.get() as instance:
        log = Path(instance.root_directory) / "logs" / "demo.log"
        runs = plan_runs(config)
        print(f"materializing {sum(len(r.steps) for r in runs)} steps in {len(runs)} runs "
              f"(steps already up to date launch no run); Dagster's own log: {log}", flush=True)
        with dagster_output_to(log), progress_for(len(runs), sum(len(r.steps) for r in runs)) as progress:
            outcomes = materialize_matrix(config, instance, progress=progress)
        rows = built_table(config, instance)
    print_table(rows)
    failed = [f"{n} {p or ''}".strip() for n, p, ok in outcomes if not ok]
    shared = sum(bool(r.get("note")) for r in rows)
    print(f"\n{sum(r['status'] == 'built' for r in rows)}/{len(rows)} compiled binaries"
          + (f" ({shared} shared with an identical CPU build)" if shared else "")
          + f" in {time.monotonic() - started:.1f}s; artifacts under {config.storage_root}; "
          "see them in the UI with `make ui`.")
    if failed:
        print(f"failed runs: {', '.join(failed)} (details in {log}, and in the UI)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
