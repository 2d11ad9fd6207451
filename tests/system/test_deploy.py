"""Deployment (issue 8): a Postgres-backed instance and compile steps spread over two dagster-celery
workers, with real servers: PostgreSQL and Redis (Debian packages), each bound to 127.0.0.1 on a
free port, and two `dagster-celery worker start -A qaic_assets.orchestration.executor` processes.

Opt-in: runs only with QAIC_TEST_DEPLOY=1 (`make test-deploy`, which also installs the `deploy`
extras), so `make test` never needs the servers, the extras or apt. When asked for, the servers are
installed with apt-get if missing (needs root); when that is impossible the test is skipped and the
reason says why.

The runs are the project's own jobs (`qaic_assets.demo.job_for` -> `qaic_assets.definitions.defs`)
with `QAIC_ASSETS_EXECUTOR=celery`, so the executor and the queue tags are the ones production
uses. Each run is orchestrated by a separate process, as the daemon's run launcher would do.
The two workers stand for two compile hosts: when `unshare --uts` is available each gets a host
name of its own (qaic-host-a, qaic-host-b), else they are told apart by process id.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from qaic_assets.orchestration.metadata import resolve

pytestmark = [
    pytest.mark.deploy,
    pytest.mark.skipif(
        os.environ.get("QAIC_TEST_DEPLOY") != "1",
        reason="deployment test (PostgreSQL + Redis + 2 celery workers): opt-in, run `make test-deploy` "
        "or set QAIC_TEST_DEPLOY=1",
    ),
]

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "qaic_assets"
DEPLOY_YAML = REPO / "deploy" / "dagster.yaml"
BIN = Path(sys.executable).parent
MODELS = ("digits", "digits-b")  # two models -> two compile steps per partition run, one per worker
CALIB_JOB, COMPILE_JOB = "calibration_profiles", "compiled_binaries"
KILL_PARTITION = "bs8|offline-nsp14"
HOSTS = {"a": "qaic-host-a", "b": "qaic-host-b"}

# The orchestrator of one or more runs, in a process of its own (as the run launcher would start
# it). argv[1]: JSON list of {"job", "partition", "from_failure", "force_ops"}; prints one JSON line per
# run. `force_ops`: ops run with `force: true` (no cache, no shared identical build: the compiler runs).
ORCHESTRATOR = r"""
import json, sys
import dagster as dg
from qaic_assets.orchestration.jobs import partition_run_tags as tags_for

with dg.DagsterInstance.get() as instance:
    for item in json.loads(sys.argv[1]):
        job = dg.build_reconstructable_job("qaic_assets.demo", "job_for", reconstructable_args=(item["job"],))
        reexecution = (dg.ReexecutionOptions.from_failure(item["from_failure"], instance)
                       if item.get("from_failure") else None)
        config = {"ops": {op: {"config": {"force": True}} for op in item.get("force_ops", [])}}
        with dg.execute_job(job, instance=instance, tags=tags_for(item.get("partition")),
                            run_config=None if reexecution else config, reexecution_options=reexecution) as result:
            print(json.dumps({**item, "run_id": result.run_id, "success": result.success}), flush=True)
"""

# Worker A's "slow compile host" hook: with the flag file present, a qaic-exec-cpu compile announces
# itself and sleeps, so the test can kill the worker while a compile of its own is in flight.
SLOW_HOOK = r"""
import os, sys, time
flag = os.environ.get("QAIC_TEST_SLOW_FLAG")
argv = getattr(sys, "orig_argv", sys.argv)
if (flag and os.path.exists(flag) and any(a.endswith("qaic-exec-cpu") for a in argv[:2])
        and any(a.startswith("-aic-binary-dir=") for a in argv)):
    open(flag + ".compiling", "w").write(str(os.getpid()))
    time.sleep(600)
