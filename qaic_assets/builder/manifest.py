"""The manifest beside every artifact and the cache key it carries.

The manifest (argv, compiler and SDK versions, input sha256s, output sha256) keeps an artifact
traceable outside Dagster; its cache key says when a build may be reused: same argv, same compiler
version, same input bytes give the same output.
"""

from __future__ import annotations

import json
from pathlib import Path

from qaic_assets import files
from qaic_assets.hashing import atomic_write, hash_json, sha256_file

MANIFEST_NAME = "manifest.json"


def write_manifest(directory: Path, data: dict) -> Path:
    """Write ``<directory>/manifest.json`` atomically (sorted keys, indented; Paths etc. as strings)."""
    text = json.dumps(data, sort_keys=True, indent=2, default=str) + "\n"
    return atomic_write(Path(directory) / MANIFEST_NAME, text)


def read_manifest(directory: Path, *, strict: bool = False) -> dict | None:
    """The manifest of ``directory``, or None when there is none or it is unreadable (then the output
    is built again). A manifest that is not a regular file (a FIFO would block the read) or too large
    is None too, unless ``strict`` (the build's own cache check): then files.NotReadable, whose message
    names it and says to remove it (the next build writes a new one)."""
    path = Path(directory) / MANIFEST_NAME
    try:
        manifest = json.loads(files.read_text(path, files.SMALL_FILE_BYTES))
    except files.NotReadable as exc:
        if not strict:
            return None
        raise files.NotReadable(exc.errno, f"{exc.strerror}; remove it (the next build writes a new one)",
                                str(path)) from None
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def cache_key(argv: list[str], compiler: tuple[str, str], inputs: dict) -> str:
    """Same argv, same compiler (name, version), same input bytes: same output."""
    return hash_json({"argv": argv, "compiler": list(compiler), "inputs": inputs})


def cached_manifest(directory: Path, output: str, key: str) -> dict | None:
    """The stored manifest when it has this key and its output still has the recorded sha256."""
    manifest = read_manifest(directory, strict=True)
    path = Path(directory) / output
    if manifest and manifest.get("cache_key") == key and path.is_file() \
            and sha256_file(path) == manifest["output"]["sha256"]:
        return manifest
    return None
