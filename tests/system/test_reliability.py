"""Reliability and security (issue 6, docs/RELIABILITY.md): every bad input and every fault ends in a
clear error that names the thing and the fix, loses nothing (previous artifacts, manifests and
materialization metadata unchanged, no temporary directory or lock left behind), and a rerun after
the fault succeeds; no input can make the project run something it should not.

Most tests start from a copy of one prebuilt project (tiny model on the strict fake SDK, profile `bs2`
and binary `bs2|offline-nsp14` already materialized), so each costs one or two materializations.
Cases already covered elsewhere are listed in docs/RELIABILITY.md, not repeated here.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest
import yaml

from fake_sdk import read_calls, read_exits, write_tiny_files
from helpers import failure_message, latest, wait_gone
from qaic_assets.orchestration.keys import binary_key, profile_key, source_key
from qaic_assets.settings import ConfigError, load_settings
from qaic_assets.orchestration import build_definitions

REPO = Path(__file__).resolve().parents[2]
PARTITION = "bs2|offline-nsp14"

CONFIG = """
storage_root: store
backend: qaic
profiling_threads: 2
compile_timeout_s: 30
matrix: {scenarios: [offline, singlestream], nsp: [14], batch: [1, 2]}
models:
  tiny:
    recipe: resnet50
    source: {path: tiny.onnx}
    calibration: {list: cal/cal.txt}
"""


# ------------------------------------------------------------------------------------------ project


def write_project(root: Path, config: str = CONFIG) -> None:
    write_tiny_files(root, config)
    (root / "home").mkdir()
    (root / "home" / "dagster.yaml").write_text("telemetry: {enabled: false}\n")


def point_env_at(mp: pytest.MonkeyPatch, root: Path) -> None:
    mp.setenv("QAIC_ASSETS_CONFIG", str(root / "qaic.yaml"))
    mp.setenv("QAIC_SDK_ROOT", str(root / "sdk"))
    mp.setenv("DAGSTER_HOME", str(root / "home"))
    for name in ("QAIC_ASSETS_STORAGE_ROOT", "FAKE_QAIC_LOG", "FAKE_QAIC_EXIT", "FAKE_QAIC_SLEEP",
                 "FAKE_QAIC_SKIP_OUTPUT", "FAKE_QAIC_SIGNAL", "FAKE_QAIC_SALT"):
        mp.delenv(name, raising=False)


@dataclass
class Project:
    root: Path
    instance: dg.DagsterInstance
    _defs: dg.Definitions | None = field(default=None, repr=False)

    @property
    def config(self):
        return load_settings()

    @property
    def defs(self) -> dg.Definitions:
        if self._defs is None:
            self._defs = build_definitions(self.config)
        return self._defs

    @property
    def sdk(self) -> Path:
        return self.root / "sdk"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def final(self) -> Path:
        return self.store / "tiny" / "compiled" / "bs2" / "offline-nsp14"

    def reconfigure(self, old: str, new: str) -> None:
        """Edit the config file (and rebuild the definitions from it)."""
        path = self.root / "qaic.yaml"
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))
        self._defs = None

    def compiler_pids(self) -> list[int]:
        return [call["pid"] for call in read_calls(self.sdk)]

    def materialize(self, key: dg.AssetKey, partition: str | None = None, force: bool = False):
        asset = self.defs.resolve_asset_graph().get(key).assets_def
        run_config = {"ops": {asset.op.name: {"config": {"force": True}}}} if force else None
        return dg.materialize([asset], instance=self.instance, partition_key=partition, selection=[key],
                              run_config=run_config, raise_on_error=False)

    def state(self) -> dict:
        """Everything a fault must not change: every file under the storage root (bytes) and the
        latest materialization metadata of the profile and the binary."""
        files = {}
        for path in sorted(self.store.rglob("*")):
            rel = path.relative_to(self.store)
            if path.is_file() and not any(part.startswith(".") for part in rel.parts):
                files[str(rel)] = path.read_bytes()
        meta = {str(k): latest(self.instance, k, part) and latest(self.instance, k, part).metadata
                for k, part in ((profile_key("tiny"), "bs2"), (binary_key("tiny"), PARTITION))}
        return {"files": files, "metadata": meta}

    def leftovers(self) -> list[str]:
        """Temporary dirs, old copies, locks and partial downloads anywhere under the storage root."""
        return [str(p.relative_to(self.store)) for p in self.store.rglob(".*")]


def assert_nothing_lost(project: Project, before: dict) -> None:
    assert project.state() == before, "a failed materialization changed stored artifacts or metadata"
    assert project.leftovers() == [], "a failed materialization left temporary files behind"


def assert_rerun_succeeds(project: Project, key: dg.AssetKey = None, partition: str = PARTITION) -> None:
    key = key or binary_key("tiny")
    result = project.materialize(key, partition, force=True)
    assert result.success, failure_message(result)
    assert project.leftovers() == []
    if key == binary_key("tiny"):
        binary = project.final / "elfs" / "programqpc.bin"
        assert binary.read_bytes().startswith(b"QPCFAKE\n")
        manifest = json.loads((project.final / "manifest.json").read_text())
        assert manifest["run_id"] == result.run_id


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The prebuilt project: source, profile bs2 and binary bs2|offline-nsp14 materialized."""
    root = tmp_path_factory.mktemp("reliability") / "p"
    write_project(root)
    with pytest.MonkeyPatch.context() as mp:
        point_env_at(mp, root)
        with dg.DagsterInstance.get() as instance:
            project = Project(root, instance)
            for key, part in ((source_key("tiny"), None), (profile_key("tiny"), "bs2"),
                              (binary_key("tiny"), PARTITION)):
                result = project.materialize(key, part)
                assert result.success, failure_message(result)
    return root


