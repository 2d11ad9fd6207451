"""Tampering and foreign writers (issue 27, docs/RELIABILITY.md): a built binary edited in place with its
mtime put back, identical builds of two partitions, an SDK root that is a symlink switched by an
installer while a compile waits or runs, and a compiler that writes outside its output folder.

Each test sets up a tiny project (tests/conftest.py `tiny_project`: the strict fake SDK, or the CPU
reference compiler) and meets the case as a user would: through Dagster materializations and the
demo's up-to-date decision (orchestration/up_to_date.py).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from fake_sdk import read_calls, set_fake_sdk_version
from helpers import failure_message, latest, run_messages, wrap_compiler
from qaic_assets.builder.outputs import output_lock
from qaic_assets.builder.store import compile_dir
from qaic_assets.hashing import sha256_file
from qaic_assets.keys import BinaryPartition
from qaic_assets.orchestration.keys import binary_key, profile_key, source_key
from qaic_assets.orchestration.up_to_date import Step, UpToDate

PARTITION = "bs1|offline-nsp14"
TWIN = "bs1|singlestream-nsp14"  # the same applied command on the CPU compiler


def build(project, *partitions: str) -> None:
    """The source, the bs1 profile and the given binary partitions."""
    for key, partition in ((source_key("tiny"), None), (profile_key("tiny"), "bs1"),
                           *((binary_key("tiny"), p) for p in partitions)):
        result = project.materialize(key, partition)
        assert result.success, failure_message(result)


def materialize(project, partition: str = PARTITION, *, force: bool = False):
    asset = project.defs.resolve_asset_graph().get(binary_key("tiny")).assets_def
    run_config = {"ops": {asset.op.name: {"config": {"force": True}}}} if force else None
    return dg.materialize([asset], instance=project.instance, partition_key=partition,
                          selection=[binary_key("tiny")], run_config=run_config, raise_on_error=False)


def out_dir(project, partition: str = PARTITION) -> Path:
    return compile_dir(project.config, "tiny", BinaryPartition.parse(partition))


def manifest_of(project, partition: str = PARTITION) -> dict:
    return json.loads((out_dir(project, partition) / "manifest.json").read_text())


def compiles(sdk: Path) -> list[dict]:
    """The fake SDK's compile calls (not calibrations) recorded in <sdk>/calls.jsonl."""
    return [c for c in read_calls(sdk) if any(a.startswith("-aic-binary-dir=") for a in c["args"])]


