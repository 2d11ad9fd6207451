"""A run over a range of compiled_binary (or calibration_profile) partitions (the demo's runs, the automation's
requests: BackfillPolicy.single_run): one materialization per partition with its own metadata, check
results that name their partition, and, when a partition fails, the others recorded before the step
fails naming it."""

from __future__ import annotations

import dagster as dg

from helpers import failure_message
from qaic_assets.hashing import sha256_file
from qaic_assets.orchestration.jobs import range_run_tags
from qaic_assets.orchestration.keys import SDK_CURRENT, SDK_KEY, binary_key, profile_key, source_key

FIRST, LAST = "bs1|offline-nsp14", "bs1|singlestream-nsp14"  # the tiny project's bs1 targets, in order


def range_run(project, raise_on_error: bool = True):
    job = project.defs.resolve_job_def("compiled_binaries")
    return job.execute_in_process(instance=project.instance, tags=range_run_tags(FIRST, LAST),
                                  asset_selection=[binary_key("tiny")], raise_on_error=raise_on_error)


def prepare(project) -> None:
    project.observe_sdk()
    project.materialize(source_key("tiny"))
    project.materialize(profile_key("tiny"), "bs1")


def test_a_range_run_records_each_partition_with_its_own_metadata_and_checks(tiny_project):
    project = tiny_project
    prepare(project)
    result = range_run(project)
    assert result.success
    materializations = {m.partition: m for m in result.asset_materializations_for_node("tiny__compiled_binary")}
    assert sorted(materializations) == [FIRST, LAST]
    for partition, m in materializations.items():
        stored = project.config.storage_root / m.metadata["path"].value
        assert m.metadata["sha256"].value == sha256_file(stored)  # its own binary's
        code_version = project.defs.resolve_assets_def(binary_key("tiny")).code_versions_by_key[binary_key("tiny")]
        assert m.tags["dagster/code_version"] == code_version
    paths = {p: m.metadata["path"].value for p, m in materializations.items()}
    assert paths[FIRST].startswith("tiny/compiled/bs1/offline-nsp14/") and \
        paths[LAST].startswith("tiny/compiled/bs1/singlestream-nsp14/"), paths
    checks = {(c.check_name, c.partition): c for c in result.get_asset_check_evaluations()}
    assert checks[(SDK_CURRENT, FIRST)].passed and checks[(SDK_CURRENT, LAST)].passed
    assert {partition for _, partition in checks} == {FIRST, LAST}
    runs = project.instance.get_run_records()
    assert len([r for r in runs if r.dagster_run.job_name == "compiled_binaries"]) == 1
    # the builder's lines (each partition's command), one log event for the range, not one per line
    (lines,) = [e.user_message for e in project.instance.all_logs(result.run_id)
                if e.dagster_event is None and f"{FIRST}: $ " in e.user_message]
    assert f"\n{LAST}: $ " in lines


def test_a_failed_partition_fails_the_step_naming_it_and_the_built_ones_are_recorded(tiny_project, monkeypatch):
    project = tiny_project
    prepare(project)
    project.materialize(binary_key("tiny"), FIRST)  # built: the range finds it in place, no compiler call
    monkeypatch.setenv("FAKE_QAIC_EXIT", "3")  # every compiler call fails: LAST's
    result = range_run(project, raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    first_line = message.splitlines()[0]
    assert first_line.split("Failure: ", 1)[1].startswith(f"1 of 2 partitions failed: {LAST}: qaic-exec failed: "
                                                         "exit code 3 after "), first_line
    assert first_line.endswith(" s."), first_line  # the first line of the compiler's failure, not its log
    recorded = [m.partition for m in result.asset_materializations_for_node("tiny__compiled_binary")]
    assert recorded == [FIRST]
    checks = {(c.check_name, c.partition) for c in result.get_asset_check_evaluations()}
    assert (SDK_CURRENT, FIRST) in checks and (SDK_CURRENT, LAST) not in checks
    latest = project.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=binary_key("tiny"), asset_partitions=[FIRST]), limit=1).records[0]
    assert latest.run_id == result.run_id
    assert not project.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=binary_key("tiny"), asset_partitions=[LAST]), limit=1).records