@pytest.fixture
def project(template, tmp_path, monkeypatch):
    """A private copy of the prebuilt project, its instance open, the fake SDK's call log empty."""
    root = tmp_path / "p"
    shutil.copytree(template, root, symlinks=True)
    (root / "sdk" / "calls.jsonl").unlink(missing_ok=True)
    (root / "sdk" / "calls.exits.jsonl").unlink(missing_ok=True)
    point_env_at(monkeypatch, root)
    with dg.DagsterInstance.get() as instance:
        yield Project(root, instance)




def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# A run worker as Dagster starts one: `execute_job` of a reconstructable job (multiprocess executor:
# each step in its own process, like `dagster dev` / the default run launcher), in a fresh process.
WORKER = '''
import sys


def main():
    import dagster as dg

    job, partition, *options = sys.argv[1:]
    recon = dg.build_reconstructable_job("qaic_assets.demo", "job_for", reconstructable_args=(job,))
    tags = {"dagster/partition": partition}
    if "|" in partition:
        batch, target = partition.split("|")
        tags |= {"dagster/partition/batch": batch, "dagster/partition/target": target}
    run_config = {}
    forced = [o for o in options if not o.startswith("--")]
    if forced:
        run_config["ops"] = {op: {"config": {"force": True}} for op in forced}
    if "--in-process" in options:
        run_config["execution"] = {"config": {"in_process": {}}}
    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(recon, instance, tags=tags, run_config=run_config)
        print("RESULT", result.run_id, result.success, flush=True)


if __name__ == "__main__":
    main()
'''


