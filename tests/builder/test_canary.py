"""The SDK canary in the build layer (builder/canary.py, builder/cache.py), on the strict stand-in SDK:
a tiny project built with 1.18.2.0.5, a candidate SDK root with 1.19.0.7 elsewhere. The canary builds
exactly the built partitions into the content-addressed cache and leaves the served outputs alone;
building with `sdk_root` set to the candidate afterwards (the promotion) copies those builds: no
compiler call. Also: a candidate that rejects a flag, a corrupt cache entry, `canary --clean`, the CPU
backend's refusal, and the CLI in a subprocess. (Through Dagster: tests/orchestration/test_canary_job.py,
so named since two test files may not share a basename here.)"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_tiny_project
from fake_sdk import make_fake_sdk, read_calls
from qaic_assets.builder import cache, service
from qaic_assets.builder.canary import ACCURACY_NOT_APPLICABLE, BINARY, PROFILE, Target, built_partitions, run_canary, \
    write_report
from qaic_assets.builder.manifest import read_manifest
from qaic_assets.builder.service import BuildError
from qaic_assets.builder.store import calibration_dir, compile_dir
from qaic_assets.hashing import sha256_file
from qaic_assets.keys import BinaryPartition

BUILT = ["bs1|offline-nsp14", "bs2|offline-nsp14", "bs2|singlestream-nsp14"]  # 3 of the 4 binaries
EXPECTED = {(PROFILE, "bs1"), (PROFILE, "bs2"), *((BINARY, p) for p in BUILT)}
QAIC_ASSETS = Path(sys.executable).with_name("qaic-assets")


def compiler_calls(sdk: Path) -> list[dict]:
    """The stand-in compiler's invocations (its tools record theirs with a `tool` key)."""
    return [c for c in read_calls(sdk) if "tool" not in c]


def build(config, binaries=BUILT) -> None:
    for batch in sorted({BinaryPartition.parse(p).batch for p in binaries}):
        service.calibrate_profile(config, "tiny", batch)
    for partition in binaries:
        service.compile_binary(config, "tiny", BinaryPartition.parse(partition))


def served(config) -> dict[str, str]:
    """sha256 of every served output, by partition."""
    out = {f"bs{b}": sha256_file(calibration_dir(config, "tiny", b) / "profile.yaml") for b in (1, 2)}
    return out | {p: sha256_file(compile_dir(config, "tiny", BinaryPartition.parse(p)) / "elfs" / "programqpc.bin")
                  for p in BUILT}


def rejecting(root: Path, flag: str) -> Path:
    """A candidate SDK whose compiler no longer knows `flag` (an SDK that dropped it): the stand-in's
    grammar (lib/python/fake_flags.py in its root) without it."""
    grammar = root / "lib" / "python" / "fake_flags.py"
    grammar.write_text(grammar.read_text() + f"\nALL_FLAGS = ALL_FLAGS - {{{flag!r}}}\n"
                       f"COMPILE_FLAGS = COMPILE_FLAGS - {{{flag!r}}}\n")
    return root


@pytest.fixture
def project(tmp_path, monkeypatch):
    """The tiny project (batch 1, 2 x offline, singlestream) with 2 profiles and 3 binaries built."""
    for name in ("QAIC_SDK_ROOT", "QAIC_ASSETS_STORAGE_ROOT", "FAKE_QAIC_LOG", "FAKE_QAIC_EXIT"):
        monkeypatch.delenv(name, raising=False)
    project = write_tiny_project(tmp_path / "project", batch=[1, 2])
    build(project.config)
    return project