"""


# ---------------------------------------------------------------------------------------- servers

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _ensure_servers() -> tuple[Path, str]:
    """initdb's bin dir and redis-server, installing the Debian packages when missing (root only)."""
    if _pg_bindir() is None or shutil.which("redis-server") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("PostgreSQL and Redis are not installed and cannot be installed here (needs root "
                        "and apt-get): apt-get install postgresql redis-server")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            for cmd in (["apt-get", "update", "-qq"],
                        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql", "redis-server"]):
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
                if done.returncode != 0:
                    pytest.skip(f"cannot install the servers: `{' '.join(cmd)}` failed: {done.stderr[-800:]}")
        except subprocess.TimeoutExpired as exc:
            pytest.skip(f"cannot install the servers: {exc}")
    bindir, redis = _pg_bindir(), shutil.which("redis-server")
    if bindir is None or redis is None:
        pytest.skip("postgresql / redis-server installed but initdb or redis-server not found")
    return bindir, redis


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the `postgres` user then."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *cmd]
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(cmd)]


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture(scope="module")
def servers():
    """A real PostgreSQL server and a real Redis server on 127.0.0.1, stopped at the end."""
    pytest.importorskip("dagster_celery", reason="install the deploy extras: pip install '.[deploy]'")
    pytest.importorskip("dagster_postgres", reason="install the deploy extras: pip install '.[deploy]'")
    pytest.importorskip("redis", reason="install the deploy extras: pip install '.[deploy]'")
    bindir, redis_server = _ensure_servers()
    root = Path(tempfile.mkdtemp(prefix="qaic-deploy-servers-"))
    os.chmod(root, 0o755)
    pgdata = root / "pgdata"
    pgdata.mkdir(mode=0o700)
    if os.geteuid() == 0:
        shutil.chown(pgdata, "postgres", "postgres")
    pg_port, redis_port = _free_port(), _free_port()
    stops = []
    try:
        subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(pgdata), "-U", "dagster",
                                     "--auth=trust", "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True, timeout=120)
        opts = (f"-c listen_addresses=127.0.0.1 -p {pg_port} -k {pgdata} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(pgdata), "-o", opts, "-w", "-t", "60",
                                     "-l", str(pgdata / "server.log"), "start"]),
                       check=True, capture_output=True, timeout=90)
        stops.append(lambda: subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "-w", "stop"]),
            capture_output=True, timeout=60))
        subprocess.run(_as_postgres([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(pg_port),
                                     "-U", "dagster", "dagster"]), check=True, capture_output=True, timeout=60)

        redis_log = open(root / "redis.log", "w")
        redis_proc = subprocess.Popen(
            [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(root)],
            stdout=redis_log, stderr=subprocess.STDOUT)
        stops.append(lambda: (redis_proc.terminate(), redis_proc.wait(10), redis_log.close()))

        def redis_up():
            try:
                with socket.create_connection(("127.0.0.1", redis_port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        _wait_for(redis_up, 30, "redis-server")
        yield {"pg_port": pg_port, "redis_url": f"redis://127.0.0.1:{redis_port}/0", "root": root}
    finally:
        for stop in reversed(stops):
            try:
                stop()
            except Exception:  # keep stopping the others
                pass
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------- workers

def _children(pid: int) -> list[int]:
    kids = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            kids += [int(x) for x in Path(task).read_text().split()]
        except OSError:
            pass
    return kids


def _tree(pid: int) -> set[int]:
    seen, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo += _children(p)
    return seen


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _signal_tree(pid: int, sig: int) -> dict[int, str | None]:
    """Signal a process and its descendants; returns them with their start times."""
    procs = {p: _start_time(p) for p in _tree(pid)}
    _signal_exact(procs, sig)
    return procs


def _signal_exact(procs: dict[int, str | None], sig: int) -> None:
    """Signal each process only if it is still the one seen (same start time: no reused pid)."""
    for p, started in procs.items():
        if started is not None and _start_time(p) == started:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass


def _environ(env: dict) -> pytest.MonkeyPatch:
    """`env` set in this process until `.undo()` (pytest restores what was there before)."""
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    return patch


def _stop_tree(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process and its descendants, wait `grace_s`, then SIGKILL whatever is left."""
    if proc.poll() is not None:
        return
    procs = _signal_tree(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    _signal_exact(procs | {p: _start_time(p) for p in _tree(proc.pid)}, signal.SIGKILL)
    proc.wait(15)


def _uts_namespaces() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--uts", "sh", "-c", "hostname qaic-probe && hostname"],
                           capture_output=True, text=True)
    return probe.returncode == 0 and probe.stdout.strip() == "qaic-probe"


class Worker:
    """One `dagster-celery worker start` process group: a compile host."""

    def __init__(self, name: str, queues: list[str], env: dict, log: Path, hostname: str | None):
        cmd = [str(BIN / "dagster-celery"), "worker", "start", "-A", "qaic_assets.orchestration.executor", "-n", name,
               # one comma-separated -q: dagster-celery turns repeated -q into repeated celery -Q,
               # of which celery keeps only the last
               "-l", "INFO", "-q", ",".join(queues),
               "--", "--concurrency=1", "--without-gossip", "--without-mingle"]
        if hostname:
            cmd = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *cmd]
        self.name, self.hostname, self.log = name, hostname, log
        self._log = open(log, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pids: set[int] = set()

    def wait_ready(self, timeout: float = 90) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited:\n{self.log.read_text()[-3000:]}")
            return " ready." in self.log.read_text()
        _wait_for(ready, timeout, f"celery worker {self.name}")
        self.snapshot()

    def snapshot(self) -> None:
        """Remember the worker's process ids (its pool child runs the steps)."""
        if self.proc.poll() is None:
            self.pids |= _tree(self.proc.pid)

    def kill(self) -> None:
        """SIGKILL the whole worker (the host dies): main process, pool child, compiler."""
        self.snapshot()
        _signal_tree(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        """Warm shutdown, then SIGKILL whatever of the worker's processes is left."""
        _stop_tree(self.proc, grace_s=15)
        self._log.close()


# ---------------------------------------------------------------------------------------- project

@pytest.fixture(scope="module")
def deployment(servers, tmp_path_factory):
    """DAGSTER_HOME with deploy/dagster.yaml, the project's env for celery, and two workers:
    A serves the compile queue and the default queue, B only the compile queue."""
    import dagster as dg

    from qaic_assets.orchestration import executor as deploy

    base = tmp_path_factory.mktemp("deploy")
    shared = base / "shared"  # the shared filesystem of the "hosts"
    home, storage = shared / "dagster_home", shared / "artifacts"
    home.mkdir(parents=True)
    shutil.copyfile(DEPLOY_YAML, home / "dagster.yaml")
    default_matrix = yaml.safe_load((PKG / "default_config.yaml").read_text())["matrix"]
    digits = PKG / "models" / "data" / "digits"
    config = {
        "backend": "cpu",
        "compile_timeout_s": 300,
        "matrix": default_matrix,
        "models": {m: {"recipe": "resnet50", "source": {"path": str(digits / "model.onnx")},
                       "calibration": {"list": str(digits / "cal.txt")}} for m in MODELS},
    }
    (shared / "qaic.yaml").write_text(yaml.safe_dump(config))
    slow = base / "slowhook"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(SLOW_HOOK)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("QAIC_", "DAGSTER_"))}
    env.update({
        "DAGSTER_HOME": str(home),
        "DAGSTER_POSTGRES_HOST": "127.0.0.1", "DAGSTER_POSTGRES_PORT": str(servers["pg_port"]),
        "DAGSTER_POSTGRES_USER": "dagster", "DAGSTER_POSTGRES_PASSWORD": "unused-trust-auth",
        "DAGSTER_POSTGRES_DB": "dagster",
        deploy.EXECUTOR_ENV: "celery", deploy.BROKER_ENV: servers["redis_url"],
        "QAIC_ASSETS_CONFIG": str(shared / "qaic.yaml"), "QAIC_ASSETS_STORAGE_ROOT": str(storage),
        "QAIC_SDK_ROOT": str(base / "no-sdk"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # dagster-celery runs `celery`
    })
    environ = _environ(env)  # this process reads the same instance
    uts = _uts_namespaces()
    workers = {}
    try:
        workers["a"] = Worker("qaic-a", [deploy.compile_queue(env), deploy.DEFAULT_QUEUE],
                              dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(slow), env.get("PYTHONPATH")])),
                                   QAIC_TEST_SLOW_FLAG=str(base / "slow")),
                              base / "worker-a.log", HOSTS["a"] if uts else None)
        workers["b"] = Worker("qaic-b", [deploy.compile_queue(env)], env, base / "worker-b.log",
                              HOSTS["b"] if uts else None)
        for w in workers.values():
            w.wait_ready()
        with dg.DagsterInstance.get() as instance:
            yield {"env": env, "instance": instance, "workers": workers, "storage": storage,
                   "slow_flag": base / "slow", "uts": uts, "base": base}
    finally:
        for w in workers.values():
            w.stop()
        environ.undo()


