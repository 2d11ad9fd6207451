"""Automation against a real instance and the strict fake SDK.

The SDK-upgrade test ticks Dagster's own daemons by hand: the sensor daemon evaluates the project's
`qaic_automation` sensor (loaded as a code location, like `dagster dev` does) and the backfill daemon
launches what it requested; runs execute in this process. Between ticks the fake SDK's
`versions/apps.xml` is rewritten, or its `qaic-exec` removed, and `qaic_sdk` is observed again.
Every tick asserts the exact set of partitions requested."""

from __future__ import annotations

import datetime
import hashlib
import logging
import time
from collections import defaultdict
from contextlib import contextmanager

import dagster as dg
import pytest
from dagster._core.definitions.data_version import extract_data_provenance_from_entry
from dagster._core.definitions.sensor_definition import SensorType
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import freeze_time
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.backfill import execute_backfill_iteration
from dagster._daemon.sensor import execute_sensor_iteration

from fake_sdk import read_calls, set_fake_sdk_version
from qaic_assets.defs import automation
from qaic_assets.qaic import recipes
from qaic_assets.defs.keys import SDK_KEY, binary_key, profile_key, source_key
from qaic_assets.defs.automation import OBSERVE_SCHEDULE_NAME, SDK_NOT_FOUND, SENSOR_NAME, QaicAutomationSensor
from qaic_assets.settings import Nightly
from qaic_assets.defs.jobs import OBSERVE_JOB
from qaic_assets.defs import build_definitions

PROFILE = profile_key("tiny").to_user_string()
BINARY = binary_key("tiny").to_user_string()
COMPILED = ["bs1|offline-nsp14", "bs2|offline-nsp14", "bs2|singlestream-nsp14"]  # 3 of 6


def materialize_some(project, binaries=COMPILED):
    """Observe the SDK, then build the source, the profiles these binaries load, and the binaries."""
    project.observe_sdk()
    project.materialize(source_key("tiny"))
    for batch in sorted({pk.split("|")[0] for pk in binaries}):
        project.materialize(profile_key("tiny"), batch)
    for partition in binaries:
        project.materialize(binary_key("tiny"), partition)


def by_key(asset_partitions) -> dict[str, set]:
    out = defaultdict(set)
    for ap in asset_partitions:
        out[ap.asset_key.to_user_string()].add(ap.partition_key)
    return dict(out)


def summarize(run_requests) -> list[dict[str, set]]:
    """One entry per run request (a backfill or a run): the partitions it targets, by asset."""
    from dagster._core.definitions.events import AssetKeyPartitionKey

    out = []
    for rr in run_requests or []:
        if rr.asset_graph_subset is not None:
            out.append(by_key(rr.asset_graph_subset.iterate_asset_partitions()))
        else:
            out.append(by_key(AssetKeyPartitionKey(k, rr.partition_key) for k in rr.asset_selection))
    return out


class Daemons:
    """The sensor and backfill daemons of a code location loaded from the project's config."""

    def __init__(self, project, context: WorkspaceProcessContext):
        self.project, self.context, self.instance = project, context, project.instance
        self._now = time.time()
        self._log = logging.getLogger("test_automation")

    def tick(self) -> list[dict[str, set]]:
        """One sensor-daemon tick (the clock moved past the sensor's interval); returns what it
        launched: one entry per new backfill or run, the partitions it targets."""
        before_backfills = {b.backfill_id for b in self.instance.get_backfills()}
        before_runs = {r.run_id for r in self.instance.get_runs()}
        self._now += 60
        with freeze_time(self._now):
            list(execute_sensor_iteration(self.context, self._log, None, None))
        ticks = [t for t in self.instance.get_ticks(self._sensor.get_remote_origin_id(),
                                                     self._sensor.selector_id, limit=1)]
        assert ticks and ticks[0].error is None, ticks and ticks[0].error
        launched = [by_key(b.asset_backfill_data.target_subset.iterate_asset_partitions())
                    for b in self.instance.get_backfills() if b.backfill_id not in before_backfills]
        launched += [by_key(_run_partitions(r)) for r in self.instance.get_runs()
                     if r.run_id not in before_runs and r.tags.get("dagster/sensor_name") == SENSOR_NAME]
        return launched

    @property
    def _sensor(self):
        repo = next(iter(self.context.create_request_context().get_code_location_entries().values())
                    ).code_location.get_repositories()
        return next(iter(repo.values())).get_sensor(SENSOR_NAME)

    def run_backfills(self, max_iterations: int = 6) -> None:
        """Let the backfill daemon work until every backfill is done (runs execute synchronously)."""
        for _ in range(max_iterations):
            if all(b.status != BulkActionStatus.REQUESTED for b in self.instance.get_backfills()):
                return
            list(execute_backfill_iteration(self.context, self._log))
        pytest.fail(f"backfills still running: {[b.status for b in self.instance.get_backfills()]}")


