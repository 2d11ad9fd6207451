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
from helpers import TEST_INSTANCE_YAML, failure_message, run_messages, wrap_compiler
from test_reliability import (  # noqa: F401  (fixtures)
    PARTITION,
    assert_nothing_lost,
    finish,
    project,
    read_exits,
    start_worker,
    template,
    wait_for,
)

from qaic_assets.orchestration.keys import binary_key, profile_key
from qaic_assets.hashing import sha256_bytes, sha256_file


# ================================================================================================
# A verbose compiler
# ================================================================================================


def test_a_verbose_compiler_succeeds_and_its_full_log_is_kept_beside_the_binary(project):
    """The issue's repro: qaic-exec compiles, then prints 4,000 `compiling node number N` lines, with
    compile_timeout_s: 20. A success (not "timed out ... exit code 0"), inside the timeout; the event
    log gets a bounded number of those lines plus a count naming compiler.log, which holds all of
    them beside the binary; the manifest points at it."""
    project.reconfigure("compile_timeout_s: 30", "compile_timeout_s: 20")
    wrap_compiler(project.sdk, "rc = subprocess.call([REAL, *sys.argv[1:]])\n"
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
    events = run_messages(project, result.run_id)
    forwarded = [line for m in events for line in m.splitlines() if line.startswith("compiling node number")]
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
    from qaic_assets.builder import service

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
                    if any("is reading it" in m for m in run_messages(project, run.run_id)):
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
                        "    calibration: {list: cal/cal.txt}\n    node_precision: np.yaml\n"
                        "    harness: {naming_sets: [{loc: ['input_0:0'], conf: ['output:0']}]}\n")  # fake SDK's names
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
    assert manifest["inputs"]["files"]["-node-precision-info"] == {"path": str(node_precision),
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


@pytest.mark.parametrize("what", ["binary", "binary dir"])
def test_a_compiler_that_writes_its_binary_as_a_symlink_is_refused(project, tmp_path, what):
    before = project.state()
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "elfs").mkdir(parents=True)
    (elsewhere / "elfs" / "programqpc.bin").write_bytes(b"QPCFAKE\nnot written here")
    if what == "binary":
        body = "os.makedirs(out, exist_ok=True)\nos.symlink('/etc/hostname', os.path.join(out, 'programqpc.bin'))\n"
        needle = "qaic-exec wrote elfs/programqpc.bin as a symlink (to /etc/hostname): refused"
    else:
        body = f"os.symlink({str(elsewhere / 'elfs')!r}, out)\n"
        needle = f"qaic-exec wrote elfs as a symlink (to {elsewhere / 'elfs'}): refused"
    wrap_compiler(project.sdk, "out = [a.split('=', 1)[1] for a in sys.argv if a.startswith('-aic-binary-dir=')][0]\n"
                  + body)
    message = failure_message(project.materialize(binary_key("tiny"), PARTITION, force=True))
    assert needle in message and "the output must be a regular file" in message
    assert_nothing_lost(project, before)


EVIL_NAME = "ArgMax; touch PWNED1 $(touch PWNED2) `touch PWNED3` | touch PWNED4 && x 'q' \"dq\" $HOME"