def orchestrate(env: dict, runs: list[dict], timeout: float = 600) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", ORCHESTRATOR, json.dumps(runs)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and len(results) == len(runs), (
        f"orchestrator failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return results


def latest(instance, key, partition=None):
    import dagster as dg

    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None),
        limit=1).records
    return records[0].asset_materialization if records else None


def count_materializations(instance, key, partition) -> int:
    import dagster as dg

    return len(instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=100).records)


def worker_of(deployment, meta) -> str:
    """Which worker ("a"/"b") a materialization's `worker` metadata ("host:pid") names."""
    host, _, pid = meta["worker"].value.rpartition(":")
    by_pid = [k for k, w in deployment["workers"].items() if int(pid) in w.pids]
    if deployment["uts"]:
        by_host = [k for k, h in HOSTS.items() if h == host]
        assert by_host and (not by_pid or by_pid == by_host), f"worker {meta['worker'].value} is no test worker"
        return by_host[0]
    assert len(by_pid) == 1, f"worker {meta['worker'].value} is no test worker (pids {deployment['workers']})"
    return by_pid[0]


def step_queues(instance, run_id) -> dict[str, str]:
    """step key -> the celery queue the executor submitted it to (dagster-celery's engine events)."""
    import re

    import dagster as dg

    queues = {}
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records:
        m = re.match(r'Submitting celery task for step "(.+)" to queue "(.+)"\.', record.event_log_entry.message or "")
        if m:
            queues[m[1]] = m[2]
    return queues


