"""The one runner for every compiler call (``qaic-exec``, ``qaic-compile`` or ``qaic-exec-cpu``) and
every other SDK executable (``qaic-runner``, ``qaic-qpc validate``, ``qaic-util -q``: :func:`run_tool`).

Why it is built this way (docs/RELIABILITY.md lists the tests):

* A command is an argv list, started with ``subprocess.Popen(argv)`` and never through a shell.
* ``timeout_s`` bounds the wall time of the whole call: output is read on its own thread
  (output_stream.py) and forwarded to the logger at a bounded rate, so neither a verbose compiler nor
  a slow event log can keep the call past its deadline; a child that exited by itself is judged by its
  exit code, never reported as timed out.
* The child runs in its own process group and, on Linux, with ``PR_SET_PDEATHSIG=SIGKILL``. On
  timeout or cancellation (any BaseException in the calling thread) the group and every descendant
  (proctree.py: also those that left the group with ``setsid``) get SIGTERM, then SIGKILL after a
  grace period; when the child exits, whatever is left of them is SIGKILLed.
* Peak RSS comes from ``os.wait4`` (``ru_maxrss``), corrected for the parent's RSS that Linux folds
  into a child's ``ru_maxrss`` (see rss.py).
* Known limit: if our own process is SIGKILLed, PR_SET_PDEATHSIG reaches the compiler process only.
* An SDK tool runs the same way (run_tool); the parsers of qaic/tools.py get its last
  ``TOOL_OUTPUT_LINES`` lines, so a tool's output costs bounded memory too.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from qaic_assets.builder.output_stream import (
    GATHER_S,
    LINES_PER_S,
    PROGRESS_MIN_INTERVAL_S,
    LogForwarder,
    OutputReader,
)
from qaic_assets.builder.proctree import TOKEN_ENV, Descendants, new_token
from qaic_assets.builder.rss import PeakRss
from qaic_assets.qaic.tools import ToolError


# --------------------------------------------------------------------------------------------------
# Tunables

#: Seconds between SIGTERM and SIGKILL when the child is stopped (timeout or cancellation).
TERM_GRACE_S = 10.0
#: After the child (and its descendants) ended, how long to wait for the output pipe to reach EOF.
_DRAIN_S = 2.0
#: How often the main loop wakes up (exit, deadline, forwarding), and how often /proc is walked.
_POLL_S = 0.05
_SCAN_S = 0.25
#: Timeout of the SDK's query tools (qaic-qpc validate, qaic-util -q: seconds on a healthy host);
#: qaic-runner gets ``throughput_check.timeout_s``.
TOOL_TIMEOUT_S = 120.0
#: A tool's output kept for its parser: its last lines, each cut at output_stream.MAX_LINE_CHARS.
TOOL_OUTPUT_LINES = 2000
_TOOL_ERROR_CHARS = 400  # of a failed tool's output, in the ToolError


# --------------------------------------------------------------------------------------------------
# Result and errors


@dataclass(frozen=True)
class RunResult:
    """What one compiler call did. ``returncode`` follows subprocess: negative = killed by signal."""

    argv: list[str]
    returncode: int
    duration_s: float
    peak_rss_bytes: int
    log_tail: list[str]
    output_lines: int = 0
    log_path: str | None = None  # every output line, when the caller asked for a log file


class CompilerError(RuntimeError):
    """Base class of runner failures; ``result`` is the RunResult of the call."""

    def __init__(self, message: str, result: RunResult):
        super().__init__(message)
        self.result = result


class CompilerFailed(CompilerError):
    """The compiler exited non-zero, died by a signal, or could not be started."""


class CompilerTimeout(CompilerError):
    """The compiler ran longer than ``timeout_s`` and was terminated."""


# --------------------------------------------------------------------------------------------------
# Process-group / parent-death plumbing

_PR_SET_PDEATHSIG = 1
#: Returncode reported when the child's exit status is lost (someone else reaped it).
_UNKNOWN_STATUS = 255
_SIGKILL = int(signal.SIGKILL)


def _load_libc():
    """libc's ``prctl`` (Linux only) and ``signal``, or None where they are not there."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - exotic platforms
        return None, None
    prctl = getattr(libc, "prctl", None) if sys.platform.startswith("linux") else None
    if prctl is not None:
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        prctl.restype = ctypes.c_int
    set_handler = getattr(libc, "signal", None)
    if set_handler is not None:
        set_handler.argtypes = [ctypes.c_int, ctypes.c_void_p]
        set_handler.restype = ctypes.c_void_p
    return prctl, set_handler


