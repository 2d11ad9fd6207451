"""Work not done twice.

1. Identical CPU builds: on the CPU reference compiler, partitions whose *applied* command is the
   same (their argv differ only in flags that steer the AI 100 hardware and are not applicable on
   CPU, e.g. offline vs singlestream at the same nsp and batch) produce byte-identical binaries. The
   second one links the first one's files instead of compiling again; its manifest says
   `same_build_as`. The compiler's own JSON record in the shared directory still names the command
   that produced the bytes.
2. Up-to-date without hashing: a manifest records the stat key (inode, size, mtime) of its output
   and inputs, so "nothing changed" can be decided from the manifests and a few `stat` calls, before
   any run is launched (`fresh_build`). The build itself still verifies by sha256 when it runs.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from qaic_assets.build.manifest import MANIFEST_NAME, cache_key, read_manifest
from qaic_assets.hashing import hash_json, sha256_file
from qaic_assets.qaic.flags import APPLIED, FLAGS, FlagError, parse_argv

#: flags that name where the output goes: never part of what makes two builds the same
_OUTPUT_FLAGS = {"aic-binary-dir"}


def stat_key(path: str | Path) -> list[int] | None:
    """(inode, size, mtime_ns) of a file, or None when it is missing. A hard link does not change it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def input_stats(inputs: dict) -> dict:
    """The stat key of every input that names a file (`path`)."""
    return {name: stat_key(spec["path"]) for name, spec in inputs.items() if isinstance(spec, dict) and "path" in spec}


def applied_argv(argv: list[str]) -> list[str] | None:
    """The argv as the CPU compiler applies it: not-applicable flags and the output dir dropped. None
    when the argv does not parse (then nothing is shared)."""
    try:
        parsed = parse_argv(argv[1:])
    except FlagError:
        return None
    kept = [a for a in parsed.argv() if a.lstrip("-").split("=", 1)[0] not in _OUTPUT_FLAGS
            and FLAGS[a.lstrip("-").split("=", 1)[0]].cpu == APPLIED]
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


def link_build(source_dir: Path, tmp: Path, output: str, expected_sha256: str, log: logging.Logger) -> bool:
    """Hard-link (copy across file systems) every file of `source_dir` but its manifest into `tmp`;
    True when the linked output has the expected sha256 (else `tmp` is emptied and False)."""
    try:
        for path in sorted(source_dir.rglob("*")):
            rel = path.relative_to(source_dir)
            if path.is_dir() or rel.name == MANIFEST_NAME or rel.parts[0].startswith("."):
                continue
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
        if sha256_file(tmp / output) == expected_sha256:
            return True
    except OSError as exc:  # the sibling was replaced meanwhile: compile instead
        log.info(f"cannot share {source_dir}: {exc}")
    for child in list(tmp.iterdir()):
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    return False


def fresh_build(directory: Path, output: str, argv: list[str], compiler: tuple[str, str],
                current_inputs: dict | None = None) -> dict | None:
    """The manifest of `directory` when its build is up to date without hashing anything: same argv
    and compiler, every recorded input file still has its recorded stat key (its sha256 is then the
    recorded one), `current_inputs` (inputs without a file, e.g. a calibration selection) equal the
    recorded ones, and the output still has its recorded stat key. None otherwise (then a run decides)."""
    manifest = read_manifest(directory)
    if not manifest or "stat" not in manifest.get("output", {}) or manifest.get("argv") != argv:
        return None
    inputs = manifest.get("inputs", {})
    stats = manifest.get("input_stats", {})
    if any(stat_key(spec["path"]) != stats.get(name) or stats.get(name) is None
           for name, spec in inputs.items() if isinstance(spec, dict) and "path" in spec):
        return None
    if current_inputs and any(inputs.get(name) != value for name, value in current_inputs.items()):
        return None
    if manifest.get("cache_key") != cache_key(argv, compiler, inputs):
        return None
    if stat_key(directory / output) != manifest["output"]["stat"]:
        return None
    return manifest