def test_plan_prints_shell_quoted_lines_that_paste_to_the_exact_argv(project, monkeypatch, capsys, tmp_path):
    """`plan`'s human output, pasted into a shell, runs exactly the planned argv and nothing else
    (a flag value and a storage root full of shell syntax)."""
    from qaic_assets.builder.plan import plan_target
    from qaic_assets.cli import main
    from qaic_assets.qaic.sdk import select_backend

    store = tmp_path / "store $(touch PWNED0); x `touch PWNED5`"
    monkeypatch.setenv("QAIC_ASSETS_STORAGE_ROOT", str(store))
    evil_file = project.root / EVIL_NAME  # the grammar allows shell syntax in a file name only
    evil_file.write_text("external quantization profile\n")
    project.reconfigure("    calibration: {list: cal/cal.txt}\n", "    calibration: {list: cal/cal.txt}\n"
                        f"    extra_flags: [{json.dumps(f'-external-quantization-file={evil_file}')}]\n")
    assert main(["plan", "--model", "tiny", "--scenario", "offline", "--batch", "2"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("(cd ")]
    planned = plan_target(project.config, select_backend("qaic", project.sdk), "tiny", "offline", 14, 2)
    calls = tmp_path / "calls.jsonl"
    for line, command in zip(lines, (planned.calibrate, planned.compile)):
        command.cwd.mkdir(parents=True, exist_ok=True)
        subprocess.run(["bash", "-c", line], cwd=tmp_path, env={**os.environ, "FAKE_QAIC_LOG": str(calls)},
                       capture_output=True)
    assert [c["argv"] for c in read_calls(calls)] == [planned.calibrate.argv, planned.compile.argv]
    assert [c["cwd"] for c in read_calls(calls)] == [str(planned.calibrate.cwd), str(planned.compile.cwd)]
    assert list(tmp_path.rglob("PWNED*")) == [] and list(Path.cwd().glob("PWNED*")) == []


@pytest.mark.parametrize("flag,accepted", [
    ("-aic-hw-version=2.0;touch X", False),     # a version: digits and dots only
    ("-mos=1;touch X", False),                  # a list of numbers
    ("-aic-num-cores=4`reboot`", False),        # an integer (refused by the grammar itself)
    ("-execute-nodes-in-fp16=Sigmoid|sh", False),
    (f"-output-node-name={EVIL_NAME}", False),  # a node name is one token
    (f"-external-quantization-file=/data/{EVIL_NAME}.yaml", True),  # a file name may hold anything
    ("-aic-hw-version=2.0", True),
])
def test_extra_flags_take_shell_syntax_only_where_the_value_grammar_allows_it(tmp_path, flag, accepted):
    from qaic_assets.settings import ConfigError, load_settings

    path = tmp_path / "qaic.yaml"
    path.write_text("matrix: {scenarios: [offline], nsp: [14], batch: [1]}\nmodels:\n  m:\n    recipe: resnet50\n"
                    f"    source: {{path: m.onnx}}\n    quantize: false\n    extra_flags: [{json.dumps(flag)}]\n")
    if accepted:
        assert load_settings(path).model("m").extra_flags == [flag]
        return
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    name = flag[1:].split("=")[0]
    assert "model 'm': extra_flags: " in str(err.value) and f"-{name}" in str(err.value)
    expected = {"aic-num-cores": "expects an integer", "mos": "expects integers separated by commas"}
    assert expected.get(name, "without blanks, quotes or shell metacharacters") in str(err.value)


SMALL = "matrix: {{scenarios: [offline], nsp: [{nsp}], batch: [{batch}]}}\n{extra}models:\n" \
        "  m: {{recipe: resnet50, source: {{path: m.onnx}}, quantize: false}}\n"


@pytest.mark.parametrize("batch,nsp,extra,needles", [
    ("true", "14", "", ["matrix.batch.0", "valid integer"]),
    (str(10**12), "14", "", ["matrix.batch.0", "less than or equal to 4096"]),
    (str(10**20), "14", "", ["matrix.batch.0", "less than or equal to 4096"]),
    ("8", "1000", "", ["matrix.nsp.0", "less than or equal to 64"]),
    ("8", "14", "compile_timeout_s: .inf\n", ["compile_timeout_s", "finite number"]),
    ("8", "14", "compile_timeout_s: .nan\n", ["compile_timeout_s", "finite number"]),
    ("8", "14", "compile_timeout_s: 1e9\n", ["compile_timeout_s", "less than or equal to 604800"]),
])
def test_numbers_that_cannot_be_real_are_refused_at_load(tmp_path, batch, nsp, extra, needles):
    from qaic_assets.settings import ConfigError, load_settings

    path = tmp_path / "qaic.yaml"
    path.write_text(SMALL.format(batch=batch, nsp=nsp, extra=extra))
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(path) in str(err.value)
    for needle in needles:
        assert needle in str(err.value)


def test_relative_paths_resolve_against_the_config_file_or_the_working_directory(tmp_path, monkeypatch):
    """In the file: relative to the file (sdk_root too, as the README says); from the environment
    (QAIC_SDK_ROOT, QAIC_ASSETS_STORAGE_ROOT): relative to the working directory."""
    from qaic_assets.settings import load_settings

    conf = tmp_path / "conf"
    conf.mkdir()
    path = conf / "qaic.yaml"
    path.write_text("storage_root: store\nsdk_root: sdk\n" + SMALL.format(batch=1, nsp=14, extra=""))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("QAIC_SDK_ROOT", raising=False)
    monkeypatch.delenv("QAIC_ASSETS_STORAGE_ROOT", raising=False)
    settings = load_settings(path)
    assert (settings.sdk_root, settings.storage_root) == (conf / "sdk", conf / "store")
    monkeypatch.setenv("QAIC_SDK_ROOT", "my-sdk")
    monkeypatch.setenv("QAIC_ASSETS_STORAGE_ROOT", "out/artifacts")
    settings = load_settings(path)
    assert (settings.sdk_root, settings.storage_root) == (work / "my-sdk", work / "out" / "artifacts")


@pytest.mark.parametrize("args,needle", [
    (["--percentile", "-5"], "--percentile must be a number above 0 and at most 100 (like 99.99), got -5"),
    (["--percentile", "1000"], "got 1000"),
    (["--percentile", "nan"], "got nan"),
    (["--batch", ""], "--batch is empty: give one or more values"),
    (["--batch", " , "], "--batch is empty"),
    (["--batch", str(10**20)], "batch must be positive integers up to 4096"),
    (["--scenario", ""], "--scenario is empty"),
])
def test_plan_refuses_arguments_that_cannot_be_planned(project, capsys, args, needle):
    from qaic_assets.cli import main

    model = ["--model", "tiny"]
    assert main(["plan", *model, *args]) == 2
    captured = capsys.readouterr()
    assert needle in captured.err and captured.out == ""


def test_plan_refuses_an_empty_model(project, capsys):
    from qaic_assets.cli import main

    assert main(["plan", "--model", ""]) == 2
    assert "--model is empty" in capsys.readouterr().err


@pytest.mark.parametrize("home,needle", [
    (None, "DAGSTER_HOME is not set: point DAGSTER_HOME at the instance directory"),
    ("relative/home", "DAGSTER_HOME=relative/home is not an absolute path"),
    ("{tmp}/no-such-home", "DAGSTER_HOME={tmp}/no-such-home does not exist: create it (mkdir -p"),
])
@pytest.mark.parametrize("command", ["lineage", "register"])
def test_lineage_and_register_name_a_missing_dagster_home(project, capsys, monkeypatch, tmp_path,
                                                          home, needle, command):
    from qaic_assets.cli import main

    if home is None:
        monkeypatch.delenv("DAGSTER_HOME")
    else:
        monkeypatch.setenv("DAGSTER_HOME", home.format(tmp=tmp_path))
    extra = ["--from", str(project.final / "elfs")] if command == "register" else []
    before = project.state()
    assert main([command, "--model", "tiny", "--partition", PARTITION, *extra]) == 1
    err = capsys.readouterr().err
    assert needle.format(tmp=tmp_path) in err and "Traceback" not in err
    assert not (tmp_path / "no-such-home").exists()
    assert_nothing_lost(project, before)


@pytest.mark.parametrize("fault,needle", [
    ("404", "cannot download {url}: the server answered HTTP 404 Not Found; fix models.web.source.url in"),
    ("unreachable", "cannot download {url}: [Errno -2] Name or service not known; check the network"),
    ("timeout", "cannot download {url}: TimeoutError: timed out; check the network"),
])
def test_an_unreachable_url_source_fails_clearly_and_leaves_nothing(project, monkeypatch, fault, needle):
    import socket
    import urllib.error

    from qaic_assets.builder import sources

    url = "https://models.example/web.onnx"
    project.reconfigure("models:\n", f"models:\n  web:\n    recipe: resnet50\n    quantize: false\n"
                        f"    source: {{url: '{url}', sha256: '{'0' * 64}'}}\n")

    def fail(u):
        if fault == "404":
            raise urllib.error.HTTPError(u, 404, "Not Found", {}, None)
        if fault == "unreachable":
            raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))
        raise TimeoutError("timed out")

    monkeypatch.setattr(sources, "_open", fail)
    before = project.state()
    message = failure_message(project.materialize(binary_key("web"), PARTITION))
    assert needle.format(url=url) in message
    assert "Traceback" not in message and str(project.root / "qaic.yaml") in message
    assert not (project.store / "web").exists(), "a failed download left a folder behind"
    assert_nothing_lost(project, before)


