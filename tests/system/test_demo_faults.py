"""The demo and the CLI under faults a user meets (issue 27): two first-time commands on one fresh
DAGSTER_HOME, a full or read-only disk under it, a run left STARTED by a demo that died, signals
(SIGTERM from a CI time limit, Ctrl-C, SIGKILL), and a failed build in the footer. Each test runs
`python -m qaic_assets.demo` or `qaic-assets` as a subprocess, as in test_demo.py."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from conftest import write_tiny_project
from fake_sdk import read_calls
from helpers import TEST_INSTANCE_YAML, alive
from qaic_assets.demo import demo_log
from test_demo import _demo, _demo_env
from test_reliability import remount, tmpfs

#: The SQLite databases of a DAGSTER_HOME with the default storage, each stamped by alembic.
DATABASES = ("history/runs.db", "history/runs/index.db", "schedules/schedules.db")

#: `qaic-assets <argv>` on each fresh home in turn, started at a barrier: for home k, it says it is
#: ready (ready-k-<me>) and waits for go-k; one line per home: "@ <home> <exit code or the error>".
#: Two of these open each home at the same instant; imported once, each opening is quick.
_CLI_ON_EACH_HOME = """
import os, sys, time
from qaic_assets import cli
barrier, me, homes, argv = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4:]
for k, home in enumerate(homes):
    open(os.path.join(barrier, f"ready-{k}-{me}"), "w").close()
    while not os.path.exists(os.path.join(barrier, f"go-{k}")):
        time.sleep(0.0005)
    os.environ["DAGSTER_HOME"] = home
    try:
        outcome = cli.main(argv)
    except BaseException as exc:
        outcome = "Traceback: " + repr(exc)[:200]
    print("@", home, outcome, flush=True)
