"""Automation against a real instance and the strict fake SDK, through Dagster's public API.

Each tick is `dg.evaluate_automation_conditions` on the project's definitions with the cursor of the
previous tick: what the `qaic_automation` sensor evaluates. What a tick requests is then built with
`dg.materialize` (as the sensor's runs or backfill would), profiles before binaries. Between ticks
the fake SDK's `versions/apps.xml` is rewritten, or its `qaic-exec` removed, and `qaic_sdk` is
observed again. Every tick asserts the exact set of partitions requested. (The real sensor and
backfill daemons run in the deployment test, tests/system/test_deploy.py.)"""

from __future__ import annotations

import datetime

import dagster as dg
import pytest

from fake_sdk import read_calls, set_fake_sdk_version
from helpers import latest
from qaic_assets.orchestration import build_definitions, toolchain
from qaic_assets.orchestration.keys import AUTOMATION_TAG
from qaic_assets.orchestration.automation import CONDITION_LABEL, OBSERVE_SCHEDULE_NAME, sensor_name
from qaic_assets.orchestration.jobs import OBSERVE_JOB
from qaic_assets.orchestration.keys import SDK_KEY, binary_key, profile_key, source_key
from qaic_assets.orchestration.resources import Toolchain
from qaic_assets.orchestration.toolchain import SDK_NOT_FOUND
from qaic_assets.qaic import recipes
from qaic_assets.settings import Nightly

PROFILE = profile_key("tiny").to_user_string()
BINARY = binary_key("tiny").to_user_string()
COMPILED = ["bs1|offline-nsp14", "bs2|offline-nsp14", "bs2|singlestream-nsp14"]  # 3 of 6


def materialize_some(project, binaries=COMPILED, observe=True):
    """Observe the SDK, then build the source, the profiles these binaries load, and the binaries."""
    if observe:
        project.observe_sdk()
    project.materialize(source_key("tiny"))
    for batch in sorted({pk.split("|")[0] for pk in binaries}):
        project.materialize(profile_key("tiny"), batch)
    for partition in binaries:
        project.materialize(binary_key("tiny"), partition)


class Ticks:
    """The automation sensor's evaluations, one per `tick()`, each with the previous tick's cursor."""

    def __init__(self, project, defs=None):
        self.project, self.defs, self.cursor = project, defs, None

    def tick(self, when: datetime.datetime | None = None) -> dict[str, set]:
        result = dg.evaluate_automation_conditions(self.defs or self.project.defs, self.project.instance,
                                                   cursor=self.cursor, evaluation_time=when)
        self.cursor = result.cursor
        return {key.to_user_string(): set(result.get_requested_partitions(key))
                for key in (profile_key("tiny"), binary_key("tiny")) if result.get_num_requested(key)}

    def run(self, requested: dict[str, set]) -> None:
        """Build what a tick requested, profiles first."""
        for key in (profile_key("tiny"), binary_key("tiny")):
            for partition in sorted(requested.get(key.to_user_string(), ())):
                self.project.materialize(key, partition)


def input_version(materialization, key) -> str:
    """The data version of an input recorded with a materialization (Dagster's provenance tags)."""
    return materialization.tags[f"dagster/input_data_version/{key.to_user_string()}"]


def compiler_kinds(calls) -> list[str]:
    return ["calibrate" if any(a.startswith("-dump-profile") for a in c["argv"]) else "compile" for c in calls]


# ---------------------------------------------------------------------------------------------


