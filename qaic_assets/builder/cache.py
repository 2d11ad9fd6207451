"""The content-addressed build cache: finished outputs keyed by their cache key (argv, compiler name and
version, input sha256s: builder/manifest.cache_key), one directory per key,
`<storage_root>/.cache/<key>/` (the output files and their manifest.json).

Why a second cache beside the per-partition one (manifest.cached_manifest on the served directory):
the SDK canary (builder/canary.py) builds every built partition with a candidate SDK while the
partition directories keep serving the current binaries, so its outputs cannot go there. They go
here, and a later build with the same key -- the automation's recompile once `sdk_root` points at
the candidate -- copies the entry into its partition directory instead of calling the compiler
(service.run_build). Only canaries write entries, so the cache holds what canaries built, nothing else.

An entry is written like any output (outputs.atomic_output_dir, under its own lock); a reader holds
that lock shared, copies every file into a new inode (reuse.copy_build: copy_file_range) and checks
the copy's sha256 against the entry's manifest. An entry whose output no longer has that sha256 is
removed (logged) and the build compiles. Entries are never needed for correctness: `qaic-assets
canary --clean` (`clean`) or `rm -rf <storage_root>/.cache` removes them at any time; a promotion
then compiles again. Model names start with a letter or digit, so `.cache` never meets a model's
directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from qaic_assets.builder.manifest import read_manifest
from qaic_assets.builder.outputs import OutputLocked, clean_stale_temps, output_lock
from qaic_assets.builder.reuse import copy_build
from qaic_assets.hashing import sha256_file
from qaic_assets.settings import Settings

CACHE_DIR = ".cache"
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
#: how long a reader or `clean` waits for a canary writing an entry before skipping it
ENTRY_WAIT_S = 60.0


@dataclass(frozen=True)
class CanaryBuild:
    """A build for the SDK canary: into the cache, recorded with the canary's run, never into the served
    directory. `profiles`: batch -> the directory holding the candidate's profile of that batch (a
    cache entry, or the served calibration directory when the candidate builds the same profile)."""

    run_id: str
    candidate_root: str
    profiles: dict[int, Path] = field(default_factory=dict)

    def record(self) -> dict:
        """What the entry's manifest says about the canary that built it (`from_canary` once served)."""
        return {"run_id": self.run_id, "candidate_root": self.candidate_root}


def cache_root(config: Settings) -> Path:
    return Path(os.path.normpath(config.storage_root)) / CACHE_DIR


def entry_dir(config: Settings, key: str) -> Path:
    if not _KEY_RE.fullmatch(key):
        raise ValueError(f"cache key {key!r} is not a sha256")
    return cache_root(config) / key


def fetch(config: Settings, key: str, output: str, tmp: Path, log: logging.Logger) -> dict | None:
    """Copy the entry of `key` into `tmp` (every file but the manifest) and return its manifest, or None:
    no entry, an entry another key's manifest, or a corrupt one (removed). `tmp` is empty on None."""
    entry = entry_dir(config, key)
    if read_manifest(entry) is None:  # the usual case, without taking a lock
        return None
    corrupt = False
    try:
        with output_lock(entry, ENTRY_WAIT_S, log=log, shared=True):
            manifest = read_manifest(entry)
            if not manifest or manifest.get("cache_key") != key or not (entry / output).is_file():
                return None
            if copy_build(entry, tmp, output, manifest["output"]["sha256"], log):
                return manifest
            corrupt = (entry / output).is_file() and sha256_file(entry / output) != manifest["output"]["sha256"]
    except OutputLocked as exc:  # a canary still writing it: compile instead of waiting longer
        log.info(f"cache entry {entry} is busy ({exc}): compiling")
        return None
    if corrupt:
        log.warning(f"cache entry {entry}: {output} no longer has the sha256 its manifest records; removed "
                    "(the build compiles)")
        remove(entry, log)
    return None


def remove(entry: Path, log: logging.Logger) -> int:
    """Remove one entry under its lock; the bytes it held (0 when it was busy or gone)."""
    try:
        with output_lock(entry, ENTRY_WAIT_S, log=log):
            size = _size(entry)
            shutil.rmtree(entry, ignore_errors=True)
            return size
    except OutputLocked as exc:
        log.warning(f"not removed: {exc}")
        return 0


def _size(path: Path) -> int:
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def entries(config: Settings) -> list[Path]:
    root = cache_root(config)
    return sorted(p for p in root.iterdir() if _KEY_RE.fullmatch(p.name) and p.is_dir()) if root.is_dir() else []


def usage(config: Settings) -> tuple[int, int]:
    """(entries, bytes) the cache holds now."""
    found = entries(config)
    return len(found), sum(_size(p) for p in found)


def clean(config: Settings, log: logging.Logger) -> tuple[int, int]:
    """Remove every entry (and leftovers of killed writers): (entries removed, bytes freed). Safe at any
    time: the served outputs are copies, never links into the cache."""
    removed = freed = 0
    for entry in entries(config):
        size = remove(entry, log)
        removed += not entry.exists()
        freed += size
    if cache_root(config).is_dir():
        clean_stale_temps(cache_root(config))
    return removed, freed