# Resolved once in the parent: nothing has to be looked up in the forked child.
_PRCTL, _SET_HANDLER = _load_libc()
_SIGTERM = int(signal.SIGTERM)
_SIG_DFL = int(signal.SIG_DFL)


def die_with_parent(parent_pid: int):
    """The function a child runs first (between fork and exec, or as a run worker starts): SIGKILL
    when `parent_pid` dies (PR_SET_PDEATHSIG, Linux), SIGTERM's default action back."""
    prctl, set_handler = _PRCTL, _SET_HANDLER

    def _preexec() -> None:  # runs in the child between fork and exec
        # An ignored SIGTERM survives exec: a process started in the background has SIGINT ignored,
        # and Dagster maps SIGTERM to SIGINT's handler, so the compiler would ignore our SIGTERM and
        # only ever stop by SIGKILL, with no chance to clean up. It gets the default action back.
        if set_handler is not None:
            set_handler(_SIGTERM, _SIG_DFL)
        if prctl is None:
            return
        prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody would kill us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return _preexec


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _has_exited(pid: int) -> bool:
    """True once the child has exited; does not reap it (the zombie keeps its pid and pgid reserved)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None and info.si_pid != 0


def _wait_exited(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if _has_exited(pid):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(0.02, remaining))


def _stop_group(pid: int, grace_s: float, family: Descendants | None = None) -> None:
    """SIGTERM the child's process group and its escaped descendants, SIGKILL them after ``grace_s``;
    wait until the leader exited."""
    _killpg(pid, signal.SIGTERM)
    if family is not None:
        family.scan()
        family.signal_all(signal.SIGTERM)
    if not _wait_exited(pid, grace_s):
        _killpg(pid, signal.SIGKILL)
        _wait_exited(pid, 60.0)


def _reap(pid: int) -> tuple[int, int]:
    """Reap the (already exited) child: (returncode, peak RSS in bytes)."""
    try:
        _, status, rusage = os.wait4(pid, 0)
    except ChildProcessError:  # reaped by someone else (e.g. a foreign SIGCHLD handler)
        return _UNKNOWN_STATUS, 0
    if hasattr(os, "waitstatus_to_exitcode"):
        code = os.waitstatus_to_exitcode(status)
    elif os.WIFSIGNALED(status):  # pragma: no cover - Python < 3.9
        code = -os.WTERMSIG(status)
    else:  # pragma: no cover
        code = os.WEXITSTATUS(status)
    maxrss = int(rusage.ru_maxrss)
    peak = maxrss if sys.platform == "darwin" else maxrss * 1024  # Linux reports KiB
    return code, peak


# --------------------------------------------------------------------------------------------------
# Output handling

def _format_tail(tail: list[str]) -> str:
    if not tail:
        return "(no output)"
    return "\n".join(tail)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"  # pragma: no cover


# --------------------------------------------------------------------------------------------------
# run_compiler


def run_compiler(
    argv: list[str],
    *,
    timeout_s: float,
    log: logging.Logger | None = None,
    env: Mapping[str, str | None] | None = None,
    cwd: Path | None = None,
    tail_lines: int = 50,
    grace_s: float = TERM_GRACE_S,
    progress_interval_s: float = PROGRESS_MIN_INTERVAL_S,
    log_path: Path | None = None,
    log_name: str | Path | None = None,
    lines_per_s: float = LINES_PER_S,
    gather_s: float = GATHER_S,
) -> RunResult:
    """Run one compiler command and return its RunResult; raise a CompilerError if it did not succeed.

    ``argv`` is passed to the child verbatim (no shell, no splitting). ``env`` is *merged over*
    ``os.environ`` (a value of ``None`` removes a variable); ``PYTHONUNBUFFERED=1`` is set unless given,
    so Python-based compilers stream their output. ``timeout_s`` bounds the wall time of the call: a
    child still running at the deadline gets SIGTERM (its process group and every descendant), SIGKILL
    after ``grace_s``, and CompilerTimeout is raised; a child that exited by itself before we noticed
    the deadline is judged by its exit code. Any BaseException raised in the calling thread while
    waiting (cancellation) stops the child the same way and is re-raised. Exit code != 0 or death by a
    signal raises CompilerFailed. Every output line goes to ``log_path`` (when given); selected lines
    reach ``log`` at most ``lines_per_s`` per second, the rest as a count naming the log file as
    ``log_name`` (default ``log_path``: a temporary dir renamed into place names its final path); lines
    that arrive within ``gather_s`` of each other are one record per level, and the closing ones one
    with the ``finished`` line.
    """
    argv = [os.fspath(a) for a in argv]
    if not argv:
        raise ValueError("run_compiler: empty argv")
    if not (timeout_s and 0 < timeout_s < float("inf")):
        raise ValueError(f"run_compiler: timeout_s must be a finite number > 0, got {timeout_s!r}")

    token = new_token()
    child_env = dict(os.environ)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    for key, value in (env or {}).items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = str(value)
    child_env[TOKEN_ENV] = token

    cmd_name = os.path.basename(argv[0])
    cmd_text = shlex.join(argv)
    forwarder = LogForwarder(log, lines_per_s=lines_per_s, progress_interval_s=progress_interval_s,
                             log_path=log_name or log_path, gather_s=gather_s)
    if log is not None:
        log.info(f"$ {cmd_text}")

    rss = PeakRss()
    start = time.monotonic()
    deadline = start + timeout_s
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=child_env,
            cwd=os.fspath(cwd) if cwd is not None else None,
            start_new_session=True,  # own session => own process group (pgid == pid)
            preexec_fn=die_with_parent(os.getpid()),
            close_fds=True,
        )
    except OSError as exc:
        code = 126 if exc.errno in (errno.EACCES, errno.ENOEXEC) else 127
        result = RunResult(argv, code, time.monotonic() - start, 0, [str(exc)])
        raise CompilerFailed(f"{cmd_name} could not be started: {exc}\ncommand: {cmd_text}", result) from exc

    pid = proc.pid
    family = Descendants(pid, token)
    reader = OutputReader(proc.stdout.fileno(), log_path, tail_lines)

    def forward(flush: bool = True) -> None:
        now = time.monotonic()
        for line in reader.drain_selected():
            forwarder.offer(line, now)
        forwarder.tick(now)
        if flush:
            forwarder.flush_due(now)

    timed_out = False
    try:
        reader.start()
        next_scan = 0.0
        while True:
            now = time.monotonic()
            rss.sample(pid, now)  # Popen returned => the child has exec'd: its VmHWM is its own
            if now >= next_scan:
                family.scan()
                next_scan = now + _SCAN_S
            forward()
            if _has_exited(pid):
                break
            if time.monotonic() >= deadline:
                timed_out = True
                break
            reader.wait(min(_POLL_S, max(0.0, deadline - time.monotonic())))
            if reader.done.is_set():  # output closed: only the exit is left to wait for
                time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))
        if timed_out:
            _stop_group(pid, grace_s, family)
        _end_family(pid, family)
        reader.wait(_DRAIN_S)
        forwarder.count_dropped(reader.overflow)
        forward(flush=False)  # the closing lines go out with the outcome (below): one event, not one each
        forwarder.tick(final=True)
    except BaseException:
        forwarder.flush()
        # Cancellation (KeyboardInterrupt / DagsterExecutionInterruptedError / ...): stop the child.
        try:
            _stop_group(pid, grace_s, family)
        except BaseException:
            _killpg(pid, signal.SIGKILL)
            raise
        finally:
            _end_family(pid, family)
            returncode, _ = _reap(pid)
            proc.returncode = returncode
            if reader.wait(_DRAIN_S):
                _close_quietly(proc.stdout)
        if log is not None:
            elapsed = time.monotonic() - start
            log.warning(f"{cmd_name} interrupted after {elapsed:.1f} s; its process group {pid} was stopped")
        raise

    returncode, wait4_peak = _reap(pid)
    peak_rss = rss.resolve(wait4_peak)
    proc.returncode = returncode  # keep Popen consistent (it must not try to wait for the pid again)
    duration = time.monotonic() - start
    if reader.done.is_set():  # else something outside our reach holds the pipe: leave the fd be
        _close_quietly(proc.stdout)
    result = RunResult(argv, returncode, duration, peak_rss, list(reader.tail), reader.lines,
                       str(log_name or log_path) if log_path is not None else None)

    tail_text = _format_tail(result.log_tail)
    if timed_out or returncode != 0:
        forwarder.flush()
    if timed_out:
        raise CompilerTimeout(
            f"{cmd_name} timed out after {timeout_s:g} s and was stopped "
            f"(SIGTERM, SIGKILL after {grace_s:g} s; {_describe_code(returncode)}).\n"
            f"command: {cmd_text}\n--- last {len(result.log_tail)} lines of output ---\n{tail_text}",
            result,
        )
    if returncode != 0:
        hint = ""
        if returncode == -_SIGKILL:
            hint = f" (peak RSS {_human_bytes(peak_rss)}; SIGKILL from outside often means the OOM killer)"
        raise CompilerFailed(
            f"{cmd_name} failed: {_describe_code(returncode)}{hint} after {duration:.1f} s.\n"
            f"command: {cmd_text}\n--- last {len(result.log_tail)} lines of output ---\n{tail_text}",
            result,
        )
    if log is not None:
        where = f"; full log {log_name or log_path}" if log_path is not None else ""
        forwarder.flush(f"{cmd_name} finished in {duration:.1f} s, peak RSS {_human_bytes(peak_rss)}, "
                        f"{reader.lines} output lines{where}")
    return result


def run_tool(argv: list[str], *, timeout_s: float = TOOL_TIMEOUT_S, log: logging.Logger | None = None,
             grace_s: float = TERM_GRACE_S) -> str:
    """Run an SDK tool through run_compiler (timeout, process group, SIGTERM then SIGKILL, bounded
    output) and return what it printed for the parsers of qaic/tools.py: its last ``TOOL_OUTPUT_LINES``
    lines, after a ``[... N earlier output lines not kept]`` line when there were more. A tool that
    failed, timed out or could not be started is a ToolError naming the outcome and the end of its
    output; the CompilerError (with its RunResult) is the ToolError's ``__cause__``."""
    try:
        result = run_compiler(argv, timeout_s=timeout_s, log=log, tail_lines=TOOL_OUTPUT_LINES, grace_s=grace_s)
    except CompilerError as exc:
        headline = str(exc).split("\n", 1)[0]
        output = "\n".join(exc.result.log_tail).strip()
        raise ToolError(f"{headline} Its output ended: {output[-_TOOL_ERROR_CHARS:] or '(none)'}") from exc
    kept = list(result.log_tail)
    if result.output_lines > len(kept):
        kept.insert(0, f"[... {result.output_lines - len(kept)} earlier output lines not kept]")
    return "".join(line + "\n" for line in kept)


def _end_family(pid: int, family: Descendants) -> None:
    """The leader exited (a zombie keeps its pgid reserved): SIGKILL what is left of its group and
    every descendant that escaped it."""
    _killpg(pid, signal.SIGKILL)
    family.kill_all()


def _describe_code(returncode: int) -> str:
    if returncode < 0:
        return f"killed by signal {_signal_name(-returncode)} ({-returncode})"
    return f"exit code {returncode}"


def _close_quietly(stream) -> None:
    try:
        if stream is not None:
            stream.close()
    except OSError:
        pass
