"""Work not done twice.

1. Identical CPU builds: on the CPU reference compiler, partitions whose *applied* command is the
   same (their argv differ only in flags that steer the AI 100 hardware and are not applicable on
   CPU, e.g. offline vs singlestream at the same nsp and batch) produce byte-identical binaries. The
   second one copies the first one's files instead of compiling again; its manifest says
   `same_build_as`. A copy, never a hard link: two partitions sharing an inode would share every later
   edit of it, and a rebuild of one would leave the other with bytes its record does not name
   (`copy_file_range` lets copy-on-write file systems make the copy a reflink). The compiler's own JSON
   record in the copied directory still names the command that produced the bytes.
2. Up-to-date without hashing: a manifest records the stat key (inode, size, mtime, ctime) of its
   output and inputs, so "nothing changed" can be decided from the manifests and a few `stat` calls,
   before any run is launched (`fresh_build`). The ctime is what catches a file rewritten in place
   with its mtime put back (any write, `utime` or new link sets it to the clock's time, and no call
   sets it back). The build itself still verifies by sha256 when it runs
   (builder/manifest.cached_manifest): a manifest with an older 3-field stat key is never fresh, and
   its run decides by sha256.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from qaic_assets import files
from qaic_assets.builder.manifest import MANIFEST_NAME, cache_key, read_manifest
from qaic_assets.hashing import hash_json, sha256_file
from qaic_assets.qaic.flags import APPLIED, FLAGS, FlagError, parse_argv

#: flags that name where the output goes: never part of what makes two builds the same
_OUTPUT_FLAGS = {"aic-binary-dir"}


def stat_key(path: str | Path) -> list[int] | None:
    """(inode, size, mtime_ns, ctime_ns) of a file, or None when it is missing. An in-place write with
    the mtime put back changes the ctime; so does renaming or linking the file itself (renaming the
    directory that holds it does not). A key recorded with three fields never matches: not fresh."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _list_stat(list_file: str | Path) -> list | None:
    """Stat keys of an input list and of every raw file it names (a calibration set)."""
    from qaic_assets.qaic.formats.rawdata import RawDataError, read_input_list

    try:
        listed = [f for line in read_input_list(list_file) for f in line]
    except (OSError, RawDataError):
        return None
    keys = [stat_key(list_file), *(stat_key(f) for f in listed)]
    return None if None in keys else keys


def input_stat(spec) -> list | None:
    """The stat key of an input: a file (`path`), a list file and the files it names (`list`), or a
    group of files (`files`: flag -> file); `[]` for an input that is no file (a setting)."""
    if not isinstance(spec, dict):
        return None
    if "path" in spec:
        return stat_key(spec["path"])
    if "list" in spec:
        return _list_stat(spec["list"])
    parts = [v for v in spec.values() if isinstance(v, dict) and ("path" in v or "list" in v)]
    keys = [input_stat(v) for v in parts]
    return None if None in keys else keys


def input_stats(inputs: dict) -> dict:
    """The stat key of every input that names files."""
    return {name: input_stat(spec) for name, spec in inputs.items()}


def applied_argv(argv: list[str]) -> list[str] | None:
    """The argv as the CPU compiler applies it: not-applicable flags (and values) and the output dir
    dropped. None when the argv does not parse (then nothing is shared)."""
    try:
        parsed = parse_argv(argv[1:])
    except FlagError:
        return None
    kept = []
    for name, value in parsed.values.items():
        if name in _OUTPUT_FLAGS or FLAGS[name].cpu_status(value) != APPLIED:
            continue
        if name == "onnx-define-symbol":
            kept += [f"-onnx-define-symbol={k},{n}" for k, n in sorted(parsed.symbols.items())]
        elif name in parsed.repeats:
            kept += [f"-{name}={v}" for v in parsed.repeats[name]]
        else:
            kept.append(f"-{name}" if value is None else f"-{name}={value}")
    return [argv[0], *kept]


def applied_key(argv: list[str], compiler: tuple[str, str], inputs: dict) -> str | None:
    applied = applied_argv(argv)
    return None if applied is None else hash_json({"applied_argv": applied, "compiler": list(compiler),
                                                   "inputs": inputs})


def find_same_build(siblings: dict[str, Path], key: str, output: str) -> tuple[str, dict] | None:
    """(partition, manifest) of a sibling output dir built with the same applied key (its own build,
    not itself a share), whose output is still the recorded file."""
    for partition, directory in siblings.items():
        manifest = read_manifest(directory)
        if not manifest or manifest.get("applied_key") != key or manifest.get("same_build_as"):
            continue
        if stat_key(directory / output) == manifest["output"].get("stat"):
            return partition, manifest
    return None


def copy_bytes(source: Path, target: Path) -> None:
    """Copy a file into a new inode of its own: `copy_file_range` (a reflink where the file system can
    make one, an in-kernel copy elsewhere), else a plain copy; the mode bits follow."""
    with files.open_regular(source) as src, open(target, "xb") as dst:
        try:
            while os.copy_file_range(src.fileno(), dst.fileno(), 1 << 30):
                pass
        except (AttributeError, OSError):  # no copy_file_range here (EXDEV, EINVAL, ENOSYS): copy
            src.seek(0)
            dst.seek(0)
            dst.truncate()
            shutil.copyfileobj(src, dst, 1 << 20)
    shutil.copymode(source, target)


def copy_build(source_dir: Path, tmp: Path, output: str, expected_sha256: str, log: logging.Logger) -> bool:
    """Copy every file of `source_dir` but its manifest into `tmp` (each its own inode, see the module
    docstring); True when the copied output has the expected sha256 (else `tmp` is emptied and False)."""
    try:
        for path in sorted(source_dir.rglob("*")):
            rel = path.relative_to(source_dir)
            if path.is_dir() or rel.name == MANIFEST_NAME or rel.parts[0].startswith("."):
                continue
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            copy_bytes(path, target)
        if sha256_file(tmp / output) == expected_sha256:
            return True
    except OSError as exc:  # the sibling was replaced meanwhile: compile instead
        log.info(f"cannot share {source_dir}: {exc}")
    for child in list(tmp.iterdir()):
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    return False


def fresh_build(directory: Path, output: str, argv: list[str], compiler: tuple[str, str],
                input_paths: dict[str, str] | None = None) -> dict | None:
    """The manifest of `directory` when its build is up to date without hashing anything: same argv
    and compiler, every recorded input (file, or list file and the files it names) still has its
    recorded stat key, so its sha256 is the recorded one; `input_paths` (name -> path the build would
    read now) match the recorded ones; the output still has its recorded stat key (its ctime too: an
    edit in place with the mtime put back is seen). None otherwise: then a run decides, by sha256."""
    manifest = read_manifest(directory)
    if not manifest or "stat" not in manifest.get("output", {}) or manifest.get("argv") != argv:
        return None
    inputs = manifest.get("inputs", {})
    stats = manifest.get("input_stats", {})
    if any(stats.get(name) is None or input_stat(spec) != stats[name] for name, spec in inputs.items()):
        return None
    for name, path in (input_paths or {}).items():
        spec = inputs.get(name, {})
        if str(path) not in (spec.get("path"), spec.get("list")):
            return None
    if manifest.get("cache_key") != cache_key(argv, compiler, inputs):
        return None
    if stat_key(directory / output) != manifest["output"]["stat"]:
        return None
    return manifest
