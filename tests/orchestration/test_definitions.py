"""The definitions as a whole: the same on every host, host specifics as swappable resources, and
runs launched the way scripts and the GraphQL API launch them."""

from __future__ import annotations

import dagster as dg
import pytest

from fake_sdk import make_fake_sdk
from qaic_assets.orchestration import build_definitions
from qaic_assets.orchestration.jobs import SOURCES_JOB, matrix_jobs
from qaic_assets.orchestration.keys import ACCURACY_CHECK_NAME, SDK_CURRENT, binary_key, profile_key, source_key
from qaic_assets.orchestration.metadata import resolve
from qaic_assets.orchestration.resources import ArtifactStore, Toolchain
from qaic_assets.orchestration.sdk_checks import FITS_TARGET
from qaic_assets.settings import DEFAULT_CONFIG, load_settings


def graph_of(defs: dg.Definitions) -> dict:
    """Everything about the asset graph a host could differ in: assets, deps, partitions, code
    versions, conditions, checks, jobs, sensors and schedules."""
    assets = {}
    for spec in defs.resolve_all_asset_specs():
        condition = spec.automation_condition
        assets[spec.key.to_user_string()] = {
            "deps": sorted(d.asset_key.to_user_string() for d in spec.deps),
            "partitions": spec.partitions_def and list(spec.partitions_def.get_partition_keys()),
            "code_version": spec.code_version,
            "group": spec.group_name,
            "kinds": sorted(spec.kinds),
            "condition": condition and str(condition.get_snapshot()),
        }
    checks = sorted(f"{spec.asset_key.to_user_string()}:{spec.name}" for a in defs.assets
                    if isinstance(a, dg.AssetsDefinition) for spec in a.check_specs)
    return {"assets": assets, "checks": checks,
            "jobs": sorted(j.name for j in defs.jobs), "sensors": sorted(s.name for s in defs.sensors),
            "schedules": sorted((s.name, s.cron_schedule) for s in defs.schedules)}


@pytest.mark.parametrize("backend", ["auto", "qaic", "cpu"])
def test_definitions_do_not_depend_on_the_local_sdk(tmp_path, backend):
    """The daemon and webserver hosts have no SDK, the compile hosts have one: same graph, checks
    included (the accuracy check is declared from the configuration, not from the disk)."""
    settings = load_settings(DEFAULT_CONFIG).model_copy(update={"backend": backend})
    with_sdk = make_fake_sdk(tmp_path / "sdk")
    graphs = [graph_of(build_definitions(settings.model_copy(update={"sdk_root": root})))
              for root in (with_sdk, tmp_path / "no-sdk")]
    assert graphs[0] == graphs[1]
    for model in ("resnet50", "digits"):  # (digits: a held-out set) accuracy where CPU builds can happen
        assert (f"{model}/compiled_binary:{ACCURACY_CHECK_NAME}" in graphs[0]["checks"]) == (backend != "qaic")
        assert f"{model}/compiled_binary:{SDK_CURRENT}" in graphs[0]["checks"]
    assert str(with_sdk) not in repr(graphs[0]) and "no-sdk" not in repr(graphs[0])


def test_resources_carry_the_host_specifics(tiny_project, tmp_path):
    """Tests and deployments swap the toolchain and the store: the build runs that compiler and
    writes under that root, with the same asset graph."""
    project = tiny_project
    other_store = tmp_path / "elsewhere"
    other_sdk = make_fake_sdk(tmp_path / "other-sdk", version=("1.20.0", "3"))
    defs = build_definitions(project.config, resources={
        "toolchain": Toolchain(backend="qaic", sdk_root=str(other_sdk)),
        "artifact_store": ArtifactStore(root=str(other_store))})
    assert graph_of(defs) == graph_of(project.defs)
    graph = defs.resolve_asset_graph()
    for key, partition in ((source_key("tiny"), None), (profile_key("tiny"), "bs1"),
                           (binary_key("tiny"), "bs1|offline-nsp14")):
        assert dg.materialize([graph.get(key).assets_def], instance=project.instance, partition_key=partition,
                              selection=[key]).success
    meta = project.instance.fetch_materializations(binary_key("tiny"), limit=1).records[0].asset_materialization.metadata
    assert meta["sdk_version"].value == "1.20.0.3"
    assert meta["command"].value.split()[0] == str(other_sdk / "exec" / "qaic-exec")
    assert meta["storage_root"].value == str(other_store) and str(resolve(meta)).startswith(str(other_store) + "/")
    assert not (project.root / "store").exists()  # the settings' storage root is untouched


