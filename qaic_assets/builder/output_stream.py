"""A compiler's output, in bounded memory and at a bounded event rate.

A real compiler with ``-vvv`` prints thousands of lines, and every line forwarded to Dagster is one
event-log write (tens of milliseconds). So: a reader thread reads the merged stdout/stderr in chunks
(never a whole line at once: a 300 MB line without a newline costs ``MAX_LINE_BYTES``), writes every
line (cut at ``MAX_LINE_BYTES``) to the log file beside the artifact, keeps the last lines for the
failure message (control characters made visible escapes: no terminal obeys a compiler's escape
sequences), and hands only lines matching :data:`LOG_LINE_PATTERN` to a bounded queue. The
calling thread forwards those through :class:`LogForwarder`: at most ``lines_per_s`` per second (after
a burst), ``%`` progress lines at most once per ``progress_interval_s``, and the rest summarised as a
count every ``summary_every_s`` seconds and at the end, naming the log file. Lines that arrive
together (a compiler's closing report) are one event per level, not one per line.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import re
import threading
import time
from collections import deque
from pathlib import Path

#: Output lines forwarded to the logger (case-insensitive search); the others only go to the log
#: file and the tail.
LOG_LINE_PATTERN = re.compile(r"error|warn|fatal|fail|exception|traceback|%|compil|profil|\bdone\b",
                              re.IGNORECASE)
_ERROR_LINE_PATTERN = re.compile(r"error|fatal|fail|exception|traceback", re.IGNORECASE)
_WARNING_LINE_PATTERN = re.compile(r"warn", re.IGNORECASE)

#: A longer line is cut to this many bytes (in the log file) and to MAX_LINE_CHARS (tail and logger).
MAX_LINE_BYTES = 64 * 1024
MAX_LINE_CHARS = 4000
_CHUNK = 64 * 1024
_QUEUE_MAX = 1000  # selected lines waiting for the calling thread; more are counted, not kept

#: Defaults of the forwarding budget.
LINES_PER_S = 5.0
BURST_LINES = 20
PROGRESS_MIN_INTERVAL_S = 1.0
SUMMARY_EVERY_S = 10.0
GATHER_S = 0.5  # admitted lines wait up to this long for the lines after them (one event for a burst)


#: C0 and C1 control characters but tab, and DEL: a terminal obeys them (ESC starts colour, cursor and
#: title sequences; BEL rings; backspace and carriage return overwrite what was printed).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def visible(line: str) -> str:
    """``line`` with each control character written as its escape (ESC as the 4 characters ``\\x1b``):
    a compiler's line reaches terminals through the event log, and must show as text, not act."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), line)


def _level(line: str) -> int:
    if _ERROR_LINE_PATTERN.search(line):
        return logging.ERROR
    if _WARNING_LINE_PATTERN.search(line):
        return logging.WARNING
    return logging.INFO


class OutputReader:
    """Reads a pipe on its own thread: log file, tail, and selected lines for the logger."""

    def __init__(self, fd: int, log_path: Path | None, tail_lines: int):
        self.fd = fd
        self.log_path = log_path
        self.tail: deque[str] = deque(maxlen=max(0, tail_lines))
        self.selected: queue.Queue = queue.Queue(maxsize=_QUEUE_MAX)
        self.lines = 0
        self.overflow = 0  # selected lines dropped because the queue was full
        self.log_error: OSError | None = None
        self.done = threading.Event()
        self._file = None
        self._partial = bytearray()
        self._cut = 0  # bytes dropped from the current line
        self._thread = threading.Thread(target=self._run, name=f"compiler-output-{fd}", daemon=True)

    def start(self) -> None:
        if self.log_path is not None:
            try:
                self._file = open(self.log_path, "wb")
            except OSError as exc:  # the compile must not fail because its log cannot be written
                self.log_error = exc
        self._thread.start()

    def wait(self, timeout_s: float) -> bool:
        """True once the pipe reached EOF and everything read was processed."""
        return self.done.wait(max(0.0, timeout_s))

    def _run(self) -> None:
        try:
            while True:
                chunk = os.read(self.fd, _CHUNK)
                if not chunk:
                    break
                self._feed(chunk)
            if self._partial or self._cut:
                self._line()
        except (OSError, ValueError):
            pass
        finally:
            if self._file is not None:
                try:
                    self._file.close()
                except OSError as exc:
                    self.log_error = exc
            self.done.set()

    def _feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            room = MAX_LINE_BYTES - len(self._partial)
            if len(piece) > room:
                self._partial += piece[:room]
                self._cut += len(piece) - room
            else:
                self._partial += piece
            if end < 0:
                return
            self._line()
            start = end + 1

    def _line(self) -> None:
        raw = bytes(self._partial)
        if self._cut:
            raw += f" [... {self._cut} more bytes cut]".encode()
        self._partial.clear()
        self._cut = 0
        self._write(raw + b"\n")
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        # progress bars redraw with "\r": each segment is a line
        for segment in text.split("\r") if "\r" in text else (text,):
            if "\r" in text and not segment.strip():
                continue
            segment = visible(segment)  # the log file keeps the raw bytes
            segment = segment if len(segment) <= MAX_LINE_CHARS else segment[:MAX_LINE_CHARS] + " [...]"
            self.lines += 1
            self.tail.append(segment)
            if LOG_LINE_PATTERN.search(segment):
                try:
                    self.selected.put_nowait(segment)
                except queue.Full:
                    self.overflow += 1

    def _write(self, data: bytes) -> None:
        if self._file is None:
            return
        try:
            self._file.write(data)
        except OSError as exc:  # disk full: keep reading (the compiler must not block on its pipe)
            self.log_error = exc
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def drain_selected(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.selected.get_nowait())
            except queue.Empty:
                return out


