"""The demo's run workers: runs go two at a time within the compile pool, and a worker that dies
fails its run, not the demo; as many workers as the compile pool allows."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import yaml

from conftest import write_tiny_project
from qaic_assets.demo import demo_log
from fake_sdk import read_calls, read_exits
from helpers import TEST_INSTANCE_YAML, run_partitions
from test_demo import _demo, _steps

REPO = Path(__file__).resolve().parents[2]


def test_a_run_worker_that_dies_fails_its_run_and_the_demo_goes_on(tmp_path, monkeypatch):
    """The step's process is killed mid-run (out of memory, say): its run is recorded as failed, not
    left STARTED; the runs after it still run (on new workers)."""
    project = write_tiny_project(tmp_path / "project", batch=[1])
    monkeypatch.setenv("FAKE_QAIC_KILL_CALLER", str(tmp_path / "killed-once"))
    monkeypatch.setenv("QAIC_ASSETS_START_METHOD", "forkserver")  # the fallback of a demo with threads
    done = _demo(project)
    assert done.returncode == 1
    assert (tmp_path / "killed-once").exists()
    steps = _steps(done.stdout)
    assert len(steps) == 5  # still one line per step
    assert any(line.startswith("[not run] tiny/calibration_profile bs1") for line in done.stdout.splitlines())
    assert "failed runs: calibration_profiles bs1" in done.stdout
    with dg.DagsterInstance.from_config(str(project.home)) as instance:
        runs = {(r.job_name, run_partitions(r)): r for r in instance.get_runs()}
        assert runs[("calibration_profiles", "bs1")].status == dg.DagsterRunStatus.FAILURE
        # launched after the failure, on a new worker: they ran (and failed: no profile)
        assert runs[("compiled_binaries", "bs1|offline-nsp14...bs1|singlestream-nsp14")].status == \
            dg.DagsterRunStatus.FAILURE
        assert all(r.is_finished for r in runs.values())
    # new workers were started for the runs after the failure, from the forkserver (its preload of
    # dagster and the definitions made them able to run steps)
    starts = [line for line in _demo_log(project) if line.startswith("run workers:")]
    assert starts == ["run workers: 2, started by forkserver"] * 2


def _demo_log(project) -> list[str]:
    return demo_log(project.config).read_text().splitlines()



def _compiler_spans(project) -> list[tuple[float, float]]:
    exits = read_exits(project.sdk)
    return sorted((c["start"], exits[c["pid"]]["end"]) for c in read_calls(project.sdk))


def _overlap(spans) -> bool:
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


def test_runs_go_two_at_once(tmp_path, monkeypatch):
    """The two calibration runs (bs1, bs2) start together on the two run workers: their compilers
    overlap."""
    project = write_tiny_project(tmp_path / "project", batch=[1, 2],
                                 instance_yaml=(REPO / "dagster_home" / "dagster.yaml").read_text())
    monkeypatch.setenv("FAKE_QAIC_SLEEP", "0.5")
    done = _demo(project)
    assert done.returncode == 0, done.stdout + done.stderr
    spans = _compiler_spans(project)
    assert len(spans) == 6  # 2 calibrations + 4 compiles
    assert _overlap(spans), f"no two compilers ever ran at once: {spans}"
    assert "run workers: 2, started by fork" in _demo_log(project)


_FORKED = """
import os, threading
import dagster as dg
from qaic_assets import demo
with dg.DagsterInstance.get() as instance:
    pool = demo._run_workers(instance, 1, None)
    print(pool.submit(os.getppid).result() == os.getpid())
    pool.shutdown()
threading.Thread(target=threading.Event().wait, daemon=True).start()
print(demo.worker_start_method())
"""


def test_run_workers_are_forked_from_a_single_threaded_demo_only(tmp_path):
    """Forked from the demo process (its imports and definitions already made) while it has no other
    thread; with a thread, from a forkserver (a fork could copy a lock that thread holds)."""
    import os
    import subprocess
    import sys

    (tmp_path / "dagster.yaml").write_text(TEST_INSTANCE_YAML)
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    env.pop("QAIC_ASSETS_START_METHOD", None)
    done = subprocess.run([sys.executable, "-c", _FORKED], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "forkserver"]  # the worker's parent is this process
    assert "run workers: 1, started by fork\n" in done.stderr


def test_the_run_workers_are_as_many_as_the_compile_pool_allows(tmp_path):
    """At most as many workers (each one step at a time) as the `qaic_compile` pool lets compilers run:
    dagster.yaml's default limit, or the limit set in the instance; never more than 2. (Two workers
    claiming one slot at the same instant could both get it from Dagster's SQLite storage.)"""
    from qaic_assets.orchestration.keys import POOL
    from qaic_assets.demo import run_workers_for

    for default, expected in ((1, 1), (2, 2), (8, 2)):
        instance_yaml = yaml.safe_load((REPO / "dagster_home" / "dagster.yaml").read_text())
        instance_yaml["concurrency"]["pools"]["default_limit"] = default
        home = tmp_path / f"home{default}"
        home.mkdir()
        (home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert run_workers_for(instance) == expected
            instance.event_log_storage.set_concurrency_slots(POOL, 1)  # `dagster instance concurrency set`
            assert run_workers_for(instance) == 1