def test_run_with_only_the_partition_tag(tiny_project):
    """Scripts and the GraphQL API launch a binary partition with `dagster/partition` alone (no
    per-dimension tags): the step gets a plain string key and still builds that partition."""
    project = tiny_project
    project.observe_sdk()
    project.materialize(source_key("tiny"))
    project.materialize(profile_key("tiny"), "bs2")
    job = project.defs.resolve_job_def(matrix_jobs(project.config)["tiny"][1])
    result = job.execute_in_process(instance=project.instance, tags={"dagster/partition": "bs2|offline-nsp14"})
    assert result.success
    records = project.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=binary_key("tiny"), asset_partitions=["bs2|offline-nsp14"]), limit=5).records
    assert [r.run_id for r in records] == [result.run_id]
    meta = records[0].asset_materialization.metadata
    assert records[0].partition_key == "bs2|offline-nsp14" and "nsp" not in meta  # the key says it, once
    assert "/tiny/compiled/bs2/offline-nsp14/" in str(resolve(meta))


def test_partition_run_tags_use_the_public_tag_names():
    from qaic_assets.orchestration.jobs import partition_run_tags

    assert partition_run_tags("bs8|offline-nsp14") == {
        "dagster/partition": "bs8|offline-nsp14", "dagster/partition/batch": "bs8",
        "dagster/partition/target": "offline-nsp14"}
    assert partition_run_tags("bs8") == {"dagster/partition": "bs8"}
    assert partition_run_tags(None) == {}


@pytest.mark.parametrize("backend", ["qaic", "cpu", "auto"])
def test_a_check_is_declared_where_its_backend_can_run_it_and_auto_says_why_not(tiny_project, backend):
    """A model with a held-out set: the accuracy check where CPU builds can happen, the SDK's tool
    check where SDK builds can; `auto` declares both and a build reports the one it cannot run as
    skipped with the reason (never a check that is always "not evaluated" without a word)."""
    project = tiny_project
    project.config_path.write_text(project.config_path.read_text().replace(
        "    calibration: {list: cal/cal.txt}\n", "    calibration: {list: cal/cal.txt}\n    heldout: {list: cal/cal.txt}\n"))
    defs = build_definitions(project.config, resources={
        "toolchain": Toolchain(backend=backend, sdk_root=str(project.sdk))})
    project._defs = defs
    checks = sorted(spec.name for a in defs.assets if isinstance(a, dg.AssetsDefinition) for spec in a.check_specs)
    assert checks == {"qaic": [FITS_TARGET, SDK_CURRENT], "cpu": [ACCURACY_CHECK_NAME, SDK_CURRENT],
                      "auto": [ACCURACY_CHECK_NAME, FITS_TARGET, SDK_CURRENT]}[backend]
    project.observe_sdk()
    project.materialize(source_key("tiny"))
    project.materialize(profile_key("tiny"), "bs1")
    result = project.materialize(binary_key("tiny"), "bs1|offline-nsp14")
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert latest_backend(project) == ("qaic" if backend == "auto" else backend)  # auto: the SDK is here
    assert sorted(evaluations) == sorted(checks)  # every declared check has a result
    assert evaluations[SDK_CURRENT].passed
    if backend != "cpu":  # the SDK built it: its tool checks ran (qaic-qpc is not in this stand-in)
        assert "tools/qaic-qpc is not installed" in evaluations[FITS_TARGET].description
    if backend == "auto":
        skipped = evaluations[ACCURACY_CHECK_NAME]
        assert not skipped.passed and skipped.severity == dg.AssetCheckSeverity.WARN
        assert skipped.description == ("skipped: built by the SDK's compiler: the QPC runs only on a Cloud AI "
                                       "100 card, and the accuracy check runs on CPU builds (backend: cpu)")
    if backend == "cpu":
        assert evaluations[ACCURACY_CHECK_NAME].passed and "score" in evaluations[ACCURACY_CHECK_NAME].metadata


