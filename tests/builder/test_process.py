"""qaic_assets.builder.process: argv safety, selective streaming, failures, timeout, cancellation, RSS,
atomic output dirs, manifests and hashes."""

from __future__ import annotations

import json
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

from qaic_assets.builder.output_stream import LOG_LINE_PATTERN
from qaic_assets.builder.process import (
    CompilerError,
    CompilerFailed,
    CompilerTimeout,
    RunResult,
    run_compiler,
)
from qaic_assets.builder.outputs import MissingOutput, atomic_output_dir, clean_stale_temps, neighbours, stray_entries
from qaic_assets.hashing import sha256_file
from qaic_assets.builder.manifest import write_manifest

PY = sys.executable
REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ helpers


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def messages(self):
        return [r.getMessage() for r in self.records]


@pytest.fixture
def log():
    logger = logging.getLogger(f"test_runner.{id(object())}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = ListHandler()
    logger.addHandler(handler)
    logger.handler = handler  # type: ignore[attr-defined]
    yield logger
    logger.removeHandler(handler)


def py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def wait_file(path: Path, timeout: float = 10.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError(f"{path} was not written within {timeout}s")


SLEEPER = """
    import os, signal, subprocess, sys, time
    if {ignore_term}:  # SIGTERM is noted in <pidfile>.term, then ignored
        signal.signal(signal.SIGTERM, lambda *_: open({pidfile!r} + ".term", "w").close())
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with open({pidfile!r} + ".tmp", "w") as f:
        f.write(f"{{os.getpid()}} {{grandchild.pid}}")
    os.replace({pidfile!r} + ".tmp", {pidfile!r})
    print("Compiling model ... started", flush=True)
    time.sleep(60)
    open({pidfile!r} + ".slept", "w").close()  # only if nobody stopped it
"""


def sleeper(pidfile: Path, ignore_term: bool = False) -> list[str]:
    return py(SLEEPER.format(pidfile=str(pidfile), ignore_term=ignore_term))


# ------------------------------------------------------------------------------------------ argv


def test_argv_reaches_child_verbatim_and_nothing_is_executed(tmp_path):
    evil = "a; touch PWNED1 $(touch PWNED2) `touch PWNED3` | touch PWNED4 && x\nsecond  line 'q' \"dq\" $HOME"
    out = tmp_path / "argv.json"
    argv = py(f"import json, sys; open({str(out)!r}, 'w').write(json.dumps(sys.argv[1:]))") + [evil, "plain", ""]
    result = run_compiler(argv, timeout_s=30, cwd=tmp_path)
    assert json.loads(out.read_text()) == [evil, "plain", ""]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["argv.json"]
    assert isinstance(result, RunResult) and result.returncode == 0
    assert result.argv == argv


def test_env_is_merged_over_environ_and_none_removes(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNER_TEST_DROP", "x")
    argv = py("import os; print(os.environ.get('RUNNER_TEST_FOO'), os.environ.get('RUNNER_TEST_DROP'), 'PATH' in os.environ)")
    result = run_compiler(argv, timeout_s=30, env={"RUNNER_TEST_FOO": "bar", "RUNNER_TEST_DROP": None})
    assert result.log_tail == ["bar None True"]


def test_missing_executable_is_a_compiler_failure(tmp_path):
    with pytest.raises(CompilerFailed) as ei:
        run_compiler([str(tmp_path / "no-such-qaic-exec"), "-model=x"], timeout_s=5)
    assert "could not be started" in str(ei.value)
    assert ei.value.result.returncode == 127


# ------------------------------------------------------------------------------------------ streaming


def test_selective_streaming_forwards_only_matching_lines(log):
    lines = [
        "hello there",
        "Compiling model resnet50",
        "some detail line",
        "ERROR: something broke",
        "Warning: odd flag",
        "  12% [=====       ]",
        "Profiling node conv1",
        "more detail",
        "Done",
    ]
    code = "import sys\n" + "".join(
        f"print({line!r}, file={'sys.stderr' if i % 2 else 'sys.stdout'}, flush=True)\n" for i, line in enumerate(lines)
    )
    run_compiler([PY, "-c", code], timeout_s=30, log=log, progress_interval_s=0)
    forwarded = [(line, r.levelno) for r in log.handler.records for line in r.getMessage().splitlines()
                 if line in lines]
    assert [line for line, _ in forwarded] == [l for l in lines if LOG_LINE_PATTERN.search(l)]
    assert "hello there" not in log.handler.messages()
    assert "some detail line" not in log.handler.messages()
    levels = dict(forwarded)
    assert levels["ERROR: something broke"] == logging.ERROR
    assert levels["Warning: odd flag"] == logging.WARNING
    assert levels["Done"] == logging.INFO


def test_lines_that_arrive_together_are_one_event_per_level_with_the_closing_line(log):
    """A compiler's closing report (all printed at the end) and the runner's `finished` line are one
    log record, not one each (each record is an event-log write); a warning among them is its own."""
    report = ["compile: profile profile.yaml", "compile: quantized 54 tensors", "Warning: odd flag",
              "compile: wrote elfs/programqpc.bin", "compiled int8 engine"]
    code = "import sys\nsys.stdout.write(" + repr("".join(f"{line}\n" for line in report)) + ")\n"
    run_compiler([PY, "-c", code], timeout_s=30, log=log, gather_s=30)  # however late the exit is noticed
    records = [(r.levelno, r.getMessage()) for r in log.handler.records if not r.getMessage().startswith("$ ")]
    assert [(level, message.splitlines()[0]) for level, message in records] == [
        (logging.INFO, report[0]), (logging.WARNING, report[2]), (logging.INFO, report[3])]
    assert records[0][1].splitlines() == report[:2]
    closing = records[2][1].splitlines()
    assert closing[:2] == report[3:] and closing[2].startswith("python finished in ") and len(closing) == 3


def test_tail_keeps_last_n_lines(log):
    result = run_compiler(py("for i in range(200): print(f'line {i}')"), timeout_s=30, log=log, tail_lines=10)
    assert result.log_tail == [f"line {i}" for i in range(190, 200)]
    # none of the plain lines reached the log
    assert not any(m.startswith("line ") for m in log.handler.messages())


def test_progress_lines_are_rate_limited(log):
    run_compiler(py("for i in range(100): print(f'{i}% compiled', flush=True)"), timeout_s=30, log=log,
                 progress_interval_s=60)
    progress = [line for m in log.handler.messages() for line in m.splitlines() if line.endswith("% compiled")]
    assert progress == ["0% compiled"]


def test_carriage_return_progress_is_split(log):
    result = run_compiler(py("import sys; sys.stdout.write('10%\\r20%\\r30%\\nend\\n')"), timeout_s=30, log=log,
                          progress_interval_s=0)
    assert result.log_tail == ["10%", "20%", "30%", "end"]


# ------------------------------------------------------------------------------------------ failures


def test_nonzero_exit_raises_with_tail_and_code(log):
    argv = py("""
        import sys
        for i in range(5): print(f'step {i}')
        print('ERROR: out of tiles', file=sys.stderr)
        sys.exit(3)
    """)
    with pytest.raises(CompilerFailed) as ei:
        run_compiler(argv, timeout_s=30, log=log, tail_lines=3)
    err = ei.value
    assert isinstance(err, CompilerError)
    assert err.result.returncode == 3
    assert err.result.log_tail == ["step 3", "step 4", "ERROR: out of tiles"]
    msg = str(err)
    assert "exit code 3" in msg and "ERROR: out of tiles" in msg and "step 4" in msg
    assert os.path.basename(PY) in msg  # names the command


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_signal_death_raises_with_signal_name(sig):
    argv = py(f"import os, signal; print('about to die', flush=True); os.kill(os.getpid(), {int(sig)})")
    with pytest.raises(CompilerFailed) as ei:
        run_compiler(argv, timeout_s=30)
    assert ei.value.result.returncode == -int(sig)
    assert sig.name in str(ei.value)
    assert "about to die" in str(ei.value)


# ------------------------------------------------------------------------------------------ timeout / cancel


@pytest.mark.parametrize("ignore_term", [False, True], ids=["sigterm", "needs-sigkill"])
def test_timeout_kills_child_group_and_raises(tmp_path, ignore_term):
    pidfile = tmp_path / "pids"
    with pytest.raises(CompilerTimeout) as ei:
        run_compiler(sleeper(pidfile, ignore_term), timeout_s=1.5, grace_s=0.5)
    child, grandchild = map(int, wait_file(pidfile).split())
    assert wait_gone(child), "compiler process survived the timeout"
    assert wait_gone(grandchild), "compiler's helper process survived the timeout"
    result = ei.value.result
    # the deadline ended it in its 60 s sleep: by SIGTERM, or by SIGKILL after the SIGTERM it ignored
    assert result.returncode == (-signal.SIGKILL if ignore_term else -signal.SIGTERM)
    assert (tmp_path / "pids.term").exists() == ignore_term
    assert "timed out" in str(ei.value) and "Compiling model ... started" in result.log_tail


def test_a_compiler_started_with_sigterm_ignored_still_stops_on_sigterm(tmp_path):
    """A process started in the background has SIGINT ignored and Dagster maps SIGTERM to SIGINT's
    handler, so SIGTERM is ignored in a run worker, and an ignored signal stays ignored across exec:
    the compiler must get the default action back, or a timeout or a cancel always needs SIGKILL."""
    pidfile = tmp_path / "pids"
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with pytest.raises(CompilerTimeout) as ei:
            run_compiler(sleeper(pidfile), timeout_s=1.5, grace_s=30)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert ei.value.result.returncode == -signal.SIGTERM


class FakeDagsterInterrupt(BaseException):
    """Stands in for DagsterExecutionInterruptedError (a BaseException)."""


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, FakeDagsterInterrupt])
def test_interrupt_terminates_child(tmp_path, exc_type):
    pidfile = tmp_path / "pids"

    def on_alarm(signum, frame):
        if pidfile.exists():
            raise exc_type()
        signal.setitimer(signal.ITIMER_REAL, 0.1)  # child not up yet: try again shortly

    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(exc_type):
            run_compiler(sleeper(pidfile, ignore_term=True), timeout_s=60, grace_s=0.5)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    child, grandchild = map(int, pidfile.read_text().split())
    assert wait_gone(child), "child survived the interruption"
    assert wait_gone(grandchild)
    # stopped, not waited for: SIGTERM first, then (ignored) SIGKILL before its sleep ended
    assert (tmp_path / "pids.term").exists(), "the interrupted child never got SIGTERM"
    assert not (tmp_path / "pids.slept").exists(), "the interrupted child was left to finish"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_child_dies_when_our_process_is_sigkilled(tmp_path):
    pidfile = tmp_path / "pids"
    parent_code = textwrap.dedent(f"""
        import sys
        from qaic_assets.builder.process import run_compiler
        run_compiler({sleeper(pidfile)!r}, timeout_s=60)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    parent = subprocess.Popen([PY, "-c", parent_code], env=env)
    grandchild = None
    try:
        child, grandchild = map(int, wait_file(pidfile).split())
        assert alive(child)
        parent.kill()
        parent.wait()
        assert wait_gone(child), "compiler outlived the SIGKILLed step process"
    finally:
        if parent.poll() is None:
            parent.kill()
        # PDEATHSIG reaches the compiler only, not helpers it started itself (a known limit)
        if grandchild is not None and alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)


# ------------------------------------------------------------------------------------------ resources


def test_peak_rss_is_plausible():
    # hold the memory past a few /proc samples: when this test process is itself bigger than the
    # child (the full suite loads ResNet-50), the peak comes from sampling, not from wait4
    big = run_compiler(py("import time; b = b'x' * (110 * 1024 * 1024); time.sleep(0.8)"), timeout_s=30)
    assert big.peak_rss_bytes >= 100 * 1024 * 1024
    small = run_compiler(py("import time; time.sleep(0.3)"), timeout_s=30)
    assert 0 < small.peak_rss_bytes < 100 * 1024 * 1024
    assert small.duration_s >= 0.3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc sampling is Linux-only")
def test_peak_rss_not_inflated_by_a_big_parent():
    # Linux hands the parent's RSS high-water mark to the child's ru_maxrss: a small compiler started
    # from a fat step process must still report its own peak.
    code = textwrap.dedent("""
        import sys
        from qaic_assets.builder.process import run_compiler
        ballast = b"x" * (400 * 1024 * 1024)
        r = run_compiler([sys.executable, "-c", "import time; time.sleep(0.5)"], timeout_s=30)
        print(r.peak_rss_bytes)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert 0 < int(out.stdout) < 100 * 1024 * 1024


# ------------------------------------------------------------------------------------------ atomic dirs


def make_previous(final: Path) -> str:
    final.mkdir(parents=True)
    (final / "programqpc.bin").write_bytes(b"old binary")
    (final / "sub").mkdir()
    (final / "sub" / "x.txt").write_text("old")
    return snapshot(final)


def snapshot(d: Path) -> str:
    return json.dumps(sorted((str(p.relative_to(d)), p.read_bytes().hex() if p.is_file() else "dir")
                             for p in d.rglob("*")))


def siblings(final: Path) -> list[str]:
    return sorted(p.name for p in final.parent.iterdir() if p.name != final.name)


def test_atomic_dir_replaces_on_success(tmp_path):
    final = tmp_path / "out" / "bs8|offline-nsp14"
    make_previous(final)
    with atomic_output_dir(final, ["programqpc.bin"]) as tmp:
        # nested in a private directory beside the final one: what is written at ../ goes with it
        assert tmp.name == final.name and tmp.parent.parent == final.parent
        assert tmp.parent.name.startswith(f".{final.name}.tmp-")
        (tmp / "programqpc.bin").write_bytes(b"new binary")
        (tmp.parent / "stray").write_bytes(b"written at ../stray")
        assert (final / "programqpc.bin").read_bytes() == b"old binary"  # untouched until the end
    assert (final / "programqpc.bin").read_bytes() == b"new binary"
    assert not (final / "sub").exists()
    assert siblings(final) == []


def test_stray_entries_name_what_a_call_wrote_outside_its_dir(tmp_path):
    """`../x` lands in the call's private directory (removed with it); a new visible entry two levels
    up is only reported: another writer's lock or a sibling output published meanwhile is not one."""
    final = tmp_path / "out" / "bs1"
    with atomic_output_dir(final, ["f"]) as tmp:
        before = neighbours(tmp)
        (tmp / "f").write_text("output")
        (tmp.parent / "stray").write_text("../stray")
        (final.parent / "far").write_text("../../far")
        (final.parent / ".bs2.lock").write_text("another writer's lock")
        (final.parent / "bs2").mkdir()
        (final.parent / "bs2" / "manifest.json").write_text("{}")  # a sibling output published meanwhile
        assert stray_entries(tmp, before) == (["../stray"], [str(final.parent / "far")])
    assert sorted(p.name for p in final.parent.iterdir()) == [".bs2.lock", "bs1", "bs2", "far"]


def test_atomic_dir_creates_first_time(tmp_path):
    final = tmp_path / "a" / "b" / "final"
    with atomic_output_dir(final, ["programqpc.bin"]) as tmp:
        (tmp / "programqpc.bin").write_bytes(b"x")
    assert (final / "programqpc.bin").read_bytes() == b"x"
    assert siblings(final) == []


def test_atomic_dir_keeps_previous_when_body_raises(tmp_path):
    final = tmp_path / "final"
    before = make_previous(final)
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output_dir(final, ["programqpc.bin"]) as tmp:
            (tmp / "programqpc.bin").write_bytes(b"half")
            raise RuntimeError("boom")
    assert snapshot(final) == before
    assert siblings(final) == []


@pytest.mark.parametrize("content", [None, b""], ids=["missing", "empty"])
def test_atomic_dir_keeps_previous_when_expected_missing_or_empty(tmp_path, content):
    final = tmp_path / "final"
    before = make_previous(final)
    with pytest.raises(MissingOutput) as ei:
        with atomic_output_dir(final, ["programqpc.bin"]) as tmp:
            (tmp / "other.txt").write_text("x")
            if content is not None:
                (tmp / "programqpc.bin").write_bytes(content)
    msg = str(ei.value)
    assert "programqpc.bin" in msg and str(final) in msg
    assert ei.value.missing == "programqpc.bin"
    assert snapshot(final) == before
    assert siblings(final) == []


def test_atomic_dir_with_failed_compiler_keeps_previous(tmp_path):
    final = tmp_path / "final"
    before = make_previous(final)
    with pytest.raises(CompilerFailed):
        with atomic_output_dir(final, ["programqpc.bin"]) as tmp:
            run_compiler(py(f"open({str(tmp / 'programqpc.bin')!r}, 'wb').write(b'partial'); raise SystemExit(2)"),
                         timeout_s=30)
    assert snapshot(final) == before
    assert siblings(final) == []


def test_clean_stale_temps(tmp_path):
    dead = 999_999_999  # above any pid_max
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "f").write_text("current")
    stale_tmp = tmp_path / f".keep.tmp-{dead}-abcd"
    stale_old = tmp_path / f".keep.old-{dead}-beef"
    for d in (stale_tmp, stale_old):
        d.mkdir()
        (d / "f").write_text("stale")
    # killed between the two renames: the final dir is gone, its .old- copy must come back
    orphan_old = tmp_path / f".lost.old-{dead}-cafe"
    orphan_old.mkdir()
    (orphan_old / "f").write_text("previous good")
    # a live writer (another process) must be left alone
    live = tmp_path / f".other.tmp-{os.getppid()}-1234"
    live.mkdir()
    unrelated = tmp_path / ".hidden"
    unrelated.mkdir()

    with atomic_output_dir(tmp_path / "busy", ["f"]) as mine:
        (mine / "f").write_text("in progress")
        clean_stale_temps(tmp_path)
        assert mine.exists(), "clean_stale_temps removed an active temp dir of this process"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["keep", "lost", "busy", live.name, ".hidden"]
    )
    assert (tmp_path / "lost" / "f").read_text() == "previous good"
    assert (tmp_path / "keep" / "f").read_text() == "current"