def celery_nodes(instance, run_id) -> dict[str, str]:
    """step key -> the celery worker node that executed it (dagster-celery's engine event)."""
    import dagster as dg

    nodes = {}
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records:
        event = record.event_log_entry.dagster_event
        node = event.engine_event_data.metadata.get("Celery worker") if event.engine_event_data else None
        if node is not None:
            nodes[event.step_key] = node.value if hasattr(node, "value") else node.text
    return nodes


def snapshot_workers(deployment) -> None:
    for w in deployment["workers"].values():
        w.snapshot()


# ---------------------------------------------------------------------------------------- the test

def test_compiles_spread_over_two_celery_workers_on_postgres(deployment):
    import dagster as dg
    import onnxruntime
    import psycopg2
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    from qaic_assets.orchestration import executor as deploy
    from qaic_assets.orchestration.keys import binary_key, profile_key
    from qaic_assets.keys import BinaryPartition
    from qaic_assets.settings import load_settings
    from qaic_assets.builder.store import compile_dir
    from qaic_assets.builder.manifest import MANIFEST_NAME
    from qaic_assets.hashing import sha256_file

    instance, env, workers = deployment["instance"], deployment["env"], deployment["workers"]
    config = load_settings()

    def out_dir(model, partition):
        return compile_dir(config, model, BinaryPartition.parse(partition))

    matrix = config.matrix_of(MODELS[0])
    binaries = [f"{b}|{t}" for b in matrix.batch_keys for t in matrix.targets]
    assert len(binaries) >= 4 and KILL_PARTITION in binaries

    # the instance is the production file, on Postgres for runs, events and schedules
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    # the project's own definitions carry the celery executor chosen by the environment
    from qaic_assets.orchestration import build_definitions

    assert build_definitions(config).resolve_job_def(COMPILE_JOB).executor_def.name == deploy.EXECUTOR_NAME

    # 1. everything but the partition that will lose its worker, through celery
    first = [{"job": "observe_qaic_sdk"}, {"job": "source_models"}]
    first += [{"job": CALIB_JOB, "partition": b} for b in matrix.batch_keys]
    first += [{"job": COMPILE_JOB, "partition": p} for p in binaries if p != KILL_PARTITION]
    results = orchestrate(env, first)
    snapshot_workers(deployment)
    assert all(r["success"] for r in results), results

    # routing: compile/calibrate steps went to the compile queue, source models to the default queue
    # (served by worker A only); the SDK is observed on a compile host too
    compile_queue = deploy.compile_queue(env)
    for r in results:
        queues = step_queues(instance, r["run_id"])
        assert queues, f"no celery submissions recorded for {r}"
        expected = deploy.DEFAULT_QUEUE if r["job"] == "source_models" else compile_queue
        assert set(queues.values()) == {expected}, (r["job"], queues)

    sources_run = next(r["run_id"] for r in results if r["job"] == "source_models")
    assert set(celery_nodes(instance, sources_run).values()) == {f"{workers['a'].name}@%s" % (
        HOSTS["a"] if deployment["uts"] else socket.gethostname())}, "source steps ran off the default queue"
    ran_on = {}
    for m in MODELS:
        for b in matrix.batch_keys:
            ran_on[(m, b)] = worker_of(deployment, latest(instance, profile_key(m), b).metadata)
        for p in binaries:
            if p != KILL_PARTITION:
                ran_on[(m, p)] = worker_of(deployment, latest(instance, binary_key(m), p).metadata)
    assert set(ran_on.values()) == {"a", "b"}, f"steps did not run in both workers: {ran_on}"

    artifacts_before = {
        (m, p): sha256_file(resolve(latest(instance, binary_key(m), p).metadata))
        for m in MODELS for p in binaries if p != KILL_PARTITION}

    # 2. kill worker A while it compiles its step of KILL_PARTITION; B's step finishes regardless
    deployment["slow_flag"].write_text("slow")
    orchestrator_log = open(deployment["base"] / "orchestrator-kill.log", "w")
    orchestrator = subprocess.Popen(
        [sys.executable, "-c", ORCHESTRATOR, json.dumps([{"job": COMPILE_JOB, "partition": KILL_PARTITION,
                                                 # its offline/singlestream twin is built: compile anyway
                                                 "force_ops": [f"{m.replace('-', '_')}__compiled_binary"
                                                               for m in MODELS]}])],
        env=env, stdout=orchestrator_log, stderr=subprocess.STDOUT, start_new_session=True)
    run = None
    try:
        compiling = Path(str(deployment["slow_flag"]) + ".compiling")
        _wait_for(lambda: compiling.exists() or orchestrator.poll() is not None, 120,
                  "worker A to start compiling its step")
        assert orchestrator.poll() is None, (deployment["base"] / "orchestrator-kill.log").read_text()[-3000:]
        snapshot_workers(deployment)
        run = _wait_for(lambda: instance.get_runs(dg.RunsFilter(job_name=COMPILE_JOB, tags={
            "dagster/partition": KILL_PARTITION})), 30, "the run of the killed partition")[0]
        survivor = _wait_for(
            lambda: [m for m in MODELS if latest(instance, binary_key(m), KILL_PARTITION)], 120,
            "worker B's step of the partition to succeed")
        assert len(survivor) == 1, f"both steps finished although worker A was still compiling: {survivor}"
        victim = next(m for m in MODELS if m not in survivor)
        workers["a"].kill()
    finally:
        deployment["slow_flag"].unlink()
        # The run now waits for a step no worker runs any more. Terminate it as Dagster does: the
        # run launcher marks it CANCELING and interrupts the run process (which revokes its celery
        # tasks but keeps waiting for the lost one); run monitoring marks a run still CANCELING
        # after `cancel_timeout_seconds` CANCELED and, later, frees its pool slots.
        if orchestrator.poll() is None:
            if run is not None and not instance.get_run_by_id(run.run_id).is_finished:
                instance.report_run_canceling(instance.get_run_by_id(run.run_id))
            os.killpg(orchestrator.pid, signal.SIGINT)
            try:
                orchestrator.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(orchestrator.pid, signal.SIGKILL)
                orchestrator.wait(10)
        orchestrator_log.close()
    run = instance.get_run_by_id(run.run_id)
    if not run.is_finished:
        instance.report_run_canceled(run, message="canceled: its compile host died (cancel timeout)")
    instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    assert instance.get_run_by_id(run.run_id).status in (dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE)

    survivor = survivor[0]
    kept = latest(instance, binary_key(survivor), KILL_PARTITION)
    assert worker_of(deployment, kept.metadata) == "b"
    assert latest(instance, binary_key(victim), KILL_PARTITION) is None
    victim_dir = out_dir(victim, KILL_PARTITION)
    assert not victim_dir.exists(), "a killed compile must not leave a final output directory"
    # its temporary directory is left behind, unless celery redelivered the lost task to worker B, whose
    # attempt removes a dead writer's leftovers before it starts (and its own when the run is cancelled)
    for key, sha in artifacts_before.items():  # A's earlier results are untouched
        assert sha256_file(resolve(latest(instance, binary_key(key[0]), key[1]).metadata)) == sha

    # 3. re-execute from failure: only the lost step runs, on the surviving worker
    (rerun,) = orchestrate(env, [{"job": COMPILE_JOB, "partition": KILL_PARTITION, "from_failure": run.run_id}])
    snapshot_workers(deployment)
    assert rerun["success"], rerun
    rerun_steps = {r.event_log_entry.step_key for r in instance.get_records_for_run(
        rerun["run_id"], of_type=dg.DagsterEventType.STEP_START).records}
    rerun_assets = {r.event_log_entry.dagster_event.asset_key for r in instance.get_records_for_run(
        rerun["run_id"], of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records}
    assert len(rerun_steps) == 1 and rerun_assets == {binary_key(victim)}, (rerun_steps, rerun_assets)
    assert worker_of(deployment, latest(instance, binary_key(victim), KILL_PARTITION).metadata) == "b"
    assert count_materializations(instance, binary_key(survivor), KILL_PARTITION) == 1
    assert latest(instance, binary_key(survivor), KILL_PARTITION).metadata["sha256"].value == kept.metadata["sha256"].value

    # 4. every materialization is in Postgres with its metadata, and every artifact is complete
    expected = {(m, None) for m in MODELS}  # source models
    expected |= {(m, b) for m in MODELS for b in matrix.batch_keys}
    expected |= {(m, p) for m in MODELS for p in binaries}
    with psycopg2.connect(host="127.0.0.1", port=env["DAGSTER_POSTGRES_PORT"], user="dagster",
                          dbname="dagster") as conn, conn.cursor() as cur:
        cur.execute("SELECT asset_key, partition, event FROM event_logs "
                    "WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")
        rows = cur.fetchall()
    in_db = {}
    for asset_key, partition, event in rows:
        entry = dg.deserialize_value(event, dg.EventLogEntry)
        in_db.setdefault((json.loads(asset_key)[0], partition), []).append(entry.asset_materialization)
    assert set(in_db) == expected, sorted(in_db, key=str)
    run_fields = {"command", "compiler_log", "backend", "sdk_version", "duration_s", "peak_rss_mb",
                  "worker", "sha256", "size_bytes", "path"}
    for (m, p), materializations in in_db.items():
        assert len(materializations) == 1, f"{m} {p} materialized {len(materializations)} times"
        meta = materializations[0].metadata
        needed = {"sha256", "size_bytes", "path"} if p is None else run_fields
        assert needed <= set(meta), f"{m} {p}: metadata {needed - set(meta)} not stored in Postgres"
        if p is not None and "|" in p:
            assert {"model_sha256", "profile_sha256", "lineage"} <= set(meta), (m, p)

    for m in MODELS:
        for b in matrix.batch_keys:
            meta = latest(instance, profile_key(m), b).metadata
            assert sha256_file(resolve(meta)) == meta["sha256"].value
        for p in binaries:
            meta = latest(instance, binary_key(m), p).metadata
            binary = resolve(meta)
            assert binary.name == "programqpc.onnx" and binary.stat().st_size == meta["size_bytes"].value
            assert sha256_file(binary) == meta["sha256"].value
            assert meta["backend"].value == "cpu" and (meta["duration_s"].value > 0 or "same_build_as" in meta)
            assert meta["command"].value.split()[0].endswith("qaic-exec-cpu")
            assert binary.is_relative_to(out_dir(m, p))
            manifest = json.loads((out_dir(m, p) / MANIFEST_NAME).read_text())
            assert manifest["output"]["sha256"] == meta["sha256"].value and manifest["partition"] == p
            onnxruntime.InferenceSession(str(binary), providers=["CPUExecutionProvider"])  # loads whole
            leftovers = [e.name for e in out_dir(m, p).parent.iterdir() if e.name.startswith(".")]
            assert not leftovers, f"temporary directories left beside {out_dir(m, p)}: {leftovers}"
    # the pool enforced across hosts: the pool has the deploy limit, and no compile slot is left claimed
    pool = instance.event_log_storage.get_concurrency_info("qaic_compile")
    assert pool.limit == yaml.safe_load(DEPLOY_YAML.read_text())["concurrency"]["pools"]["default_limit"]
    assert pool.active_slot_count == 0 and pool.pending_step_count == 0


# ------------------------------------------------------------ automation across hosts (issue 11)

SENSOR_TICKS_QUERY = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status ticks(limit: 3) { status timestamp error { message } } } }
  }
}
"""


def _graphql(base: str, query: str, variables: dict) -> dict:
    import urllib.request

    request = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query, "variables": variables}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


class Service:
    """A long-running Dagster process (daemon, webserver) in its own session, logging to a file."""

    def __init__(self, cmd: list[str], env: dict, cwd: Path, log: Path):
        self.log = log
        self._log = open(log, "w")
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def stop(self) -> None:
        _stop_tree(self.proc, grace_s=20)
        self._log.close()


@pytest.fixture(scope="module")
def split_hosts(servers, tmp_path_factory):
    """The deployment of docs/DEPLOY.md with the SDK only where compiles run: `dagster-daemon run` and
    `dagster-webserver` (and the run processes they start) without an SDK, two celery workers with
    the stand-in SDK (tests/fake_sdk). Its own Postgres database, so the other test's records stay apart."""
    import dagster as dg
    import psycopg2

    from fake_sdk import TINY_CONFIG, write_tiny_files
    from qaic_assets.orchestration import executor as deploy

    base = tmp_path_factory.mktemp("split")
    shared = base / "shared"
    home = shared / "dagster_home"
    home.mkdir(parents=True)
    shutil.copyfile(DEPLOY_YAML, home / "dagster.yaml")
    sdk = write_tiny_files(shared, TINY_CONFIG.format(backend="qaic", batch=[1, 2]))
    (shared / "workspace.yaml").write_text("load_from:\n  - python_module: qaic_assets.definitions\n")
    conn = psycopg2.connect(host="127.0.0.1", port=servers["pg_port"], user="dagster", dbname="dagster")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE automation")
    conn.close()

    env = {k: v for k, v in os.environ.items() if not k.startswith(("QAIC_", "DAGSTER_", "FAKE_QAIC"))}
    env.update({
        "DAGSTER_HOME": str(home),
        "DAGSTER_POSTGRES_HOST": "127.0.0.1", "DAGSTER_POSTGRES_PORT": str(servers["pg_port"]),
        "DAGSTER_POSTGRES_USER": "dagster", "DAGSTER_POSTGRES_PASSWORD": "unused-trust-auth",
        "DAGSTER_POSTGRES_DB": "automation",
        deploy.EXECUTOR_ENV: "celery", deploy.BROKER_ENV: servers["redis_url"].replace("/0", "/1"),
        "QAIC_ASSETS_CONFIG": str(shared / "qaic.yaml"),
        "QAIC_SDK_ROOT": str(base / "no-sdk"),  # the daemon and webserver hosts: no SDK
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    compile_env = dict(env, QAIC_SDK_ROOT=str(sdk))  # the compile hosts: the stand-in SDK
    environ = _environ(env)
    workers, services = {}, {}
    try:
        workers["a"] = Worker("split-a", [deploy.compile_queue(env), deploy.DEFAULT_QUEUE], compile_env,
                              base / "worker-a.log", None)
        workers["b"] = Worker("split-b", [deploy.compile_queue(env)], compile_env, base / "worker-b.log", None)
        for w in workers.values():
            w.wait_ready()
        port = _free_port()
        services["daemon"] = Service([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env, shared,
                                     base / "daemon.log")
        services["webserver"] = Service([str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
                                         "-w", "workspace.yaml"], env, shared, base / "webserver.log")
        webserver = f"http://127.0.0.1:{port}"

        def up():
            import urllib.request

            try:
                with urllib.request.urlopen(webserver + "/server_info", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        _wait_for(up, 120, "dagster-webserver", interval=1)
        with dg.DagsterInstance.get() as instance:
            yield {"env": env, "instance": instance, "sdk": sdk, "webserver": webserver, "base": base,
                   "workers": workers}
    finally:
        for s in services.values():
            s.stop()
        for w in workers.values():
            w.stop()
        environ.undo()


def sensor_ticks(webserver: str) -> list[dict]:
    """The automation sensor's latest ticks (the model tiny's), as the webserver (no SDK on its host)
    reports them."""
    from qaic_assets.orchestration.automation import sensor_name

    selector = {"repositoryLocationName": "qaic_assets.definitions", "repositoryName": "__repository__",
                "sensorName": sensor_name("tiny")}
    data = _graphql(webserver, SENSOR_TICKS_QUERY, {"selector": selector})["data"]["sensorOrError"]
    assert data["__typename"] == "Sensor", data
    assert data["sensorState"]["status"] == "RUNNING", data  # running by default
    ticks = data["sensorState"]["ticks"]
    failed = [t for t in ticks if t["status"] == "FAILURE"]
    assert not failed, failed
    return ticks


def wait_for_sensor_tick_after(webserver: str, when: float, timeout: float = 180) -> None:
    _wait_for(lambda: any(t["timestamp"] > when for t in sensor_ticks(webserver)), timeout,
              "an automation sensor tick", interval=2)


def test_sdk_upgrade_recompiles_the_built_partitions_through_the_workers(split_hosts):
    """Daemon and webserver without the SDK; the SDK observed on a compile worker; an SDK upgrade
    recompiles exactly the built profiles and binaries, profiles first, on the workers."""
    import dagster as dg

    from fake_sdk import read_calls, set_fake_sdk_version
    from qaic_assets.orchestration.keys import AUTOMATION_TAG
    from qaic_assets.orchestration.keys import SDK_KEY, binary_key, profile_key

    instance, env, webserver = split_hosts["instance"], split_hosts["env"], split_hosts["webserver"]
    built = ["bs1|offline-nsp14", "bs2|singlestream-nsp14"]  # of the 4 binaries
    never = ["bs1|singlestream-nsp14", "bs2|offline-nsp14"]

    def observations():
        return instance.fetch_observations(dg.AssetRecordsFilter(asset_key=SDK_KEY), limit=1).records

    # 1. observe on a worker (the run process has no SDK), then build some partitions
    (observed,) = orchestrate(env, [{"job": "observe_qaic_sdk"}])
    assert observed["success"]
    obs = observations()[0].asset_observation
    assert obs.metadata["status"].value == "found" and obs.tags["dagster/data_version"] == "1.18.2.0.5"
    assert set(celery_nodes(instance, observed["run_id"]).values()) <= {
        f"{w.name}@{socket.gethostname()}" for w in split_hosts["workers"].values()}
    assert celery_nodes(instance, observed["run_id"]), "the observation did not run on a celery worker"
    runs = [{"job": "source_models"}] + [{"job": CALIB_JOB, "partition": b} for b in ("bs1", "bs2")]
    runs += [{"job": COMPILE_JOB, "partition": p} for p in built]
    assert all(r["success"] for r in orchestrate(env, runs))
    n_calls = len(read_calls(split_hosts["sdk"]))
    wait_for_sensor_tick_after(webserver, time.time())  # the sensor has seen the built state

    # 2. the SDK is upgraded on the compile hosts and observed there
    set_fake_sdk_version(split_hosts["sdk"], "1.19.0", "7")
    assert orchestrate(env, [{"job": "observe_qaic_sdk"}])[0]["success"]
    assert observations()[0].asset_observation.tags["dagster/data_version"] == "1.19.0.7"

    def recompiled():
        return all((m := latest(instance, binary_key("tiny"), p)) is not None
                   and m.metadata["sdk_version"].value == "1.19.0.7" for p in built)

    _wait_for(recompiled, 480, "the automation to recompile the built binaries", interval=3)
    settled = time.time()
    wait_for_sensor_tick_after(webserver, settled)
    wait_for_sensor_tick_after(webserver, time.time())  # two more ticks: nothing else is requested
    _wait_for(lambda: not instance.get_runs(dg.RunsFilter(statuses=[
        dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED])), 120,
        "runs to finish")

    # exactly the built partitions, once each, profiles before the binaries that load them
    for b in ("bs1", "bs2"):
        assert count_materializations(instance, profile_key("tiny"), b) == 2
        assert latest(instance, profile_key("tiny"), b).metadata["sdk_version"].value == "1.19.0.7"
    for p in built:
        assert count_materializations(instance, binary_key("tiny"), p) == 2
    for p in never:
        assert count_materializations(instance, binary_key("tiny"), p) == 0
    calls = read_calls(split_hosts["sdk"])[n_calls:]
    kinds = ["calibrate" if any(a.startswith("-dump-profile") for a in c["argv"]) else "compile" for c in calls]
    assert kinds == ["calibrate"] * 2 + ["compile"] * 2, kinds
    # launched by the daemon (the automation's run tag), the steps on the compile workers
    automated = instance.get_runs(dg.RunsFilter(tags={AUTOMATION_TAG: "recompile"}))
    assert automated and all(r.status == dg.DagsterRunStatus.SUCCESS for r in automated)
    workers = {f"{w.name}@{socket.gethostname()}" for w in split_hosts["workers"].values()}
    for run in automated:
        nodes = set(celery_nodes(instance, run.run_id).values())
        assert nodes and nodes <= workers, (run.run_id, nodes)
