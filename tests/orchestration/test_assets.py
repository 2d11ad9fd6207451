"""The asset graph against the strict stand-in SDK: keys, partitions, the commands the ops really
run, metadata, data versions, manifests, and failures that keep the previous binary."""

import json
import shlex
from pathlib import Path

import dagster as dg
import pytest

from fake_sdk import read_calls, write_tiny_files
from helpers import TEST_INSTANCE_YAML, latest
from qaic_assets.orchestration.keys import binary_key, profile_key, source_key
from qaic_assets.cli import main
from qaic_assets.orchestration.lineage import lineage
from qaic_assets.settings import load_settings
from qaic_assets.orchestration import build_definitions
from qaic_assets.builder.plan import plan_target
from qaic_assets.qaic.sdk import select_backend


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A config with one model on the fake SDK; returns (config, defs, instance, sdk_root)."""
    sdk = write_tiny_files(tmp_path)
    monkeypatch.setenv("QAIC_ASSETS_CONFIG", str(tmp_path / "qaic.yaml"))
    monkeypatch.setenv("QAIC_SDK_ROOT", str(sdk))
    monkeypatch.delenv("FAKE_QAIC_LOG", raising=False)
    config = load_settings()
    defs = build_definitions(config)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(TEST_INSTANCE_YAML)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        yield config, defs, instance, sdk


def materialize(defs, instance, keys, partition=None, raise_on_error=True, force=False):
    graph = defs.resolve_asset_graph()
    assets = [graph.get(k).assets_def for k in keys]
    run_config = {"ops": {graph.get(k).assets_def.op.name: {"config": {"force": True}} for k in keys}} if force else None
    return dg.materialize(assets, instance=instance, partition_key=partition, run_config=run_config,
                          selection=keys, raise_on_error=raise_on_error)


def build_all(defs, instance, partition="bs2|offline-nsp14"):
    materialize(defs, instance, [source_key("tiny")])
    materialize(defs, instance, [profile_key("tiny")], partition.split("|")[0])
    return materialize(defs, instance, [binary_key("tiny")], partition)


def test_keys_and_partitions(project):
    _, defs, _, _ = project
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("qaic_sdk")).is_observable
    binary = graph.get(binary_key("tiny"))
    assert set(binary.partitions_def.get_partition_keys()) == {
        "bs1|offline-nsp14", "bs1|singlestream-nsp14", "bs2|offline-nsp14", "bs2|singlestream-nsp14"}
    assert graph.get(profile_key("tiny")).partitions_def.get_partition_keys() == ["bs1", "bs2"]
    assert graph.get(source_key("tiny")).partitions_def is None
    assert binary.parent_keys == {dg.AssetKey("qaic_sdk"), source_key("tiny"), profile_key("tiny")}
    assert binary.pools == {"qaic_compile"} and graph.get(profile_key("tiny")).pools == {"qaic_compile"}


def test_every_compiled_partition_maps_to_exactly_its_batch_profile(project):
    _, defs, instance, _ = project
    graph = defs.resolve_asset_graph()
    binary = graph.get(binary_key("tiny"))
    profile = graph.get(profile_key("tiny"))
    mapping = binary.assets_def.get_partition_mapping(profile_key("tiny"))
    for key in binary.partitions_def.get_partition_keys():
        subset = binary.partitions_def.empty_subset().with_partition_keys([key])
        result = mapping.get_upstream_mapped_partitions_result_for_partitions(
            subset, binary.partitions_def, profile.partitions_def)
        assert set(result.partitions_subset.get_partition_keys()) == {key.split("|")[0]}


def test_ops_run_exactly_the_plan_and_record_it(project):
    config, defs, instance, sdk = project
    build_all(defs, instance)
    calls = read_calls(sdk)
    assert len(calls) == 2
    plan = plan_target(config, select_backend("qaic", config.sdk_root), "tiny", "offline", 14, 2)
    assert calls[0]["argv"] == plan.calibrate.argv
    assert calls[1]["argv"] == plan.compile.argv
    # each ran in a temporary sibling of its final directory, renamed into place afterwards
    assert Path(calls[0]["cwd"]).parent.parent == plan.calibrate.cwd.parent
    assert Path(calls[1]["cwd"]).parent.parent == plan.compile.cwd.parent
    assert not [p for p in plan.compile.cwd.parent.iterdir() if p.name.startswith(".")]

    profile_file = plan.calibrate.cwd / "profile.yaml"
    binary_file = plan.compile.cwd / "elfs" / "programqpc.bin"
    profile_meta = latest(instance, profile_key("tiny"), "bs2").metadata
    meta = latest(instance, binary_key("tiny"), "bs2|offline-nsp14").metadata
    from qaic_assets.hashing import sha256_file

    # compile received the profile that calibration of the same batch produced
    assert f"-load-profile={profile_file}" in calls[1]["argv"]
    assert meta["profile_sha256"].value == profile_meta["sha256"].value == sha256_file(profile_file)
    assert meta["sha256"].value == sha256_file(binary_file)
    assert meta["size_bytes"].value == binary_file.stat().st_size
    assert meta["backend"].value == "qaic" and meta["sdk_version"].value == "1.18.2.0.5"
    assert meta["model_sha256"].value == sha256_file(config.model("tiny").source.path)
    assert isinstance(meta["duration_s"].value, float) and meta["duration_s"].value > 0
    assert isinstance(meta["peak_rss_mb"].value, float) and meta["peak_rss_mb"].value > 0
    assert meta["command"].value == shlex.join(plan.compile.argv)
    assert shlex.split(meta["command"].value) == plan.compile.argv and "argv" not in meta  # said once
    log = (Path(meta["storage_root"].value) / meta["compiler_log"].value).read_text()
    assert "Done" in log or "done" in log.lower()

    record = instance.get_latest_data_version_record(binary_key("tiny"), partition_key="bs2|offline-nsp14")
    assert record.asset_materialization.tags["dagster/data_version"] == meta["sha256"].value

    manifest = json.loads((plan.compile.cwd / "manifest.json").read_text())
    assert manifest["argv"] == plan.compile.argv
    assert manifest["sdk_version"] == "1.18.2.0.5"
    assert manifest["inputs"]["profile"]["sha256"] == profile_meta["sha256"].value
    assert manifest["output"]["sha256"] == meta["sha256"].value


def test_calibration_inputs_are_batched_like_the_seed(project, monkeypatch, tmp_path):
    """The compiler sees B consecutive samples per batched file, the last padded; the batched copies
    are removed after the run (the manifest keeps their sha256)."""
    config, defs, instance, sdk = project
    seen = tmp_path / "seen"
    # wrap the fake so it snapshots its working directory's list and raw files before running
    exe = sdk / "exec" / "qaic-exec"
    real = exe.with_name("qaic-exec.real")
    exe.rename(real)
    exe.write_text(f"#!/bin/sh\ncp -r . {seen}\nexec {real} \"$@\"\n")
    exe.chmod(0o755)
    materialize(defs, instance, [source_key("tiny")])
    materialize(defs, instance, [profile_key("tiny")], "bs2")
    lines = (seen / "batched_input_files").read_text().split()
    assert lines == ["raw/b00000-0.raw", "raw/b00001-2.raw", "raw/b00002-4.raw"]
    cal = config.model("tiny").calibration.list.parent
    assert (seen / lines[0]).read_bytes() == (cal / "0.raw").read_bytes() + (cal / "1.raw").read_bytes()
    assert (seen / lines[-1]).read_bytes() == (cal / "4.raw").read_bytes() * 2
    meta = latest(instance, profile_key("tiny"), "bs2").metadata
    assert (meta["calibration_samples"].value, meta["calibration_batches"].value) == (5, 3)
    calib_dir = config.storage_root / "tiny" / "calibration" / "bs2"
    assert sorted(p.name for p in calib_dir.iterdir()) == ["compiler.log", "manifest.json", "profile.yaml"]


def test_wrong_sized_calibration_file_fails_before_the_compiler(project):
    config, defs, instance, sdk = project
    bad = config.model("tiny").calibration.list.parent / "3.raw"
    bad.write_bytes(b"\0" * 12)
    materialize(defs, instance, [source_key("tiny")])
    result = materialize(defs, instance, [profile_key("tiny")], "bs1", raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.is_step_failure][0]
    assert "3.raw" in failure.step_failure_data.error.message
    assert read_calls(sdk) == []


@pytest.mark.parametrize("fault,env,needle", [
    ("exit", {"FAKE_QAIC_EXIT": "3"}, "exit code 3"),
    ("timeout", {"FAKE_QAIC_SLEEP": "60"}, "timed out"),
    ("no output", {"FAKE_QAIC_SKIP_OUTPUT": "1"}, "programqpc.bin"),
])
def test_failed_compile_keeps_the_previous_binary(project, monkeypatch, fault, env, needle):
    config, defs, instance, sdk = project
    build_all(defs, instance)
    final = config.storage_root / "tiny" / "compiled" / "bs2" / "offline-nsp14"
    before = {p.relative_to(final): p.read_bytes() for p in final.rglob("*") if p.is_file()}
    good = latest(instance, binary_key("tiny"), "bs2|offline-nsp14")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if fault == "timeout":
        config = config.model_copy(update={"compile_timeout_s": 1.0})
        defs = build_definitions(config)
    calls = len(read_calls(sdk))
    result = materialize(defs, instance, [binary_key("tiny")], "bs2|offline-nsp14", raise_on_error=False,
                         force=True)
    assert not result.success
    # the compiler's own failure is not retried (the retry policy is for transient failures)
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len([c for c in read_calls(sdk)[calls:] if c.get("event") != "start"]) <= 1
    failure = [e for e in result.all_events if e.is_step_failure][0].step_failure_data
    assert needle in failure.error.message
    if fault != "no output":
        assert "Compiling" in str(failure.user_failure_data.metadata["log_tail"].value)
    after = {p.relative_to(final): p.read_bytes() for p in final.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in final.parent.iterdir() if p.name.startswith(".")]
    assert latest(instance, binary_key("tiny"), "bs2|offline-nsp14").metadata == good.metadata


def test_unchanged_inputs_hit_the_cache_and_an_sdk_upgrade_recompiles(project):
    config, defs, instance, sdk = project
    build_all(defs, instance)
    first = latest(instance, binary_key("tiny"), "bs2|offline-nsp14").metadata
    assert first["cached"].value is False
    build_all(defs, instance)  # nothing changed: no compiler call, same data version
    assert len(read_calls(sdk)) == 2
    again = latest(instance, binary_key("tiny"), "bs2|offline-nsp14").metadata
    assert again["cached"].value is True
    assert again["sha256"].value == first["sha256"].value
    assert again["built_by_run"].value == first["built_by_run"].value

    from fake_sdk import set_fake_sdk_version

    set_fake_sdk_version(sdk, "1.19.0", "7")  # upgrade: both steps rerun, the report shows before/after
    build_all(defs, instance)
    assert len(read_calls(sdk)) == 4
    upgraded = latest(instance, binary_key("tiny"), "bs2|offline-nsp14").metadata
    assert upgraded["cached"].value is False
    assert upgraded["sdk_version"].value == "1.19.0.7"
    assert upgraded["previous_sdk_version"].value == "1.18.2.0.5"
    assert upgraded["previous_size_bytes"].value == first["size_bytes"].value
    assert isinstance(upgraded["size_change_pct"].value, float)
    assert lineage(instance, "tiny", "bs2|offline-nsp14")["binary"]["previous_sdk_version"] == "1.18.2.0.5"


def test_sdk_observation_reports_its_version(project):
    _, defs, instance, _ = project
    result = defs.resolve_job_def("observe_qaic_sdk").execute_in_process(instance=instance)
    assert result.success
    record = instance.get_latest_data_version_record(dg.AssetKey("qaic_sdk"), is_source=True)
    assert record.asset_observation.tags["dagster/data_version"] == "1.18.2.0.5"


def test_lineage_walks_model_profile_binary(project, capsys):
    config, defs, instance, sdk = project
    build_all(defs, instance)
    plan = plan_target(config, select_backend("qaic", config.sdk_root), "tiny", "offline", 14, 2)
    from qaic_assets.hashing import sha256_file

    chain = lineage(instance, "tiny", "bs2|offline-nsp14")
    assert chain["model"]["sha256"] == sha256_file(config.model("tiny").source.path)
    assert chain["profile"]["sha256"] == sha256_file(plan.calibrate.cwd / "profile.yaml")
    assert chain["profile"]["calibration_list"] == str(config.model("tiny").calibration.list)
    assert chain["binary"]["argv"] == plan.compile.argv
    assert chain["binary"]["sdk_version"] == "1.18.2.0.5"
    assert chain["binary"]["sha256"] == sha256_file(plan.compile.cwd / "elfs" / "programqpc.bin")
    assert chain["binary"]["run_id"] == instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=binary_key("tiny")), limit=1).records[0].run_id

    assert main(["lineage", "--model", "tiny", "--partition", "bs2|offline-nsp14", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    # the CLI adds what the binary's sdk_current check says (orchestration/currency.py)
    assert printed["binary"].pop("sdk_current") == "current: built with Apps SDK 1.18.2.0.5, the SDK observed now"
    assert printed == json.loads(json.dumps(chain, default=str))
    assert main(["lineage", "--model", "tiny", "--partition", "bs1|offline-nsp14"]) == 1
    assert "(not materialized)" in capsys.readouterr().out
    assert main(["lineage", "--model", "tiny", "--partition", "bs3|offline-nsp14"]) == 2
    assert "bs2|singlestream-nsp14" in capsys.readouterr().err


def test_register_imports_a_prebuilt_binary_without_compiling(project, tmp_path, capsys):
    config, defs, instance, sdk = project
    prebuilt = tmp_path / "prebuilt"
    prebuilt.mkdir()
    (prebuilt / "programqpc.bin").write_bytes(b"QPC" * 100)
    assert main(["register", "--model", "tiny", "--partition", "bs1|singlestream-nsp14",
                 "--from", str(prebuilt)]) == 0
    final = config.storage_root / "tiny" / "compiled" / "bs1" / "singlestream-nsp14"
    assert (final / "elfs" / "programqpc.bin").read_bytes() == b"QPC" * 100
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["registered_from"] == str(prebuilt)
    meta = latest(instance, binary_key("tiny"), "bs1|singlestream-nsp14").metadata
    from qaic_assets.hashing import sha256_file

    assert meta["sha256"].value == sha256_file(prebuilt / "programqpc.bin")
    assert meta["registered_from"].value == str(prebuilt)
    record = instance.get_latest_data_version_record(binary_key("tiny"), partition_key="bs1|singlestream-nsp14")
    assert record.asset_materialization.tags["dagster/data_version"] == meta["sha256"].value
    assert read_calls(sdk) == []

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["register", "--model", "tiny", "--partition", "bs1|singlestream-nsp14",
                 "--from", str(empty)]) == 1
    assert "holds no programqpc.bin" in capsys.readouterr().err
    assert (final / "elfs" / "programqpc.bin").read_bytes() == b"QPC" * 100