def start_worker(tmp_path: Path, *args: str, **env: str) -> subprocess.Popen:
    script = tmp_path / "run_worker.py"
    script.write_text(WORKER)
    return subprocess.Popen([sys.executable, str(script), *args], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(worker: subprocess.Popen, timeout: float = 90) -> tuple[str, bool]:
    """Wait for a worker; returns (run_id, success)."""
    try:
        out, err = worker.communicate(timeout=timeout)
    finally:
        if worker.poll() is None:
            worker.kill()
    line = [l for l in out.splitlines() if l.startswith("RESULT ")]
    assert line, f"worker printed no result (exit {worker.returncode}):\n{err[-3000:]}"
    _, run_id, success = line[-1].split()
    return run_id, success == "True"


def compile_started(project: Project) -> dict:
    """The running compile's call record, once it has written its partial output."""
    def started():
        calls = read_calls(project.sdk)
        if calls and (Path(calls[-1]["cwd"]) / "elfs" / "programqpc.bin").exists():
            return calls[-1]
        return None
    return wait_for(started, what="the compiler to start and write its partial output")


# ================================================================================================
# Settings
# ================================================================================================


@pytest.mark.parametrize("key,partition", [
    (binary_key("tiny"), "bs3|offline-nsp14"),       # batch not in the matrix
    (binary_key("tiny"), "bs2|server-nsp14"),        # scenario not in the matrix
    (binary_key("tiny"), "bs2|offline-nsp16"),       # nsp not in the matrix
    (profile_key("tiny"), "bs8"),
])
def test_unknown_partition_is_refused_before_anything_runs(project, key, partition):
    before = project.state()
    with pytest.raises(dg.DagsterUnknownPartitionError, match=f"`{partition}`".replace("|", r"\|")):
        project.materialize(key, partition)
    assert read_calls(project.sdk) == []
    assert_nothing_lost(project, before)


@pytest.mark.parametrize("args,listed", [
    (["register", "--model", "nope", "--partition", PARTITION, "--from", "."], "tiny"),
    (["register", "--model", "tiny", "--partition", "bs2|server-nsp14", "--from", "."], "bs2|singlestream-nsp14"),
    (["lineage", "--model", "nope", "--partition", PARTITION], "tiny"),
    (["lineage", "--model", "tiny", "--partition", "bs2"], "bs2|offline-nsp14"),
])
def test_cli_refuses_unknown_model_or_partition(project, capsys, args, listed):
    from qaic_assets.cli import main

    before = project.state()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "unknown" in err and listed in err
    assert_nothing_lost(project, before)


BASE = """
storage_root: store
matrix: {scenarios: [offline], nsp: [14], batch: [1]}
models:
  m:
    recipe: resnet50
    source: {path: m.onnx}
    calibration: {list: cal.txt}
"""


@pytest.mark.parametrize("text,needles", [
    ("strict_flags: true\n" + BASE + "    extra_flags: [-aic-num-corez=4]\n",
     ["model 'm'", "unknown flag -aic-num-corez", "did you mean -aic-num-cores"]),
    (BASE + "    extra_flags: [-Aic-num-cores=4]\n", ["model 'm'", "unknown flag -Aic-num-cores",
                                                      "did you mean -aic-num-cores"]),
    (BASE + "    extra_flags: [-aic-num-cores=four]\n", ["model 'm'", "-aic-num-cores", "integer"]),
    (BASE + "    extra_flags: ['rm -rf /']\n", ["model 'm'", "'rm -rf /'", "-name or -name=value"]),
    (BASE + "    extra_flags: [-aic-binary-dir=/etc/qaic]\n", ["model 'm'", "may not set -aic-binary-dir"]),
    (BASE + "    extra_flags: [-model=/tmp/other.onnx]\n", ["model 'm'", "may not set -model"]),
    (BASE + "    extra_flags: [-num-histogram-bins=512]\n", ["model 'm'", "calibration flag"]),
    (BASE + "    extra_flags: \"-vvv '-aic-num-cores=4\"\n", ["models.m.extra_flags", "as a shell would"]),
    (BASE.replace("storage_root: store", "storage_root: [store]"), ["storage_root", "path"]),
    (BASE + "compile_timeout_s: soon\n", ["compile_timeout_s", "number"]),
])
def test_invalid_config_is_refused_at_load_naming_field_and_fix(tmp_path, text, needles):
    """Adds to tests/test_settings.py::test_invalid_config_names_file_and_field: extra_flags checked
    against the qaic-exec grammar, wrong types of other keys."""
    path = tmp_path / "qaic.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(path) in str(err.value)
    for needle in needles:
        assert needle in str(err.value)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1m"):
    """Mount a small tmpfs at `path` (root only; the test is skipped where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def store_on_tmpfs(project):
    """The project's storage root moved onto its own 1 MiB tmpfs (same content)."""
    saved = project.root / "store.saved"
    project.store.rename(saved)
    with tmpfs(project.store):
        shutil.copytree(saved, project.store, symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(saved)
        yield project


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True, capture_output=True)


def test_read_only_storage_root_fails_clearly_and_loses_nothing(store_on_tmpfs):
    project = store_on_tmpfs
    before = project.state()
    remount(project.store, "ro")
    try:
        for key, part in ((binary_key("tiny"), PARTITION), (profile_key("tiny"), "bs2")):
            message = failure_message(project.materialize(key, part, force=True))
            assert f"storage root {project.store} is not writable" in message
            assert "Read-only file system" in message
            assert "set storage_root in" in message and "QAIC_ASSETS_STORAGE_ROOT" in message
        assert read_calls(project.sdk) == []
        assert_nothing_lost(project, before)
    finally:
        remount(project.store, "rw")
    assert_rerun_succeeds(project)


# ================================================================================================
# Inputs
# ================================================================================================


@pytest.mark.parametrize("fault,needles", [
    ("no qaic-exec", ["backend qaic needs the Cloud AI 100 Apps SDK", "exec/qaic-exec does not exist",
                      "set QAIC_SDK_ROOT"]),
    ("no apps.xml", ["versions/apps.xml is missing", "reinstall the Apps SDK or fix QAIC_SDK_ROOT"]),
    ("bad apps.xml", ["versions/apps.xml is not valid XML", "reinstall the Apps SDK"]),
])
def test_broken_sdk_fails_before_anything_is_written(project, fault, needles):
    """With `backend: qaic` (tests/test_settings.py::test_sdk_version_errors_name_the_file and
    ::test_backend_choice check the messages of sdk.py; this checks the partition)."""
    target = project.sdk / ("exec/qaic-exec" if fault == "no qaic-exec" else "versions/apps.xml")
    saved = target.read_bytes()
    before = project.state()
    if fault == "bad apps.xml":
        target.write_text("<apps_build><ci_build>")
    else:
        target.unlink()
    message = failure_message(project.materialize(binary_key("tiny"), PARTITION, force=True))
    for needle in needles:
        assert needle in message
    assert read_calls(project.sdk) == []
    assert_nothing_lost(project, before)
    target.write_bytes(saved)
    target.chmod(0o755)
    assert_rerun_succeeds(project)


def longest_parsing_prefix(data: bytes) -> bytes:
    """The longest proper prefix of an ONNX file that protobuf still parses (cut at a field boundary)."""
    import onnx

    for n in range(len(data) - 1, 0, -1):
        try:
            onnx.load_model_from_string(data[:n])
            return data[:n]
        except Exception:
            continue
    raise AssertionError("no prefix parses")


@pytest.mark.parametrize("fault,needles", [
    ("missing", ["does not exist", "fix models.tiny.source.path in"]),
    ("empty", ["is empty", "re-export or re-download it"]),
    ("truncated", ["is not a valid ONNX model", "re-export or re-download it"]),
    ("cut at a field boundary", ["no opset_import (truncated?)", "re-export or re-download it"]),
    ("not ONNX", ["is not a valid ONNX model", "re-export or re-download it"]),
])
def test_bad_model_file_fails_before_the_compiler(project, fault, needles):
    model = project.root / "tiny.onnx"
    good = model.read_bytes()
    before = project.state()
    if fault == "missing":
        model.unlink()
    else:
        model.write_bytes({"empty": b"", "truncated": good[: len(good) // 2], "not ONNX": b"<html>404</html>\n",
                           "cut at a field boundary": longest_parsing_prefix(good)}[fault])
    for key, part in ((binary_key("tiny"), PARTITION), (profile_key("tiny"), "bs2")):
        message = failure_message(project.materialize(key, part, force=True))
        assert f"model file {model}" in message
        for needle in needles:
            assert needle in message
    assert read_calls(project.sdk) == []
    assert_nothing_lost(project, before)
    model.write_bytes(good)
    assert_rerun_succeeds(project)


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_url_source_with_wrong_sha256_is_discarded_and_never_used(project, monkeypatch):
    from qaic_assets.builder import sources
    from qaic_assets.hashing import sha256_file

    model = project.root / "tiny.onnx"
    good = model.read_bytes()
    url = "https://models.example/tiny.onnx"
    project.reconfigure("source: {path: tiny.onnx}",
                        f"source: {{url: '{url}', sha256: {sha256_file(model)}}}")
    served = {"data": b"tampered " + good}
    requested = []

    def fake_open(u):
        requested.append(u)
        return FakeResponse(served["data"])

    monkeypatch.setattr(sources, "_open", fake_open)
    dest = project.store / "tiny" / "source" / "tiny.onnx"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"a stale copy with another sha256")  # never used either: replaced by a download
    before = project.state()
    before["files"].pop("tiny/source/tiny.onnx")
    message = failure_message(project.materialize(binary_key("tiny"), PARTITION, force=True))
    assert requested == [url]
    assert f"download of {url} has sha256 {hashlib.sha256(served['data']).hexdigest()}" in message
    assert f"expected {sha256_file(model)}" in message
    assert "the file was discarded; fix the URL or the sha256 in the config" in message
    assert not dest.exists()
    assert read_calls(project.sdk) == []
    assert_nothing_lost(project, before)

    served["data"] = good
    assert_rerun_succeeds(project)
    assert dest.read_bytes() == good and requested == [url, url]
    assert read_calls(project.sdk)[0]["args"][0] == f"-model={dest}"


def test_downloads_are_https_only_including_redirects(tmp_path):
    """The config refuses http:// and a URL without sha256 (tests/test_settings.py); the downloader
    refuses them too, and refuses a redirect from https to http."""
    import urllib.request

    from qaic_assets.builder.sources import SourceError, _download, _HttpsOnlyRedirects

    with pytest.raises(SourceError, match="only https:// URLs are allowed"):
        _download("http://models.example/m.onnx", "0" * 64, tmp_path / "m.onnx")
    handler = _HttpsOnlyRedirects()
    request = urllib.request.Request("https://models.example/m.onnx")
    with pytest.raises(SourceError, match="refusing to follow the redirect .* to http://evil.example/m.onnx"):
        handler.redirect_request(request, None, 302, "Found", {}, "http://evil.example/m.onnx")
    assert handler.redirect_request(request, None, 302, "Found", {}, "https://cdn.example/m.onnx").full_url \
        == "https://cdn.example/m.onnx"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fault,needles", [
    ("empty list", ["calibration list", "has no samples", "put one line per calibration sample"]),
    ("missing list", ["calibration list", "does not exist", "fix models.tiny.calibration.list"]),
    ("wrong size", ["3.raw", "has 12 bytes, expected 16 bytes"]),
    ("missing raw file", ["3.raw", "line 4 of calibration list", "does not exist"]),
])
def test_bad_calibration_input_fails_before_the_compiler(project, fault, needles):
    """tests/qaic/test_batching.py checks each message; tests/orchestration/test_assets.py::
    test_wrong_sized_calibration_file_fails_before_the_compiler the step; this adds: the previous
    profile, manifest and metadata are kept and a rerun succeeds."""
    cal = project.root / "cal"
    saved = {p: p.read_bytes() for p in cal.iterdir()}
    before = project.state()
    if fault == "empty list":
        (cal / "cal.txt").write_text("\n\n")
    elif fault == "missing list":
        (cal / "cal.txt").unlink()
    elif fault == "wrong size":
        (cal / "3.raw").write_bytes(b"\0" * 12)
    else:
        (cal / "3.raw").unlink()
    message = failure_message(project.materialize(profile_key("tiny"), "bs2", force=True))
    for needle in needles:
        assert needle in message
    assert read_calls(project.sdk) == []
    assert_nothing_lost(project, before)
    for path, data in saved.items():
        path.write_bytes(data)
    assert_rerun_succeeds(project, profile_key("tiny"), "bs2")


