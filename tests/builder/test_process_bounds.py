"""qaic_assets.builder.process under a hostile compiler (issue 14): thousands of output lines through a
slow event log, a line of hundreds of MB, helpers that leave the process group with setsid. The
event-log writes are bounded by a count, the wall time by the timeout (its SIGTERM ends the call),
memory by a constant, and no helper outlives the call.

The RSS bound has a generous margin (the machine is shared) and is far below what the old runner took
(1 GB RSS for a 300 MB line; and 101 s for a 20 s timeout, one event-log write per line).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import alive, wait_gone

from qaic_assets.builder.output_stream import BURST_LINES
from qaic_assets.builder.process import CompilerTimeout, run_compiler

PY = sys.executable
REPO = Path(__file__).resolve().parents[2]


class SlowHandler(logging.Handler):
    """A logger as slow as Dagster's event log (one database write per record); a record containing
    ``stall_on`` takes ``stall_s`` instead."""

    def __init__(self, delay_s: float = 0.02, stall_on: str | None = None, stall_s: float = 0.0):
        super().__init__(logging.DEBUG)
        self.delay_s = delay_s
        self.stall_on = stall_on
        self.stall_s = stall_s
        self.messages: list[str] = []

    def emit(self, record):
        message = record.getMessage()
        time.sleep(self.stall_s if self.stall_on and self.stall_on in message else self.delay_s)
        self.messages.append(message)


def slow_logger(handler: SlowHandler) -> logging.Logger:
    logger = logging.getLogger(f"test_process_bounds.{id(handler)}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    return logger


def py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def test_verbose_compiler_succeeds_with_a_rate_limited_log_and_the_full_log_in_a_file(tmp_path):
    """The issue's repro: a compiler that prints 4,000 `compiling node number N` lines and exits 0,
    with a 20 ms event log and a 20 s timeout: a success; the logger got the first burst of lines (no
    refill: lines_per_s=0 makes the budget a count, not a rate over time) in a bounded number of
    writes, and a count of the rest naming the log file, which holds every line."""
    handler = SlowHandler(0.02)
    log_path = tmp_path / "compiler.log"
    argv = py("""
        for n in range(4000):
            print(f"compiling node number {n}")
        print("Compilation 100% ... Done")
    """)
    result = run_compiler(argv, timeout_s=20, log=slow_logger(handler), log_path=log_path, lines_per_s=0)
    assert result.returncode == 0 and result.output_lines == 4001
    lines = log_path.read_text().splitlines()
    assert lines[:2] == ["compiling node number 0", "compiling node number 1"] and len(lines) == 4001
    assert result.log_tail[-1] == "Compilation 100% ... Done"
    forwarded = [line for m in handler.messages for line in m.splitlines() if line.startswith("compiling node number")]
    assert forwarded == [f"compiling node number {n}" for n in range(BURST_LINES)]
    summaries = [m for m in handler.messages if "more compiler output lines not forwarded" in m]
    assert summaries and f"the full log is {log_path}" in summaries[-1]
    assert sum(int(m.split()[0]) for m in summaries) + len(forwarded) == 4001  # each line forwarded or counted
    # event-log writes: the command, the burst (gathered: fewer), the counts, the closing line; not 4,001
    assert len(handler.messages) <= 1 + BURST_LINES + len(summaries) + 1, handler.messages


def test_timeout_bounds_the_wall_time_of_an_endlessly_verbose_compiler(tmp_path):
    """Output that never stops, through a slow logger: the deadline still ends the call, its SIGTERM
    ending the compiler (which would end itself by SIGALRM after 60 s: a guard against a hang)."""
    handler = SlowHandler(0.05)
    argv = py("""
        import signal
        signal.alarm(60)
        n = 0
        while True:
            print(f"compiling node number {n}", flush=True)
            n += 1
    """)
    with pytest.raises(CompilerTimeout) as err:
        run_compiler(argv, timeout_s=2.0, grace_s=0.5, log=slow_logger(handler),
                     log_path=tmp_path / "compiler.log")
    assert err.value.result.returncode == -signal.SIGTERM, "not ended by the deadline's SIGTERM"
    assert "timed out after 2 s" in str(err.value)
    assert err.value.result.log_tail[-1].startswith("compiling node number")
    assert (tmp_path / "compiler.log").stat().st_size > 0


def test_exit_0_noticed_after_the_deadline_is_a_success(tmp_path):
    """The child prints a line, exits 0 0.3 s later; forwarding that line takes 2.5 s, past the 1 s
    deadline: the exit code decides, not the clock (the old runner reported "timed out ... exit code
    0" and threw the output away)."""
    handler = SlowHandler(0.0, stall_on="Compiling model", stall_s=2.5)
    out = tmp_path / "programqpc.bin"
    argv = py(f"""
        import time
        open({str(out)!r}, 'wb').write(b'QPC')
        print('Compiling model', flush=True)
        time.sleep(0.3)
    """)
    result = run_compiler(argv, timeout_s=1.0, grace_s=0.5, log=slow_logger(handler), gather_s=0)  # forward at once
    assert result.returncode == 0 and out.read_bytes() == b"QPC"
    assert "Compiling model" in handler.messages


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB, /proc")
def test_a_300_mb_line_costs_bounded_memory(tmp_path):
    """One 300 MB line without a newline: the calling process's peak RSS grows by far less than the
    line (the old runner peaked at 1 GB); the log file and the tail hold the cut line."""
    code = textwrap.dedent(f"""
        import resource, sys
        from pathlib import Path
        from qaic_assets.builder.process import run_compiler
        child = [sys.executable, "-c", "import sys\\nchunk = b'x' * (1 << 20)\\n"
                 "for _ in range(300): sys.stdout.buffer.write(chunk)\\nsys.stdout.buffer.flush()"]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = run_compiler(child, timeout_s=120, log_path=Path({str(tmp_path / 'compiler.log')!r}))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(before, after, result.output_lines, len(result.log_tail[-1]))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    before_kib, after_kib, lines, tail_len = map(int, done.stdout.split())
    assert (after_kib - before_kib) * 1024 < 64 << 20, (before_kib, after_kib)
    assert lines == 1 and tail_len < 5000
    text = (tmp_path / "compiler.log").read_bytes()
    assert len(text) < 1 << 20 and text.rstrip().endswith(b"more bytes cut]")


ESCAPER = """
    import os, sys, time
    mode, pidfile = sys.argv[1], sys.argv[2]
    r, w = os.pipe()
    if os.fork() == 0:  # the helper
        os.close(r)
        if mode == "daemon" and os.fork() != 0:  # double fork: the middle process exits at once
            os._exit(0)
        os.setsid()  # leaves the compiler's process group and session
        os.write(w, str(os.getpid()).encode())
        os.close(w)
        time.sleep(120)
        os._exit(0)
    os.close(w)
    helper = os.read(r, 32).decode()
    with open(pidfile, "w") as f:
        f.write(helper)
    print("compiling with a helper", helper, flush=True)
    if {hang}:
        time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="walks /proc")
@pytest.mark.parametrize("mode", ["setsid", "daemon"])
@pytest.mark.parametrize("ending", ["exit", "timeout"])
def test_helpers_that_leave_the_process_group_are_ended_too(tmp_path, mode, ending):
    """A helper that calls setsid (directly, or double-forked so it is reparented to init before the
    runner could see it) is ended when the compiler exits and when it times out."""
    pidfile = tmp_path / "helper.pid"
    argv = py(ESCAPER.format(hang=ending == "timeout")) + [mode, str(pidfile)]
    helper = None
    try:
        if ending == "timeout":
            with pytest.raises(CompilerTimeout):
                run_compiler(argv, timeout_s=2, grace_s=0.5)
        else:
            result = run_compiler(argv, timeout_s=30)
            assert result.returncode == 0
        helper = int(pidfile.read_text())
        assert wait_gone(helper), f"the {mode} helper outlived the compiler call"
    finally:
        if helper is not None and alive(helper):
            os.kill(helper, 9)