"""


def _alembic_rows(home: Path) -> dict[str, int | str]:
    rows = {}
    for name in DATABASES:
        if not (home / name).is_file():
            rows[name] = "missing"
            continue
        with sqlite3.connect(home / name) as db:
            try:
                rows[name] = db.execute("SELECT count(*) FROM alembic_version").fetchone()[0]
            except sqlite3.Error as exc:
                rows[name] = str(exc)
    return rows


#: Fresh homes, each opened by two commands at once. Measured on the code before the lock (5 runs of
#: 10 homes): every run failed, on nearly every home: one command died with "table runs already
#: exists" (or "database is locked"), and 18 of the 50 homes were left with two alembic heads or
#: none. Two processes started apart (a cold import each) collided on about 1 home in 3.
HOMES = 8


def test_two_first_commands_on_a_fresh_home_leave_one_schema(tmp_path):
    """Two `qaic-assets lineage` at once on each of HOMES fresh DAGSTER_HOMEs: both end normally (nothing
    is materialized yet: exit 1, "(not materialized)"), every database has one alembic revision, and
    a later command opens the home."""
    project = write_tiny_project(tmp_path / "project", batch=[1])
    argv = ["lineage", "--model", "tiny", "--partition", "bs1|offline-nsp14"]
    homes = [tmp_path / f"home{k}" for k in range(HOMES)]
    for home in homes:
        home.mkdir()
        (home / "dagster.yaml").write_text(TEST_INSTANCE_YAML)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _CLI_ON_EACH_HOME, str(barrier), me, ",".join(map(str, homes)),
                               *argv], cwd=project.root, env=_demo_env(project), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for me in "ab"]
    deadline = time.monotonic() + 300
    for k in range(HOMES):  # the two open home k together, once both are ready
        while not all((barrier / f"ready-{k}-{me}").exists() for me in "ab"):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                [p.communicate() for p in procs if p.poll() is not None]
            time.sleep(0.005)
        (barrier / f"go-{k}").touch()
    outcomes = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outcomes += [line for line in out.splitlines() if line.startswith("@ ")]
    assert len(outcomes) == 2 * HOMES, outcomes
    bad = [line for line in outcomes if not line.endswith(" 1")]  # lineage of nothing built: exit 1
    bad += [f"{home.name}: alembic_version rows {rows}" for home in homes
            if set((rows := _alembic_rows(home)).values()) != {1}]
    bad += [f"{home.name}: does not open: {error}" for home in homes if (error := _open_error(home))]
    assert not bad, f"{len(bad)} problems on {HOMES} homes:\n" + "\n".join(bad)
    done = subprocess.run([sys.executable, "-m", "qaic_assets.cli", *argv], cwd=project.root, capture_output=True,
                          text=True, env={**_demo_env(project), "DAGSTER_HOME": str(homes[0])}, timeout=300)
    assert done.returncode == 1 and "(not materialized)" in done.stdout, done.stderr  # a later command works


def _open_error(home: Path) -> str | None:
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.get_run_records(limit=1)
    except Exception as exc:  # noqa: BLE001 - reported with the others
        return repr(exc)[:300]
    return None


# --- signals ---------------------------------------------------------------------------------------

def _demo_processes(home: Path) -> list[int]:
    """Every process but this one whose environment says it belongs to the demo on `home` (the demo,
    its forkserver, run workers, compilers: they all inherit DAGSTER_HOME)."""
    marker = f"DAGSTER_HOME={home}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid() or not alive(int(name)):
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.append(int(name))
    return found


def _survivors(home: Path, timeout: float = 10.0) -> list[str]:
    """The demo's processes still there after a bounded wait (each killed then, so none leaks)."""
    deadline = time.monotonic() + timeout
    while (pids := _demo_processes(home)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = []
    for pid in pids:
        with contextlib.suppress(OSError):
            left.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
            os.kill(pid, signal.SIGKILL)
    return left


def _start_slow_demo(project, monkeypatch, **env: str) -> subprocess.Popen:
    """The demo in a session of its own (a terminal's foreground group), its first compiler call (the
    calibration) sleeping: returns once that run is STARTED and its compiler runs."""
    monkeypatch.setenv("FAKE_QAIC_SLEEP", "120")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    proc = subprocess.Popen([sys.executable, "-m", "qaic_assets.demo"], cwd=project.root, env=_demo_env(project),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not read_calls(project.sdk):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    assert _statuses(project).get(("calibration_profiles", "bs1")) == dg.DagsterRunStatus.STARTED
    return proc


def _statuses(project) -> dict[tuple[str, str | None], dg.DagsterRunStatus]:
    with dg.DagsterInstance.from_config(str(project.home)) as instance:
        return {(r.job_name, r.tags.get("dagster/partition")): r.status for r in instance.get_runs()}


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_ctrl_c_cancel_the_runs_and_stop_the_workers(tmp_path, monkeypatch, sig, code):
    """SIGTERM (a CI time limit) or Ctrl-C mid-compile: the demo marks its running runs canceled,
    stops its run workers and their compilers, says so in one line and exits 128 + the signal."""
    project = write_tiny_project(tmp_path / "project", batch=[1])
    proc = _start_slow_demo(project, monkeypatch)
    try:
        if sig == signal.SIGINT:  # Ctrl-C: to the terminal's foreground process group
            os.killpg(proc.pid, sig)
        else:  # as `timeout` sends it
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        left = _survivors(project.home)
    assert proc.returncode == code, out + err
    assert not left, f"the demo's processes outlived it: {left}"
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err
    name = signal.Signals(sig).name
    assert f"interrupted ({name}): 1 runs canceled; what was built is kept; run `make demo` again" in err, out + err
    assert "[FAILED] tiny/calibration_profile bs1" in out and "interrupted (its run is canceled)" in out, out
    statuses = _statuses(project)
    assert statuses[("calibration_profiles", "bs1")] == dg.DagsterRunStatus.CANCELED, statuses
    assert all(s in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.CANCELED) for s in statuses.values()), statuses
    compiler = read_calls(project.sdk)[0]["pid"]
    assert not alive(compiler)


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_sigkill_leaves_no_worker_and_the_next_demo_fails_the_run_it_left(tmp_path, monkeypatch, method):
    """SIGKILL of the demo (no handler runs): its run workers die with it (forked from it: by
    PR_SET_PDEATHSIG; from the forkserver: they watch its pid), and so do their compilers; the run
    stays STARTED until the next demo, which marks it failed (its demo and worker are gone) and builds."""
    project = write_tiny_project(tmp_path / "project", batch=[1])
    proc = _start_slow_demo(project, monkeypatch, QAIC_ASSETS_START_METHOD=method)
    try:
        proc.kill()
        proc.communicate(timeout=60)
    finally:
        left = _survivors(project.home)
    assert not left, f"the demo's processes outlived it: {left}"
    assert _statuses(project)[("calibration_profiles", "bs1")] == dg.DagsterRunStatus.STARTED

    monkeypatch.delenv("FAKE_QAIC_SLEEP")
    again = _demo(project)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 run(s) left unfinished by an earlier demo that is gone: marked failed" in again.stdout, again.stdout
    with dg.DagsterInstance.from_config(str(project.home)) as instance:
        runs = [r for r in instance.get_runs() if r.job_name == "calibration_profiles"]
        assert sorted(r.status.value for r in runs) == ["FAILURE", "SUCCESS"]
        killed = next(r for r in runs if r.status == dg.DagsterRunStatus.FAILURE)
        failure = instance.all_logs(killed.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        assert len(failure) == 1 and "ended without recording its end" in failure[0].dagster_event.message


# --- an instance that cannot be written ---------------------------------------------------------------

#: What is left free under DAGSTER_HOME for the first demo: enough to start, not to finish its runs.
LEAVE_FREE = 300 << 10
FINISHED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def _fill(directory: Path, leave: int) -> Path:
    """A file in `directory` that fills its file system but for `leave` bytes."""
    filler = directory / f"filler-{leave}"
    with open(filler, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):  # ENOSPC: full
            while True:
                f.write(b"\0" * 65536)
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_dagster_home_that_cannot_be_written_gets_one_clear_message(tmp_path, fault):
    """DAGSTER_HOME fills up during the demo (or is read-only): one line names DAGSTER_HOME, the free
    space and the fix, exit 1, no traceback (it is in the demo's log). Once the cause is removed, the
    next demo marks the runs the first left unfinished as failed and builds everything."""
    project = write_tiny_project(tmp_path / "project", batch=[1])
    instance_yaml = (project.home / "dagster.yaml").read_text()
    as_root = os.geteuid() == 0
    if not as_root and fault == "full":
        pytest.skip("a full disk needs a tmpfs (root); the read-only case checks the message")
    with contextlib.ExitStack() as mounted:
        if as_root:
            mounted.enter_context(tmpfs(project.home, "4m"))
            (project.home / "dagster.yaml").write_text(instance_yaml)
        with dg.DagsterInstance.from_config(str(project.home)) as instance:  # it exists; the demo writes it
            instance.get_run_records(limit=1)
        if fault == "full":
            filler = _fill(project.home, LEAVE_FREE)
        elif as_root:
            remount(project.home, "ro")
        else:
            for path in project.home.rglob("*"):
                path.chmod(0o555 if path.is_dir() else 0o444)
            project.home.chmod(0o555)
        first = _demo(project)
        assert first.returncode == 1, first.stdout + first.stderr
        assert "Traceback" not in first.stdout + first.stderr, first.stdout + first.stderr
        message = [line for line in first.stderr.splitlines() if "cannot be written" in line]
        assert len(message) == 1, first.stderr
        assert f"DAGSTER_HOME={project.home}" in message[0] and "free there" in message[0], message[0]
        reasons = (["database or disk is full", "disk I/O error"] if fault == "full"  # which, depends on the write
                   else ["readonly", "unable to open database file"])
        assert any(reason in message[0] for reason in reasons), message[0]
        assert "sqlite3.OperationalError" in demo_log(project.config).read_text()  # the traceback, kept
        if fault == "full":
            more = _fill(project.home, 0)  # all of it: a read may fit in what is left
        cli = subprocess.run([sys.executable, "-m", "qaic_assets.cli", "lineage", "--model", "tiny", "--partition",
                              "bs1|offline-nsp14"], cwd=project.root, env=_demo_env(project), capture_output=True,
                             text=True, timeout=300)
        assert cli.returncode == 1 and "Traceback" not in cli.stderr, cli.stderr
        assert cli.stderr.startswith(f"qaic-assets lineage: the Dagster instance in DAGSTER_HOME={project.home} "
                                     "cannot be written ("), cli.stderr

        if fault == "full":
            filler.unlink()
            more.unlink()
        elif as_root:
            remount(project.home, "rw")
        else:
            for path in [project.home, *project.home.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
        unfinished = [k for k, s in _statuses(project).items() if s not in FINISHED]
        again = _demo(project)
        assert again.returncode == 0, again.stdout + again.stderr
        statuses = _statuses(project)
        assert all(s in FINISHED for s in statuses.values()), statuses
        if unfinished:
            assert f"{len(unfinished)} run(s) left unfinished by an earlier demo" in again.stdout, again.stdout
        assert fault == "read-only" or unfinished, "the first demo should have filled the disk mid-run"


# --- the footer ----------------------------------------------------------------------------------------

def test_the_footer_counts_a_failed_build_as_failed_even_with_an_older_binary(tmp_path):
    """A second model whose compile fails in this demo (a flag naming a file that is not there) has
    an older binary from the demo before: the footer does not count it as built."""
    project = write_tiny_project(tmp_path / "project", batch=[1])
    config = project.config_path.read_text()
    second = "  tiny2:\n    recipe: resnet50\n    source: {path: tiny.onnx}\n    calibration: {list: cal/cal.txt}\n"
    project.config_path.write_text(config.replace("models:\n", "models:\n" + second, 1))
    first = _demo(project)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "4/4 compiled binaries" in first.stdout

    broken = second + "    extra_flags: ['-mdp-load-partition-config=missing.json']\n"
    project.config_path.write_text(config.replace("models:\n", "models:\n" + broken, 1))
    done = _demo(project)
    assert done.returncode == 1, done.stdout + done.stderr
    assert ("2/4 compiled binaries built, 2 failed: tiny2 bs1|offline-nsp14, tiny2 bs1|singlestream-nsp14"
            in done.stdout), done.stdout
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("tiny2 ")]
    assert [r[2] for r in rows] == ["failed", "failed"], rows