def test_canary_builds_exactly_the_built_partitions_and_serves_nothing_new(project, tmp_path):
    config = project.config
    before = served(config)
    candidate = make_fake_sdk(tmp_path / "candidate", ("1.19.0", "7"), tools=True, devices=1)
    assert set(built_partitions(config)) == {Target(kind, "tiny", p) for kind, p in EXPECTED}

    rows = run_canary(config, candidate, run_id="canary-1")
    assert {(r["kind"], r["partition"]) for r in rows} == EXPECTED
    assert [r["kind"] for r in rows] == [PROFILE] * 2 + [BINARY] * 3  # profiles first: a binary loads one
    for row in rows:
        assert row["succeeded"] and row["status"] == "built" and row["message"] is None
        assert (row["current_sdk_version"], row["candidate_sdk_version"]) == ("1.18.2.0.5", "1.19.0.7")
        for side in ("current", "candidate"):
            assert isinstance(row[f"{side}_size_bytes"], int) and row[f"{side}_size_bytes"] > 0
            assert isinstance(row[f"{side}_compile_s"], float)
            assert isinstance(row[f"{side}_peak_rss_mb"], float)
        assert isinstance(row["size_change_pct"], float) and not row["same_output"]
        assert row["accuracy"] == ACCURACY_NOT_APPLICABLE
        entry = Path(row["cache_entry"])
        assert entry.parent == cache.cache_root(config) and read_manifest(entry)["canary"]["run_id"] == "canary-1"
    binaries = [r for r in rows if r["kind"] == BINARY]
    # qaic-qpc validate and qaic-runner: the candidate has them (and a card), the current SDK does not
    # (so: not measured, saying why)
    assert all(r["candidate_fits_target"] is True and r["current_fits_target"] is None for r in binaries)
    assert all(isinstance(r["candidate_inferences_per_s"], float) and r["current_inferences_per_s"] is None
               for r in binaries)
    assert all("qaic-qpc is not installed" in r["tool_notes"] for r in binaries)
    assert {r["partition"]: r["candidate_nsp_required"] for r in binaries} == \
        {"bs1|offline-nsp14": 4, "bs2|offline-nsp14": 4, "bs2|singlestream-nsp14": 8}
    assert served(config) == before  # the current builds stay what is served
    assert read_manifest(compile_dir(config, "tiny", BinaryPartition.parse(BUILT[0])))["sdk_version"] == "1.18.2.0.5"
    calls = compiler_calls(candidate)
    assert len(calls) == 5 and all(c["argv"][0] == str(candidate / "exec" / "qaic-exec") for c in calls)

    report = json.loads(write_report(config, candidate, rows, run_id="canary-1").read_text())
    assert report["candidate"] == {"sdk_root": str(candidate), "apps_sdk_version": "1.19.0.7"}
    assert report["summary"]["partitions"] == 5 and report["summary"]["failed"] == 0
    assert report["cache"]["entries"] == 5 and "canary --clean" in report["cache"]["remove"]

    again = run_canary(config, candidate, run_id="canary-2")  # the cache has them: nothing compiles
    assert {r["status"] for r in again} == {"reused"} and len(compiler_calls(candidate)) == 5
    assert all("canary run canary-1" in r["note"] for r in again)


def test_promotion_copies_the_canarys_builds_without_a_compiler_call(project, tmp_path):
    """`sdk_root` set to the candidate: every build of a built partition is a cache hit, with the
    canary's bytes and record, and the entry stays (another host may promote too)."""
    candidate = make_fake_sdk(tmp_path / "candidate", ("1.19.0", "7"))
    rows = {r["partition"]: r for r in run_canary(project.config, candidate, run_id="canary-1")}
    n_calls = len(compiler_calls(candidate))
    promoted = project.config.model_copy(update={"sdk_root": candidate})
    build(promoted)
    assert len(compiler_calls(candidate)) == n_calls
    assert served(promoted) == {p: r["candidate_sha256"] for p, r in rows.items()}
    for partition in BUILT:
        manifest = read_manifest(compile_dir(promoted, "tiny", BinaryPartition.parse(partition)))
        assert manifest["sdk_version"] == "1.19.0.7" and manifest["run_id"] == "canary-1"
        assert manifest["cached_from"]["canary"] == {"run_id": "canary-1", "candidate_root": str(candidate)}
        assert manifest["output"]["path"] == str(compile_dir(promoted, "tiny", BinaryPartition.parse(partition))
                                                 / "elfs" / "programqpc.bin")
        assert manifest["argv"][0] == str(candidate / "exec" / "qaic-exec")
    assert cache.usage(promoted)[0] == 5
    build(promoted)  # and then the partition's own cache answers, as before
    assert len(compiler_calls(candidate)) == n_calls


