"""Hostile files (issue 27, docs/RELIABILITY.md): a FIFO where the project reads a file, a YAML alias
bomb as the config, and terminal escape sequences in a compiler's output. Each is met as a user meets
it, `qaic-assets plan` or `dagster asset materialize` in a subprocess of its own session, under a
timeout: a hang fails the test (and its process group is stopped) instead of hanging the suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_tiny_project
from helpers import failure_message, stop_session

from qaic_assets.orchestration.keys import binary_key, profile_key

BIN = Path(sys.executable).parent
PARTITION = "bs1|offline-nsp14"


def run(argv: list[str], project, timeout: float, **env: str) -> subprocess.CompletedProcess:
    """`argv` on the project's config and DAGSTER_HOME; stdout and stderr as bytes, merged."""
    full = {**os.environ, "QAIC_ASSETS_CONFIG": str(project.config_path), "DAGSTER_HOME": str(project.home),
            **env}
    for var in ("QAIC_SDK_ROOT", "QAIC_ASSETS_STORAGE_ROOT", "FAKE_QAIC_LOG"):
        full.pop(var, None)
    proc = subprocess.Popen(argv, cwd=project.root, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_session(proc, timeout=5)
        pytest.fail(f"{' '.join(argv[:2])} still ran after {timeout:g} s: it hangs")
    return subprocess.CompletedProcess(argv, proc.returncode, out.decode("utf-8", "replace"), None)


def plan(project, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return run([str(BIN / "qaic-assets"), "plan", "--model", "tiny"], project, timeout, **env)


def materialize(project, key: str, partition: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    return run([str(BIN / "dagster"), "asset", "materialize", "-m", "qaic_assets.definitions", "--select", key,
                "--partition", partition], project, timeout, **env)


# ================================================================================================
# A FIFO where a file is read
# ================================================================================================


def test_a_fifo_as_the_sdks_version_file_fails_plan_naming_it(tmp_path):
    project = write_tiny_project(tmp_path / "project", batch=[1])
    apps = project.sdk / "versions" / "apps.xml"
    apps.unlink()
    os.mkfifo(apps)
    done = plan(project)
    assert done.returncode == 1, done.stdout
    assert f"SDK version file {apps} is a FIFO: only a regular file can be read here" in done.stdout
    assert "Traceback" not in done.stdout


def test_a_fifo_as_the_config_file_is_a_clear_error(tmp_path):
    project = write_tiny_project(tmp_path / "project", batch=[1])
    project.config_path.unlink()
    os.mkfifo(project.config_path)
    done = plan(project)
    assert done.returncode == 1, done.stdout
    assert f"config file {project.config_path} is a FIFO: only a regular file can be read here" in done.stdout
    assert "Traceback" not in done.stdout


@pytest.mark.project(batch=[1])
def test_a_fifo_as_a_built_partitions_manifest_fails_the_step_naming_it(tiny_project):
    assert tiny_project.materialize(profile_key("tiny"), "bs1").success
    assert tiny_project.materialize(binary_key("tiny"), PARTITION).success
    manifest = tiny_project.root / "store" / "tiny" / "compiled" / "bs1" / "offline-nsp14" / "manifest.json"
    manifest.unlink()
    os.mkfifo(manifest)
    done = materialize(tiny_project, "tiny/compiled_binary", PARTITION)
    assert done.returncode != 0, done.stdout[-3000:]
    assert f"{manifest} is a FIFO: only a regular file can be read here" in done.stdout, done.stdout[-3000:]


# ================================================================================================
# A YAML alias bomb
# ================================================================================================


def bomb(levels: int = 9) -> str:
    """"Billion laughs": 9 levels of 9 aliases each, 9**9 values once expanded, in under 1 KB."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_as_the_config_is_refused_by_plan(tmp_path):
    project = write_tiny_project(tmp_path / "project", batch=[1])
    project.config_path.write_text(bomb() + project.config_path.read_text())
    # a cap on the CPU time too: the refusal must come before any expansion (it took 50-105 s)
    done = run([sys.executable, "-c", "import resource, sys; resource.setrlimit(resource.RLIMIT_CPU, (25, 25)); "
                "from qaic_assets.cli import main; sys.exit(main(['plan', '--model', 'tiny']))"],
               project, timeout=30)
    assert done.returncode == 1, done.stdout[-3000:]
    assert (f"config file {project.config_path} uses YAML aliases that expand to more than 100000 values: "
            "write the values out or use fewer aliases") in done.stdout
    assert "Traceback" not in done.stdout


def test_ordinary_anchors_and_aliases_still_work(tmp_path):
    """A flag list shared by two models through an anchor, as a user writes it."""
    from qaic_assets.settings import load_settings

    project = write_tiny_project(tmp_path / "project", batch=[1])
    model = "    recipe: resnet50\n    source: {path: tiny.onnx}\n    calibration: {list: cal/cal.txt}\n"
    shared = f"{model}    extra_flags: &shared [-aic-hw, -stats-level=70]\n  tiny2:\n{model}    extra_flags: *shared\n"
    text = project.config_path.read_text().replace(model, shared)
    project.config_path.write_text(text)
    settings = load_settings(project.config_path)
    assert settings.model("tiny").extra_flags == settings.model("tiny2").extra_flags == ["-aic-hw", "-stats-level=70"]
    done = plan(project)
    assert done.returncode == 0, done.stdout
    assert done.stdout.count("-stats-level=70") == 2  # the compile of tiny bs1 in both scenarios


# ================================================================================================
# Terminal escape sequences in a compiler's output
# ================================================================================================

HOSTILE = ["\x1b]0;pwned\x07\x1b[2J", "\x1b[31mERROR\x1b[0m: hostile\bx\x9b6n", "tab\there"]


def hostile_compiler(project) -> None:
    """qaic-exec prints HOSTILE first; then fails when HOSTILE_FAIL is set, else runs the real one."""
    exe = project.sdk / "exec" / "qaic-exec"
    real = exe.with_name("qaic-exec.real")
    exe.rename(real)
    printed = ("\n".join(HOSTILE) + "\n").encode()
    exe.write_text(f"#!{sys.executable}\nimport os, sys\n"
                   f"sys.stdout.buffer.write({printed!r})\nsys.stdout.flush()\n"
                   f"if os.environ.get('HOSTILE_FAIL'):\n    sys.exit(1)\n"
                   f"os.execv({str(real)!r}, [{str(real)!r}, *sys.argv[1:]])\n")
    exe.chmod(0o755)


@pytest.mark.project(batch=[1])
def test_a_compilers_escape_sequences_never_reach_the_terminal(tiny_project):
    hostile_compiler(tiny_project)
    # a success keeps compiler.log beside the profile: the raw bytes, as printed
    result = tiny_project.materialize(profile_key("tiny"), "bs1")
    assert result.success, failure_message(result)
    log = (tiny_project.root / "store" / "tiny" / "calibration" / "bs1" / "compiler.log").read_bytes()
    assert "\n".join(HOSTILE).encode() in log
    # a failing compile through `dagster asset materialize`: the forwarded ERROR line and the failure
    # message's tail are readable text, without one control character of the compiler's
    done = materialize(tiny_project, "tiny/compiled_binary", PARTITION, HOSTILE_FAIL="1")
    assert done.returncode != 0
    assert "\\x1b]0;pwned\\x07\\x1b[2J" in done.stdout, done.stdout[-3000:]
    assert "\\x1b[31mERROR\\x1b[0m: hostile\\x08x\\x9b6n" in done.stdout
    assert "tab\there" in done.stdout
    for control in ("\x1b", "\x07", "\x08", "\x9b"):
        assert control not in done.stdout, (control, done.stdout[-3000:])
