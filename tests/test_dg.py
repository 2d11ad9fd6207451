"""Dagster's `dg` CLI understands the project ([tool.dg] in pyproject.toml: a project whose code location
is qaic_assets.definitions): `dg check defs` loads and validates the definitions and `dg list defs
--json` lists the assets, run as a user would, from the repository root with the venv's `dg`.

Each command is a subprocess (about 3 s) with its own DAGSTER_HOME (telemetry off) and the packaged
default config (no QAIC_* overrides); nothing touches the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DG = Path(sys.executable).parent / "dg"
TIMEOUT_S = 300

pytestmark = pytest.mark.skipif(not DG.exists(), reason=f"dg is not installed ({DG} missing): pip install -e '.[test]'")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry: {enabled: false}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QAIC_")}
    env["DAGSTER_HOME"] = str(home)
    return env


def _dg(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(DG), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)


def _explain(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"


def test_check_defs(env):
    done = _dg(env, "check", "defs")
    assert done.returncode == 0, _explain(done)
    assert "All definitions loaded successfully." in done.stdout, _explain(done)


def test_list_defs_json(env):
    done = _dg(env, "list", "defs", "--json")
    assert done.returncode == 0, _explain(done)
    listed = json.loads(done.stdout)
    keys = {asset["asset_key"] for asset in listed["assets"]}
    assert {"qaic_sdk", "resnet50/compiled_binary"} <= keys, sorted(keys)
    jobs = {job["name"] for job in listed["jobs"]}
    assert "compiled_binaries" in jobs, sorted(jobs)


def test_check_defs_fails_on_a_bad_config(env, tmp_path):
    """The check really loads qaic_assets.definitions: a config it refuses fails `dg check defs`."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: 42\n")
    done = _dg({**env, "QAIC_ASSETS_CONFIG": str(bad)}, "check", "defs")
    assert done.returncode == 1, _explain(done)
    assert f"invalid config file {bad}" in done.stdout + done.stderr, _explain(done)  # dagster's log: either stream
    assert "All definitions loaded successfully." not in done.stdout, _explain(done)
