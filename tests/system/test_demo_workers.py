"""The demo's run workers: runs go two at a time within the compile pool, and a worker that dies
fails its run, not the demo."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import yaml

from conftest import write_tiny_project
from fake_sdk import read_calls, read_exits
from test_demo import _demo, _steps

REPO = Path(__file__).resolve().parents[2]


def test_a_run_worker_that_dies_fails_its_run_and_the_demo_goes_on(tmp_path):
    """The step's process is killed mid-run (out of memory, say): its run is recorded as failed, not
    left STARTED; the runs after it still run (on new workers); the next demo builds everything."""
    project = write_tiny_project(tmp_path / "project", batch=[1])
    os.environ["FAKE_QAIC_KILL_CALLER"] = str(tmp_path / "killed-once")
    try:
        done = _demo(project)
    finally:
        del os.environ["FAKE_QAIC_KILL_CALLER"]
    assert done.returncode == 1
    assert (tmp_path / "killed-once").exists()
    steps = _steps(done.stdout)
    assert len(steps) == 5  # still one line per step
    assert any(line.startswith("[not run] tiny/calibration_profile bs1") for line in done.stdout.splitlines())
    assert "failed runs: calibration_profiles bs1" in done.stdout
    with dg.DagsterInstance.from_config(str(project.home)) as instance:
        runs = {(r.job_name, r.tags.get("dagster/partition")): r for r in instance.get_runs()}
        assert runs[("calibration_profiles", "bs1")].status == dg.DagsterRunStatus.FAILURE
        # launched after the failure, on a new worker: they ran (and failed: no profile)
        assert runs[("compiled_binaries", "bs1|offline-nsp14")].status == dg.DagsterRunStatus.FAILURE
        assert all(r.is_finished for r in runs.values())

    again = _demo(project)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2/2 compiled binaries" in again.stdout


def _compiler_spans(project) -> list[tuple[float, float]]:
    exits = read_exits(project.sdk)
    return sorted((c["start"], exits[c["pid"]]["end"]) for c in read_calls(project.sdk))


def _overlap(spans) -> bool:
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


def test_runs_go_two_at_once_within_the_compile_pool(tmp_path):
    """The two calibration runs (bs1, bs2) start together on the two run workers, so their compilers
    overlap; with the `qaic_compile` pool limited to 1 (dagster.yaml) the demo has one run worker, so
    they never do (two workers claiming the one slot at the same instant could both get it)."""
    spans = {}
    for limit in (2, 1):
        instance_yaml = yaml.safe_load((REPO / "dagster_home" / "dagster.yaml").read_text())
        instance_yaml["concurrency"]["pools"]["default_limit"] = limit
        project = write_tiny_project(tmp_path / f"limit{limit}", batch=[1, 2],
                                     instance_yaml=yaml.safe_dump(instance_yaml))
        os.environ["FAKE_QAIC_SLEEP"] = "1.0"
        try:
            done = _demo(project)
        finally:
            del os.environ["FAKE_QAIC_SLEEP"]
        assert done.returncode == 0, done.stdout + done.stderr
        spans[limit] = _compiler_spans(project)
        assert len(spans[limit]) == 6  # 2 calibrations + 4 compiles
    assert _overlap(spans[2]), f"no two compilers ever ran at once: {spans[2]}"
    assert not _overlap(spans[1]), f"two compilers ran at once under a pool limit of 1: {spans[1]}"
