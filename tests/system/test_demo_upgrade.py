"""`make demo-upgrade` as a newcomer sees it: `python -m qaic_assets.demo_upgrade` in a subprocess with
private folders (as test_demo.py runs the demo), its printed story checked line by line against the
instance and the stand-in's call log; and the stand-in SDK it uses is labelled and shipped."""

from __future__ import annotations

import importlib.resources
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import dagster as dg

from fake_sdk import read_calls, read_exits
from test_demo import _demo_env, _steps

import qaic_assets
from qaic_assets import standin_sdk
from qaic_assets.orchestration.keys import AUTOMATION_TAG

GOOD, FAILING = "digits", "digits-fp16"
BATCHES, BUILT, NEVER = ("bs1", "bs8"), "offline-nsp14", "singlestream-nsp14"
#: a row of "4. What was recompiled": asset partition, sha256 before -> after, calls, because
ROW = re.compile(r"^   (\S+/\S+) (\S+)\s+([0-9a-f]{12}) -> ([0-9a-f]{12}|\(failed\))\s+(\d+)  (.+)$")
VERDICT = re.compile(r"^   (\S+/compiled_binary) (\S+)\s+(passed|RECOMPILE FAILED \(intended\)|NOT CURRENT): (.+)$")


def _upgrade(folder: Path, cwd: Path) -> subprocess.CompletedProcess:
    """The demo in `folder`, with variables set that would send its builds elsewhere (another SDK, a
    fault switch of the stand-in, make demo's instance): it must ignore them all."""
    env = _demo_env(SimpleNamespace(config_path=cwd / "elsewhere.yaml", home=cwd / "make-demo-home"))
    env |= {"QAIC_SDK_ROOT": str(cwd / "no-sdk"), "FAKE_QAIC_EXIT": "3", "FAKE_QAIC_LOG": str(cwd / "calls.jsonl")}
    return subprocess.run([sys.executable, "-m", "qaic_assets.demo_upgrade", "--dir", str(folder)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _section(stdout: str, number: int) -> list[str]:
    lines = stdout.split(f"\n{number}. ", 1)[1].split("\n\n", 1)[0].splitlines()
    return lines[1:]


def test_the_upgrade_story_recompiles_what_was_built_and_shows_the_intended_failure(tmp_path):
    folder = tmp_path / "demo-upgrade"
    done = _upgrade(folder, tmp_path)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    for stream in (out, done.stderr):
        assert "Traceback" not in stream and "warning" not in stream.lower()
    assert not (tmp_path / "make-demo-home").exists() and not (tmp_path / "calls.jsonl").exists()

    # 1. the first build: the offline target of both models (qaic_sdk observed by the sensor before it)
    built = {(what, part) for status, what, part in _steps(out) if status == "ok"}
    assert {status for status, _, _ in _steps(out)} == {"ok", "up to date"}
    expected = {(f"{GOOD}/calibration_profile", b) for b in BATCHES} | {
        (f"{m}/compiled_binary", f"{b}|{BUILT}") for m in (GOOD, FAILING) for b in BATCHES}
    assert {(w, p) for w, p in built if p} == expected

    # 3. the SDK change in the observation's words, and the ticks until nothing is requested
    change = "Apps SDK 1.18.2.0.5 -> 1.18.2.0.6; Platform SDK 1.18.2.0.5 (unchanged)"
    assert f'qaic_sdk observed without a run, sdk_change "{change}"' in out
    assert "sdk_current of the 4 built binaries: 4 not current (recompile pending)" in out
    ticks = [line.strip() for line in _section(out, 3) if "qaic_automation_* tick" in line]
    assert ticks[-1].endswith("requests nothing: the upgrade is handled") and len(ticks) == 3
    assert "stand-in fault:" in out and "lists 'digits-fp16'" in out

    # 4. recompiled: exactly the built set; the good model's rebuilt (new sha256), the failing one's not
    rows = {(m[1], m[2]): m for m in map(ROW.match, _section(out, 4)) if m}
    assert set(rows) == expected
    for (what, part), row in rows.items():
        failing = what.startswith(FAILING + "/")
        assert (row[4] == "(failed)") == failing and row[3] != row[4]
        assert row[5] == "1"  # one stand-in call each
        assert "qaic_sdk 1.18.2.0.5 -> 1.18.2.0.6" in row[6]
        if what == f"{GOOD}/compiled_binary":  # its new profile is the other input that changed
            assert f"{GOOD}/calibration_profile " in row[6]
    never = ", ".join(f"{m}/compiled_binary {b}|{NEVER}" for m in (GOOD, FAILING) for b in BATCHES)
    assert f"not recompiled, never built (the automation rebuilds what was built, and builds nothing new): {never}" in out
    assert "called 6 times during the upgrade: 2 calibrations, 4 compiles, 2 of them failing on purpose" in out

    # 5. currency: current for the good model, "recompile failed" with the run for the failing one
    verdicts = {(m[1], m[2]): (m[3], m[4]) for m in map(VERDICT.match, _section(out, 5)) if m}
    assert set(verdicts) == {k for k in expected if k[0].endswith("compiled_binary")}
    for (what, part), (state, text) in verdicts.items():
        if what.startswith(FAILING + "/"):
            assert state == "RECOMPILE FAILED (intended)"
            assert re.match(r"recompile for Apps SDK 1\.18\.2\.0\.6, Platform SDK 1\.18\.2\.0\.5 failed in run [0-9a-f-]{36}: "
                            r"qaic-exec failed: exit code 1 .*; serving the binary built with Apps SDK 1\.18\.2\.0\.5", text)
        else:
            assert state == "passed" and text.startswith("built with Apps SDK 1.18.2.0.6")
    assert "make ui-upgrade" not in out  # another folder: the command for it instead
    assert f"DAGSTER_HOME={folder / 'dagster_home'} QAIC_ASSETS_CONFIG={folder / 'qaic.yaml'}" in out
    assert "/assets/digits-fp16/compiled_binary?view=checks" in out and "/assets/qaic_sdk?view=events" in out
    assert "The story ran as designed" in out

    # the stand-in's own record: 6 calls before the upgrade and 6 after, the failing model's 2 exit 1
    calls = [c for c in read_calls(folder / "sdk") if "tool" not in c]
    assert len(calls) == 12
    exits = read_exits(folder / "sdk")
    failed = [c for c in calls if exits[c["pid"]]["code"] != 0]
    assert len(failed) == 2 and all(f"-model={folder / 'models' / FAILING}.onnx" in c["args"] for c in failed)
    # and the instance's: the automation's runs, tagged as the sensor tags them; 2 failed (the intended ones)
    with dg.DagsterInstance.from_config(str(folder / "dagster_home")) as instance:
        runs = [r.dagster_run for r in instance.get_run_records(
            filters=dg.RunsFilter(tags={AUTOMATION_TAG: "recompile"}))]
        assert len(runs) == 6
        assert sorted(r.status.value for r in runs) == ["FAILURE"] * 2 + ["SUCCESS"] * 4


def test_a_folder_that_is_not_the_demos_own_is_left_alone(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    done = _upgrade(folder, tmp_path)
    assert done.returncode == 1 and "is not make demo-upgrade's folder" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_the_shipped_standin_is_labelled_and_installed_with_the_package(tmp_path):
    shipped = importlib.resources.files("qaic_assets.standin_sdk")
    first = shipped.joinpath("README.md").read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("This is NOT the Qualcomm Cloud AI 100 SDK: it is a stand-in that follows its layout, "
                            "its executables' contract and its version files, for demos and tests")
    for name in ("exec/qaic-exec", "tools/fake_tools"):
        assert shipped.joinpath(name).is_file()
        assert "NOT Qualcomm's" in shipped.joinpath(name).read_text(encoding="utf-8").split("\n", 3)[1]
    # every shipped file is package data (pyproject.toml), so a wheel carries it too
    pkg = Path(qaic_assets.__file__).resolve().parent
    patterns = tomllib.loads((pkg.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    covered = {p for pattern in patterns["qaic_assets"] for p in pkg.glob(pattern)}
    files = {p for p in (pkg / "standin_sdk").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert files - {pkg / "standin_sdk" / "__init__.py"} <= covered
    # an installed copy: every executable runnable (a wheel or a copy need not keep the mode bits)
    root = standin_sdk.install(tmp_path / "sdk", tools=True)
    for exe in ("exec/qaic-exec", "exec/qaic-runner", "tools/qaic-qpc", "tools/qaic-util"):
        assert os.access(root / exe, os.X_OK), exe
    run = subprocess.run([str(root / "exec" / "qaic-exec")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stderr.startswith("ERROR: no arguments")
