"""SDK tools (qaic-runner, qaic-qpc validate, qaic-util -q) run through the compiler's supervised runner
(builder/process.run_tool over run_compiler): a hanging tool is stopped at its timeout with its whole
process group, SIGTERM reaches it even from a process that ignores SIGTERM, and what a tool prints costs
bounded memory."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import alive, wait_gone

from qaic_assets.builder.output_stream import MAX_LINE_CHARS
from qaic_assets.builder.process import TOOL_OUTPUT_LINES, CompilerTimeout, run_tool
from qaic_assets.qaic import tools
from qaic_assets.settings import ThroughputCheck

STATS = "InferenceCnt 500 TotalDuration 250000us BatchSize 8 Inf/Sec 16000.000"


def tool(path: Path, body: str) -> Path:
    """An executable Python script named like an SDK tool."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def hanging_runner(path: Path, pidfile: Path, ignore_term: bool = False) -> Path:
    """A qaic-runner that starts a helper in its process group, says so, and never finishes."""
    return tool(path, f"""
        import os, signal, subprocess, sys, time
        if {ignore_term}:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open({str(pidfile)!r}, "w") as f:
            f.write(f"{{os.getpid()}} {{os.getpgrp()}} {{helper.pid}}")
        print("Using bounded random inputs", flush=True)
        while True:
            time.sleep(1)
        """)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def wait_group_gone(pgid: int, timeout: float = 5.0) -> list[int]:
    end = time.monotonic() + timeout
    while group_members(pgid) and time.monotonic() < end:
        time.sleep(0.02)
    return group_members(pgid)


def read_pids(pidfile: Path) -> tuple[int, int, int]:
    pid, pgid, helper = map(int, pidfile.read_text().split())
    return pid, pgid, helper


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("ignore_term", [False, True], ids=["stops-on-sigterm", "ignores-sigterm"])
def test_a_hanging_tool_is_stopped_with_its_process_group_at_its_timeout(tmp_path, ignore_term):
    pidfile = tmp_path / "pids"
    runner = hanging_runner(tmp_path / "exec" / "qaic-runner", pidfile, ignore_term)
    argv = tools.runner_argv(runner, tmp_path, 1, 500, 0)
    with pytest.raises(tools.ToolError) as ei:
        run_tool(argv, timeout_s=1.0, grace_s=0.5)
    timeout = ei.value.__cause__
    assert isinstance(timeout, CompilerTimeout), repr(timeout)
    # stopped by the runner's signals: SIGTERM, or SIGKILL after the grace when SIGTERM is ignored
    assert timeout.result.returncode == (-signal.SIGKILL if ignore_term else -signal.SIGTERM)
    pid, pgid, helper = read_pids(pidfile)
    assert pgid == pid  # the tool led its own process group
    assert os.getpid() in group_members(os.getpgrp())  # group_members sees a live group
    assert not wait_group_gone(pgid), "processes of the tool's group survived its timeout"
    assert wait_gone(helper) and not alive(pid)
    message = str(ei.value)
    assert message.startswith("qaic-runner timed out after 1 s and was stopped")
    assert "Using bounded random inputs" in message  # the end of its output


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_tool_started_while_sigterm_is_ignored_still_stops_on_sigterm(tmp_path):
    """A run worker ignores SIGTERM (see test_process.py): the tool gets the default action back."""
    pidfile = tmp_path / "pids"
    runner = hanging_runner(tmp_path / "exec" / "qaic-runner", pidfile)
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with pytest.raises(tools.ToolError) as ei:
            run_tool([str(runner)], timeout_s=1.0, grace_s=30)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert ei.value.__cause__.result.returncode == -signal.SIGTERM
    assert not wait_group_gone(read_pids(pidfile)[1])


def test_a_tools_huge_output_is_capped_and_its_last_lines_still_parse(tmp_path):
    runner = tool(tmp_path / "exec" / "qaic-runner", f"""
        import sys
        out = sys.stdout
        for i in range(50000):
            out.write(f"inference {{i}} done\\n")
        out.write("x" * (8 * 1024 * 1024) + "\\n")  # one 8 MiB line
        out.write({STATS!r} + "\\n")
        """)
    text = run_tool([str(runner)], timeout_s=120)
    lines = text.splitlines()
    assert len(lines) == TOOL_OUTPUT_LINES + 1
    assert lines[0] == f"[... {50002 - TOOL_OUTPUT_LINES} earlier output lines not kept]"
    assert max(len(line) for line in lines) <= MAX_LINE_CHARS + len(" [...]")
    assert len(text) < 200_000  # of 8.5 MB printed
    assert tools.parse_runner(text) == tools.RunnerStats(500, 250000, 8, 16000.0)


def test_a_failing_tools_error_is_bounded_and_names_the_outcome(tmp_path):
    qpc = tool(tmp_path / "tools" / "qaic-qpc", """
        import sys
        for i in range(100000):
            print(f"checking section {i}")
        sys.stderr.write("ERROR: x is not a valid QPC\\n")
        sys.exit(3)
        """)
    with pytest.raises(tools.ToolError) as ei:
        run_tool(tools.validate_argv(qpc, tmp_path / "x"))
    message = str(ei.value)
    assert message.startswith("qaic-qpc failed: exit code 3 after ")
    assert message.endswith("ERROR: x is not a valid QPC") and len(message) < 600


def test_a_tool_that_cannot_start_is_a_tool_error(tmp_path):
    missing = tmp_path / "tools" / "qaic-util"
    with pytest.raises(tools.ToolError, match=r"^qaic-util could not be started: .*No such file"):
        run_tool([str(missing), "-q"])


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), "inf", 0, -1, 86401])
def test_the_runners_timeout_in_the_settings_is_finite_and_bounded(bad):
    with pytest.raises(ValueError, match="timeout_s"):
        ThroughputCheck(timeout_s=bad)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 0])
def test_run_tool_refuses_a_timeout_that_is_not_finite(bad):
    with pytest.raises(ValueError, match="finite number > 0"):
        run_tool(["true"], timeout_s=bad)
