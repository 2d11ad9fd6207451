"""Shared test helpers: a tiny one-model project on the strict fake SDK, with its own DAGSTER_HOME.

`write_tiny_project(root, batch=[...])` lays out the files (model, calibration set, fake SDK, config
with an absolute `sdk_root`, DAGSTER_HOME) and returns a `TinyProject`; `tiny_project` is the
function-scoped fixture that also points QAIC_ASSETS_CONFIG / DAGSTER_HOME at it and opens its
instance. The files themselves come from `fake_sdk.write_tiny_files`, shared with test_assets.py and
test_reliability.py.

`standin(kind)` (session fixture) gives the generated stand-in models that tests/models and
tests/cpu_compiler share: each is built once per `make test`, not once per file.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest

from fake_sdk import TINY_CONFIG, write_tiny_files
from helpers import TEST_INSTANCE_YAML


@dataclass
class TinyProject:
    root: Path
    config_path: Path
    sdk: Path
    home: Path
    instance: dg.DagsterInstance | None = None
    _defs: dg.Definitions | None = field(default=None, repr=False)

    @property
    def config(self):
        from qaic_assets.settings import load_settings

        return load_settings(self.config_path)

    @property
    def defs(self) -> dg.Definitions:
        if self._defs is None:
            self.rebuild()
        return self._defs

    def rebuild(self) -> dg.Definitions:
        """Re-read the config and rebuild the definitions (a new code version, say)."""
        from qaic_assets.orchestration import build_definitions

        self._defs = build_definitions(self.config)
        return self._defs

    def materialize(self, key: dg.AssetKey, partition: str | None = None, *, raise_on_error: bool = True,
                    **tags: str):
        graph = self.defs.resolve_asset_graph()
        return dg.materialize([graph.get(key).assets_def], instance=self.instance, partition_key=partition,
                              selection=[key], tags=tags or None, raise_on_error=raise_on_error)

    def observe_sdk(self) -> dg.AssetObservation:
        from qaic_assets.orchestration.jobs import OBSERVE_JOB

        result = self.defs.resolve_job_def(OBSERVE_JOB).execute_in_process(instance=self.instance)
        assert result.success
        records = self.instance.fetch_observations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("qaic_sdk")), limit=1).records
        return records[0].asset_observation


def write_tiny_project(root: Path, batch: list[int] = (1, 2), backend: str = "qaic", extra: str = "",
                       instance_yaml: str = TEST_INSTANCE_YAML) -> TinyProject:
    """Lay out the project under `root`; `extra` is appended to the config (top-level keys)."""
    config = TINY_CONFIG.format(backend=backend, batch=list(batch)) + f"sdk_root: {root / 'sdk'}\n" + extra
    sdk = write_tiny_files(root, config)
    config_path = root / "qaic.yaml"
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml)
    return TinyProject(root=root, config_path=config_path, sdk=sdk, home=home)


@pytest.fixture
def tiny_project(tmp_path, monkeypatch, request):
    """A TinyProject (batch 1, 2, 4 x offline, singlestream: 3 profiles, 6 binaries) with its
    instance open.
    `@pytest.mark.project(backend=..., extra=...)` changes the config."""
    marker = request.node.get_closest_marker("project")
    options = {"batch": [1, 2, 4], **(marker.kwargs if marker else {})}
    project = write_tiny_project(tmp_path / "project", **options)
    monkeypatch.setenv("QAIC_ASSETS_CONFIG", str(project.config_path))
    monkeypatch.delenv("QAIC_SDK_ROOT", raising=False)
    monkeypatch.delenv("QAIC_ASSETS_STORAGE_ROOT", raising=False)
    monkeypatch.delenv("FAKE_QAIC_LOG", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(project.home))
    with dg.DagsterInstance.get() as instance:
        project.instance = instance
        yield project


#: Calibration and held-out samples of the shared stand-ins.
STANDIN_CALIBRATION = 8
STANDIN_HELDOUT = 16


@pytest.fixture(scope="session")
def standin(tmp_path_factory):
    """`standin(kind)` -> StandinFiles: the stand-in built once per test session in one directory
    the xdist workers share (a ResNet-50 or RetinaNet stand-in takes ~5 s to generate); a lock per
    kind makes a second worker wait for the first one's build and then reuse it."""
    from qaic_assets.models.standins import build_standin

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = root / "standins"

    def get(kind: str):
        out.mkdir(exist_ok=True)
        with open(root / f"standins.{kind}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return build_standin(kind, out, n_calibration=STANDIN_CALIBRATION, n_heldout=STANDIN_HELDOUT)

    return get


#: Free space /dev/shm needs before the tests' temporary directories go there (a run uses ~1.5 GB).
MEMORY_TEMP_MIN_FREE = 4 << 30


def _temp_root_in_memory(config) -> None:
    """The tests' temporary directories go to /dev/shm (tmpfs) when it has room and no temporary
    directory was chosen (--basetemp, TMPDIR, PYTEST_DEBUG_TEMPROOT): every Dagster run the tests make
    commits to several SQLite files, each commit an fsync (the suite took 280 s on this disk against
    232 s in memory, side by side). pyproject.toml's retention settings bound what stays: nothing after
    a passing run, the last failed run's directories for a look."""
    if config.option.basetemp or os.environ.get("TMPDIR") or os.environ.get("PYTEST_DEBUG_TEMPROOT"):
        return
    shm = "/dev/shm"
    try:
        if os.access(shm, os.W_OK | os.X_OK) and shutil.disk_usage(shm).free >= MEMORY_TEMP_MIN_FREE:
            os.environ["PYTEST_DEBUG_TEMPROOT"] = shm  # read when the first temporary directory is made
    except OSError:
        pass


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller; xdist workers get their directory from it
        _temp_root_in_memory(config)
    config.addinivalue_line("markers", "project(**kwargs): options of the tiny_project fixture "
                            "(batch, backend, extra config text)")