def test_sdk_upgrade_recompiles_exactly_what_was_compiled(tiny_project):
    project, instance = tiny_project, tiny_project.instance
    materialize_some(project)
    old_profiles = {b: latest(instance, profile_key("tiny"), b).metadata["sha256"].value for b in ("bs1", "bs2")}
    n_calls = len(read_calls(project.sdk))
    ticks = Ticks(project)
    assert ticks.tick() == {}  # first evaluation: nothing changed yet

    set_fake_sdk_version(project.sdk, "1.19.0", "7")
    upgraded = project.observe_sdk()
    assert upgraded.tags["dagster/data_version"] == "1.19.0.7"
    # the change in plain words on the observation
    assert upgraded.metadata["sdk_change"].value == \
        "Apps SDK 1.18.2.0.5 -> 1.19.0.7; Platform SDK not installed (unchanged)"
    # exactly the 2 profiles the compiled binaries load; the binaries wait for them
    assert ticks.tick() == {PROFILE: {"bs1", "bs2"}}
    ticks.run({PROFILE: {"bs1", "bs2"}})
    # then exactly the 3 compiled binaries; bs4 and the other targets stay untouched
    assert ticks.tick() == {BINARY: set(COMPILED)}
    ticks.run({BINARY: set(COMPILED)})
    assert ticks.tick() == {}  # nothing twice: the new profiles do not compile the binaries again
    assert compiler_kinds(read_calls(project.sdk)[n_calls:]) == ["calibrate"] * 2 + ["compile"] * 3

    for partition in COMPILED:
        binary = latest(instance, binary_key("tiny"), partition)
        assert binary.metadata["sdk_version"].value == "1.19.0.7"
        # lineage: the binary records the exact SDK, profile and model versions it was built from
        batch = partition.split("|")[0]
        profile = latest(instance, profile_key("tiny"), batch)
        assert profile.metadata["sha256"].value != old_profiles[batch]
        assert input_version(binary, SDK_KEY) == "1.19.0.7"
        assert binary.metadata["profile_sha256"].value == profile.metadata["sha256"].value
        assert input_version(binary, source_key("tiny")) == binary.metadata["model_sha256"].value
    for never in ("bs1|singlestream-nsp14", "bs4|offline-nsp14", "bs4|singlestream-nsp14"):
        assert latest(instance, binary_key("tiny"), never) is None
    assert latest(instance, profile_key("tiny"), "bs4") is None

    again = project.observe_sdk()
    assert again.tags["dagster/data_version"] == "1.19.0.7"
    assert again.metadata["sdk_change"].value == "no change (Apps SDK 1.19.0.7, Platform SDK not installed)"
    assert ticks.tick() == {}  # the same version observed again

    exe = project.sdk / "exec" / "qaic-exec"
    exe.rename(project.sdk / "qaic-exec.removed")
    gone = project.observe_sdk()
    assert gone.metadata["status"].value == SDK_NOT_FOUND
    assert gone.tags["dagster/data_version"] == "1.19.0.7"  # no new data version
    assert gone.metadata["sdk_change"].value == "SDK not found; nothing is recompiled until it is back"
    assert ticks.tick() == {}  # SDK missing: nothing requested

    (project.sdk / "qaic-exec.removed").rename(exe)
    back = project.observe_sdk()
    assert back.metadata["status"].value == "found"
    assert back.metadata["sdk_change"].value == "SDK not found -> Apps SDK 1.19.0.7, Platform SDK not installed"
    assert ticks.tick() == {}  # back with the same version: nothing to do
    assert len(read_calls(project.sdk)) == n_calls + 5


def test_the_stock_sensor_emits_the_profiles_as_one_backfill(tiny_project):
    """What the daemon receives from `qaic_automation_tiny` (the model's stock sensor, evaluated as the
    code server does): after an SDK upgrade one backfill of the two built profiles, tagged as automation."""
    project = tiny_project
    materialize_some(project)
    sensor = project.defs.resolve_sensor_def(sensor_name("tiny"))

    def tick(cursor):
        context = dg.build_sensor_context(instance=project.instance, cursor=cursor,
                                          repository_def=project.defs.get_repository_def())
        return sensor.evaluate_tick(context)

    first = tick(None)
    assert not first.run_requests
    set_fake_sdk_version(project.sdk, "1.19.0", "7")
    project.observe_sdk()
    (request,) = tick(first.cursor).run_requests
    assert request.asset_graph_subset is not None  # a backfill: ordered and retried by the daemon
    assert request.asset_graph_subset.asset_keys == {profile_key("tiny")}
    assert request.tags[AUTOMATION_TAG] == "recompile"


def test_recipe_change_waits_for_an_observation_that_finds_the_sdk(tiny_project, monkeypatch):
    """A new code version (the recipe table changed) requests exactly the built profile, then its
    binary, and waits while the latest observation says the SDK is missing."""
    project = tiny_project
    materialize_some(project, binaries=["bs2|offline-nsp14"])
    ticks = Ticks(project)
    assert ticks.tick() == {}

    real = recipes.recipe_code_version
    monkeypatch.setattr(recipes, "recipe_code_version", lambda *a, **k: real(*a, **k) + "-edited")
    project.rebuild()
    exe = project.sdk / "exec" / "qaic-exec"
    exe.rename(project.sdk / "qaic-exec.removed")
    assert project.observe_sdk().metadata["status"].value == SDK_NOT_FOUND
    assert ticks.tick() == {}  # the change is pending while the SDK is missing
    assert ticks.tick() == {}

    (project.sdk / "qaic-exec.removed").rename(exe)
    assert ticks.tick() == {}  # back on disk, but not observed yet: the automation reads observations
    project.observe_sdk()
    assert ticks.tick() == {PROFILE: {"bs2"}}  # the profile first, alone
    ticks.run({PROFILE: {"bs2"}})
    assert ticks.tick() == {BINARY: {"bs2|offline-nsp14"}}  # then the binary that loads it
    ticks.run({BINARY: {"bs2|offline-nsp14"}})
    assert ticks.tick() == {}


