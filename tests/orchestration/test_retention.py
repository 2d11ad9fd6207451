"""Retention (orchestration/retention.py, `qaic-assets prune`): exactly the succeeded runs whose every
asset event has a later one are deleted, with their SQLite shard files; what the lineage, the
currency and the automation read stays."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from fake_sdk import set_fake_sdk_version

from qaic_assets.orchestration.keys import binary_key, profile_key, source_key
from qaic_assets.orchestration.lineage import lineage
from qaic_assets.orchestration.retention import prune

BUILT = "bs1|offline-nsp14"


def shard(project, run_id: str) -> Path:
    return project.home / "history" / "runs" / f"{run_id}.db"


def run_ids(project) -> set[str]:
    return {r.dagster_run.run_id for r in project.instance.get_run_records()}


def observe(project) -> str:
    before = run_ids(project)
    project.observe_sdk()
    (new,) = run_ids(project) - before
    return new


def test_prune_deletes_exactly_the_superseded_succeeded_runs_and_their_shards(tiny_project, monkeypatch):
    project = tiny_project
    old_observation = observe(project)
    source = project.materialize(source_key("tiny")).run_id
    profile = project.materialize(profile_key("tiny"), "bs1").run_id
    first = project.materialize(binary_key("tiny"), BUILT).run_id
    second = project.materialize(binary_key("tiny"), BUILT).run_id  # supersedes `first`, checks included
    other = project.materialize(binary_key("tiny"), "bs1|singlestream-nsp14").run_id  # its partition's only build
    set_fake_sdk_version(project.sdk, "1.18.2", "0.6")
    observation = observe(project)  # supersedes `old_observation`
    monkeypatch.setenv("FAKE_QAIC_EXIT", "3")
    failed = project.materialize(binary_key("tiny"), BUILT, raise_on_error=False)  # a failed recompile
    assert not failed.success
    monkeypatch.delenv("FAKE_QAIC_EXIT")
    everything = run_ids(project)
    assert shard(project, first).is_file() and shard(project, old_observation).is_file()

    dry = prune(project.instance, project.defs, dry_run=True)
    assert sorted(dry.runs) == sorted([first, old_observation])
    assert dry.kept == len(everything) - 2 and dry.bytes_freed == 0
    assert run_ids(project) == everything and shard(project, first).is_file()

    done = prune(project.instance, project.defs)
    assert sorted(done.runs) == sorted([first, old_observation])
    assert run_ids(project) == everything - {first, old_observation}
    assert {source, profile, second, other, observation, failed.run_id} <= run_ids(project)
    assert not shard(project, first).exists() and not shard(project, old_observation).exists()
    assert done.bytes_freed > 0
    assert shard(project, second).is_file()
    # the binary's lineage and its run are intact; the failed recompile's verdict still names its run
    chain = lineage(project.instance, "tiny", BUILT)
    assert chain["binary"]["run_id"] == second and chain["profile"]["run_id"] == profile
    assert chain["model"]["run_id"] == source
    from qaic_assets.orchestration.currency import latest_currency

    verdict = latest_currency(project.instance, binary_key("tiny"))[BUILT]
    assert not verdict.passed and failed.run_id in verdict.description
    assert project.instance.get_run_by_id(failed.run_id) is not None
    # nothing left to prune; the instance still records runs
    assert prune(project.instance, project.defs).runs == []
    assert project.materialize(binary_key("tiny"), BUILT).success  # the recompile, the instance works on


def test_latest_check_by_partition_pages_through_the_history(tiny_project, monkeypatch):
    from qaic_assets.orchestration import lineage as lineage_module
    from qaic_assets.orchestration.keys import SDK_CURRENT

    project = tiny_project
    project.observe_sdk()
    project.materialize(source_key("tiny"))
    project.materialize(profile_key("tiny"), "bs1")
    project.materialize(binary_key("tiny"), BUILT)
    newest = project.materialize(binary_key("tiny"), BUILT).run_id
    project.materialize(binary_key("tiny"), "bs1|singlestream-nsp14")
    monkeypatch.setattr(lineage_module, "PAGE", 1)  # a page per record: the cursor is followed
    found = lineage_module.latest_check_by_partition(project.instance, dg.AssetCheckKey(binary_key("tiny"), SDK_CURRENT))
    assert sorted(found) == [BUILT, "bs1|singlestream-nsp14"]
    assert found[BUILT].run_id == newest


def test_the_prune_command_lists_on_a_dry_run_then_deletes(tiny_project, capsys):
    from qaic_assets.cli import main

    project = tiny_project
    project.observe_sdk()
    project.materialize(source_key("tiny"))
    project.materialize(profile_key("tiny"), "bs1")
    first = project.materialize(binary_key("tiny"), BUILT).run_id
    project.materialize(binary_key("tiny"), BUILT)
    capsys.readouterr()
    assert main(["--config", str(project.config_path), "prune", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("would delete 1 superseded runs") and f"  {first}\n" in out
    assert project.instance.get_run_by_id(first) is not None
    assert main(["--config", str(project.config_path), "prune"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("deleted 1 superseded runs (0.") and out.rstrip().endswith("4 finished runs stay")
    assert project.instance.get_run_by_id(first) is None