def test_a_candidate_that_rejects_a_flag_fails_those_partitions_only(project, tmp_path):
    """An SDK that dropped -sdp-cluster-sizes (the offline recipe sets it): the offline binaries fail
    with the compiler's message, the profiles and singlestream build, nothing served changes."""
    before = served(project.config)
    candidate = rejecting(make_fake_sdk(tmp_path / "candidate", ("1.19.0", "7")), "sdp-cluster-sizes")
    rows = {(r["kind"], r["partition"]): r for r in run_canary(project.config, candidate, run_id="canary-1")}
    assert set(rows) == EXPECTED
    failed = {key for key, r in rows.items() if not r["succeeded"]}
    assert failed == {(BINARY, "bs1|offline-nsp14"), (BINARY, "bs2|offline-nsp14")}
    for key in failed:
        assert rows[key]["status"] == "failed" and "unknown flag -sdp-cluster-sizes" in rows[key]["message"]
        assert rows[key]["candidate_size_bytes"] is None and rows[key]["current_size_bytes"] > 0
    assert rows[(BINARY, "bs2|singlestream-nsp14")]["status"] == "built"
    assert served(project.config) == before


def test_a_corrupt_cache_entry_is_removed_and_the_build_compiles(project, tmp_path, caplog):
    candidate = make_fake_sdk(tmp_path / "candidate", ("1.19.0", "7"))
    rows = {r["partition"]: r for r in run_canary(project.config, candidate, run_id="canary-1")}
    entry = Path(rows["bs2|singlestream-nsp14"]["cache_entry"])
    binary = entry / "elfs" / "programqpc.bin"
    binary.write_bytes(binary.read_bytes()[:-1] + b"X")  # one byte flipped on disk
    n_calls = len(compiler_calls(candidate))
    promoted = project.config.model_copy(update={"sdk_root": candidate})
    with caplog.at_level(logging.WARNING, logger="qaic_assets.builder"):
        build(promoted)
    assert len(compiler_calls(candidate)) == n_calls + 1  # only that binary compiles
    assert "no longer has the sha256 its manifest records; removed" in caplog.text
    assert not entry.exists()
    partition = compile_dir(promoted, "tiny", BinaryPartition.parse("bs2|singlestream-nsp14"))
    assert sha256_file(partition / "elfs" / "programqpc.bin") == rows["bs2|singlestream-nsp14"]["candidate_sha256"]
    assert "cached_from" not in read_manifest(partition)


def test_clean_removes_the_entries_and_nothing_served(project, tmp_path):
    candidate = make_fake_sdk(tmp_path / "candidate", ("1.19.0", "7"))
    run_canary(project.config, candidate, run_id="canary-1")
    before = served(project.config)
    entries, size = cache.usage(project.config)
    assert entries == 5 and size > 0
    assert cache.clean(project.config, logging.getLogger("test")) == (5, size)
    assert cache.usage(project.config) == (0, 0) and served(project.config) == before


def test_the_cpu_backend_and_a_root_without_a_compiler_are_refused(tmp_path):
    cpu = write_tiny_project(tmp_path / "cpu", batch=[1], backend="cpu").config
    candidate = make_fake_sdk(tmp_path / "candidate", ("1.19.0", "7"))
    with pytest.raises(BuildError, match="set `backend: qaic`") as refused:
        run_canary(cpu, candidate, run_id="canary-1")
    assert "CPU reference compiler (`backend: cpu`" in str(refused.value)
    qaic = write_tiny_project(tmp_path / "qaic", batch=[1]).config
    with pytest.raises(BuildError, match="neither qaic-compile nor qaic-exec"):
        run_canary(qaic, tmp_path / "empty", run_id="canary-1")


def test_cli_prints_the_table_and_the_report_and_exits_1_on_a_failed_build(project, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QAIC_", "FAKE_QAIC"))}
    env |= {"QAIC_ASSETS_CONFIG": str(project.config_path), "DAGSTER_HOME": str(project.home), "COLUMNS": "200"}
    before = served(project.config)

    def canary(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(QAIC_ASSETS), "canary", *args], env=env, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)

    good = make_fake_sdk(tmp_path / "good", ("1.19.0", "7"))
    done = canary("--sdk", str(good))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bs2|singlestream-nsp14" in done.stdout and "1.19.0.7" in done.stdout
    report = Path(done.stdout.split("report: ", 1)[1].split()[0])
    assert {(r["kind"], r["partition"]) for r in json.loads(report.read_text())["partitions"]} == EXPECTED

    bad = rejecting(make_fake_sdk(tmp_path / "bad", ("1.19.0", "8")), "sdp-cluster-sizes")
    done = canary("--sdk", str(bad))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 of 5 candidate builds failed" in done.stdout and "unknown flag -sdp-cluster-sizes" in done.stdout

    done = canary("--clean")
    assert done.returncode == 0 and "removed 8 cache entries" in done.stdout, done.stdout + done.stderr
    assert served(project.config) == before