def test_a_failed_profile_holds_its_binaries_back(tiny_project):
    """The profile's recompile fails: its binary is not compiled against the old profile; once a
    profile build succeeds, the binary follows."""
    project = tiny_project
    materialize_some(project, binaries=["bs2|offline-nsp14"])
    ticks = Ticks(project)
    assert ticks.tick() == {}
    set_fake_sdk_version(project.sdk, "1.19.0", "7")
    project.observe_sdk()
    assert ticks.tick() == {PROFILE: {"bs2"}}
    cal = project.root / "cal" / "cal.txt"
    good = cal.read_text()
    cal.unlink()
    graph = project.defs.resolve_asset_graph()
    failed = dg.materialize([graph.get(profile_key("tiny")).assets_def], instance=project.instance,
                           partition_key="bs2", selection=[profile_key("tiny")], raise_on_error=False)
    assert not failed.success
    assert ticks.tick() == {}
    assert ticks.tick() == {}
    cal.write_text(good)
    project.materialize(profile_key("tiny"), "bs2")  # e.g. retried from the UI
    assert ticks.tick() == {BINARY: {"bs2|offline-nsp14"}}
    ticks.run({BINARY: {"bs2|offline-nsp14"}})
    assert ticks.tick() == {}


def test_availability_comes_from_the_observation_not_the_local_disk(tiny_project):
    """The daemon's host has no SDK: an SDK upgrade observed on a compile host is still recompiled;
    and an observation that did not find the SDK holds recompiles back even where the evaluating
    process has one on its disk."""
    project = tiny_project
    materialize_some(project, binaries=["bs1|offline-nsp14"])
    without_sdk = project.root / "no-sdk"
    daemon_host = build_definitions(project.config.model_copy(update={"sdk_root": without_sdk}))
    ticks = Ticks(project, daemon_host)
    assert ticks.tick() == {}
    set_fake_sdk_version(project.sdk, "1.19.0", "7")
    project.observe_sdk()  # on the compile host (the project's definitions, with the SDK)
    assert ticks.tick() == {PROFILE: {"bs1"}}
    ticks.run({PROFILE: {"bs1"}})

    # the compile host loses its SDK; this process still has one, but the observation decides
    compile_host = build_definitions(project.config, resources={
        "toolchain": Toolchain(backend="qaic", sdk_root=str(without_sdk))})
    lost = compile_host.resolve_job_def(OBSERVE_JOB).execute_in_process(instance=project.instance)
    assert lost.success and toolchain.last_observation(project.instance).metadata["status"].value == SDK_NOT_FOUND
    ticks.defs = project.defs
    assert ticks.tick() == {}
    assert ticks.tick() == {}
    project.observe_sdk()
    assert ticks.tick() == {BINARY: {"bs1|offline-nsp14"}}


def test_first_observation_after_building_is_no_upgrade(tiny_project):
    """Built before `qaic_sdk` was ever observed (a fresh UI user): the build records the compiler it
    used as the first observation, so the scheduled observation of the same version changes nothing."""
    project, instance = tiny_project, tiny_project.instance
    ticks = Ticks(project)
    assert ticks.tick() == {}  # the sensor runs from the start
    materialize_some(project, binaries=["bs2|offline-nsp14"], observe=False)
    first = toolchain.last_observation(instance)
    assert first.tags["dagster/data_version"] == "1.18.2.0.5" and first.metadata["status"].value == "found"
    assert "never been observed" in first.metadata["recorded_by"].value
    n_observations = len(instance.fetch_observations(dg.AssetRecordsFilter(asset_key=SDK_KEY), limit=10).records)
    assert n_observations == 1  # recorded once, by the first build only
    assert ticks.tick() == {}
    assert project.observe_sdk().tags["dagster/data_version"] == "1.18.2.0.5"
    assert ticks.tick() == {}  # the first scheduled observation: the same version, no recompile
    assert ticks.tick() == {}
    set_fake_sdk_version(project.sdk, "1.19.0", "7")  # a real upgrade still recompiles
    project.observe_sdk()
    assert ticks.tick() == {PROFILE: {"bs2"}}


NIGHTLY = "\nnightly: {enabled: true, cron: '0 3 * * *'}\n"


