"""The SDK tool checks on compiled_binary (orchestration/sdk_checks.py) and the versions every build records,
on stand-in SDKs of each generation (tests/fake_sdk.py): fits_target from qaic-qpc validate, throughput
from qaic-runner on a card, and the reason when a tool or the card is missing."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time

import dagster as dg
import pytest

from fake_sdk import make_fake_sdk, read_calls
from qaic_assets.orchestration.keys import binary_key, profile_key
from qaic_assets.orchestration.sdk_checks import FITS_TARGET, THROUGHPUT

PARTITION = "bs2|offline-nsp14"  # resnet50 offline: -aic-num-cores=4 -sdp-cluster-sizes=2,2 -> 4 NSPs
RUNNER_ON = "throughput_check: {enabled: true, inferences: 200}\n"


def new_sdk(project, **layout) -> None:
    """Replace the project's SDK by one of the newer generation (qaic-compile, platform.xml, tools)."""
    shutil.rmtree(project.sdk)
    options = {"compiler": "qaic-compile", "version": ("1.21.0", "12"), "platform": ("1.21.1", "3"),
               "tools": True, "devices": 1} | layout
    make_fake_sdk(project.sdk, **options)


def build(project, partition=PARTITION, extra_flags: str | None = None):
    if extra_flags is not None:
        path = project.config_path
        path.write_text(path.read_text().replace("    calibration: {list: cal/cal.txt}\n",
                                                 f"    calibration: {{list: cal/cal.txt}}\n    extra_flags: {extra_flags}\n"))
        project.rebuild()
    profile = project.materialize(profile_key("tiny"), partition.split("|")[0])
    assert profile.success
    result = project.materialize(binary_key("tiny"), partition)
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    [calibrated] = [e.materialization for e in profile.get_asset_materialization_events()]
    [compiled] = [e.materialization for e in result.get_asset_materialization_events()]
    return values(calibrated.metadata), values(compiled.metadata), checks


def values(metadata) -> dict:
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


@pytest.mark.project(extra=RUNNER_ON)
def test_new_generation_records_versions_fit_and_throughput(tiny_project):
    new_sdk(tiny_project)
    profile, meta, checks = build(tiny_project)
    for meta in (profile, meta):
        assert shlex.split(meta["command"])[0].endswith("/exec/qaic-compile")  # the compiler, said once
        assert (meta["sdk_version"], meta["platform_sdk_version"]) == ("1.21.0.12", "1.21.1.3")
        assert not {"compiler", "compiler_executable", "apps_sdk_version"} & set(meta)
    assert meta["qpc_nsp_required"] == 4 and meta["qpc_batch_size"] == 2
    # each qaic-qpc line once: numbers as entries, the text lines in qpc_validate
    assert "qpc_number_of_nsp_required" not in meta and meta["qpc_validate"]["QPC status"] == "valid"
    assert not [k for k, v in meta["qpc_validate"].items() if isinstance(v, (int, float))], meta["qpc_validate"]
    assert isinstance(meta["inferences_per_s"], float) and meta["inferences_per_s"] > 0
    assert meta["runner_activations"] == 3  # 14 NSPs // 4 per activation
    assert checks[FITS_TARGET].passed and values(checks[FITS_TARGET].metadata) == {"nsp_required": 4, "nsp": 14}
    assert checks[THROUGHPUT].passed
    assert values(checks[THROUGHPUT].metadata)["inferences_per_s"] == meta["inferences_per_s"]
    runner = [c for c in read_calls(tiny_project.sdk) if c.get("tool") == "qaic-runner"]
    elfs = tiny_project.config.storage_root / "tiny" / "compiled" / "bs2" / "offline-nsp14" / "elfs"
    assert runner[-1]["args"] == ["-t", str(elfs), "-a", "3", "-n", "200", "-d", "0"]
    observed = tiny_project.observe_sdk()
    assert values(observed.metadata)["platform_sdk_version"] == "1.21.1.3"
    assert values(observed.metadata)["compiler"] == "qaic-compile"
    assert observed.tags["dagster/data_version"] == "1.21.0.12"  # the compiler's (Apps) version


def test_fits_target_fails_for_a_binary_that_needs_more_nsps(tiny_project):
    new_sdk(tiny_project)
    _, meta, checks = build(tiny_project, extra_flags="[-aic-num-cores=16]")
    assert meta["qpc_nsp_required"] == 16
    assert not checks[FITS_TARGET].passed
    assert checks[FITS_TARGET].severity == dg.AssetCheckSeverity.ERROR
    assert "needs 16 NSPs but the partition has 14" in checks[FITS_TARGET].description
    assert THROUGHPUT not in checks  # not enabled in the settings


