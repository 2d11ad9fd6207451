"""Reliability, second round (issue 14, docs/RELIABILITY.md): a verbose compiler, provenance under
concurrency, inputs of the cache key, escapes, and the small cases a hostile new user finds.

Uses the prebuilt project of test_reliability.py (tiny model on the strict fake SDK, profile `bs2`
and binary `bs2|offline-nsp14` materialized); each test works on a private copy.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from fake_sdk import read_calls
from test_reliability import (  # noqa: F401  (fixtures)
    PARTITION,
    assert_nothing_lost,
    assert_rerun_succeeds,
    failure_message,
    finish,
    project,
    read_exits,
    start_worker,
    template,
    wait_for,
)

from qaic_assets.defs.keys import binary_key, profile_key
from qaic_assets.hashing import sha256_bytes, sha256_file


def wrap_compiler(project, body: str) -> None:
    """Replace the fake SDK's qaic-exec by a Python script (`REAL` is the original's path)."""
    exe = project.sdk / "exec" / "qaic-exec"
    real = exe.with_name("qaic-exec.real")
    exe.rename(real)
    exe.write_text(f"#!{sys.executable}\nimport os, subprocess, sys\nREAL = {str(real)!r}\n{body}")
    exe.chmod(0o755)


def run_events(project, run_id: str) -> list[str]:
    return [r.user_message or "" for r in project.instance.all_logs(run_id)]


# ================================================================================================
# A verbose compiler
# ================================================================================================


def test_a_verbose_compiler_succeeds_and_its_full_log_is_kept_beside_the_binary(project):
    """The issue's repro: qaic-exec compiles, then prints 4,000 `compiling node number N` lines, with
    compile_timeout_s: 20. A success (not "timed out ... exit code 0"), inside the timeout; the event
    log gets a bounded number of those lines plus a count naming compiler.log, which holds all of
    them beside the binary; the manifest points at it."""
    project.reconfigure("compile_timeout_s: 30", "compile_timeout_s: 20")
    wrap_compiler(project, "rc = subprocess.call([REAL, *sys.argv[1:]])\n"
                           "for n in range(4000):\n    print(f'compiling node number {n}')\n"
                           "sys.exit(rc)\n")
    t0 = time.monotonic()
    result = project.materialize(binary_key("tiny"), PARTITION, force=True)
    elapsed = time.monotonic() - t0
    assert result.success, failure_message(result)
    assert elapsed < 20 + 30, elapsed  # the step, Dagster included; the compiler part is far less
    log = project.final / "compiler.log"
    lines = log.read_text().splitlines()
    assert sum(line.startswith("compiling node number") for line in lines) == 4000
    assert "Compilation 100% ... Done" in lines
    manifest = json.loads((project.final / "manifest.json").read_text())
    assert manifest["log"] == {"path": str(log), "lines": len(lines)}
    assert manifest["output"]["sha256"] == sha256_file(project.final / "elfs" / "programqpc.bin")
    events = run_events(project, result.run_id)
    forwarded = [m for m in events if m.startswith("compiling node number")]
    assert len(forwarded) <= 20 + 5 * elapsed + 1, len(forwarded)
    assert any("more compiler output lines not forwarded" in m and str(log) in m for m in events)
    assert project.leftovers() == []


# ================================================================================================
# Provenance under concurrency
# ================================================================================================


def test_a_recalibration_during_a_compile_waits_and_the_recorded_profile_is_the_one_loaded(
        project, tmp_path, monkeypatch):
    """Deterministic interleaving: right after the compile hashed profile A (before its compiler
    starts), a recalibration of bs2 that writes another profile B starts in another process. It must
    wait for the compile ("is reading it"); the compile records A's sha256 and its binary is exactly
    what the compiler makes from A; B lands after the compiler exited."""
    from qaic_assets.build import service

    profile = project.store / "tiny" / "calibration" / "bs2" / "profile.yaml"
    profile_a = profile.read_bytes()
    sample = project.root / "cal" / "0.raw"
    sample.write_bytes(sample.read_bytes()[::-1])  # same size, other values: profile B differs
    real_sha256_file = service.sha256_file
    state: dict = {}

    def recalibration_started(path):
        digest = real_sha256_file(path)
        if Path(path) == profile and "worker" not in state:
            worker = state["worker"] = start_worker(tmp_path, "calibration_profiles", "bs2",
                                                    "tiny__calibration_profile")

            def waiting_or_done():
                if worker.poll() is not None:
                    return "done"
                for run in project.instance.get_runs(dg.RunsFilter(job_name="calibration_profiles"), limit=1):
                    if any("is reading it" in m for m in run_events(project, run.run_id)):
                        return "waiting"
                return None

            state["outcome"] = wait_for(waiting_or_done, timeout=180, what="the recalibration")
        return digest

    monkeypatch.setattr(service, "sha256_file", recalibration_started)
    try:
        result = project.materialize(binary_key("tiny"), PARTITION, force=True)
        assert result.success, failure_message(result)
        assert state["outcome"] == "waiting", "the recalibration ran while the compile used the profile"
        _, calibrated = finish(state["worker"], timeout=180)
    finally:
        if "worker" in state and state["worker"].poll() is None:
            state["worker"].kill()
    assert calibrated
    assert profile.read_bytes() != profile_a  # B, written after the compile
    manifest = json.loads((project.final / "manifest.json").read_text())
    assert manifest["inputs"]["profile"]["sha256"] == sha256_bytes(profile_a)
    compile_call, calibrate_call = read_calls(project.sdk)
    assert any(a.startswith("-aic-binary-dir=") for a in compile_call["args"])
    assert calibrate_call["start"] >= read_exits(project.sdk)[compile_call["pid"]]["end"]
    # the binary is what the compiler makes from A (the fake's output depends on the profile bytes)
    copy = tmp_path / "a" / "profile.yaml"
    copy.parent.mkdir()
    copy.write_bytes(profile_a)
    args = [f"-load-profile={copy}" if a.startswith("-load-profile=") else a for a in compile_call["args"]]
    subprocess.run([str(project.sdk / "exec" / "qaic-exec"), *args], cwd=copy.parent, check=True,
                   capture_output=True, env={**os.environ, "FAKE_QAIC_LOG": str(tmp_path / "calls.jsonl")})
    assert (copy.parent / "elfs" / "programqpc.bin").read_bytes() == \
        (project.final / "elfs" / "programqpc.bin").read_bytes()
    assert project.leftovers() == []


# ================================================================================================
# Inputs of the cache key
# ================================================================================================


def test_editing_the_node_precision_file_rebuilds_instead_of_serving_the_stale_binary(project):
    """The node-precision file is an input of the calibration's and the compile's cache key (every
    other file-naming flag: the toolchain's part of issue 14 #3)."""
    project.reconfigure("models:\n", "models:\n  tinyret:\n    recipe: retinanet\n    source: {path: tiny.onnx}\n"
                        "    calibration: {list: cal/cal.txt}\n    node_precision: np.yaml\n")
    node_precision = project.root / "np.yaml"
    node_precision.write_text("FP16NodeInstanceNames: [logits]\n")
    for key, part in ((profile_key("tinyret"), "bs2"), (binary_key("tinyret"), PARTITION)):
        assert project.materialize(key, part).success
    final = project.store / "tinyret" / "compiled" / "bs2" / "offline-nsp14"
    binary_before = (final / "elfs" / "programqpc.bin").read_bytes()
    node_precision.write_text("FP16NodeInstanceNames: [logits, ArgMax]\n")
    for key, part in ((profile_key("tinyret"), "bs2"), (binary_key("tinyret"), PARTITION)):
        result = project.materialize(key, part)
        assert result.success, failure_message(result)
        meta = result.asset_materializations_for_node(f"tinyret__{key.path[-1]}")[0].metadata
        assert meta["cached"].value is False, f"{key.to_user_string()} served a stale cached build"
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["inputs"]["node_precision"] == {"path": str(node_precision),
                                                    "sha256": sha256_file(node_precision)}
    assert (final / "elfs" / "programqpc.bin").read_bytes() != binary_before
    assert len(read_calls(project.sdk)) == 4


# ================================================================================================
# Escapes
# ================================================================================================


def make_source(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A prebuilt binary dir with one hostile entry; returns (dir, the entry's name)."""
    src = tmp_path / "prebuilt"
    src.mkdir()
    (src / "programqpc.bin").write_bytes(b"QPCFAKE\nprebuilt")
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "shadow").write_text("root:SECRET:19000::::::\n")
    name = {"file link outside": "shadow", "dir link outside": "ssl", "loop": "a", "fifo": "pipe",
            "device": "null", "symlinked binary": "programqpc.bin", "link inside": "copy.json"}[case]
    entry = src / name
    if case == "file link outside":
        entry.symlink_to(outside / "shadow")
    elif case == "dir link outside":
        entry.symlink_to(outside)
    elif case == "loop":
        entry.symlink_to(src / "b")
        (src / "b").symlink_to(entry)
    elif case == "fifo":
        os.mkfifo(entry)
    elif case == "device":
        try:
            os.mknod(entry, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("mknod needs root")
    elif case == "symlinked binary":  # even pointing inside the directory
        (src / "real.bin").write_bytes(entry.read_bytes())
        entry.unlink()
        entry.symlink_to("real.bin")
    else:
        (src / "meta.json").write_text("{}")
        entry.symlink_to("meta.json")
    return src, name


@pytest.mark.parametrize("case,needle", [
    ("file link outside", "is a symlink to {outside}/shadow, outside {src}: copy the file into the directory"),
    ("dir link outside", "is a symlink to {outside}, outside {src}"),
    ("loop", "is a symlink loop"),
    ("fifo", "is a FIFO: only regular files and directories can be registered"),
    ("device", "is a character device: only regular files and directories"),
    ("symlinked binary", "is a symlink (to real.bin): the binary must be a regular file"),
])
def test_register_refuses_entries_that_leave_the_directory_or_are_not_files(project, tmp_path, capsys,
                                                                             case, needle):
    from qaic_assets.cli import main

    src, name = make_source(tmp_path, case)
    before = project.state()
    assert main(["register", "--model", "tiny", "--partition", PARTITION, "--from", str(src)]) == 1
    err = capsys.readouterr().err
    assert f"refusing to register {src}: {src / name} " in err
    assert needle.format(outside=tmp_path / "secret", src=src) in err
    assert_nothing_lost(project, before)
    stored = b"".join(p.read_bytes() for p in project.store.rglob("*") if p.is_file())
    assert b"SECRET" not in stored


def test_register_copies_a_symlink_inside_the_directory_as_its_content(project, tmp_path, capsys):
    """The control case: a symlink that stays inside the directory is fine (copied as a file)."""
    from qaic_assets.cli import main

    src, _ = make_source(tmp_path, "link inside")
    assert main(["register", "--model", "tiny", "--partition", PARTITION, "--from", str(src)]) == 0
    elfs = project.final / "elfs"
    assert sorted(p.name for p in elfs.iterdir()) == ["copy.json", "meta.json", "programqpc.bin"]
    assert not (elfs / "copy.json").is_symlink() and (elfs / "copy.json").read_text() == "{}"
    assert (elfs / "programqpc.bin").read_bytes() == b"QPCFAKE\nprebuilt"


def test_a_compiler_that_writes_its_binary_as_a_symlink_is_refused(project):
    before = project.state()
    wrap_compiler(project, "out = [a.split('=', 1)[1] for a in sys.argv if a.startswith('-aic-binary-dir=')][0]\n"
                           "os.makedirs(out, exist_ok=True)\n"
                           "os.symlink('/etc/hostname', os.path.join(out, 'programqpc.bin'))\n")
    message = failure_message(project.materialize(binary_key("tiny"), PARTITION, force=True))
    assert "qaic-exec wrote elfs/programqpc.bin as a symlink (to /etc/hostname): refused" in message
    assert_nothing_lost(project, before)
