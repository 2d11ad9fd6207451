"""What `make demo` shows while it works.

On a terminal: a live `rich` display (steps and runs done of the total, elapsed time and an
estimate, the steps running now), finished steps scrolling above it. Otherwise (CI, a log, a pipe):
one plain line per step, written when the step ends or is found up to date. The steps are followed
from the instance's event log (`DagsterInstance.get_records_for_run`), the record every run leaves,
so the display shows what Dagster recorded, not a guess.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

import dagster as dg

OK, UP_TO_DATE, FAILED, NOT_RUN = "ok", "up to date", "FAILED", "not run"
_STYLE = {OK: "green", UP_TO_DATE: "dim", FAILED: "bold red", NOT_RUN: "yellow"}


def step_line(status: str, label: str, seconds: float | None = None, note: str = "") -> str:
    took = f" ({seconds:.1f}s)" if seconds is not None else ""
    return f"[{status}] {label}{took}" + (f": {note}" if note else "")


class PlainProgress:
    """One line per step; no colour, no cursor movement. `statuses`: each step's outcome (label ->
    status), for the demo's footer."""

    def __init__(self, total_runs: int, total_steps: int, out: TextIO | None = None):
        self.out = out or sys.stdout
        self.total_runs, self.total_steps = total_runs, total_steps
        self.steps_done = 0
        self.statuses: dict[str, str] = {}
        self._lock = threading.Lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.out.flush()

    def run_done(self) -> None:
        pass

    def step_started(self, label: str) -> None:
        pass

    def step_ended(self, label: str) -> None:
        """A started label that is not a step of its own ended (a range step: its partitions are)."""

    def tick(self) -> None:
        """Called after each poll of a running run (a live display redraws: its clocks move)."""

    def step_done(self, label: str, status: str, seconds: float | None = None, note: str = "") -> None:
        with self._lock:
            self.steps_done += 1
            self.statuses[label] = status
            self._print(status, label, seconds, note)

    def _print(self, status: str, label: str, seconds: float | None, note: str) -> None:
        print(f"{step_line(status, label, seconds, note)}  [{self.steps_done}/{self.total_steps}]",
              file=self.out, flush=True)


class LiveProgress(PlainProgress):
    """The same lines, under a live display of the steps and runs done and the steps running now.
    Redrawn by the followers' polls (tick), not by a thread of rich's own: the demo forks its run
    workers while it is the only thread (demo.worker_start_method). sys.stdout and sys.stderr stay the
    process's own: Dagster's lines go to the demo's log (demo.dagster_output_to), in the run workers
    forked from this process too, not over the display."""

    def __init__(self, total_runs: int, total_steps: int, out: TextIO | None = None):
        super().__init__(total_runs, total_steps, out)
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        from rich.text import Text

        running = self.running = {}

        class Running(ProgressColumn):  # the steps running now, with their time so far (each refresh)
            def render(self, task) -> Text:
                if task.description != "steps" or not running:
                    return Text("")
                now = time.monotonic()
                return Text("running: " + ", ".join(f"{label} {now - t:.0f}s" for label, t in list(running.items())),
                            style="cyan")

        self.console = Console(file=self.out)
        self.progress = Progress(TextColumn("{task.description:<6}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), Running(),
                                 console=self.console, auto_refresh=False, redirect_stdout=False,
                                 redirect_stderr=False)
        self.steps = self.progress.add_task("steps", total=total_steps)
        self.runs = self.progress.add_task("runs", total=total_runs)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def run_done(self) -> None:
        with self._lock:
            self.progress.advance(self.runs)
            self.progress.refresh()

    def step_started(self, label: str) -> None:
        with self._lock:
            self.running[label] = time.monotonic()
            self.progress.refresh()

    def step_ended(self, label: str) -> None:
        with self._lock:
            self.running.pop(label, None)
            self.progress.refresh()

    def tick(self) -> None:
        with self._lock:
            self.progress.refresh()

    def step_done(self, label: str, status: str, seconds: float | None = None, note: str = "") -> None:
        from rich.text import Text

        with self._lock:
            self.steps_done += 1
            self.statuses[label] = status
            self.running.pop(label, None)
            line = Text(f"[{status}]", style=_STYLE.get(status, ""))
            line.append(step_line(status, label, seconds, note)[len(status) + 2:])
            self.console.print(line)
            self.progress.advance(self.steps)
            self.progress.refresh()


def progress_for(total_runs: int, total_steps: int, out: TextIO | None = None) -> PlainProgress:
    """LiveProgress when `out` (default stdout) is a terminal, else PlainProgress."""
    out = out or sys.stdout
    tty = bool(getattr(out, "isatty", lambda: False)())
    return (LiveProgress if tty else PlainProgress)(total_runs, total_steps, out)


_EVENTS = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE,
           dg.DagsterEventType.ASSET_MATERIALIZATION}


