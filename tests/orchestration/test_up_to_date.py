"""Up to date before launching a run (orchestration/up_to_date.py): decided from the manifests' stat keys and
the instance's records, so a changed input, output, record or code version is never called fresh."""

from __future__ import annotations

import os

import dagster as dg

from qaic_assets.orchestration.up_to_date import UpToDate, Step
from qaic_assets.orchestration.keys import SDK_KEY, binary_key, profile_key, source_key


def test_fresh_only_while_files_records_and_code_agree(tiny_project):
    project = tiny_project
    config, instance = project.config, project.instance
    project.observe_sdk()
    project.materialize(source_key("tiny"))
    project.materialize(profile_key("tiny"), "bs1")
    project.materialize(binary_key("tiny"), "bs1|offline-nsp14")
    graph = project.defs.resolve_asset_graph()
    versions = {k: graph.get(k).code_version for k in (source_key("tiny"), profile_key("tiny"), binary_key("tiny"))}
    steps = {"sdk": Step(SDK_KEY), "source": Step(source_key("tiny"), "tiny"),
             "profile": Step(profile_key("tiny"), "tiny", "bs1"),
             "binary": Step(binary_key("tiny"), "tiny", "bs1|offline-nsp14")}

    def fresh(**kw) -> dict[str, bool]:
        f = UpToDate(config, instance, {**versions, **kw.get("versions", {})})
        return {name: f.up_to_date(step) for name, step in steps.items()}

    assert fresh() == {"sdk": True, "source": True, "profile": True, "binary": True}
    # never built, or built for another partition: not fresh
    assert not UpToDate(config, instance, versions).up_to_date(Step(binary_key("tiny"), "tiny", "bs2|offline-nsp14"))
    # a new code version of the binary asset (e.g. a recipe change): that asset is not fresh
    assert fresh(versions={binary_key("tiny"): "other"})["binary"] is False
    # the output rewritten (new mtime): not fresh, whatever the instance says
    binary = config.storage_root / "tiny/compiled/bs1/offline-nsp14/elfs/programqpc.bin"
    st = binary.stat()
    os.utime(binary, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert fresh()["binary"] is False
    os.utime(binary, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fresh()["binary"] is False  # the mtime put back does not undo the ctime
    # a calibration raw file touched: the profile (and so the build chain) is not fresh
    raw = config.model("tiny").calibration.list.parent / "0.raw"
    raw.write_bytes(raw.read_bytes())
    assert fresh()["profile"] is False
    # the model file changed: nothing downstream of it is fresh
    model = config.model("tiny").source.path
    model.write_bytes(model.read_bytes())
    assert fresh() == {"sdk": True, "source": False, "profile": False, "binary": False}
    # a new compiler version (SDK upgrade): not even the observation is fresh
    from fake_sdk import set_fake_sdk_version

    set_fake_sdk_version(project.sdk, "1.19.0", "1")
    assert fresh()["sdk"] is False and fresh()["binary"] is False


def test_the_latest_records_of_all_partitions_are_read_in_one_query_per_asset(tiny_project, monkeypatch):
    """A no-op re-run asks every partition: one event-log query per asset, not one per partition
    (at thousands of partitions, a query each was most of the re-run's time)."""
    project = tiny_project
    config, instance = project.config, project.instance
    project.observe_sdk()
    project.materialize(source_key("tiny"))
    project.materialize(profile_key("tiny"), "bs1")
    built = ["bs1|offline-nsp14", "bs1|singlestream-nsp14"]
    for partition in built:
        project.materialize(binary_key("tiny"), partition)
    graph = project.defs.resolve_asset_graph()
    versions = {k: graph.get(k).code_version for k in (source_key("tiny"), profile_key("tiny"), binary_key("tiny"))}
    partitions = [p.key for p in config.matrix_of("tiny").binary_partitions]
    assert len(partitions) > len(built)
    queries = []
    fetch = instance.fetch_materializations
    monkeypatch.setattr(instance, "fetch_materializations",
                        lambda records_filter, **kw: queries.append(records_filter.asset_key) or fetch(records_filter, **kw))
    answers = UpToDate(config, instance, versions)
    fresh = {p: answers.up_to_date(Step(binary_key("tiny"), "tiny", p)) for p in partitions}
    assert fresh == {p: p in built for p in partitions}
    assert queries == [source_key("tiny"), binary_key("tiny")]  # the source once, the binaries once


def test_latest_by_partition_pages_through_the_history_to_each_partitions_newest_record(tiny_project, monkeypatch):
    from qaic_assets.orchestration import lineage

    project = tiny_project
    project.materialize(source_key("tiny"))
    project.materialize(profile_key("tiny"), "bs1")
    project.materialize(profile_key("tiny"), "bs2")
    newest = project.materialize(profile_key("tiny"), "bs1")  # a second record of bs1 (a cache hit)
    monkeypatch.setattr(lineage, "PAGE", 1)  # a page per record: the cursor is followed
    found = lineage.latest_by_partition(project.instance, profile_key("tiny"), ["bs1", "bs2", "bs4"])
    assert sorted(found) == ["bs1", "bs2"]
    assert found["bs1"].run_id == newest.run_id
