"""Small helpers several test folders share (processes, materialization records)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg

#: The tests' instance: no telemetry, and no capture of a step's stdout/stderr (Dagster's local capture
#: starts `tail -F` and a watcher interpreter per step, and waits up to 30 s for each to stop; a run
#: executed in a test's thread met that wait). The shipped dagster.yaml keeps the capture; the
#: tests that run it pass it (test_demo_workers) or start the demo and the webserver on it.
TEST_INSTANCE_YAML = ("telemetry: {enabled: false}\n"
                      "compute_logs: {module: dagster.core.storage.noop_compute_log_manager, class: NoOpComputeLogManager}\n")


def alive(pid: int) -> bool:
    """True if pid runs (a zombie left to a non-reaping init counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # pragma: no cover - non-Linux fallback
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def wait_gone(pid: int, timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return not alive(pid)


def latest(instance, key, partition):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1).records
    return records[0].asset_materialization if records else None


LOCATION = "qaic_assets.definitions"


def stop_session(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Stop a process started in its own session, with everything it started."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def start_webserver(project, log: Path) -> tuple[subprocess.Popen, str]:
    """dagster-webserver on the project's DAGSTER_HOME and config, on a free port: (process, base URL),
    once /server_info answers (a guard of 90 s against a hang; raises with the log's tail)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DAGSTER_HOME": str(project.home), "QAIC_ASSETS_CONFIG": str(project.config_path)}
    for var in ("QAIC_SDK_ROOT", "QAIC_ASSETS_STORAGE_ROOT"):
        env.pop(var, None)
    with log.open("wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("dagster-webserver")), "-h", "127.0.0.1",
                                 "-p", str(port), "-m", LOCATION], cwd=project.root, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"dagster-webserver exited ({proc.returncode}):\n" + log.read_text()[-3000:])
        try:
            with urllib.request.urlopen(base + "/server_info", timeout=2) as response:
                if response.status == 200:
                    return proc, base
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_session(proc)
            raise RuntimeError("dagster-webserver did not answer within 90 s:\n" + log.read_text()[-3000:])
        time.sleep(0.5)


def failure_message(result) -> str:
    """The step failure's message as the UI shows it (with the chain of causes, if any)."""
    assert not result.success
    failures = [e for e in result.all_events if e.is_step_failure]
    assert failures, "the run failed without a step failure"
    error, parts = failures[0].step_failure_data.error, []
    while error is not None:
        parts.append(error.message)
        error = error.cause
    return "\n".join(parts)


def wrap_compiler(sdk: Path, body: str) -> None:
    """Replace <sdk>/exec/qaic-exec by a Python script (`REAL` is the original's path)."""
    exe = Path(sdk) / "exec" / "qaic-exec"
    real = exe.with_name("qaic-exec.real")
    exe.rename(real)
    exe.write_text(f"#!{sys.executable}\nimport os, subprocess, sys\nREAL = {str(real)!r}\n{body}")
    exe.chmod(0o755)


def run_messages(project, run_id: str) -> list[str]:
    """The user messages of a run's events."""
    return [r.user_message or "" for r in project.instance.all_logs(run_id)]


def run_partitions(run: dg.DagsterRun) -> str | None:
    """A run's partition, or its range as "first...last" (a compile run of the demo), from its tags."""
    from qaic_assets.orchestration.jobs import RANGE_END_TAG, RANGE_START_TAG

    if RANGE_START_TAG in run.tags:
        return f"{run.tags[RANGE_START_TAG]}...{run.tags[RANGE_END_TAG]}"
    return run.tags.get("dagster/partition")