def _run_partitions(run):
    from dagster._core.definitions.events import AssetKeyPartitionKey

    return {AssetKeyPartitionKey(k, run.tags.get("dagster/partition")) for k in run.asset_selection or ()}


@contextmanager
def daemons(project):
    """The project loaded as a code location from a python file (as `dagster dev -f` would)."""
    defs_file = project.root / "definitions.py"
    defs_file.write_text(
        "from qaic_assets.settings import load_settings\n"
        "from qaic_assets.definitions import build_definitions\n"
        f"defs = build_definitions(load_settings({str(project.config_path)!r}))\n")
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(python_file=str(defs_file), working_directory=str(project.root)),
        location_name="qaic_assets_test")
    with WorkspaceProcessContext(project.instance, InProcessWorkspaceLoadTarget(origin)) as context:
        yield Daemons(project, context)


def latest(instance, key, partition=None):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None),
        limit=1).records
    return records[0] if records else None


# ---------------------------------------------------------------------------------------------


def test_sdk_upgrade_recompiles_exactly_what_was_compiled(tiny_project):
    project, instance = tiny_project, tiny_project.instance
    materialize_some(project)
    old_profiles = {b: latest(instance, profile_key("tiny"), b).asset_materialization.metadata["sha256"].value
                    for b in ("bs1", "bs2")}
    n_calls = len(read_calls(project.sdk))

    with daemons(project) as d:
        assert d.tick() == []  # first evaluation: nothing changed yet

        set_fake_sdk_version(project.sdk, "1.19.0", "7")
        assert project.observe_sdk().tags["dagster/data_version"] == "1.19.0.7"
        # exactly the 3 compiled binaries and the 2 profiles they load, as ONE backfill (which runs
        # every profile before the binaries that load it); bs4 and the other targets stay untouched
        assert d.tick() == [{PROFILE: {"bs1", "bs2"}, BINARY: set(COMPILED)}]
        assert d.tick() == []  # requested once

        d.run_backfills()
        calls = read_calls(project.sdk)[n_calls:]
        kinds = ["calibrate" if any(a.startswith("-dump-profile") for a in c["argv"]) else "compile"
                 for c in calls]
        assert kinds == ["calibrate"] * 2 + ["compile"] * 3
        assert d.tick() == []  # the new profiles do not compile the binaries a second time

        for partition in COMPILED:
            record = latest(instance, binary_key("tiny"), partition)
            meta = record.asset_materialization.metadata
            assert meta["sdk_version"].value == "1.19.0.7"
            # lineage: the binary records the exact SDK, profile and model versions it was built from
            provenance = extract_data_provenance_from_entry(record.event_log_entry)
            batch = partition.split("|")[0]
            profile = latest(instance, profile_key("tiny"), batch).asset_materialization
            assert profile.metadata["sha256"].value != old_profiles[batch]
            assert provenance.input_data_versions[SDK_KEY].value == "1.19.0.7"
            # (for a partitioned input Dagster records the sha256 of the mapped partitions' versions)
            mapped = hashlib.sha256(profile.metadata["sha256"].value.encode()).hexdigest()
            assert provenance.input_data_versions[profile_key("tiny")].value == mapped
            assert meta["profile_sha256"].value == profile.metadata["sha256"].value
            assert provenance.input_data_versions[source_key("tiny")].value == meta["model_sha256"].value
        for never in ("bs1|singlestream-nsp14", "bs4|offline-nsp14", "bs4|singlestream-nsp14"):
            assert latest(instance, binary_key("tiny"), never) is None
        assert latest(instance, profile_key("tiny"), "bs4") is None

        assert project.observe_sdk().tags["dagster/data_version"] == "1.19.0.7"
        assert d.tick() == []  # the same version observed again

        exe = project.sdk / "exec" / "qaic-exec"
        exe.rename(project.sdk / "qaic-exec.removed")
        gone = project.observe_sdk()
        assert gone.metadata["status"].value == SDK_NOT_FOUND
        assert gone.tags["dagster/data_version"] == "1.19.0.7"  # no new data version
        assert d.tick() == []  # SDK missing: nothing requested

        (project.sdk / "qaic-exec.removed").rename(exe)
        assert project.observe_sdk().metadata["status"].value == "found"
        assert d.tick() == []  # back with the same version: nothing to do
    assert len(read_calls(project.sdk)) == n_calls + 5