def test_missing_node_precision_file_fails_before_the_compiler(project):
    project.reconfigure("models:\n", "models:\n  tinyret:\n    recipe: retinanet\n    source: {path: tiny.onnx}\n"
                        "    calibration: {list: cal/cal.txt}\n    node_precision: np.yaml\n"
                        "    harness: {naming_sets: [{loc: ['input_0:0'], conf: ['output:0']}]}\n")  # fake SDK's names
    node_precision = project.root / "np.yaml"
    before = project.state()
    for key, part in ((profile_key("tinyret"), "bs2"), (binary_key("tinyret"), PARTITION)):
        message = failure_message(project.materialize(key, part))
        assert f"node-precision file {node_precision} does not exist" in message
        assert f"fix models.tinyret.node_precision in {project.root / 'qaic.yaml'}" in message
    assert read_calls(project.sdk) == []
    assert_nothing_lost(project, before)
    node_precision.write_text("FP16NodeInstanceNames: [logits]\n")
    assert_rerun_succeeds(project, profile_key("tinyret"), "bs2")
    assert f"-node-precision-info={node_precision}" in read_calls(project.sdk)[0]["args"]


# ================================================================================================
# Compiler faults (non-zero exit, timeout and missing output: tests/orchestration/test_assets.py::
# test_failed_compile_keeps_the_previous_binary; runner level: tests/builder/test_process.py)
# ================================================================================================


