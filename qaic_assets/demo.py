"""The main job behind `make demo`: materialize the whole matrix in the local Dagster instance.

Runs: observe `qaic_sdk`; `source_models`; one calibration run per model over the range of its batch
partitions; one compile run per model and batch over the range of its targets (a run's cost once for all of them; a
model's failure fails its own runs only). Two runs go at once (as many as the `qaic_compile` pool allows), each
in a run worker process of its own (forked from this one, which has imported dagster and the
definitions already) that executes its steps one after another (Dagster's in-process executor): a
run starts as soon as the runs it depends on have finished, so a core is never left waiting for
another run's slowest step (docs/BENCHMARKS.md). Every run is recorded in the instance, so
the UI (`make ui`) shows the same materializations afterwards. Ends with a table of what was built.

Quiet and alive: a step found up to date before its run is launched (orchestration/up_to_date.py) is not run
at all; the others are followed from the event log (orchestration/progress.py: a live display on a terminal,
one line per step otherwise). Dagster's own console output (the step processes' DEBUG lines,
tracebacks) goes to a log file named at the end; a failed step's message is printed in its line.

What Dagster does here and what the demo keeps for itself. Dagster runs every step (its jobs, the
in-process executor, the `qaic_compile` pool that bounds compilers across runs), records every run and
event, and owns partitions, data versions and checks. A Dagster backfill with its run queue would also
order and launch the runs, but both need the daemon, and its run launcher starts each run in a fresh
process that imports the code location again (seconds per run, docs/BENCHMARKS.md); `make demo` runs
with no daemon. So the demo keeps only what those do not give: launching each run as soon as the runs
it needs are done, on run workers forked from this process; deciding before launch that a run has
nothing to do (a backfill would launch it and let the build hit its cache); and one line or a live
display per step.

Faults (docs/RELIABILITY.md). The instance is opened under a lock (orchestration/instance.py); one that
cannot be written (disk full, read-only) ends the demo with one message naming DAGSTER_HOME, the
traceback in the log. The run workers die with the demo; SIGTERM and Ctrl-C cancel the demo's runs
and stop the workers (and so their compilers); a run left unfinished by a demo that is gone is failed
by the next one.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from qaic_assets.builder.process import TERM_GRACE_S, die_with_parent
from qaic_assets.orchestration.executor import execution_run_config
from qaic_assets.orchestration.lineage import latest_by_partition
from qaic_assets.orchestration.instance import instance_lock, open_instance, storage_error, storage_error_message
from qaic_assets.orchestration.up_to_date import UpToDate, Step
from qaic_assets.orchestration.keys import (ACCURACY_CHECK_NAME, DEMO_TAG, POOL, SDK_KEY, TAG_PREFIX, binary_key,
                                           profile_key, source_key)
from qaic_assets.orchestration.progress import FAILED, NOT_RUN, UP_TO_DATE, PlainProgress, RunFollower, progress_for
from qaic_assets.settings import Settings, load_settings



#: How a process of the demo's runs starts (env QAIC_ASSETS_START_METHOD overrides): a run worker,
#: and a step's process under the multiprocess executor. `forkserver` forks each from one server
#: process per demo that has already imported dagster and built the definitions (PRELOAD); `spawn`
#: starts a fresh interpreter that imports them again, seconds per process (docs/BENCHMARKS.md). Run workers are forked from the demo process itself when it has no
#: other thread yet (worker_start_method).
START_METHOD_ENV = "QAIC_ASSETS_START_METHOD"
DEFAULT_START_METHOD = "forkserver"
PRELOAD = ["dagster", "qaic_assets.definitions"]


def start_method(choice: str | None = None) -> str:
    method = choice or os.environ.get(START_METHOD_ENV) or DEFAULT_START_METHOD
    return method if method in multiprocessing.get_all_start_methods() else "spawn"


def worker_start_method(choice: str | None = None) -> str:
    """How the run workers start: `fork` of this process while it is the only thread (it has imported
    dagster and the definitions already, so a worker is ready at once instead of after the
    forkserver's preload, and no other thread can hold a lock the copy would inherit
    locked), on Linux; else start_method(). An explicit choice (argument, env) wins."""
    if choice or os.environ.get(START_METHOD_ENV):
        return start_method(choice)
    single = threading.active_count() == 1
    return "fork" if single and sys.platform.startswith("linux") else start_method()  # macOS: fork is unsafe


def demo_log(config: Settings) -> Path:
    """Dagster's console output during a demo, under the storage root: never in $DAGSTER_HOME/logs,
    which is Dagster's telemetry queue (a webserver start moves what it finds there to .logs_queue,
    to be uploaded and deleted)."""
    return Path(config.storage_root) / "logs" / "demo.log"


def dagster_home() -> str:
    """The instance's directory: DagsterInstance.get() opens $DAGSTER_HOME (the Makefile sets it)."""
    return os.path.abspath(os.environ["DAGSTER_HOME"])