def _tick(sensor, project, cursor):
    context = dg.build_sensor_context(instance=project.instance, cursor=cursor,
                                      repository_def=project.defs.get_repository_def())
    data = sensor.evaluate_tick(context)
    return summarize(data.run_requests), data.cursor


def test_recipe_change_recompiles_materialized_once_the_sdk_is_there(tiny_project, monkeypatch):
    """A new code version (the recipe table changed) requests exactly the materialized profile and
    binary -- one of each, still as one ordered backfill -- and waits while the SDK is missing."""
    project = tiny_project
    materialize_some(project, binaries=["bs2|offline-nsp14"])
    sensor = project.defs.resolve_sensor_def(SENSOR_NAME)
    requested, cursor = _tick(sensor, project, None)
    assert requested == []

    real = recipes.recipe_code_version
    monkeypatch.setattr(recipes, "recipe_code_version", lambda *a, **k: real(*a, **k) + "-edited")
    project.rebuild()
    exe = project.sdk / "exec" / "qaic-exec"
    exe.rename(project.sdk / "qaic-exec.removed")
    requested, cursor = _tick(project.defs.resolve_sensor_def(SENSOR_NAME), project, cursor)
    assert requested == []  # the change is pending while the SDK is missing

    (project.sdk / "qaic-exec.removed").rename(exe)
    requested, cursor = _tick(project.defs.resolve_sensor_def(SENSOR_NAME), project, cursor)
    assert requested == [{PROFILE: {"bs2"}, BINARY: {"bs2|offline-nsp14"}}]
    requested, cursor = _tick(project.defs.resolve_sensor_def(SENSOR_NAME), project, cursor)
    assert requested == []


NIGHTLY = "\nnightly: {enabled: true, cron: '0 3 * * *'}\n"


@pytest.mark.project(extra=NIGHTLY)
def test_nightly_recompiles_stale_partitions_only(tiny_project):
    """A binary whose recompile was requested but never happened (say the run failed) stays stale;
    the nightly tick requests it again, and nothing that is fresh. Off unless enabled."""
    project = tiny_project
    materialize_some(project, binaries=["bs1|offline-nsp14", "bs2|offline-nsp14"])
    day = datetime.datetime.now(datetime.timezone.utc).date() + datetime.timedelta(days=1)

    def at(hh, mm):
        return datetime.datetime(day.year, day.month, day.day, hh, mm, tzinfo=datetime.timezone.utc)

    # the binary's own flags change (percentile): a new code version of compiled_binary only
    before = {"on": project.config, "off": project.config.model_copy(update={"nightly": Nightly()})}
    project.config_path.write_text(project.config_path.read_text().replace(
        "    recipe: resnet50\n", "    recipe: resnet50\n    percentile: 99.99\n"))
    after = {"on": project.config, "off": project.config.model_copy(update={"nightly": Nightly()})}
    before = {name: build_definitions(config) for name, config in before.items()}
    after = {name: build_definitions(config) for name, config in after.items()}

    cursors = {}
    for name in ("on", "off"):
        result = dg.evaluate_automation_conditions(before[name], project.instance, evaluation_time=at(2, 0))
        assert result.total_requested == 0
        cursors[name] = result.cursor

    def tick(name, when):
        result = dg.evaluate_automation_conditions(after[name], project.instance, evaluation_time=when,
                                                   cursor=cursors[name])
        cursors[name] = result.cursor
        return {k.to_user_string(): set(result.get_requested_partitions(k))
                for k in (profile_key("tiny"), binary_key("tiny")) if result.get_num_requested(k)}

    for name in ("on", "off"):  # the code version changed: both binaries requested (never run)
        assert tick(name, at(2, 10)) == {BINARY: {"bs1|offline-nsp14", "bs2|offline-nsp14"}}
    # bs2 did get recompiled; bs1's run "failed" (never happened): only bs1 is stale now
    graph = after["on"].resolve_asset_graph()
    dg.materialize([graph.get(binary_key("tiny")).assets_def], instance=project.instance,
                   partition_key="bs2|offline-nsp14", selection=[binary_key("tiny")])
    for name in ("on", "off"):
        assert tick(name, at(2, 20)) == {}
    assert tick("on", at(3, 5)) == {BINARY: {"bs1|offline-nsp14"}}  # nightly: stale ones only
    assert tick("off", at(3, 5)) == {}  # nightly disabled (the default)
    assert tick("on", at(3, 15)) == {}