@pytest.mark.parametrize("sig,hint", [("SIGSEGV", ""), ("SIGKILL", "OOM killer")])
def test_compiler_killed_by_signal_keeps_the_previous_binary(project, monkeypatch, sig, hint):
    before = project.state()
    monkeypatch.setenv("FAKE_QAIC_SIGNAL", sig)
    message = failure_message(project.materialize(binary_key("tiny"), PARTITION, force=True))
    assert f"qaic-exec failed: killed by signal {sig}" in message and hint in message
    assert "Killing myself" in message  # the log tail
    assert_nothing_lost(project, before)
    monkeypatch.delenv("FAKE_QAIC_SIGNAL")
    assert_rerun_succeeds(project)


def test_cancel_from_dagster_terminates_the_compiler_and_keeps_the_previous_binary(project, tmp_path):
    """What `dagster run terminate` / the UI's Terminate does to a run of the default launcher:
    mark the run CANCELING, then SIGINT its run worker; the multiprocess executor forwards the
    interrupt to the step process, where it raises DagsterExecutionInterruptedError in the op."""
    before = project.state()
    worker = start_worker(tmp_path, "compiled_binaries", PARTITION, "tiny__compiled_binary",
                          FAKE_QAIC_SLEEP="60")
    try:
        call = compile_started(project)
        run = wait_for(lambda: project.instance.get_runs(
            dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]), limit=1), what="the run")[0]
        project.instance.report_run_canceling(run)
        worker.send_signal(signal.SIGINT)
        run_id, success = finish(worker)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert run_id == run.run_id and not success
    assert project.instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.CANCELED
    assert wait_gone(call["pid"]), "the compiler outlived the cancelled run"
    logs = [r.user_message for r in project.instance.all_logs(run_id)]
    assert any(f"process group {call['pid']} was stopped" in m for m in logs)
    assert_nothing_lost(project, before)
    assert_rerun_succeeds(project)