class LogForwarder:
    """Forwards selected lines to a logger at a bounded rate and summarises the rest."""

    def __init__(self, log: logging.Logger | None, *, lines_per_s: float = LINES_PER_S,
                 burst: int = BURST_LINES, progress_interval_s: float = PROGRESS_MIN_INTERVAL_S,
                 summary_every_s: float = SUMMARY_EVERY_S, log_path: Path | None = None,
                 gather_s: float = GATHER_S):
        self.log = log
        self.gather_s = gather_s
        self.rate = lines_per_s
        self.burst = float(burst)
        self.tokens = float(burst)
        self.progress_interval_s = progress_interval_s
        self.summary_every_s = summary_every_s
        self.log_path = log_path
        self.forwarded = 0
        self.suppressed = 0
        self.suppressed_total = 0
        self._worst = logging.INFO
        self._last = time.monotonic()
        self._last_progress = float("-inf")
        self._next_summary = self._last + summary_every_s
        self._pending: list[tuple[int, str]] = []  # admitted lines not logged yet (see flush)
        self._pending_since = 0.0

    def offer(self, line: str, now: float | None = None) -> None:
        """Admit one line within the budget; it is logged at the next flush()."""
        if self.log is None:
            return
        now = time.monotonic() if now is None else now
        level = _level(line)
        if level == logging.INFO and "%" in line:
            if now - self._last_progress < self.progress_interval_s:
                return  # a progress redraw: the next one says more
            self._last_progress = now
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.forwarded += 1
            if not self._pending:
                self._pending_since = now
            self._pending.append((level, line))
        else:
            self._suppress(level)
        self.tick(now)

    def flush_due(self, now: float | None = None) -> None:
        """flush() once the oldest admitted line has waited gather_s for the lines after it."""
        now = time.monotonic() if now is None else now
        if self._pending and now - self._pending_since >= self.gather_s:
            self.flush()

    def flush(self, closing: str | None = None) -> None:
        """Log the admitted lines, consecutive ones of one level as one message (each message is an
        event-log write: tens of ms on a loaded machine), then `closing` (INFO) with the last INFO ones."""
        if self.log is None:
            return
        if closing is not None:
            self._pending.append((logging.INFO, closing))
        pending, self._pending = self._pending, []
        for level, lines in itertools.groupby(pending, key=lambda item: item[0]):
            self.log.log(level, "\n".join(line for _, line in lines))

    def _suppress(self, level: int, n: int = 1) -> None:
        self.suppressed += n
        self.suppressed_total += n
        self._worst = max(self._worst, level)

    def count_dropped(self, n: int) -> None:
        if n:
            self._suppress(logging.INFO, n)

    def tick(self, now: float | None = None, final: bool = False) -> None:
        """Log the count of lines held back since the last summary (every summary_every_s, and at the end)."""
        now = time.monotonic() if now is None else now
        if self.log is None or not self.suppressed or (not final and now < self._next_summary):
            return
        self.flush()  # the lines before the count
        where = f"; the full log is {self.log_path}" if self.log_path is not None else ""
        self.log.log(min(self._worst, logging.WARNING),
                     f"{self.suppressed} more compiler output lines not forwarded (at most "
                     f"{self.rate:g} lines/s){where}")
        self.suppressed = 0
        self._worst = logging.INFO
        self._next_summary = now + self.summary_every_s
