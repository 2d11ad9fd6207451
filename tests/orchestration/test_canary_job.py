"""The SDK canary through Dagster (orchestration/canary.py): the `sdk_canary` job with the candidate's
root as its config, on the strict stand-in SDK. The tiny project is built with 1.18.2.0.5 (2 profiles,
3 of 6 binaries, as tests/orchestration/test_automation.py builds it); the candidate 1.19.0.7 lives at
another root. Then the promotion: the definitions rebuilt with that root as the toolchain's
`sdk_root`, `qaic_sdk` observed, the automation ticked and what it requests built (test_automation's
Ticks): exactly the built partitions, 0 compiler calls, each binary cached from the canary run."""

from __future__ import annotations

import json

import dagster as dg

from fake_sdk import make_fake_sdk, read_calls
from helpers import latest
from qaic_assets.builder.canary import BINARY as BINARY_KIND, PROFILE as PROFILE_KIND
from qaic_assets.builder.store import compile_dir
from qaic_assets.hashing import sha256_file
from qaic_assets.keys import BinaryPartition
from qaic_assets.orchestration import build_definitions
from qaic_assets.orchestration.canary import CANARY_JOB, CANARY_KEY
from qaic_assets.orchestration.keys import binary_key
from qaic_assets.orchestration.metadata import resolve
from qaic_assets.orchestration.resources import Toolchain
from test_automation import BINARY, COMPILED, PROFILE, Ticks, materialize_some

EXPECTED = {(PROFILE_KIND, "bs1"), (PROFILE_KIND, "bs2"), *((BINARY_KIND, p) for p in COMPILED)}


def compiler_calls(sdk) -> int:
    """How many times the stand-in compiler ran (its tools record theirs with a `tool` key)."""
    return sum("tool" not in call for call in read_calls(sdk))


def served(project) -> dict[str, str]:
    config = project.config
    return {p: sha256_file(compile_dir(config, "tiny", BinaryPartition.parse(p)) / "elfs" / "programqpc.bin")
            for p in COMPILED}


def run_canary_job(project, candidate) -> tuple[dg.ExecuteInProcessResult, dg.AssetMaterialization]:
    result = project.defs.resolve_job_def(CANARY_JOB).execute_in_process(
        instance=project.instance,
        run_config={"ops": {"sdk_canary": {"config": {"candidate_sdk_root": str(candidate)}}}})
    assert result.success
    (materialization,) = result.asset_materializations_for_node("sdk_canary")
    return result, materialization


def table_rows(materialization) -> dict[tuple[str, str], dict]:
    return {(r.data["kind"], r.data["partition"]): r.data for r in materialization.metadata["comparison"].value.records}