def test_sigkill_of_the_step_process_kills_the_compiler_and_the_next_run_recompiles(project, tmp_path):
    before = project.state()
    worker = start_worker(tmp_path, "compiled_binaries", PARTITION, "tiny__compiled_binary",
                          FAKE_QAIC_SLEEP="60")
    try:
        call = compile_started(project)
        temp = Path(call["cwd"]).parent  # .<name>.tmp-<writer pid>-<token>/<name>
        step_pid = int(temp.name.split(".tmp-")[1].split("-")[0])  # .<name>.tmp-<writer pid>-<token>
        assert step_pid not in (worker.pid, os.getpid())
        os.kill(step_pid, signal.SIGKILL)  # e.g. the OOM killer picks the step process
        run_id, success = finish(worker)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert not success
    assert project.instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    assert wait_gone(call["pid"]), "the compiler outlived its SIGKILLed step process (PR_SET_PDEATHSIG)"
    # what the killed step left: its half-written temp dir and its (no longer held) lock files, the
    # output's and the reader's lock of the profile it compiled from
    assert (temp / project.final.name / "elfs" / "programqpc.bin").read_bytes().startswith(b"PARTIAL OUTPUT")
    assert sorted(project.leftovers()) == sorted([str(temp.relative_to(project.store)),
                                                 str(project.final.parent.relative_to(project.store) / ".offline-nsp14.lock"),
                                                 "tiny/calibration/.bs2.lock"])
    assert project.state() == before  # the final dir, manifests and metadata are the previous ones
    assert_rerun_succeeds(project)  # cleans the leftovers, recompiles
    assert not temp.exists()


@pytest.mark.parametrize("step", ["compile", "calibrate"])
def test_disk_full_fails_clearly_and_keeps_the_previous_output(store_on_tmpfs, step):
    """compile: the compiler's own write fails; calibrate: our write of the batched inputs fails."""
    project = store_on_tmpfs
    filler = project.store / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(OSError) as full:
            while True:
                os.write(fd, b"\0" * 65536)
        assert full.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    before = project.state()
    key, part = (binary_key("tiny"), PARTITION) if step == "compile" else (profile_key("tiny"), "bs2")
    message = failure_message(project.materialize(key, part, force=True))
    assert "No space left on device" in message
    assert f"the file system holding {project.store}" in message and "is full" in message
    assert "free space there, or point storage_root" in message and "the previous output is kept" in message
    assert len(read_calls(project.sdk)) == (1 if step == "compile" else 0)
    assert_nothing_lost(project, before)
    filler.unlink()
    assert_rerun_succeeds(project, key, part)


def test_failed_manifest_write_keeps_the_previous_output(project, monkeypatch):
    """Disk full while we write the manifest (simulated where no tmpfs can be mounted)."""
    from qaic_assets.builder import service

    def full(directory, data):
        (Path(directory) / "manifest.json").write_text("{\"half\": ")
        raise OSError(errno.ENOSPC, "No space left on device")

    before = project.state()
    monkeypatch.setattr(service, "write_manifest", full)
    message = failure_message(project.materialize(binary_key("tiny"), PARTITION, force=True))
    assert f"cannot write {project.store}: No space left on device" in message
    assert_nothing_lost(project, before)
    monkeypatch.undo()
    assert_rerun_succeeds(project)


# ================================================================================================
# Concurrency
# ================================================================================================