def test_clean_stale_temps_by_name(tmp_path):
    a = tmp_path / ".a.tmp-999999999-aa"
    b = tmp_path / ".b.tmp-999999999-bb"
    a.mkdir()
    b.mkdir()
    clean_stale_temps(tmp_path, name="a")
    assert not a.exists() and b.exists()


# ------------------------------------------------------------------------------------------ manifest / hashes


def test_write_manifest_sorted_and_atomic(tmp_path):
    path = write_manifest(tmp_path, {"b": 1, "a": {"z": Path("/x"), "y": [1, 2]}})
    assert path == tmp_path / "manifest.json"
    text = path.read_text()
    assert text.index('"a"') < text.index('"b"') and text.index('"y"') < text.index('"z"')
    assert json.loads(text) == {"a": {"y": [1, 2], "z": "/x"}, "b": 1}
    assert "\n  " in text  # indented
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_sha256_file_matches_hashlib(tmp_path):
    import hashlib

    data = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()




def test_peak_rss_is_not_sampled_right_after_exec(monkeypatch):
    """Right after exec a child's VmHWM is a few pages: a compiler that ended before the next sample was
    reported with a peak of 0 MB (a flaky test_ops_run_exactly_the_plan_and_record_it). The first sample
    waits _FIRST_SAMPLE_S; a child gone before it falls back to wait4's upper bound."""
    from qaic_assets.builder import rss

    reads = []
    monkeypatch.setattr(rss, "_read_vmhwm", lambda pid: reads.append(pid) or 12 << 20)
    peak = rss.PeakRss()
    peak.sample(7, now=100.0)
    assert reads == [] and peak.resolve(wait4_peak=1) == 1  # nothing sampled: wait4's value
    peak.sample(7, now=100.0 + rss._FIRST_SAMPLE_S)
    assert reads == [7] and peak.resolve(wait4_peak=peak.parent_peak) == 12 << 20