def _failure_note(event) -> str:
    data = event.event_specific_data
    if getattr(getattr(data, "error", None), "cls_name", "") == "DagsterExecutionInterruptedError":
        return "interrupted (its run is canceled)"  # the error's text is only its class's full name
    user = getattr(data, "user_failure_data", None)
    text = (getattr(user, "description", None) if user else None) or getattr(getattr(data, "error", None),
                                                                              "message", "") or ""
    return text.strip().splitlines()[0] if text.strip() else "failed"


class RunFollower:
    """Follows the steps of the run tagged `tag` in a thread; `close()` reads the rest of its events
    (after the run returned) and reports the steps that never ran. `labels`: Dagster's step key ->
    its label, or, for a step over a range of partitions, -> {partition: label}: a line per partition
    as its materialization is recorded (its seconds: the build's own, from the metadata)."""

    #: a step's line is at most this late; each poll is two storage queries in the demo process,
    #: beside compilers that want both cores
    POLL_S = 1.0

    def __init__(self, instance: dg.DagsterInstance, tag: tuple[str, str], labels: dict[str, str],
                 progress: PlainProgress):
        self.instance, self.tag, self.labels, self.progress = instance, tag, labels, progress
        self.started: dict[str, float] = {}
        self.done: set[str] = set()
        self.failed: dict[str, str] = {}
        self._cursor: str | None = None
        self._run_id: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "RunFollower":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self, note: str = "an upstream step or the run failed") -> None:
        """Stops following; the steps that never ended are reported not run, with `note`."""
        self._stop.set()
        self._thread.join()
        self._poll()  # the events written after the last poll
        for step, label in self.labels.items():
            if isinstance(label, dict):
                self._end_range(step, NOT_RUN, note)
            elif step not in self.done:
                self.progress.step_done(label, NOT_RUN, note=note)

    def _loop(self) -> None:
        while not self._stop.wait(self.POLL_S):
            try:
                self._poll()
                self.progress.tick()
            except Exception:  # noqa: BLE001 - a display glitch must never fail the demo
                continue

    def _poll(self) -> None:
        if self._run_id is None:
            runs = self.instance.get_run_records(filters=dg.RunsFilter(tags={self.tag[0]: self.tag[1]}), limit=1)
            if not runs:
                return
            self._run_id = runs[0].dagster_run.run_id
        while True:
            # non-public: no public API reads a running run's step events (tests/test_layers.py NON_PUBLIC)
            conn = self.instance.get_records_for_run(self._run_id, cursor=self._cursor, of_type=_EVENTS, limit=100)
            for record in conn.records:
                self._handle(record.event_log_entry)
            self._cursor = conn.cursor
            if not conn.has_more:
                return

    @staticmethod
    def _range_label(labels: dict) -> str:
        first, *rest = labels.values()
        return f"{first} and {len(rest)} more" if rest else first

    def _end_range(self, step: str, status: str, note: str = "") -> None:
        """A range step ended: its partitions without a materialization get `status`."""
        if step in self.done:
            return
        self.done.add(step)
        for partition, label in self.labels[step].items():
            if (step, partition) not in self.done:
                self.progress.step_done(label, status, note=note)
        self.progress.step_ended(self._range_label(self.labels[step]))

    def _handle(self, entry) -> None:
        event = entry.dagster_event
        step = event.step_key if event else None
        if step not in self.labels or step in self.done:
            return
        label = self.labels[step]
        if isinstance(label, dict):
            self._handle_range(step, entry, event)
            return
        if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            return
        if event.event_type == dg.DagsterEventType.STEP_START:
            self.started[step] = entry.timestamp
            self.progress.step_started(label)
            return
        self.done.add(step)
        seconds = entry.timestamp - self.started[step] if step in self.started else None
        if event.event_type == dg.DagsterEventType.STEP_SUCCESS:
            self.progress.step_done(label, OK, seconds)
        else:
            self.failed[step] = _failure_note(event)
            self.progress.step_done(label, FAILED, seconds, self.failed[step])

    def _handle_range(self, step: str, entry, event) -> None:
        labels = self.labels[step]
        if event.event_type == dg.DagsterEventType.STEP_START:
            self.started[step] = entry.timestamp
            self.progress.step_started(self._range_label(labels))
        elif event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            materialization = event.event_specific_data.materialization
            partition = materialization.partition
            if partition in labels and (step, partition) not in self.done:
                self.done.add((step, partition))
                took = materialization.metadata.get("duration_s")
                self.progress.step_done(labels[partition], OK, took.value if took is not None else None)
        elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
            self._end_range(step, OK)
        else:
            self.failed[step] = _failure_note(event)
            self._end_range(step, FAILED, self.failed[step])