def edit_in_place(path: Path) -> None:
    """Rewrite the last 64 bytes of `path` in place (same inode, same size) and put its mtime back."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(-64, os.SEEK_END)
        tail = f.read()
        f.seek(-64, os.SEEK_END)
        f.write(bytes(b ^ 0xFF for b in tail))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = path.stat()
    assert (now.st_ino, now.st_size, now.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)


def leftovers(project) -> list[str]:
    store = project.root / "store"
    return [str(p.relative_to(store)) for p in store.rglob(".*")]


# ================================================================================================
# A built binary edited in place
# ================================================================================================


def test_a_binary_edited_in_place_with_its_mtime_put_back_is_not_up_to_date_and_is_rebuilt(tiny_project):
    """The demo's up-to-date decision must not trust size and mtime alone: an in-place edit changes
    the ctime, so the step is not up to date; its run finds the sha256 changed and recompiles."""
    project = tiny_project
    build(project, PARTITION)
    graph = project.defs.resolve_asset_graph()
    versions = {k: graph.get(k).code_version for k in (source_key("tiny"), profile_key("tiny"), binary_key("tiny"))}

    def up_to_date() -> bool:
        return UpToDate(project.config, project.instance, versions).up_to_date(
            Step(binary_key("tiny"), "tiny", PARTITION))

    binary = out_dir(project) / "elfs" / "programqpc.bin"
    good = binary.read_bytes()
    assert up_to_date()
    before = len(compiles(project.sdk))

    edit_in_place(binary)
    assert not up_to_date(), "an in-place edit with the mtime put back was reported up to date"
    result = materialize(project)
    assert result.success, failure_message(result)
    assert len(compiles(project.sdk)) == before + 1  # recompiled, not served from the cache
    manifest = manifest_of(project)
    metadata = latest(project.instance, binary_key("tiny"), PARTITION).metadata
    assert manifest["run_id"] == result.run_id
    assert binary.read_bytes() == good  # the fake compiler is deterministic
    assert sha256_file(binary) == manifest["output"]["sha256"] == metadata["sha256"].value
    assert up_to_date()


@pytest.mark.project(backend="cpu")
def test_identical_builds_of_two_partitions_are_two_files_that_cannot_diverge(tiny_project):
    """offline and singlestream at the same nsp and batch are one build on the CPU compiler: the twin
    shares it ("same build as") as a copy with its own inode, so an edit of one partition's binary
    leaves the other's bytes equal to its recorded sha256, and a rebuild of one cannot leave the other
    with bytes its record does not name."""
    project = tiny_project
    build(project, PARTITION, TWIN)
    first, twin = manifest_of(project), manifest_of(project, TWIN)
    assert twin["same_build_as"] == PARTITION and "same_build_as" not in first
    assert twin["run_id"] != first["run_id"] and twin["log_tail"][0].startswith(
        f"same build as {PARTITION} (no compiler call")
    assert twin["duration_s"] == first["duration_s"]  # what the shared bytes cost: the build's own figure
    a = out_dir(project) / "elfs" / "programqpc.onnx"
    b = out_dir(project, TWIN) / "elfs" / "programqpc.onnx"
    assert a.read_bytes() == b.read_bytes()
    assert a.stat().st_ino != b.stat().st_ino, "the twin shares the first build's inode"

    edit_in_place(a)
    assert sha256_file(b) == twin["output"]["sha256"] == \
        latest(project.instance, binary_key("tiny"), TWIN).metadata["sha256"].value
    # the edited one is rebuilt by its next run; the twin is a cache hit with the bytes it records
    result = materialize(project)
    assert result.success, failure_message(result)
    assert manifest_of(project)["run_id"] == result.run_id and sha256_file(a) == first["output"]["sha256"]
    result = materialize(project, TWIN)
    assert result.success, failure_message(result)
    assert latest(project.instance, binary_key("tiny"), TWIN).metadata["cached"].value is True
    assert sha256_file(b) == manifest_of(project, TWIN)["output"]["sha256"]

    edit_in_place(b)  # and the other way round
    assert sha256_file(a) == manifest_of(project)["output"]["sha256"]


# ================================================================================================
# The SDK root is a symlink an installer switches
# ================================================================================================

OLD, NEW = "1.18.2.0.5", "1.19.0.7"


def point(link: Path, target: Path) -> None:
    """Switch the symlink `link` to `target` atomically, as an installer does."""
    new = link.with_name(f".{link.name}.new")
    new.symlink_to(target)
    os.replace(new, link)


def two_sdk_roots(project) -> tuple[Path, Path]:
    """The fake SDK installed twice (OLD and NEW); the configured sdk_root becomes a symlink to OLD."""
    old, new = project.root / f"qti-aic-{OLD}", project.root / f"qti-aic-{NEW}"
    project.sdk.rename(old)
    shutil.copytree(old, new)
    set_fake_sdk_version(new, "1.19.0", "7")
    point(project.sdk, old)
    return old, new


def header(binary: Path) -> dict:
    """The fake compiler's header: the SDK version that really compiled the binary."""
    return json.loads(binary.read_bytes().split(b"\n")[1])