def test_a_cache_hit_removes_what_a_killed_writer_left(project):
    """A step SIGKILLed mid-compile leaves its `.tmp-` dir (test_reliability.py::
    test_sigkill_of_the_step_process_...); the next run that finds the binary cached removes it too."""
    assert project.materialize(binary_key("tiny"), PARTITION).success  # built here: cached from now on
    calls = len(read_calls(project.sdk))
    dead = 999_999_999  # above any pid_max
    stale = project.final.parent / f".{project.final.name}.tmp-{dead}-abcd"
    (stale / "elfs").mkdir(parents=True)
    (stale / "elfs" / "programqpc.bin").write_bytes(b"PARTIAL OUTPUT")
    result = project.materialize(binary_key("tiny"), PARTITION)
    assert result.success
    assert result.asset_materializations_for_node("tiny__compiled_binary")[0].metadata["cached"].value is True
    assert len(read_calls(project.sdk)) == calls
    assert project.leftovers() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_a_stand_in_cut_short_by_a_full_disk_leaves_nothing(project, tmp_path):
    """bert-99's stand-in writes ~400 KB of samples, then a 37 MB model: on a 1 MiB storage root the
    model does not fit. The step fails with the disk-full message and no sample is left."""
    from test_reliability import tmpfs

    store = tmp_path / "small"
    with tmpfs(store):
        project.reconfigure("storage_root: store", f"storage_root: {store}")
        project.reconfigure("models:\n", "models:\n  bert:\n    recipe: bert-99\n    source: {standin: bert-99}\n")
        message = failure_message(project.materialize(dg.AssetKey(["bert", "source_model"])))
        assert f"cannot write {store}" in message and "No space left on device" in message
        assert "free space there, or point storage_root" in message
        assert sorted(p.name for p in store.rglob("*")) == [], "the stand-in left files behind"


def test_a_config_error_through_dagster_asset_materialize_is_one_message(tmp_path):
    """`dagster asset materialize` on a bad config ends with the message the qaic-assets CLI prints,
    not a 65-line import traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMALL.format(batch="true", nsp=14, extra=""))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "dagster.yaml").write_text(TEST_INSTANCE_YAML)
    env = {**os.environ, "QAIC_ASSETS_CONFIG": str(bad), "DAGSTER_HOME": str(tmp_path / "home")}
    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run([str(dagster), "asset", "materialize", "-m", "qaic_assets.definitions",
                           "--select", "m/compiled_binary"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0
    assert f"qaic_assets: invalid config file {bad}:" in done.stderr and "matrix.batch.0" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