@pytest.mark.project(extra=NIGHTLY)
def test_nightly_recompiles_what_changed_since_built_only(tiny_project):
    """A binary whose recompile was requested but never happened (say the run failed) stays changed
    since built; the nightly tick requests it again, and nothing that is fresh. Off unless enabled."""
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
    ticks = {name: Ticks(project, build_definitions(config)) for name, config in before.items()}
    for name in ("on", "off"):
        assert ticks[name].tick(at(2, 0)) == {}
        ticks[name].defs = build_definitions(after[name])

    for name in ("on", "off"):  # the code version changed: both binaries requested (never run)
        assert ticks[name].tick(at(2, 10)) == {BINARY: {"bs1|offline-nsp14", "bs2|offline-nsp14"}}
    # bs2 did get recompiled; bs1's run "failed" (never happened): only bs1 changed since built now
    graph = ticks["on"].defs.resolve_asset_graph()
    dg.materialize([graph.get(binary_key("tiny")).assets_def], instance=project.instance,
                   partition_key="bs2|offline-nsp14", selection=[binary_key("tiny")])
    for name in ("on", "off"):
        assert ticks[name].tick(at(2, 20)) == {}
    assert ticks["on"].tick(at(3, 5)) == {BINARY: {"bs1|offline-nsp14"}}  # nightly: those only
    assert ticks["off"].tick(at(3, 5)) == {}  # nightly disabled (the default)
    assert ticks["on"].tick(at(3, 15)) == {}


# ---------------------------------------------------------------------------------------------


@pytest.mark.project(extra="\nsdk_observe_cron: '*/5 * * * *'\n")
def test_declared_automation_runs_by_default(tiny_project):
    defs = tiny_project.defs
    sensor = defs.resolve_sensor_def(sensor_name("tiny"))
    assert type(sensor) is dg.AutomationConditionSensorDefinition  # the stock sensor, no subclass
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.sensor_type.name == "AUTOMATION"  # evaluated in the code server (project operand)
    assert sensor.emit_backfills  # a tick requesting several partitions of an asset: one backfill
    schedule = defs.resolve_schedule_def(OBSERVE_SCHEDULE_NAME)
    assert schedule.cron_schedule == "*/5 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == OBSERVE_JOB
    specs = {spec.key: spec for spec in defs.resolve_all_asset_specs()}
    for key in (profile_key("tiny"), binary_key("tiny")):
        condition = specs[key].automation_condition
        assert condition.get_label() == CONDITION_LABEL
        assert "nightly" not in str(condition.get_snapshot())
    assert specs[SDK_KEY].automation_condition is None
    assert specs[source_key("tiny")].automation_condition is None
    nightly = build_definitions(tiny_project.config.model_copy(
        update={"nightly": Nightly(enabled=True, cron="30 2 * * *")}))
    spec = next(s for s in nightly.resolve_all_asset_specs() if s.key == binary_key("tiny"))
    assert "nightly_stale(30 2 * * *)" in str(spec.automation_condition.get_snapshot())


def test_packaged_definitions_declare_the_automation():
    from qaic_assets.definitions import defs

    for model in ("resnet50", "retinanet", "bert-99", "digits"):  # one sensor per model: a run holds one model
        sensor = defs.resolve_sensor_def(sensor_name(model))
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
        assert {k.path[0] for k in sensor.asset_selection.resolve(defs.resolve_asset_graph())} == {model}
    assert defs.resolve_schedule_def(OBSERVE_SCHEDULE_NAME).cron_schedule == "*/15 * * * *"


def test_observation_when_the_sdk_is_broken_or_missing(tiny_project):
    """backend qaic: never seen -> no data version at all; seen -> the last one, repeated."""
    project = tiny_project
    apps_xml = project.sdk / "versions" / "apps.xml"
    good = apps_xml.read_text()
    apps_xml.write_text("<apps_build>")
    broken = project.observe_sdk()
    assert broken.metadata["status"].value == toolchain.SDK_UNUSABLE
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
    fresh = toolchain.compiler_status(Toolchain(backend="auto", sdk_root=str(project.sdk)),
                                      dg.DagsterInstance.ephemeral())
    assert fresh.backend == "qaic" and not fresh.found and "holds neither qaic-compile nor qaic-exec" in fresh.detail
    # a machine that never had the SDK (no SDK root) observes the CPU reference compiler
    project.sdk.rename(tmp_path / "sdk-gone")
    fresh = toolchain.compiler_status(Toolchain(backend="auto", sdk_root=str(project.sdk)),
                                      dg.DagsterInstance.ephemeral())
    assert fresh.backend == "cpu" and fresh.found and fresh.version.startswith("onnxruntime-")
