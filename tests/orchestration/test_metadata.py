"""What the UI shows about a binary on the CPU backend (the shipped digits model, the real CPU
compiler): metadata types, the Markdown lineage block, the kind, a check result per partition, and
identical CPU builds shared instead of compiled twice."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import dagster as dg
import pytest

import qaic_assets
from helpers import TEST_INSTANCE_YAML
from qaic_assets.orchestration.keys import ACCURACY_CHECK_NAME, binary_key, profile_key, source_key

DIGITS = Path(qaic_assets.__file__).parent / "models" / "data" / "digits"
CONFIG = f"""
storage_root: store
backend: cpu
matrix: {{scenarios: [offline, singlestream], nsp: [14], batch: [1, 2]}}
models:
  digits:
    recipe: resnet50
    source: {{path: {DIGITS / 'model.onnx'}}}
    calibration: {{list: {DIGITS / 'cal.txt'}, first: 16}}
    heldout: {{list: {DIGITS / 'heldout.txt'}, labels: {DIGITS / 'heldout_labels.txt'}}}
"""


@pytest.fixture
def cpu_project(tmp_path, monkeypatch):
    """(settings, defs, instance, compiler-call log) for digits on the CPU backend."""
    from qaic_assets.orchestration import build_definitions
    from qaic_assets.settings import load_settings

    (tmp_path / "qaic.yaml").write_text(CONFIG)
    monkeypatch.setenv("QAIC_ASSETS_CONFIG", str(tmp_path / "qaic.yaml"))
    monkeypatch.delenv("QAIC_ASSETS_STORAGE_ROOT", raising=False)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(TEST_INSTANCE_YAML)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    settings = load_settings()
    with dg.DagsterInstance.get() as instance:
        yield settings, build_definitions(settings), instance


def materialize(defs, instance, key, partition=None, force=False):
    assets_def = defs.resolve_asset_graph().get(key).assets_def
    config = {"ops": {assets_def.op.name: {"config": {"force": True}}}} if force else None
    return dg.materialize([assets_def], instance=instance, partition_key=partition, selection=[key], run_config=config)


def latest(instance, key, partition):
    return instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1).records[0].asset_materialization


def test_binary_metadata_types_and_lineage_block(cpu_project):
    settings, defs, instance = cpu_project
    assert defs.resolve_asset_graph().get(binary_key("digits")).kinds == {"onnx"}  # CPU writes ONNX
    materialize(defs, instance, source_key("digits"))
    materialize(defs, instance, profile_key("digits"), "bs2")
    result = materialize(defs, instance, binary_key("digits"), "bs2|offline-nsp14")
    run_id = result.run_id
    meta = latest(instance, binary_key("digits"), "bs2|offline-nsp14").metadata
    manifest = json.loads((settings.storage_root / "digits/compiled/bs2/offline-nsp14/manifest.json").read_text())

    # measurements are numbers; the scenario, nsp and batch are the partition key's, not repeated
    assert not {"batch", "nsp", "scenario"} & set(meta)
    assert isinstance(meta["size_bytes"], dg.IntMetadataValue)
    assert isinstance(meta["duration_s"], dg.FloatMetadataValue)
    # the argv as one pasteable line, said once (the list is the manifest's); the log as its path
    assert "argv" not in meta and "log_tail" not in meta
    assert isinstance(meta["command"], dg.TextMetadataValue) and shlex.split(meta["command"].value) == manifest["argv"]
    assert meta["compiler_log"].value == "digits/compiled/bs2/offline-nsp14/compiler.log"
    # paths relative to the storage root, given once
    assert meta["storage_root"].value == str(settings.storage_root)
    assert meta["path"].value == "digits/compiled/bs2/offline-nsp14/elfs/programqpc.onnx"
    assert (Path(meta["storage_root"].value) / meta["path"].value).is_file()

    block = meta["lineage"]
    assert isinstance(block, dg.MarkdownMetadataValue)
    text = block.value
    assert str(DIGITS / "model.onnx") in text and "/assets/digits/source_model" in text
    assert "/assets/digits/calibration_profile?view=partitions&partition=bs2" in text
    assert "`digits/calibration/bs2/profile.yaml`" in text and "16 samples" in text
    assert str(DIGITS / "cal.txt") in text
    assert manifest["sdk_version"] in text and "qaic-exec-cpu" in text
    assert f"(/runs/{run_id})" in text
    assert "accuracy vs fp32: passed, accuracy_ratio 1.0000" in text
    # each fact once: a sha256 is one entry, never repeated by another entry or the block
    shas = {"model_sha256": manifest["inputs"]["model"]["sha256"],
            "profile_sha256": manifest["inputs"]["profile"]["sha256"], "sha256": manifest["output"]["sha256"]}
    for name, sha in shas.items():
        assert [k for k, v in meta.items() if sha in str(v.value)] == [name]

    profile_meta = latest(instance, profile_key("digits"), "bs2").metadata
    assert isinstance(profile_meta["batch"], dg.TextMetadataValue) and profile_meta["batch"].value == "2"
    assert profile_meta["path"].value == "digits/calibration/bs2/profile.yaml"


def test_a_failing_partition_shows_its_own_check_result(cpu_project, monkeypatch):
    """The check is per partition: bs1 fails while bs2 passes, and each partition keeps its own
    result (the asset does not show only whichever ran last)."""
    settings, defs, instance = cpu_project
    import qaic_assets.orchestration.checks as checks

    real = checks.evaluate

    def evaluate(config, model, argv, binary, batch, **kw):  # bs1's binary scores below the threshold
        result, cached = real(config, model, argv, binary, batch, **kw)
        return ({**result, "score": 0.5} if batch == 1 else result), cached

    monkeypatch.setattr(checks, "evaluate", evaluate)
    materialize(defs, instance, source_key("digits"))
    for batch in ("bs1", "bs2"):
        materialize(defs, instance, profile_key("digits"), batch)
    materialize(defs, instance, binary_key("digits"), "bs1|offline-nsp14")
    materialize(defs, instance, binary_key("digits"), "bs2|offline-nsp14")  # passes, and ran last

    check_key = dg.AssetCheckKey(binary_key("digits"), ACCURACY_CHECK_NAME)
    spec = next(iter(defs.resolve_asset_graph().get(binary_key("digits")).assets_def.check_specs))
    assert spec.partitions_def is not None
    history = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=10)
    by_partition = {}
    for record in history:  # newest first
        by_partition.setdefault(record.partition, record)
    assert set(by_partition) == {"bs1|offline-nsp14", "bs2|offline-nsp14"}
    assert by_partition["bs1|offline-nsp14"].status.value == "FAILED"
    assert by_partition["bs2|offline-nsp14"].status.value == "SUCCEEDED"
    evaluation = by_partition["bs1|offline-nsp14"].event.dagster_event.event_specific_data
    assert evaluation.partition == "bs1|offline-nsp14" and not evaluation.passed
    assert "accuracy vs fp32: **FAILED**" in latest(instance, binary_key("digits"), "bs1|offline-nsp14").metadata[
        "lineage"].value


def test_identical_cpu_commands_are_built_once(cpu_project, monkeypatch):
    """offline-nsp14 and singlestream-nsp14 differ only in flags not applicable on CPU: the second
    partition shares the first one's build (no compiler call) and says so."""
    settings, defs, instance = cpu_project
    import qaic_assets.builder.service as service

    calls = []
    real = service.run_compiler
    monkeypatch.setattr(service, "run_compiler", lambda argv, **kw: calls.append(argv) or real(argv, **kw))
    materialize(defs, instance, source_key("digits"))
    materialize(defs, instance, profile_key("digits"), "bs1")
    materialize(defs, instance, binary_key("digits"), "bs1|offline-nsp14")
    assert len(calls) == 2  # calibrate + compile
    materialize(defs, instance, binary_key("digits"), "bs1|singlestream-nsp14")
    assert len(calls) == 2  # shared, not compiled

    first = latest(instance, binary_key("digits"), "bs1|offline-nsp14").metadata
    second = latest(instance, binary_key("digits"), "bs1|singlestream-nsp14").metadata
    assert second["same_build_as"].value == "bs1|offline-nsp14" and "same_build_as" not in first
    assert second["sha256"].value == first["sha256"].value
    assert "same build as `bs1|offline-nsp14`" in second["lineage"].value
    from qaic_assets.orchestration.lineage import lineage  # what `qaic-assets lineage` prints

    assert lineage(instance, "digits", "bs1|singlestream-nsp14")["binary"]["same_build_as"] == "bs1|offline-nsp14"
    # what the shared bytes cost is the build's own measurement, not a zero that was never measured
    assert first["duration_s"].value > 0 and first["peak_rss_mb"].value > 0
    assert (second["duration_s"].value, second["peak_rss_mb"].value) == (first["duration_s"].value,
                                                                         first["peak_rss_mb"].value)
    root = settings.storage_root / "digits/compiled/bs1"
    a, b = root / "offline-nsp14/elfs/programqpc.onnx", root / "singlestream-nsp14/elfs/programqpc.onnx"
    assert a.stat().st_ino != b.stat().st_ino  # a copy: two files that cannot diverge
    manifest = json.loads((root / "singlestream-nsp14/manifest.json").read_text())
    offline = json.loads((root / "offline-nsp14/manifest.json").read_text())
    assert manifest["same_build_as"] == "bs1|offline-nsp14" and manifest["argv"] != offline["argv"]

    # a real difference (another batch size) is compiled
    materialize(defs, instance, profile_key("digits"), "bs2")
    materialize(defs, instance, binary_key("digits"), "bs2|singlestream-nsp14")
    assert len(calls) == 4
    # re-materializing a shared partition with nothing changed is a cache hit, still no compiler call
    materialize(defs, instance, binary_key("digits"), "bs1|singlestream-nsp14")
    assert len(calls) == 4


def test_a_forced_rebuild_measures_accuracy_again(cpu_project, monkeypatch):
    """A cache hit reports the stored accuracy result (`cached: true`); `force: true` rebuilds and
    measures again, storing the new numbers."""
    settings, defs, instance = cpu_project
    import qaic_assets.builder.accuracy as accuracy

    compared = []
    real = accuracy.compare
    monkeypatch.setattr(accuracy, "compare", lambda *a, **kw: compared.append(a) or real(*a, **kw))
    materialize(defs, instance, source_key("digits"))
    materialize(defs, instance, profile_key("digits"), "bs1")
    runs = [materialize(defs, instance, binary_key("digits"), "bs1|offline-nsp14", force=force)
            for force in (False, False, True)]
    cached = [next(e for e in r.get_asset_check_evaluations()).metadata["cached"].value for r in runs]
    assert cached == [False, True, False] and len(compared) == 2