def test_the_sdk_recorded_is_the_one_that_ran_when_the_root_is_switched_during_the_lock_wait(tiny_project):
    """The compile starts with sdk_root -> OLD, waits for the output lock (held here), and the
    installer switches the symlink to NEW meanwhile: NEW compiles, so the manifest and the
    materialization record NEW. Switched back, the binary is not served as OLD's: it is rebuilt."""
    project = tiny_project
    old, new = two_sdk_roots(project)
    build(project)  # source and profile, by OLD
    final = out_dir(project)
    box: dict = {}
    with output_lock(final, 60):
        thread = threading.Thread(target=lambda: box.update(result=materialize(project)))
        thread.start()

        def waiting() -> bool:
            runs = project.instance.get_runs(dg.RunsFilter(job_name="__ephemeral_asset_job__"), limit=1)
            return bool(runs) and any("waiting for" in m for m in run_messages(project, runs[0].run_id)) \
                and not any(c for c in compiles(old) + compiles(new))

        deadline = time.monotonic() + 120  # a guard against a hang, not a timing assertion
        while not waiting():
            assert thread.is_alive() and time.monotonic() < deadline, "the compile did not wait for the lock"
            time.sleep(0.05)
        point(project.sdk, new)
    thread.join(120)
    result = box["result"]
    assert result.success, failure_message(result)
    assert compiles(old) == [] and len(compiles(new)) == 1  # NEW ran the compile
    binary = final / "elfs" / "programqpc.bin"
    manifest = manifest_of(project)
    metadata = latest(project.instance, binary_key("tiny"), PARTITION).metadata
    assert header(binary)["sdk_version"] == NEW
    assert manifest["sdk_version"] == manifest["toolchain"]["apps_version"] == NEW
    assert metadata["sdk_version"].value == NEW
    assert f"Apps SDK `{NEW}`" in metadata["lineage"].value

    point(project.sdk, old)  # switched back: OLD's build is another build
    result = materialize(project)
    assert result.success, failure_message(result)
    assert len(compiles(old)) == 1 and manifest_of(project)["sdk_version"] == OLD == header(binary)["sdk_version"]
    assert latest(project.instance, binary_key("tiny"), PARTITION).metadata["cached"].value is False


def test_an_sdk_switched_while_the_compiler_runs_fails_the_build_naming_both_versions(tiny_project):
    """The installer switches sdk_root from OLD to NEW while OLD's compiler runs: which SDK built the
    output cannot be told, so the step fails naming the root and both versions, and the previous
    binary, manifest and metadata are kept."""
    project = tiny_project
    old, new = two_sdk_roots(project)
    build(project, PARTITION)
    final = out_dir(project)
    before = {p: p.read_bytes() for p in final.rglob("*") if p.is_file()}
    meta_before = latest(project.instance, binary_key("tiny"), PARTITION).metadata
    wrap_compiler(old, f"new = {str(project.sdk.with_name('.sdk.new'))!r}\n"
                       f"os.symlink({str(new)!r}, new)\nos.replace(new, {str(project.sdk)!r})\n"
                       "sys.exit(subprocess.call([REAL, *sys.argv[1:]]))\n")
    result = materialize(project, force=True)
    message = failure_message(result)
    for needle in (str(project.sdk), OLD, NEW, "rerun once the SDK installation is finished"):
        assert needle in message, message
    assert {p: p.read_bytes() for p in final.rglob("*") if p.is_file()} == before
    assert latest(project.instance, binary_key("tiny"), PARTITION).metadata == meta_before
    assert leftovers(project) == []


# ================================================================================================
# A compiler that writes outside its output folder
# ================================================================================================


def test_what_a_compiler_writes_beside_its_output_folder_is_removed_or_reported(tiny_project):
    """A compiler that writes `../stray.txt` and `../stray-dir/` (relative to its working directory)
    leaves nothing of them in the storage root; one that writes two levels up, into the directory the
    partitions share, cannot be told from another writer's file there: it is kept and named in the
    step's log and metadata."""
    project = tiny_project
    build(project)
    wrap_compiler(project.sdk, "open('../stray.txt', 'w').write('stray')\n"
                               "os.makedirs('../stray-dir/sub', exist_ok=True)\n"
                               "open('../stray-dir/sub/x', 'w').write('stray')\n"
                               "open('../../far-stray.txt', 'w').write('stray')\n"
                               "sys.exit(subprocess.call([REAL, *sys.argv[1:]]))\n")
    result = materialize(project)
    assert result.success, failure_message(result)
    store = project.root / "store"
    assert sorted(p.name for p in store.rglob("*stray*")) == ["far-stray.txt"]
    far = out_dir(project).parent / "far-stray.txt"
    assert far.is_file()
    assert leftovers(project) == []
    warnings = [m for m in run_messages(project, result.run_id) if "outside its output directory" in m]
    assert warnings and "stray.txt" in warnings[0] and "stray-dir" in warnings[0] and str(far) in warnings[0]
    strays = latest(project.instance, binary_key("tiny"), PARTITION).metadata["stray_outputs"].value
    assert strays == manifest_of(project)["strays"]
    assert strays["left"] == [str(far)] and sorted(strays["removed"]) == ["../stray-dir", "../stray.txt"]