def test_two_runs_of_one_partition_take_turns_and_store_one_complete_output(project, tmp_path, monkeypatch):
    """Run A (another process) compiles slowly; run B of the same partition starts meanwhile: B waits
    for A's output lock, then compiles; the stored binary is B's, whole, with B's manifest. The
    two compiles write different bytes (FAKE_QAIC_SALT), so a mix would show."""
    from qaic_assets.hashing import sha256_file

    worker = start_worker(tmp_path, "compiled_binaries", PARTITION, "tiny__compiled_binary", "--in-process",
                          FAKE_QAIC_SLEEP="5", FAKE_QAIC_SALT="run A")
    try:
        call_a = compile_started(project)
        monkeypatch.setenv("FAKE_QAIC_SALT", "run B")
        result_b = project.materialize(binary_key("tiny"), PARTITION, force=True)
        run_a, success_a = finish(worker)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert success_a and result_b.success
    calls = read_calls(project.sdk)
    exits = read_exits(project.sdk)
    assert [c["pid"] for c in calls] == [call_a["pid"], calls[1]["pid"]]
    assert calls[1]["start"] >= exits[call_a["pid"]]["end"], "the two compiles of one output overlapped"
    writer_a = Path(call_a["cwd"]).parent.name.split(".tmp-")[1].split("-")[0]
    waited = [r.user_message for r in project.instance.all_logs(result_b.run_id) if "waiting for" in r.user_message]
    assert waited and f"pid {writer_a} on" in waited[0] and str(project.final) in waited[0]

    binary = project.final / "elfs" / "programqpc.bin"
    manifest = json.loads((project.final / "manifest.json").read_text())
    records = project.instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=binary_key("tiny"), asset_partitions=[PARTITION]), limit=2).records
    assert [r.run_id for r in records] == [result_b.run_id, run_a]
    sha_b, sha_a = (r.asset_materialization.metadata["sha256"].value for r in records)
    assert sha_a != sha_b
    assert sha256_file(binary) == manifest["output"]["sha256"] == sha_b
    assert manifest["run_id"] == result_b.run_id
    assert project.leftovers() == []


def test_output_lock_waits_then_names_the_holder(tmp_path, caplog):
    """The lock behind the previous test: a writer that cannot get it in time says once whom it waits
    for, then fails naming the directory and the holding process; a SIGKILLed holder releases it."""
    from qaic_assets.builder.outputs import OutputLocked, output_lock

    final = tmp_path / "compiled" / "bs2" / "offline-nsp14"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from qaic_assets.builder.outputs import output_lock
        with output_lock(Path({str(final)!r}), 5):
            print("locked", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLocked) as err:
            with output_lock(final, 0.5, log=logging.getLogger("test_output_lock")):
                pass
        # it waited (said so once), then its own deadline ended the wait: the holder still holds the lock
        waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"waiting for {final}:")]
        assert len(waits) == 1 and f"pid {holder.pid} on " in waits[0], waits
        assert holder.poll() is None
        message = str(err.value)
        assert f"{final} is being written by another run (pid {holder.pid} on " in message
        assert "Retry once that run has finished" in message
        holder.kill()
        holder.wait()
        with output_lock(final, 5) as lock:
            assert lock.read_text().split()[0] == str(os.getpid())
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdout.close()
    assert sorted(p.name for p in final.parent.iterdir()) == []


TWO_MODELS = """
storage_root: store
backend: qaic
compile_timeout_s: 30
matrix: {scenarios: [offline], nsp: [14], batch: [1]}
models:
  tiny:
    recipe: resnet50
    source: {path: tiny.onnx}
    quantize: false
  tiny2:
    recipe: resnet50
    source: {path: tiny.onnx}
    quantize: false
"""