def run_config(max_concurrent: int = 2, method: str | None = None, *, in_process: bool = False) -> dict:
    """Run config of a demo run: the deployment's execution config (orchestration/executor.execution_run_config), with
    the step start method set when it is the multiprocess executor, or Dagster's in-process executor
    when `in_process` (and the deployment's executor is the default one); console logs at WARNING."""
    config = execution_run_config(max_concurrent)
    multiprocess = config.get("execution", {}).get("config", {}).get("multiprocess")
    if multiprocess is not None and in_process:
        config = {"execution": {"config": {"in_process": {}}}}
    elif multiprocess is not None:
        method = start_method(method)
        multiprocess["start_method"] = {method: {"preload_modules": PRELOAD} if method == "forkserver" else {}}
    return {**config, "loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def job_for(name: str) -> dg.JobDefinition:
    """Reconstructor for step subprocesses: the named job of the project's definitions."""
    from qaic_assets.definitions import defs

    return defs.resolve_job_def(name)


def run_job(instance: dg.DagsterInstance, name: str, partition: str | tuple[str, str] | None = None,
            max_concurrent: int = 2, method: str | None = None, *, tags: dict | None = None,
            asset_selection: list[dg.AssetKey] | None = None, in_process: bool = False) -> dg.ExecuteJobResult:
    """One run of the named job over `partition` (a key, or the (first, last) keys of a range), to its
    end. The result is not opened as a context manager: that would initialise the run's resources
    again to load outputs (two more event writes per run), and the demo reads only `success` and the
    event log."""
    from qaic_assets.orchestration.jobs import partition_run_tags, range_run_tags

    where = range_run_tags(*partition) if isinstance(partition, tuple) else partition_run_tags(partition)
    tags = {**(tags or {}), **where}
    job = dg.build_reconstructable_job(__name__, "job_for", reconstructable_args=(name,))
    config = run_config(max_concurrent, method, in_process=in_process)
    return dg.execute_job(job, instance=instance, run_config=config, tags=tags, asset_selection=asset_selection)


#: On each demo run, "<host> <demo pid> <run worker pid>": a run left unfinished when both processes
#: are gone is failed by the next demo on that host (fail_orphaned_runs).
PROCESSES_TAG = TAG_PREFIX + "demo_processes"

_WORKER_INSTANCE: dg.DagsterInstance | None = None


def _alive(pid: int) -> bool:
    """pid runs (a zombie, dead but not reaped yet, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:  # gone, or no /proc (not Linux)
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


#: How often a run worker not forked from the demo checks that the demo still runs.
WATCH_DEMO_S = 0.5


def _watch_demo(demo_pid: int) -> None:
    while _alive(demo_pid):
        time.sleep(WATCH_DEMO_S)
    os.kill(os.getpid(), signal.SIGKILL)  # as PR_SET_PDEATHSIG would; its compilers die by theirs


def _start_worker(home: str, demo_pid: int) -> None:
    """A run worker dies with the demo. Forked from it: SIGKILL when it dies (builder/process.py's
    PR_SET_PDEATHSIG helper). From the forkserver, its parent, that is not enough: the forkserver
    lives until its last child has exited; so a thread watches the demo's pid. Its own process
    group: a Ctrl-C on the terminal reaches the demo only, which cancels the runs before it stops
    the workers (a worker interrupted first would record its run as failed). The demo's signal
    handlers, copied by a fork, are reset. It opens the demo's instance once (DAGSTER_HOME)."""
    global _WORKER_INSTANCE
    die_with_parent(os.getppid())()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setpgrp()
    if os.getppid() != demo_pid:  # the forkserver's child, or the demo died before PR_SET_PDEATHSIG was set
        threading.Thread(target=_watch_demo, args=(demo_pid,), daemon=True).start()
    os.environ["DAGSTER_HOME"] = home
    _WORKER_INSTANCE = dg.DagsterInstance.get()


def _worker_ready() -> int:
    return os.getpid()


def _worker_run(job: str, partitions: list, tokens: list[str], keys: list[list[str]], demo_pid: int) -> bool:
    """A planned demo run in a run worker: a Dagster run per partition or range of `partitions` (its
    token in `tokens`), one after another, each run's steps one after another in this process."""
    ok = True
    for partition, token in zip(partitions, tokens):
        tags = {DEMO_TAG: token, PROCESSES_TAG: f"{socket.gethostname()} {demo_pid} {os.getpid()}"}
        result = run_job(_WORKER_INSTANCE, job, partition, tags=tags, asset_selection=[dg.AssetKey(k) for k in keys],
                         in_process=True)
        ok = ok and result.success
    return ok


@dataclass
class PlannedRun:
    """A run of `job` over `partition` (None: unpartitioned), or over the range of `steps`' partitions,
    in their order, when `ranged` (a calibration run: a model's batches; a compile run: a model's
    batch, every target of it)."""

    job: str
    partition: str | None
    steps: list[Step] = field(default_factory=list)
    after: tuple[int, ...] = ()  # indexes of the runs that must have finished before this one starts
    ranged: bool = False

    @property
    def label(self) -> str:
        models = sorted({s.model for s in self.steps if s.model})
        where = f"{self.steps[0].partition}...{self.steps[-1].partition}" if self.ranged else self.partition or ""
        return f"{self.job} {where}".strip() + (f" ({models[0]})" if len(models) == 1 and where else "")


def plan_runs(config: Settings) -> list[PlannedRun]:
    """Every run of the default matrix, in dependency order, with the asset partitions each makes and
    the runs each waits for. Per model (a model's failure fails its own runs only, the other models'
    runs succeed), of the model's jobs: one calibration run over the model's batches, waiting for the
    SDK observation and the sources; one compile run per batch, over the range of that batch's targets
    (one run's cost for many partitions, docs/BENCHMARKS.md), waiting also for the calibration run."""
    from qaic_assets.orchestration.jobs import OBSERVE_JOB, SOURCES_JOB, matrix_jobs

    runs = [PlannedRun(OBSERVE_JOB, None, [Step(SDK_KEY)]),
            PlannedRun(SOURCES_JOB, None, [Step(source_key(m), m) for m in config.model_names])]
    first = (0, 1)
    groups: dict[tuple[str, str], list[str]] = {}
    for model, jobs in matrix_jobs(config).items():
        groups.setdefault(jobs, []).append(model)
    for (calib_job, compile_job), models in groups.items():
        matrix = config.matrix_of(models[0])
        for m in models:
            calibration: tuple[int, ...] = ()
            if config.model(m).calibrates:  # one run over the model's batches
                calibration = (len(runs),)
                steps = [Step(profile_key(m), m, b) for b in matrix.batch_keys]
                runs.append(PlannedRun(calib_job, steps[0].partition if len(steps) == 1 else None, steps, first,
                                       ranged=len(steps) > 1))
            for b in matrix.batch_keys:
                after = (*first, *calibration)
                steps = [Step(binary_key(m), m, f"{b}|{t}") for t in matrix.targets]  # the partitions' order
                runs.append(PlannedRun(compile_job, steps[0].partition if len(steps) == 1 else None, steps, after,
                                       ranged=len(steps) > 1))
    return runs


def step_label(step: Step) -> str:
    what = "/".join(step.key.path)
    return f"{what} {step.partition}" if step.partition else what


def _labels(defs: dg.Definitions, steps: list[Step], ranged: bool) -> dict:
    """What a run's follower reports: Dagster's step key of each asset (its op name, as the event log
    names it) -> the step's label, or, in a range run, -> {partition: label}."""
    graph = defs.resolve_asset_graph()
    labels: dict = {}
    for s in steps:
        name = graph.get(s.key).assets_def.node_def.name
        if ranged:
            labels.setdefault(name, {})[s.partition] = step_label(s)
        else:
            labels[name] = step_label(s)
    return labels


def stretches(run: PlannedRun, stale: list[Step]) -> list[tuple[str | tuple[str, str] | None, list[Step]]]:
    """The Dagster runs that make a planned run's stale steps, each with its steps: the run itself; in
    a range run, a run per stretch of consecutive stale partitions (a partition, or its (first, last)
    keys), so that no run records again what is up to date."""
    if not run.ranged:
        return [(run.partition, stale)]
    out, current = [], []
    for step in run.steps + [None]:
        if step is not None and step in stale:
            current.append(step)
        elif current:
            first, last = current[0].partition, current[-1].partition
            out.append((first if len(current) == 1 else (first, last), current))
            current = []
    return out


#: Runs going at once at most, each in a run worker process (Dagster sets a run's logging up
#: process-wide, so runs cannot share a process), each worker one step at a time.
RUN_WORKERS = 2


def run_workers_for(instance: dg.DagsterInstance, most: int = RUN_WORKERS) -> int:
    """As many run workers as the `qaic_compile` pool lets compilers run (its limit set in the
    instance, else dagster.yaml's default), at most `most`: then the demo never holds more compile
    steps than the pool allows, even when two workers claim a slot at the same instant (Dagster's
    SQLite storage can grant both)."""
    # non-public: no public API reads a pool's limit (tests/test_layers.py NON_PUBLIC)
    limits = {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()}
    limit = limits.get(POOL, instance.global_op_concurrency_default_limit)
    return most if limit is None else max(1, min(most, int(limit)))


def _run_workers(instance: dg.DagsterInstance, workers: int, method: str | None) -> ProcessPoolExecutor:
    """The run worker processes, started now: forked here and now (worker_start_method), or from a
    thread, as a forkserver's workers wait for its preload while this process goes on."""
    mp_context = multiprocessing.get_context(worker_start_method(method))
    if mp_context.get_start_method() == "forkserver":
        mp_context.set_forkserver_preload(PRELOAD)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp_context, initializer=_start_worker,
                               initargs=(dagster_home(), os.getpid()))
    print(f"run workers: {workers}, started by {mp_context.get_start_method()}", file=sys.stderr, flush=True)
    if mp_context.get_start_method() == "fork":
        sys.stdout.flush()  # else a worker would print this process's buffered output again
        for _ in range(workers):  # the pool forks all its workers at the first submit, before its threads
            pool.submit(_worker_ready)
    else:
        threading.Thread(target=lambda: [pool.submit(_worker_ready) for _ in range(workers)], daemon=True).start()
    return pool