def test_canary_job_then_promotion_compiles_nothing(tiny_project, tmp_path):
    project, instance = tiny_project, tiny_project.instance
    materialize_some(project)
    before = served(project)
    candidate = make_fake_sdk(tmp_path / "candidate", ("1.19.0", "7"), tools=True)
    op = project.defs.resolve_assets_def(CANARY_KEY).op
    assert op.tags["dagster-celery/queue"] == "qaic_compile" and op.pool == "qaic_compile"  # where compiles run

    result, canary = run_canary_job(project, candidate)
    rows = table_rows(canary)
    assert set(rows) == EXPECTED  # exactly what is built; bs4 and the 3 unbuilt binaries are not
    assert all(r["status"] == "built" and r["candidate_sdk_version"] == "1.19.0.7" for r in rows.values())
    for row in rows.values():
        assert isinstance(row["candidate_size_bytes"], int) and isinstance(row["candidate_compile_s"], float)
        assert isinstance(row["current_peak_rss_mb"], float) and isinstance(row["candidate_peak_rss_mb"], float)
    assert all(rows[(BINARY_KIND, p)]["candidate_fits_target"] is True for p in COMPILED)
    meta = canary.metadata
    assert (meta["partitions"].value, meta["succeeded"].value, meta["failed"].value) == (5, 5, 0)
    assert isinstance(meta["size_change_pct_mean"].value, float)  # plotted across canary runs
    assert "failures" not in meta and "not applicable" in meta["accuracy"].value
    report = json.loads(resolve(meta, "report").read_text())
    candidate_sha = {r["partition"]: r["candidate_sha256"] for r in report["partitions"]}
    assert served(project) == before  # still the 1.18.2.0.5 binaries
    assert all(latest(instance, binary_key("tiny"), p).metadata["sdk_version"].value == "1.18.2.0.5" for p in COMPILED)

    # promotion: sdk_root is the candidate's root
    project._defs = build_definitions(project.config, resources={
        "toolchain": Toolchain(backend="qaic", sdk_root=str(candidate))})
    calls = (compiler_calls(project.sdk), compiler_calls(candidate))
    ticks = Ticks(project)
    assert ticks.tick() == {}
    assert project.observe_sdk().tags["dagster/data_version"] == "1.19.0.7"
    assert ticks.tick() == {PROFILE: {"bs1", "bs2"}}
    ticks.run({PROFILE: {"bs1", "bs2"}})
    assert ticks.tick() == {BINARY: set(COMPILED)}
    ticks.run({BINARY: set(COMPILED)})
    assert ticks.tick() == {}
    assert (compiler_calls(project.sdk), compiler_calls(candidate)) == calls  # 0 compiler calls
    for partition in COMPILED:
        binary = latest(instance, binary_key("tiny"), partition).metadata
        assert binary["cached"].value is True and binary["built_by_run"].value == result.run_id
        assert binary["from_canary"].value.startswith(f"built by the SDK canary run {result.run_id} for ")
        assert binary["sdk_version"].value == "1.19.0.7" and binary["sha256"].value == candidate_sha[partition]
        assert f"built by run [{result.run_id[:8]}]" in binary["lineage"].value  # "(reused by run ...)"


def test_a_failed_candidate_build_is_shown_and_the_served_binary_kept(tiny_project, tmp_path):
    """A candidate whose compiler dropped -sdp-cluster-sizes (set for offline targets): those rows
    fail with its message, the rest is built, the run succeeds (the comparison is the product)."""
    project = tiny_project
    materialize_some(project)
    before = served(project)
    candidate = make_fake_sdk(tmp_path / "candidate", ("1.19.0", "7"))
    grammar = candidate / "lib" / "python" / "fake_flags.py"
    grammar.write_text(grammar.read_text() + "\nALL_FLAGS = ALL_FLAGS - {'sdp-cluster-sizes'}\n"
                       "COMPILE_FLAGS = COMPILE_FLAGS - {'sdp-cluster-sizes'}\n")
    _, canary = run_canary_job(project, candidate)
    rows = table_rows(canary)
    assert set(rows) == EXPECTED
    failed = {key for key, row in rows.items() if row["status"] == "failed"}
    assert failed == {(BINARY_KIND, "bs1|offline-nsp14"), (BINARY_KIND, "bs2|offline-nsp14")}
    assert all(rows[key]["reason"].endswith("ERROR: unknown flag -sdp-cluster-sizes") for key in failed)
    assert canary.metadata["failed"].value == 2
    assert "unknown flag -sdp-cluster-sizes" in canary.metadata["failures"].value
    assert served(project) == before


def test_declared_where_the_sdk_builds_and_refused_on_the_cpu_compiler(tiny_project, tmp_path):
    project = tiny_project
    cpu = build_definitions(project.config.model_copy(update={"backend": "cpu"}))
    assert CANARY_JOB not in {job.name for job in cpu.jobs}
    # `auto` on a host without the SDK builds with the CPU compiler: the run says why it cannot canary
    auto = build_definitions(project.config.model_copy(update={"backend": "auto", "sdk_root": tmp_path / "none"}))
    result = auto.resolve_job_def(CANARY_JOB).execute_in_process(
        instance=project.instance, raise_on_error=False,
        run_config={"ops": {"sdk_canary": {"config": {"candidate_sdk_root": str(project.sdk)}}}})
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert "set `backend: qaic`" in failure.step_failure_data.error.message