@pytest.mark.project(extra=RUNNER_ON)
def test_without_the_tools_the_checks_say_why(tiny_project):
    """The default stand-in is the older generation: exec/qaic-exec and apps.xml, no Platform SDK."""
    _, meta, checks = build(tiny_project)
    assert shlex.split(meta["command"])[0].endswith("/exec/qaic-exec") and meta["platform_sdk_version"] == "not installed"
    for name, reason in ((FITS_TARGET, "tools/qaic-qpc is not installed"),
                         (THROUGHPUT, "tools/qaic-util is not installed")):
        assert not checks[name].passed and checks[name].severity == dg.AssetCheckSeverity.WARN
        assert checks[name].description.startswith("skipped: ") and reason in checks[name].description
    assert "inferences_per_s" not in meta


@pytest.mark.project(extra=RUNNER_ON)
def test_without_a_card_the_runner_check_is_skipped_with_the_reason(tiny_project):
    new_sdk(tiny_project, devices=0)
    _, _, checks = build(tiny_project)
    assert checks[FITS_TARGET].passed
    assert not checks[THROUGHPUT].passed and checks[THROUGHPUT].severity == dg.AssetCheckSeverity.WARN
    assert "skipped: no ready card with QID 0" in checks[THROUGHPUT].description
    assert not [c for c in read_calls(tiny_project.sdk) if c.get("tool") == "qaic-runner"]


@pytest.mark.project(backend="cpu", extra=RUNNER_ON)
def test_the_cpu_backend_has_no_sdk_checks(tiny_project):
    specs = tiny_project.defs.resolve_assets_def(binary_key("tiny")).check_specs
    assert not {s.name for s in specs} & {FITS_TARGET, THROUGHPUT}


HANGING_RUNNER = """#!{python}
import os, subprocess, sys, time
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open({pidfile!r}, "w") as f:
    f.write(f"{{os.getpid()}} {{os.getpgrp()}} {{helper.pid}}")
print("Using bounded random inputs", flush=True)
while True:
    time.sleep(1)
"""

VERBOSE_QPC = """#!{python}
import os, sys
out = sys.stdout
for i in range(30000):
    out.write(f"checking section {{i}}\\n")
out.write("y" * (4 * 1024 * 1024) + "\\n")
out.flush()
os.execv({real!r}, ["qaic-qpc", *sys.argv[1:]])
"""


def _live_group_members(pgid: int) -> list[int]:
    members = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, _, group = f.read().rsplit(")", 1)[1].split()[:3]
        except OSError:
            continue
        if int(group) == pgid and state not in ("Z", "X"):
            members.append(int(entry))
    return members


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.project(extra="throughput_check: {enabled: true, inferences: 200, timeout_s: 2}\n")
def test_sdk_tools_run_supervised_a_hanging_runner_is_stopped_and_verbose_output_is_capped(tiny_project, tmp_path):
    """qaic-runner hangs: stopped at throughput_check.timeout_s with its process group (SIGTERM), the
    check fails saying so; qaic-qpc prints 30,000 lines and a 4 MiB line before its report: fits_target
    still reads it, and the description stays short."""
    new_sdk(tiny_project)
    python, pidfile = sys.executable, tmp_path / "runner.pids"
    runner = tiny_project.sdk / "exec" / "qaic-runner"
    runner.write_text(HANGING_RUNNER.format(python=python, pidfile=str(pidfile)))
    qpc = tiny_project.sdk / "tools" / "qaic-qpc"
    real = tiny_project.sdk / "real" / "qaic-qpc"  # the stand-in finds the SDK root and its name from its path
    real.parent.mkdir()
    qpc.rename(real)
    qpc.write_text(VERBOSE_QPC.format(python=python, real=str(real)))
    qpc.chmod(0o755)
    _, meta, checks = build(tiny_project)
    assert checks[FITS_TARGET].passed and meta["qpc_nsp_required"] == 4
    throughput = checks[THROUGHPUT]
    assert not throughput.passed and throughput.severity == dg.AssetCheckSeverity.ERROR
    assert throughput.description.startswith("qaic-runner timed out after 2 s and was stopped (SIGTERM")
    assert "killed by signal SIGTERM" in throughput.description and len(throughput.description) < 800
    pid, pgid, helper = map(int, pidfile.read_text().split())
    assert pgid == pid
    end = time.monotonic() + 5
    while _live_group_members(pgid) and time.monotonic() < end:  # SIGKILLs land asynchronously
        time.sleep(0.02)
    assert not _live_group_members(pgid), "the runner's process group outlived its timeout"
    assert "inferences_per_s" not in meta