def _demo_runs(instance: dg.DagsterInstance, tokens: list[str]) -> list[dg.DagsterRun]:
    if not tokens:
        return []
    return [r.dagster_run for r in instance.get_run_records(filters=dg.RunsFilter(tags={DEMO_TAG: tokens}))]


def _fail_lost_run(instance: dg.DagsterInstance, token: str, why: str) -> None:
    """A run whose worker died (killed, out of memory) is recorded as failed, not left STARTED."""
    for run in _demo_runs(instance, [token]):
        if not run.is_finished:
            instance.report_run_failed(run, message=why)  # non-public: tests/test_layers.py


_UNFINISHED = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
               dg.DagsterRunStatus.CANCELING]


def _orphaned(run: dg.DagsterRun) -> bool:
    """A demo run of this host whose demo and run worker have both ended."""
    host, *pids = run.tags.get(PROCESSES_TAG, "").split() or [""]
    return host == socket.gethostname() and not any(_alive(int(pid)) for pid in pids)


def fail_orphaned_runs(instance: dg.DagsterInstance) -> int:
    """A demo run left unfinished by a demo that is gone (killed, or it could not write the run's end:
    a full disk) is marked failed (canceled, if it was being canceled): decided by whether its
    processes still run, not by its age. Under the instance lock: two demos starting at once do not
    both mark it. Returns how many."""
    with instance_lock():
        orphans = [r.dagster_run for r in instance.get_run_records(filters=dg.RunsFilter(statuses=_UNFINISHED))
                   if _orphaned(r.dagster_run)]
        for run in orphans:
            why = (f"its demo and run worker ({run.tags[PROCESSES_TAG]}: host, pids) ended without recording its "
                   "end (killed, or DAGSTER_HOME was full); marked by the next demo")
            if run.status == dg.DagsterRunStatus.CANCELING:
                instance.report_run_canceled(run, message=why)  # non-public: tests/test_layers.py
            else:
                instance.report_run_failed(run, message=why)
    return len(orphans)


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached the demo; `canceled`: how many of its runs ended CANCELED."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum, self.canceled = signum, 0


