"""`make demo` as a newcomer sees it, run as a subprocess with stdout not a terminal (as in CI): no
warnings, one line per step; run again with nothing changed: every step up to date, no run launched,
no compiler call."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings

import dagster as dg

from conftest import write_tiny_project
from qaic_assets.demo import demo_log
from fake_sdk import read_calls
from helpers import run_partitions

STEP = re.compile(r"^\[(ok|up to date|FAILED|not run)\] (\S+)(?: ([^\s(]\S*))?")


def _demo_env(project) -> dict:
    env = {**os.environ, "QAIC_ASSETS_CONFIG": str(project.config_path), "DAGSTER_HOME": str(project.home)}
    for var in ("QAIC_SDK_ROOT", "QAIC_ASSETS_STORAGE_ROOT", "PYTHONWARNINGS"):
        env.pop(var, None)
    return env


def _demo(project) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qaic_assets.demo"], cwd=project.root, env=_demo_env(project),
                          capture_output=True, text=True, timeout=600)


def _steps(stdout: str) -> list[tuple[str, str, str | None]]:
    return [m.groups() for m in map(STEP.match, stdout.splitlines()) if m]


def test_demo_is_quiet_and_prints_one_line_per_step(tmp_path):
    project = write_tiny_project(tmp_path / "project", batch=[1, 2])
    # qaic_sdk, tiny/source_model, 2 profiles, 4 binaries
    expected = {("qaic_sdk", None), ("tiny/source_model", None), ("tiny/calibration_profile", "bs1"),
                ("tiny/calibration_profile", "bs2")} | {
        ("tiny/compiled_binary", f"bs{b}|{t}-nsp14") for b in (1, 2) for t in ("offline", "singlestream")}

    first = _demo(project)
    assert first.returncode == 0, first.stdout + first.stderr
    for stream in (first.stdout, first.stderr):
        assert "warning" not in stream.lower() and "DEBUG" not in stream
    steps = _steps(first.stdout)
    assert sorted((what, part) for _, what, part in steps) == sorted(expected)  # each step exactly once
    assert {status for status, _, _ in steps} == {"ok"}
    assert "4/4 compiled binaries built in " in first.stdout and "up to date already" not in first.stdout
    calls = len(read_calls(project.sdk))
    assert calls == 6  # 2 calibrations + 4 compiles
    with dg.DagsterInstance.from_config(str(project.home)) as instance:
        runs = len(instance.get_runs())
        calibrations = [run_partitions(r) for r in instance.get_runs() if r.job_name == "calibration_profiles"]
        assert calibrations == ["bs1...bs2"]  # one calibration run over the model's batches
        for run in instance.get_runs():  # its success is a run's last event (its resources are not
            last = instance.all_logs(run.run_id)[-1].dagster_event  # set up again after it to load outputs)
            assert last.event_type == dg.DagsterEventType.RUN_SUCCESS, (run.job_name, last.event_type)

    again = _demo(project)  # nothing changed: decided before launching anything
    assert again.returncode == 0, again.stdout + again.stderr
    steps = _steps(again.stdout)
    assert sorted((what, part) for _, what, part in steps) == sorted(expected)
    assert {status for status, _, _ in steps} == {"up to date"}
    assert re.search(r"4/4 compiled binaries built in [\d.]+s \(4 of the 4 were up to date already: not built again\)",
                     again.stdout), again.stdout
    assert len(read_calls(project.sdk)) == calls
    with dg.DagsterInstance.from_config(str(project.home)) as instance:
        assert len(instance.get_runs()) == runs


def test_building_the_definitions_warns_about_nothing_of_ours(tiny_project):
    from qaic_assets.orchestration import build_definitions

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_definitions(tiny_project.config).resolve_asset_graph()
    ours = [w for w in caught if issubclass(w.category, (dg.BetaWarning, dg.PreviewWarning))]
    assert not ours, [str(w.message) for w in ours]
    # and the silencing is scoped: a user's own beta API use still warns
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dg.MultiToSingleDimensionPartitionMapping("batch")
    assert any(issubclass(w.category, dg.BetaWarning) for w in caught)


def test_progress_is_live_on_a_terminal_and_plain_otherwise():
    import io
    import threading

    from qaic_assets.orchestration.progress import LiveProgress, PlainProgress, progress_for

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    plain = io.StringIO()
    with progress_for(1, 2, plain) as progress:
        assert type(progress) is PlainProgress
        progress.step_done("tiny/compiled_binary bs1|offline-nsp14", "ok", 1.25)
        progress.step_done("qaic_sdk", "up to date")
    assert plain.getvalue().splitlines() == ["[ok] tiny/compiled_binary bs1|offline-nsp14 (1.2s)  [1/2]",
                                             "[up to date] qaic_sdk  [2/2]"]
    live = Terminal()
    threads = threading.active_count()
    with progress_for(1, 2, live) as progress:
        assert isinstance(progress, LiveProgress)
        assert threading.active_count() == threads  # no refresh thread: the demo forks its workers
        progress.step_started("tiny/source_model")
        progress.tick()
        assert "running:" in live.getvalue() and "tiny/source_model 0s" in live.getvalue()  # redrawn
        progress.step_done("tiny/source_model", "ok", 0.5)
        progress.step_done("qaic_sdk", "FAILED", 0.1, "no SDK")
        progress.run_done()
    text = live.getvalue()
    assert "[ok] tiny/source_model (0.5s)" in text and "[FAILED] qaic_sdk (0.1s): no SDK" in text
    assert "2/2" in text and "1/1" in text and "\x1b[" in text  # a live, coloured display


def test_a_failing_step_is_one_line_with_its_reason(tmp_path):
    project = write_tiny_project(tmp_path / "project", batch=[1])
    (project.sdk / "exec" / "qaic-exec").unlink()  # the SDK is gone: every build fails, saying why
    done = _demo(project)
    assert done.returncode == 1
    steps = _steps(done.stdout)
    assert len(steps) == 5  # qaic_sdk, source, 1 profile, 2 binaries: still one line each
    failed = [line for line in done.stdout.splitlines() if line.startswith("[FAILED] tiny/calibration_profile bs1")]
    assert len(failed) == 1 and "qaic-exec does not exist" in failed[0]
    assert "Traceback" not in done.stdout + done.stderr and "SdkError" not in done.stdout + done.stderr
    assert "failed runs: calibration_profiles bs1 (tiny)" in done.stdout
    assert "qaic-exec does not exist" in demo_log(project.config).read_text()  # Dagster's failure events go there



def test_one_models_failure_fails_its_own_runs_only(tmp_path):
    """Runs per model (a calibration run over its batches, a compile run per batch over its targets): tiny2's
    calibration fails (the stand-in SDK's fault switch), so its runs fail; tiny's runs, the same batch
    and targets, succeed; the message is one line per step."""
    from qaic_assets.standin_sdk import set_failing_models

    project = write_tiny_project(tmp_path / "project", batch=[1])
    (project.root / "tiny2.onnx").write_bytes((project.root / "tiny.onnx").read_bytes())
    second = "  tiny2:\n    recipe: resnet50\n    source: {path: tiny2.onnx}\n    calibration: {list: cal/cal.txt}\n"
    project.config_path.write_text(project.config_path.read_text().replace("models:\n", "models:\n" + second, 1))
    set_failing_models(project.sdk, ["tiny2"])
    done = _demo(project)
    assert done.returncode == 1, done.stdout + done.stderr
    failed_runs = next(line for line in done.stdout.splitlines() if line.startswith("failed runs: "))
    assert failed_runs.split(" (details")[0] == (
        "failed runs: calibration_profiles bs1 (tiny2), compiled_binaries bs1|offline-nsp14...bs1|singlestream-nsp14 "
        "(tiny2)")
    assert "2/4 compiled binaries built, 2 failed: tiny2 bs1|offline-nsp14, tiny2 bs1|singlestream-nsp14" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    with dg.DagsterInstance.from_config(str(project.home)) as instance:
        statuses = {}
        for record in instance.get_run_records():
            run = record.dagster_run
            models = {key.path[0] for key in run.asset_selection or ()} - {"qaic_sdk"}
            if partitions := run_partitions(run):
                statuses[(models.pop(), partitions)] = run.status.value
    targets = "bs1|offline-nsp14...bs1|singlestream-nsp14"
    assert statuses == {("tiny", "bs1"): "SUCCESS", ("tiny", targets): "SUCCESS",
                        ("tiny2", "bs1"): "FAILURE", ("tiny2", targets): "FAILURE"}


def test_on_a_terminal_dagster_output_still_goes_to_the_log(tmp_path):
    """On a terminal the live display draws the steps; Dagster's lines (the stack traces), from the
    run workers forked under the display too, go to demo.log and none reach the terminal (the display
    must not redirect sys.stderr: the forked workers would inherit it)."""
    import fcntl
    import pty
    import struct
    import termios

    project = write_tiny_project(tmp_path / "project", batch=[1])
    (project.sdk / "exec" / "qaic-exec").unlink()  # every build fails: Dagster logs its stack traces
    terminal, tty = pty.openpty()
    # a wide terminal: the display wraps its lines at the width, and where a wrap falls depends on
    # the length of the paths in the messages (the test's temporary directory)
    fcntl.ioctl(tty, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 1000, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "qaic_assets.demo"], cwd=project.root, env=_demo_env(project),
                            stdin=subprocess.DEVNULL, stdout=tty, stderr=tty)
    os.close(tty)
    out = b""
    while True:
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # EIO: the demo closed its end
            break
        if not chunk:
            break
        out += chunk
    os.close(terminal)
    assert proc.wait(timeout=600) == 1
    text = out.decode(errors="replace")
    assert "\x1b[" in text and "[FAILED]" in text and "qaic-exec does not exist" in text  # the live display
    assert "SdkError" not in text and "Traceback" not in text and "run workers" not in text
    log = demo_log(project.config).read_text()
    assert "qaic-exec does not exist" in log and "run workers: 2, started by fork" in log


def test_the_demo_log_is_not_in_dagsters_telemetry_queue_and_survives_a_webserver_start(tmp_path):
    """$DAGSTER_HOME/logs is Dagster's telemetry queue: a webserver start moves what it finds there to
    .logs_queue, to be uploaded and deleted. The demo's log lives under the storage root instead."""
    from helpers import start_webserver, stop_session

    project = write_tiny_project(tmp_path / "project", batch=[1])
    (project.sdk / "exec" / "qaic-exec").unlink()  # a quick demo that still logs (its failures)
    assert _demo(project).returncode == 1
    log = demo_log(project.config)
    text = log.read_text()
    assert "qaic-exec does not exist" in text and log.is_relative_to(project.config.storage_root)
    proc, _ = start_webserver(project, tmp_path / "webserver.log")
    stop_session(proc)
    assert log.read_text() == text  # untouched by the webserver's start
    assert not [p for p in project.home.rglob("*") if p.is_file() and "demo" in p.name]


def test_a_model_name_with_dashes_and_a_matrix_of_its_own_builds_in_the_demo(tmp_path):
    """`my-tiny.v2` is a valid model name (an asset key and a directory); Dagster's group, op and job
    names allow no '-' or '.', so they become '_' (the demo ended in a raw Dagster traceback before)."""
    project = write_tiny_project(tmp_path / "project", batch=[1])
    text = project.config_path.read_text()
    project.config_path.write_text(text.replace("  tiny:\n", "  my-tiny.v2:\n    matrix: {scenarios: [offline], "
                                                               "nsp: [14], batch: [2]}\n", 1))
    done = _demo(project)
    assert done.returncode == 0, done.stdout + done.stderr
    steps = {(what, part) for status, what, part in _steps(done.stdout) if status == "ok"}
    assert ("my-tiny.v2/compiled_binary", "bs2|offline-nsp14") in steps
    assert "Traceback" not in done.stdout + done.stderr


def test_a_range_run_with_up_to_date_partitions_is_split_into_runs_of_the_stale_stretches():
    from qaic_assets.demo import PlannedRun, stretches
    from qaic_assets.orchestration.keys import binary_key
    from qaic_assets.orchestration.up_to_date import Step

    steps = [Step(binary_key("m"), "m", f"bs1|{t}") for t in ("a", "b", "c", "d", "e")]
    run = PlannedRun("compiled_binaries", None, steps, ranged=True)
    a, b, c, d, e = steps
    assert stretches(run, [a, c, d]) == [("bs1|a", [a]), (("bs1|c", "bs1|d"), [c, d])]
    assert stretches(run, steps) == [(("bs1|a", "bs1|e"), steps)]
    assert stretches(run, [e]) == [("bs1|e", [e])]
    single = PlannedRun("compiled_binaries", "bs1|a", [a])
    assert stretches(single, [a]) == [("bs1|a", [a])]
    assert run.label == "compiled_binaries bs1|a...bs1|e (m)"


def test_a_no_op_demo_prints_its_table_from_the_records_its_decisions_read(tmp_path, monkeypatch):
    """Nothing changed: the second demo launches no run, and its closing table comes from the latest
    records the up-to-date decisions read (no second read of every partition's record)."""
    from qaic_assets import demo

    project = write_tiny_project(tmp_path / "project", batch=[1])
    assert _demo(project).returncode == 0
    for name, value in _demo_env(project).items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.from_config(str(project.home)) as instance:
        unchanged: dict = {}
        outcomes = demo.materialize_matrix(project.config, instance, unchanged=unchanged)
        assert all(ok for *_, ok in outcomes)
        runs = len(instance.get_run_records())
        binary = dg.AssetKey(["tiny", "compiled_binary"])
        assert sorted(unchanged[binary]) == ["bs1|offline-nsp14", "bs1|singlestream-nsp14"]

        def no_read(*args, **kwargs):
            raise AssertionError("built_table read the records again")

        monkeypatch.setattr(demo, "latest_by_partition", no_read)
        rows = demo.built_table(project.config, instance, known=unchanged)
        assert [(r["partition"], r["status"]) for r in rows] == [("bs1|offline-nsp14", "built"),
                                                                 ("bs1|singlestream-nsp14", "built")]
        assert len(instance.get_run_records()) == runs  # no run launched
