"""After an SDK upgrade no binary looks current that is not (orchestration/currency.py), and the SDK is
observed without a run per tick (orchestration/automation.py: observe_qaic_sdk_sensor).

A tick is the sensor's function called as the daemon calls it, its events recorded as the daemon
records them (`report_runless_asset_event`); the strict fake SDK is upgraded between ticks, and one
recompile fails by the fake compiler's fault switch (FAKE_QAIC_EXIT)."""

from __future__ import annotations

import dagster as dg
import pytest

from fake_sdk import set_fake_sdk_version
from helpers import latest
from qaic_assets.orchestration.automation import OBSERVE_SCHEDULE_NAME, OBSERVE_SENSOR_NAME, SDK_CHANGE_TAG
from qaic_assets.orchestration.currency import CURRENCY_JOB
from qaic_assets.orchestration.keys import AUTOMATION_TAG, SDK_CURRENT, SDK_KEY, binary_key, profile_key, source_key
from qaic_assets.orchestration.resources import Toolchain

BUILT = ["bs1|offline-nsp14", "bs2|offline-nsp14"]


class SensorTicks:
    def __init__(self, project, toolchain: Toolchain | None = None):
        self.project, self.cursor = project, None
        config = project.config
        self.toolchain = toolchain or Toolchain(backend=config.backend, sdk_root=str(config.sdk_root))
        self.reports = 0  # runs of report_sdk_current the sensor requested

    def tick(self) -> list:
        """The events of one tick (recorded in the instance as the daemon records them), then the check
        results of the report run it requested (run here); [] when it skipped."""
        sensor = self.project.defs.resolve_sensor_def(OBSERVE_SENSOR_NAME)
        context = dg.build_sensor_context(instance=self.project.instance, cursor=self.cursor,
                                          resources={"toolchain": self.toolchain})
        result = sensor(context)
        if isinstance(result, dg.SkipReason):
            return []
        self.cursor = result.cursor
        for event in result.asset_events:
            self.project.instance.report_runless_asset_event(event)
        events = list(result.asset_events)
        for request in result.run_requests:
            job = self.project.defs.resolve_job_def(CURRENCY_JOB)
            run = job.execute_in_process(instance=self.project.instance, tags=request.tags)
            assert run.success
            self.reports += 1
            events += run.get_asset_check_evaluations()
        return events


def currency(project, partition: str):
    """The latest sdk_current evaluation of that partition."""
    history = project.instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(binary_key("tiny"), SDK_CURRENT), limit=100)
    mine = [r for r in history if r.partition == partition]  # newest first
    return mine[0].event.dagster_event.event_specific_data if mine else None


def cli(args: list[str]) -> int:
    from qaic_assets.cli import main

    return main(args)


def runs(project) -> int:
    return len(project.instance.get_run_records())