def _interrupted(signum: int, frame) -> None:
    """The demo's SIGINT and SIGTERM handler. Later signals are ignored: the cleanup is bounded."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


def _stop_workers(pool: ProcessPoolExecutor, grace_s: float) -> None:
    """SIGTERM every run worker (Dagster interrupts a running step; builder/process.py then stops its
    compiler's process group, and a worker outside a run dies), SIGKILL after `grace_s`."""
    pool.shutdown(wait=False, cancel_futures=True)
    workers = multiprocessing.active_children()  # the run workers: the demo starts no other process
    for worker in workers:
        worker.terminate()
    deadline = time.monotonic() + grace_s
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            worker.kill()
            worker.join(5)


def _cancel_runs(instance: dg.DagsterInstance, tokens: list[str], pool: ProcessPoolExecutor | None,
                 signum: int) -> int:
    """The demo's unfinished runs are marked CANCELING, its workers stopped (Dagster ends a run that
    is CANCELING as CANCELED), and a run still unfinished then (its worker killed, or it had not
    started) is marked CANCELED. Returns how many of the runs are CANCELED."""
    why = f"the demo was interrupted ({signal.Signals(signum).name})"
    for run in _demo_runs(instance, tokens):
        if not run.is_finished:
            instance.report_run_canceling(run, message=why)  # non-public: tests/test_layers.py
    if pool is not None:
        _stop_workers(pool, TERM_GRACE_S + 10)
    runs = _demo_runs(instance, tokens)
    for run in runs:
        if not run.is_finished:
            instance.report_run_canceled(run, message=why)
    return sum(not run.is_finished or run.status == dg.DagsterRunStatus.CANCELED for run in runs)


def materialize_matrix(config: Settings, instance: dg.DagsterInstance, method: str | None = None,
                       progress: PlainProgress | None = None, workers: int | None = None,
                       unchanged: dict | None = None) -> list[tuple[str, str | None, bool]]:
    """Every run of the default matrix, on `workers` run worker processes (default:
    run_workers_for(instance)): a run is launched once the runs it depends on have finished (a
    failed one included: its dependents then say what is missing). Whether a run's steps are up to
    date is decided just before it would launch; a run with nothing to do is not launched (success, no
    run). Returns (job, partition, success) in plan order. `method`: how the workers start (default:
    worker_start_method()). `unchanged`, when given, receives the latest records the decisions read of
    each asset no run of this call made (asset key -> partition -> record): still the latest."""
    from qaic_assets.definitions import defs

    runs = plan_runs(config)
    workers = workers or run_workers_for(instance)
    graph = defs.resolve_asset_graph()
    up_to_date = UpToDate(config, instance, {s.key: graph.get(s.key).code_version for r in runs for s in r.steps})
    progress = progress or PlainProgress(len(runs), sum(len(r.steps) for r in runs))
    outcomes: dict[int, bool] = {}
    launched: set[int] = set()  # the runs launched (not found up to date)
    going: dict[Future, tuple[int, list[str], list[RunFollower]]] = {}
    pool: ProcessPoolExecutor | None = None

    def run_workers() -> ProcessPoolExecutor:
        """The run workers, started with the first run to launch (none when all is up to date)."""
        nonlocal pool
        if pool is None:
            pool = _run_workers(instance, workers, method)
        return pool

    def launch(i: int) -> None:
        run = runs[i]
        stale = [s for s in run.steps if not up_to_date.up_to_date(s)]
        for s in run.steps:
            if s not in stale:
                progress.step_done(step_label(s), UP_TO_DATE)
        if not stale:
            progress.run_done()
            outcomes[i] = True
            return
        launched.add(i)
        workers_now = run_workers()  # before the followers' threads: then the workers can be forked
        parts = stretches(run, stale)
        tokens = [uuid.uuid4().hex for _ in parts]
        followers = [RunFollower(instance, (DEMO_TAG, token), _labels(defs, steps, isinstance(part, tuple)),
                                 progress).__enter__() for token, (part, steps) in zip(tokens, parts)]
        future = workers_now.submit(_worker_run, run.job, [part for part, _ in parts], tokens,
                                    sorted({tuple(s.key.path) for s in stale}), os.getpid())
        going[future] = (i, tokens, followers)

    try:
        while len(outcomes) < len(runs):
            started = {i for i, _, _ in going.values()}
            for i, run in enumerate(runs):
                if i not in outcomes and i not in started and all(j in outcomes for j in run.after):
                    launch(i)
            if not going:
                continue
            finished, _ = wait(going, return_when=FIRST_COMPLETED)
            for future in finished:
                if future not in going:  # relaunched after its pool broke (below)
                    continue
                i, tokens, followers = going.pop(future)
                try:
                    outcomes[i] = future.result()
                except BrokenProcessPool as exc:  # the worker died mid-run: a new pool for the rest
                    for token in tokens:
                        _fail_lost_run(instance, token, f"the demo's run worker died: {exc}")
                    outcomes[i] = False
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = None
                    for other in list(going):  # the other runs of the broken pool go again
                        j, other_tokens, other_followers = going.pop(other)
                        for token, follower in zip(other_tokens, other_followers):
                            _fail_lost_run(instance, token, "the demo's other run worker died; run again")
                            follower.__exit__(None, None, None)
                        launch(j)
                for follower in followers:
                    follower.__exit__(None, None, None)
                progress.run_done()
    except Interrupted as stop:
        stop.canceled = _cancel_runs(instance, [t for _, tokens, _ in going.values() for t in tokens], pool, stop.signum)
        for _, _, followers in going.values():
            for follower in followers:
                follower.close(note="the run was canceled")
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if unchanged is not None:
        made = {s.key for i in launched for s in runs[i].steps}
        unchanged.update({s.key: up_to_date.latest_records(s.key) for r in runs for s in r.steps
                          if s.key not in made and up_to_date.latest_records(s.key) is not None})
    return [(run.job, run.partition, outcomes[i]) for i, run in enumerate(runs)]


def built_table(config: Settings, instance: dg.DagsterInstance, steps: dict[str, str] | None = None,
                known: dict | None = None) -> list[dict]:
    """The latest materialization of every compiled partition, read back from the instance (or from
    `known`, asset key -> partition -> record, where the demo read them and nothing changed since).
    A binary whose step this demo ran and did not build (`steps`: step label -> progress status) is
    "failed", even when an older build of it is stored."""
    rows = []
    for model in config.model_names:
        key = binary_key(model)
        matrix = config.matrix_of(model)
        latest = (known or {}).get(key)
        if latest is None:
            latest = latest_by_partition(instance, key, [p.key for p in matrix.binary_partitions])  # a few queries
        for p in matrix.binary_partitions:
            partition = p.key
            record = latest.get(partition)
            if (steps or {}).get(step_label(Step(key, model, partition))) in (FAILED, NOT_RUN):
                rows.append({"model": model, "partition": partition, "status": "failed",
                             "note": "an older build is kept" if record else ""})
                continue
            if record is None:
                rows.append({"model": model, "partition": partition, "status": "missing"})
                continue
            meta = record.asset_materialization.metadata
            same = meta.get("same_build_as")
            rows.append({
                "model": model, "partition": partition, "status": "built",
                "size_mb": meta["size_bytes"].value / 2**20,
                "compile_s": meta["duration_s"].value,
                "sha256": meta["sha256"].value[:12],
                "backend": meta["backend"].value,
                "check": meta[ACCURACY_CHECK_NAME].value if ACCURACY_CHECK_NAME in meta else "-",
                "note": f"same build as {same.value}" if same else "",
            })
    return rows


def print_table(rows: list[dict], out=None) -> None:
    out = out or sys.stdout
    print(f"\n{'model':<10} {'partition':<22} {'backend':<7} {'size MB':>8} {'compile s':>9} "
          f"{'sha256':<12}  {'check':<9} note", file=out)
    for r in rows:
        if r["status"] != "built":
            print(f"{r['model']:<10} {r['partition']:<22} {r['status']} {r.get('note', '')}".rstrip(), file=out)
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


def _demo(config: Settings, log: Path, started: float) -> int:
    with open_instance() as instance:
        runs = plan_runs(config)
        orphans = fail_orphaned_runs(instance)
        if orphans:
            print(f"{orphans} run(s) left unfinished by an earlier demo that is gone: marked failed", flush=True)
        print(f"materializing {sum(len(r.steps) for r in runs)} steps in {len(runs)} runs "
              f"(steps already up to date launch no run); Dagster's own log: {log}", flush=True)
        unchanged: dict = {}
        with dagster_output_to(log), progress_for(len(runs), sum(len(r.steps) for r in runs)) as progress:
            outcomes = materialize_matrix(config, instance, progress=progress, unchanged=unchanged)
        rows = built_table(config, instance, progress.statuses, known=unchanged)
    print_table(rows)
    failed = [run.label for run, (_, _, ok) in zip(runs, outcomes) if not ok]
    built = [r for r in rows if r["status"] == "built"]
    not_built = [f"{r['model']} {r['partition']}" for r in rows if r["status"] == "failed"]
    shared = sum(bool(r.get("note")) for r in built)
    kept = sum(progress.statuses.get(step_label(Step(binary_key(r["model"]), r["model"], r["partition"]))) == UP_TO_DATE
               for r in built)  # built by an earlier demo or run, not now
    print(f"\n{len(built)}/{len(rows)} compiled binaries built"
          + (f", {len(not_built)} failed: {', '.join(not_built)}" if not_built else "")
          + (f" ({shared} shared with an identical CPU build)" if shared else "")
          + f" in {time.monotonic() - started:.1f}s"
          + (f" ({kept} of the {len(built)} were up to date already: not built again)" if kept else "")
          + f"; artifacts under {config.storage_root}; "
          "see them in the UI with `make ui`.")
    if failed:
        print(f"failed runs: {', '.join(failed)} (details in {log}, and in the UI)")
        return 1
    return 0


def _log_traceback(log: Path) -> None:
    """The full error, for whoever reads the log after the one-line message (best effort: the disk
    may be the full one)."""
    with contextlib.suppress(OSError):
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(traceback.format_exc())


def main() -> int:
    """The demo; SIGINT and SIGTERM cancel its runs (exit 130, 143), an instance that cannot be
    written ends it with one message (exit 1): no traceback on the terminal in either case."""
    config = load_settings()
    log = demo_log(config)
    previous = {sig: signal.signal(sig, _interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _demo(config, log, time.monotonic())
    except Interrupted as stop:
        print(f"interrupted ({signal.Signals(stop.signum).name}): {stop.canceled} runs canceled; what was built "
              "is kept; run `make demo` again to continue", file=sys.stderr, flush=True)
        return 128 + stop.signum
    except Exception as exc:
        reason = storage_error(exc)
        if reason is None:
            raise
        _log_traceback(log)
        print(f"make demo: {storage_error_message(reason)}; the full error is in {log}", file=sys.stderr, flush=True)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