# ---------------------------------------------------------------------------------------------


@pytest.mark.project(extra="\nsdk_observe_cron: '*/5 * * * *'\n")
def test_declared_automation_runs_by_default(tiny_project):
    defs = tiny_project.defs
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    assert isinstance(sensor, QaicAutomationSensor)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.sensor_type == SensorType.AUTOMATION  # evaluated in the code server
    schedule = defs.resolve_schedule_def(OBSERVE_SCHEDULE_NAME)
    assert schedule.cron_schedule == "*/5 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == OBSERVE_JOB
    graph = defs.resolve_asset_graph()
    for key in (profile_key("tiny"), binary_key("tiny")):
        condition = graph.get(key).automation_condition
        assert condition.get_label() == "recompile_materialized"
        assert "nightly" not in str(condition.get_snapshot())
    assert graph.get(SDK_KEY).automation_condition is None
    assert graph.get(source_key("tiny")).automation_condition is None
    nightly = build_definitions(tiny_project.config.model_copy(
        update={"nightly": Nightly(enabled=True, cron="30 2 * * *")}))
    snapshot = str(nightly.resolve_asset_graph().get(binary_key("tiny")).automation_condition.get_snapshot())
    assert "nightly_stale(30 2 * * *)" in snapshot


def test_packaged_definitions_declare_the_automation():
    from qaic_assets.definitions import defs

    assert defs.resolve_sensor_def(SENSOR_NAME).default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_schedule_def(OBSERVE_SCHEDULE_NAME).cron_schedule == "*/15 * * * *"


def test_observation_when_the_sdk_is_broken_or_missing(tiny_project):
    """backend qaic: never seen -> no data version at all; seen -> the last one, repeated."""
    project = tiny_project
    apps_xml = project.sdk / "versions" / "apps.xml"
    good = apps_xml.read_text()
    project.rebuild()  # before breaking it: model_assets reads the version too
    apps_xml.write_text("<apps_build>")
    broken = project.observe_sdk()
    assert broken.metadata["status"].value == automation.SDK_UNUSABLE
    assert "not valid XML" in broken.metadata["detail"].value
    assert "dagster/data_version" not in (broken.tags or {})
    apps_xml.write_text(good)
    assert project.observe_sdk().tags["dagster/data_version"] == "1.18.2.0.5"
    (project.sdk / "exec" / "qaic-exec").unlink()
    gone = project.observe_sdk()
    assert gone.metadata["status"].value == SDK_NOT_FOUND
    assert gone.tags["dagster/data_version"] == "1.18.2.0.5"


@pytest.mark.project(backend="auto")
def test_auto_backend_keeps_the_sdk_once_seen(tiny_project, tmp_path):
    project = tiny_project
    assert project.observe_sdk().tags["dagster/data_version"] == "1.18.2.0.5"
    (project.sdk / "exec" / "qaic-exec").unlink()
    gone = project.observe_sdk()
    assert gone.metadata["status"].value == SDK_NOT_FOUND and gone.metadata["backend"].value == "qaic"
    assert gone.tags["dagster/data_version"] == "1.18.2.0.5"
    # an SDK root without a compiler is the SDK's, even on a fresh instance (never a silent CPU switch)
    fresh = automation.compiler_status(project.config, dg.DagsterInstance.ephemeral())
    assert fresh.backend == "qaic" and not fresh.found and "holds neither qaic-compile nor qaic-exec" in fresh.detail
    # a machine that never had the SDK (no SDK root) observes the CPU reference compiler
    project.sdk.rename(tmp_path / "sdk-gone")
    fresh = automation.compiler_status(project.config, dg.DagsterInstance.ephemeral())
    assert fresh.backend == "cpu" and fresh.found and fresh.version.startswith("onnxruntime-")