def test_after_an_sdk_upgrade_the_ranges_of_the_requested_binaries_recompile_exactly_them(tiny_project):
    """`compiled_binary` is a single-run backfill: the automation's backfill runs its requested
    partitions as ranges, one per stretch with one dimension's key fixed (Dagster's
    build_run_requests_with_backfill_policies: PartitionsSubset.get_partition_key_ranges). Those
    ranges hold exactly the built partitions, and running them recompiles exactly those."""
    from fake_sdk import read_calls, set_fake_sdk_version

    project = tiny_project
    built = ["bs1|offline-nsp14", "bs2|offline-nsp14", "bs2|singlestream-nsp14"]  # bs1|singlestream: never
    prepare(project)
    project.materialize(profile_key("tiny"), "bs2")
    for partition in built:
        project.materialize(binary_key("tiny"), partition)
    cursor = dg.evaluate_automation_conditions(project.defs, project.instance).cursor
    set_fake_sdk_version(project.sdk, "1.19.0", "7")
    project.observe_sdk()
    requested = set()
    for _ in range(3):
        result = dg.evaluate_automation_conditions(project.defs, project.instance, cursor=cursor)
        cursor = result.cursor
        for batch in sorted(result.get_requested_partitions(profile_key("tiny"))):
            project.materialize(profile_key("tiny"), batch)
        requested = set(result.get_requested_partitions(binary_key("tiny")))
        if requested:
            break
    assert requested == set(built)
    partitions_def = project.defs.resolve_assets_def(binary_key("tiny")).partitions_def
    ranges = partitions_def.subset_with_partition_keys(requested).get_partition_key_ranges(partitions_def)
    covered = [k for r in ranges for k in partitions_def.get_partition_keys_in_range(r)]
    assert sorted(covered) == sorted(built) and len(ranges) < len(built)
    calls = len(read_calls(project.sdk))
    job = project.defs.resolve_job_def("compiled_binaries")
    for r in ranges:
        assert job.execute_in_process(instance=project.instance, tags=range_run_tags(r.start, r.end),
                                      asset_selection=[binary_key("tiny")]).success
    assert len(read_calls(project.sdk)) == calls + len(built)
    for partition in built:
        record = project.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=binary_key("tiny"), asset_partitions=[partition]), limit=1).records[0]
        assert record.asset_materialization.metadata["sdk_version"].value == "1.19.0.7"
    assert not project.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=binary_key("tiny"), asset_partitions=["bs1|singlestream-nsp14"]),
        limit=1).records


def calibration_range(project, first: str, last: str):
    job = project.defs.resolve_job_def("calibration_profiles")
    return job.execute_in_process(instance=project.instance, tags=range_run_tags(first, last),
                                  asset_selection=[profile_key("tiny")], raise_on_error=False)


def test_a_calibration_run_over_the_batches_records_each_profile_and_a_failed_batch_by_name(tiny_project, monkeypatch):
    """calibration_profile is a single-run backfill too (the demo's one calibration run per model): each
    batch its own materialization of its own profile; a batch that fails fails the step naming it, and
    the batches built before are recorded."""
    project = tiny_project
    project.materialize(source_key("tiny"))  # qaic_sdk never observed: the first build records it
    result = calibration_range(project, "bs1", "bs2")
    assert result.success, failure_message(result)
    [observed] = project.instance.fetch_observations(dg.AssetRecordsFilter(asset_key=SDK_KEY), limit=5).records
    recorded_by = observed.asset_observation.metadata["recorded_by"].value
    assert recorded_by.startswith("the build of tiny/calibration_profile bs1 in run "), recorded_by
    recorded = {m.partition: m for m in result.asset_materializations_for_node("tiny__calibration_profile")}
    assert sorted(recorded) == ["bs1", "bs2"]
    for batch, m in recorded.items():
        assert m.metadata["path"].value == f"tiny/calibration/{batch}/profile.yaml"
        assert m.metadata["sha256"].value == sha256_file(project.config.storage_root / m.metadata["path"].value)
    assert project.materialize(binary_key("tiny"), "bs2|offline-nsp14").success  # loads bs2's profile

    monkeypatch.setenv("FAKE_QAIC_EXIT", "3")  # every compiler call fails: bs4's (bs2's is in place)
    result = calibration_range(project, "bs2", "bs4")
    assert not result.success
    first_line = failure_message(result).splitlines()[0]
    assert "1 of 2 partitions failed: bs4: qaic-exec failed: exit code 3" in first_line, first_line
    assert [m.partition for m in result.asset_materializations_for_node("tiny__calibration_profile")] == ["bs2"]
    assert not project.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=profile_key("tiny"), asset_partitions=["bs4"]), limit=1).records
