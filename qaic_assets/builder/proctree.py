"""Every process a compiler call started, even those that left its process group (``setsid``).

Signalling the child's process group misses helpers that called ``setsid``/``setpgid``. So each call
marks its child's environment with a unique token (inherited by every descendant that does not clear
its environment) and, while it runs, records the child's descendants by walking ``/proc`` (pid and
start time, so a recycled pid is never signalled). When the call ends, both sets are killed: recorded
descendants still alive, and any process whose environment carries the token (a double-forked daemon
reparented to init before the walk saw it). Linux only; elsewhere this does nothing.
"""

from __future__ import annotations

import os
import secrets
import signal

#: The environment variable that marks a call's processes (its value is unique per call).
TOKEN_ENV = "QAIC_ASSETS_CALL_TOKEN"
_PROC = "/proc"


def new_token() -> str:
    return f"{os.getpid()}-{secrets.token_hex(8)}"


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time in clock ticks) of a live process, None if gone or a zombie."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data.rsplit(b")", 1)[-1].split()  # the command name may hold spaces and ')'
    try:
        if fields[0] in (b"Z", b"X"):
            return None
        return int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir(_PROC) if name.isdigit()]
    except OSError:
        return []


def _has_token(pid: int, marker: bytes) -> bool:
    try:
        with open(f"{_PROC}/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


class Descendants:
    """The processes of one compiler call (see the module docstring)."""

    def __init__(self, root_pid: int, token: str):
        self.root_pid = root_pid
        self.marker = f"{TOKEN_ENV}={token}".encode()
        self.seen: dict[int, int] = {}  # pid -> start time

    def scan(self) -> None:
        """Record the current descendants of the child (and of descendants seen before)."""
        children: dict[int, list[int]] = {}
        starts: dict[int, int] = {}
        for pid in _pids():
            info = _stat(pid)
            if info is not None:
                children.setdefault(info[0], []).append(pid)
                starts[pid] = info[1]
        frontier = [self.root_pid] + [p for p, st in self.seen.items() if starts.get(p) == st]
        while frontier:
            for child in children.get(frontier.pop(), ()):
                if child not in self.seen or self.seen[child] != starts[child]:
                    self.seen[child] = starts[child]
                    frontier.append(child)

    def alive(self) -> list[int]:
        """Recorded descendants still running, plus every process carrying the call's token."""
        me = os.getpid()
        found = {p for p, st in self.seen.items() if (_stat(p) or (0, -1))[1] == st}
        found |= {p for p in _pids() if p not in found and p != me and _has_token(p, self.marker)}
        found.discard(me)
        found.discard(1)
        return sorted(found)

    def signal_all(self, sig: int) -> list[int]:
        """Send ``sig`` to every process of the call that still runs; returns their pids."""
        hit = []
        for pid in self.alive():
            try:
                os.kill(pid, sig)
                hit.append(pid)
            except (ProcessLookupError, PermissionError):
                pass
        return hit

    def kill_all(self, rounds: int = 3) -> list[int]:
        """SIGKILL the call's processes, rescanning so children forked meanwhile are caught too."""
        killed: list[int] = []
        for _ in range(rounds):
            self.scan()
            hit = self.signal_all(signal.SIGKILL)
            if not hit:
                break
            killed += hit
        return killed
