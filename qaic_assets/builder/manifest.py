"""The manifest beside every artifact and the cache key it carries.

The manifest (argv, compiler and SDK versions, input sha256s, output sha256) keeps an artifact
traceable outside Dagster; its cache key says when a build may be reused: same argv, same compiler
version, same input bytes give the same output.
"""

from __future__ import annotations

import json
from pathlib import Path

from qaic_assets.hashing import atomic_write, hash_json, sha256_file

MANIFEST_NAME = "manifest.json"


def write_manifest(directory: Path, data: dict) -> Path:
    """Write ``<directory>/manifest.json`` atomically (sorted keys, indented; Paths etc. as strings)."""
    text = json.dumps(data, sort_keys=True, indent=2, default=str) + "\n"
    return atomic_write(Path(directory) / MANIFEST_NAME, text)


def read_manifest(directory: Path) -> dict | None:
    """The manifest of ``directory``, or None when there is none or it is unreadable."""
    try:
        manifest = json.loads((Path(directory) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def cache_key(argv: list[str], compiler: tuple[str, str], inputs: dict) -> str:
    """Same argv, same compiler (name, version), same input bytes: same output."""
    return hash_json({"argv": argv, "compiler": list(compiler), "inputs": inputs})


def cached_manifest(directory: Path, output: str, key: str) -> dict | None:
    """The stored manifest when it has this key and its output still has the recorded sha256."""
    manifest = read_manifest(directory)
    path = Path(directory) / output
    if manifest and manifest.get("cache_key") == key and path.is_file() \
            and sha256_file(path) == manifest["output"]["sha256"]:
        return manifest
    return None