def latest_backend(project) -> str:
    record = project.instance.fetch_materializations(binary_key("tiny"), limit=1).records[0]
    return record.asset_materialization.metadata["backend"].value


def test_a_backend_changed_in_the_launchpad_is_refused_naming_the_config(tiny_project):
    """The graph (kinds, checks) and the build read one toolchain: a run whose resource config asks for
    another backend than the definitions were built with fails with the fix, and builds nothing."""
    project = tiny_project
    project.observe_sdk()
    key = source_key("tiny")
    job = project.defs.resolve_job_def(SOURCES_JOB)
    result = job.execute_in_process(instance=project.instance, raise_on_error=False,
                                    run_config={"resources": {"toolchain": {"config": {"backend": "cpu"}}}})
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    assert "toolchain resource says backend 'cpu'" in failure.message
    assert f"set `backend:` in {project.config.source_file}" in failure.message
    assert not project.instance.fetch_materializations(key, limit=1).records


def test_assets_carry_owners_tags_and_code_references():
    """What the UI shows beside each asset: owners (the config's, a model may override), tags naming
    the model, recipe and backend, and a link to the code that defines it."""
    settings = load_settings(DEFAULT_CONFIG)
    defs = build_definitions(settings)
    specs = {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}
    digits = specs["digits/compiled_binary"]
    assert digits.owners == ["team:ml-inference"]
    assert {k: v for k, v in digits.tags.items() if not k.startswith("dagster/")} == {
        "model": "digits", "recipe": "resnet50", "backend": "auto"}
    assert specs["bert-99/calibration_profile"].tags["recipe"] == "bert-99"
    for key in ("digits/compiled_binary", "digits/calibration_profile", "digits/source_model", "qaic_sdk"):
        refs = specs[key].metadata["dagster/code_references"].code_references
        assert refs and all(r.file_path.endswith(".py") and "/qaic_assets/orchestration/" in r.file_path for r in refs), key
    mine = settings.model_copy(update={"models": {**settings.models, "digits": settings.model("digits").model_copy(
        update={"owners": ["someone@example.com"]})}})
    assert {s.key.to_user_string(): s for s in build_definitions(mine).resolve_all_asset_specs()}[
        "digits/compiled_binary"].owners == ["someone@example.com"]


def test_only_transient_build_failures_may_be_retried():
    from qaic_assets.builder.service import BuildError
    from qaic_assets.orchestration.build_step import as_failure

    with pytest.raises(dg.Failure) as failed, as_failure():
        raise BuildError("qaic-exec failed: exit code 3")
    assert failed.value.allow_retries is False
    with pytest.raises(dg.RetryRequested) as retried, as_failure():
        raise BuildError("the output is locked by run X", transient=True)
    assert retried.value.max_retries == 2 and isinstance(retried.value.__cause__, BuildError)


@pytest.mark.parametrize("instance_yaml", ["dagster_home/dagster.yaml", "deploy/dagster.yaml"])
def test_the_shipped_instances_send_no_telemetry_show_no_first_start_prompt_and_purge_old_ticks(instance_yaml,
                                                                                                 tmp_path):
    import shutil
    from pathlib import Path

    import yaml

    source = Path(__file__).resolve().parents[2] / instance_yaml
    settings = yaml.safe_load(source.read_text())
    assert settings["telemetry"] == {"enabled": False} and settings["nux"] == {"enabled": False}
    assert settings["retention"] == {"schedule": {"purge_after_days": 30},
                                     "sensor": {"purge_after_days": {"skipped": 7, "failure": 30, "success": 30}}}
    if instance_yaml.startswith("dagster_home"):  # Dagster reads them as meant (the deploy one needs Postgres)
        shutil.copy(source, tmp_path / "dagster.yaml")
        with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
            assert instance.nux_enabled is False and instance.telemetry_enabled is False