def test_pool_limit_bounds_concurrent_compiler_processes(tmp_path, monkeypatch):
    """dagster_home/dagster.yaml with `default_limit: 1`: a run with two compile steps on the
    multiprocess executor (which would start both at once) runs one compiler at a time."""
    root = tmp_path / "pool"
    write_project(root, TWO_MODELS)
    instance_yaml = yaml.safe_load((REPO / "dagster_home" / "dagster.yaml").read_text())
    assert instance_yaml["concurrency"]["pools"]["granularity"] == "op"
    instance_yaml["concurrency"]["pools"]["default_limit"] = 1
    (root / "home" / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
    point_env_at(monkeypatch, root)
    worker = start_worker(tmp_path, "compiled_binaries", "bs1|offline-nsp14", FAKE_QAIC_SLEEP="1.5")
    run_id, success = finish(worker)
    assert success
    calls = read_calls(root / "sdk")
    exits = read_exits(root / "sdk")
    assert len(calls) == 2 and len(exits) == 2
    spans = sorted((c["start"], exits[c["pid"]]["end"]) for c in calls)
    assert spans[1][0] >= spans[0][1], f"two compilers ran at once: {spans}"
    with dg.DagsterInstance.get() as instance:
        blocked = [r for r in instance.all_logs(run_id)
                   if "blocked by limit for pool qaic_compile" in (r.user_message or "")]
    assert blocked, "the second step was never held back by the pool"


# ================================================================================================
# Security
# ================================================================================================


EVIL = "ArgMax; touch PWNED1 $(touch PWNED2) `touch PWNED3` | touch PWNED4 && x\nsecond  line 'q' \"dq\" $HOME"


def test_flag_values_and_paths_reach_the_compiler_as_single_arguments(project, monkeypatch):
    """extra_flags from the config and a storage root full of shell syntax: every value arrives as one
    argv item, exactly as planned, and nothing is executed (tests/builder/test_process.py::
    test_argv_reaches_child_verbatim_and_nothing_is_executed checks the runner alone)."""
    from qaic_assets.builder.plan import plan_target
    from qaic_assets.qaic.sdk import select_backend

    store = project.root / "store $(touch PWNED0); x\n`touch PWNED5`"
    monkeypatch.setenv("QAIC_ASSETS_STORAGE_ROOT", str(store))
    evil_file = project.root / EVIL  # shell syntax is allowed where the grammar allows it: in a file name
    evil_file.write_text("external quantization profile\n")
    flag = f"-external-quantization-file={evil_file}"
    project.reconfigure("    calibration: {list: cal/cal.txt}\n", "    calibration: {list: cal/cal.txt}\n"
                        f"    extra_flags: [-aic-num-cores=2, {json.dumps(flag)}]\n")
    for key, part in ((profile_key("tiny"), "bs2"), (binary_key("tiny"), PARTITION)):
        result = project.materialize(key, part)
        assert result.success, failure_message(result)
    compile_call = read_calls(project.sdk)[1]
    config = project.config
    planned = plan_target(config, select_backend("qaic", config.sdk_root), "tiny", "offline", 14, 2)
    assert compile_call["argv"] == planned.compile.argv
    argv = compile_call["args"]
    assert argv.count(flag) == 1
    assert argv[argv.index(flag) - 1: argv.index(flag) + 2] == ["-aic-num-cores=2", flag, "-batchsize=2"]
    assert f"-load-profile={store}/tiny/calibration/bs2/profile.yaml" in argv
    assert Path(compile_call["cwd"]).parent.parent == store / "tiny" / "compiled" / "bs2"
    assert (store / "tiny" / "compiled" / "bs2" / "offline-nsp14" / "elfs" / "programqpc.bin").is_file()
    pwned = [p for p in list(project.root.rglob("PWNED*")) + list(Path.cwd().glob("PWNED*"))]
    assert pwned == [], f"a shell ran: {pwned}"


def test_nothing_from_the_config_builds_an_output_path_outside_the_storage_root(tmp_path):
    from qaic_assets.builder import store as layout
    from qaic_assets.keys import BinaryPartition

    urls = {
        "dotdot": "https://models.example/a/..",
        "encoded": "https://models.example/x/..%2F..%2Fevil.onnx",
        "query": "https://models.example/get?file=../../../etc/evil.onnx",
        "dots": "https://models.example/%2e%2e",
        "plain": "https://models.example/dl/resnet50_v1.onnx",
    }
    models = "".join(f"  {name}:\n    recipe: resnet50\n    quantize: false\n"
                     f"    source: {{url: '{url}', sha256: '{'0' * 64}'}}\n" for name, url in urls.items())
    path = tmp_path / "qaic.yaml"
    path.write_text("storage_root: store\nmatrix: {scenarios: [offline], nsp: [14], batch: [1]}\nmodels:\n" + models)
    config = load_settings(path)
    store = tmp_path / "store"
    names = {name: layout.model_inputs(config, name).model for name in urls}
    for name, model_path in names.items():
        assert model_path.parent == store / name / "source", model_path
    assert names["plain"].name == "resnet50_v1.onnx" and names["query"].name == "get"
    assert {names[n].name for n in ("dotdot", "encoded", "dots")} == {"model.onnx"}
    # model names are checked at load (tests/test_settings.py); a config built around that check is
    # still refused when an output path is made from it
    sneaky = config.model_copy(update={"models": {"../../outside": config.model("plain")}})
    for build in (lambda: layout.compile_dir(sneaky, "../../outside", BinaryPartition(1, "offline", 14)),
                  lambda: layout.calibration_dir(sneaky, "../../outside", 1),
                  lambda: layout.source_dir(sneaky, "../../outside")):
        with pytest.raises(ValueError, match=f"would lie outside the storage root {store}"):
            build()


def test_webserver_binds_localhost_by_default():
    import dagster_webserver.cli

    makefile = (REPO / "Makefile").read_text()
    ui = makefile.split("\nui:", 1)[1].split("\n\n", 1)[0]
    assert "dg dev -h 127.0.0.1 " in ui
    assert "http://127.0.0.1:3000" in (REPO / "README.md").read_text()
    host = next(p for p in dagster_webserver.cli.dagster_webserver.params if p.name == "host")
    assert host.default == "127.0.0.1"  # also what `dg dev` uses when given no -h
    for name in ("Makefile", "README.md", "workspace.yaml"):
        assert "0.0.0.0" not in (REPO / name).read_text()