def test_an_upgrade_marks_each_binary_not_current_until_rebuilt_and_a_failed_recompile_says_so(tiny_project, monkeypatch,
                                                                                              capsys):
    project = tiny_project
    ticks = SensorTicks(project)
    [observation] = ticks.tick()  # the first observation, without a run
    assert observation.asset_key == SDK_KEY and observation.tags["dagster/data_version"] == "1.18.2.0.5"
    assert observation.metadata["sdk_change"].value == "first observation: Apps SDK 1.18.2.0.5, Platform SDK not installed"
    project.materialize(source_key("tiny"))
    for batch in ("bs1", "bs2"):
        project.materialize(profile_key("tiny"), batch)
    for partition in BUILT:
        built = project.materialize(binary_key("tiny"), partition, **{AUTOMATION_TAG: "recompile"})
        assert SDK_CHANGE_TAG not in project.instance.get_run_by_id(built.run_id).tags  # no SDK change
        check = currency(project, partition)  # reported by the build itself
        assert check.passed and check.description == "built with Apps SDK 1.18.2.0.5, the SDK observed now"

    before = runs(project)
    assert ticks.tick() == []  # nothing changed: no event
    assert ticks.tick() == []
    assert runs(project) == before  # and no run

    set_fake_sdk_version(project.sdk, "1.18.2", "0.6")
    events = ticks.tick()
    assert [type(e).__name__ for e in events] == ["AssetObservation"] + ["AssetCheckEvaluation"] * 2
    assert events[0].tags["dagster/data_version"] == "1.18.2.0.6"
    assert events[0].metadata["sdk_change"].value == \
        "Apps SDK 1.18.2.0.5 -> 1.18.2.0.6; Platform SDK not installed (unchanged)"
    for partition in BUILT:
        check = currency(project, partition)
        assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
        assert check.description == ("built with Apps SDK 1.18.2.0.5, current Apps SDK 1.18.2.0.6: "
                                     "recompile pending")
    assert currency(project, "bs4|offline-nsp14") is None  # never built: no verdict
    assert runs(project) == before + 1 and ticks.reports == 2  # one report run per observed compiler

    # the automation's recompiles (its runs carry its tag): one succeeds, one fails
    automation = {AUTOMATION_TAG: "recompile"}
    project.materialize(profile_key("tiny"), "bs1", **automation)
    rebuilt = project.materialize(binary_key("tiny"), BUILT[0], **automation)
    assert currency(project, BUILT[0]).passed
    # the run says which SDK change it follows, in plain words
    assert project.instance.get_run_by_id(rebuilt.run_id).tags[SDK_CHANGE_TAG] == \
        "Apps SDK 1.18.2.0.5 -> 1.18.2.0.6; Platform SDK not installed (unchanged)"
    monkeypatch.setenv("FAKE_QAIC_EXIT", "3")
    failed = project.materialize(profile_key("tiny"), "bs2", raise_on_error=False)
    assert not failed.success
    monkeypatch.delenv("FAKE_QAIC_EXIT")
    project.materialize(profile_key("tiny"), "bs2")
    monkeypatch.setenv("FAKE_QAIC_EXIT", "3")
    failed = project.materialize(binary_key("tiny"), BUILT[1], raise_on_error=False)
    assert not failed.success
    check = currency(project, BUILT[1])
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.description.startswith(f"recompile for Apps SDK 1.18.2.0.6 failed in run {failed.run_id}: ")
    assert ": qaic-exec failed: exit code 3 after " in check.description
    assert check.description.endswith("; serving the binary built with Apps SDK 1.18.2.0.5")
    assert latest(project.instance, binary_key("tiny"), BUILT[1]).metadata["sdk_version"].value == "1.18.2.0.5"
    assert ticks.tick() == []  # the failure stays visible: no tick overwrites it

    # the CLI says the same as the UI: `status` lists what is not current, `lineage` says it too
    assert cli(["status"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [f"tiny {BUILT[1]}: NOT CURRENT: {check.description}", "1 of 2 built binaries are current, 1 not"]
    assert cli(["lineage", "--model", "tiny", "--partition", BUILT[1]]) == 0
    assert f"  sdk_current: NOT CURRENT: recompile for Apps SDK 1.18.2.0.6 failed in run {failed.run_id}" in \
        capsys.readouterr().out

    # a second upgrade is reported again (Dagster's SQLite storage refuses a second run-less result of
    # one partition's check: the report is a run)
    set_fake_sdk_version(project.sdk, "1.18.2", "0.7")
    events = ticks.tick()
    assert [type(e).__name__ for e in events] == ["AssetObservation"] + ["AssetCheckEvaluation"] * 2
    for partition in BUILT:
        assert currency(project, partition).description.endswith("current Apps SDK 1.18.2.0.7: recompile pending")


@pytest.mark.parametrize("sdk_here", [True, False])
def test_the_schedule_launches_an_observation_run_only_where_the_code_server_has_no_sdk(tiny_project, sdk_here):
    project = tiny_project
    root = str(project.config.sdk_root) if sdk_here else str(project.sdk.parent / "not-on-this-host")
    toolchain = Toolchain(backend="qaic", sdk_root=root)
    schedule = project.defs.resolve_schedule_def(OBSERVE_SCHEDULE_NAME)
    result = schedule(dg.build_schedule_context(instance=project.instance, resources={"toolchain": toolchain}))
    if sdk_here:
        assert isinstance(result, dg.SkipReason) and OBSERVE_SENSOR_NAME in result.skip_message
        assert SensorTicks(project, toolchain).tick()  # the sensor observes instead
    else:
        assert isinstance(result, dg.RunRequest)
        assert SensorTicks(project, toolchain).tick() == []  # nothing to read here: the run observes


def test_a_failed_build_is_its_message_once_without_the_builders_traceback(tiny_project, monkeypatch):
    """The step failure the UI shows is the dg.Failure: the BuildError's message as its description,
    the command and log tail as metadata, and no chained traceback of the builder after it."""
    project = tiny_project
    project.materialize(source_key("tiny"))
    monkeypatch.setenv("FAKE_QAIC_EXIT", "3")
    result = project.materialize(profile_key("tiny"), "bs1", raise_on_error=False)
    [failure] = [e for e in result.all_events if e.is_step_failure]
    data = failure.step_failure_data
    assert data.error.cause is None and data.error.context is None
    assert data.user_failure_data.description.startswith("qaic-exec failed: exit code 3 after ")
    assert data.error.message.strip().endswith(data.user_failure_data.description.strip())
    assert {"command", "log_tail"} <= set(data.user_failure_data.metadata)
