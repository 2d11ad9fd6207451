"""The package's one way to hash content and to write a file atomically.

Every cache key, manifest, data version and check result is built from these, so two places can never
disagree about what "the same bytes" or "the same settings" means.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from qaic_assets.files import open_regular

CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's content, read in 1 MiB chunks; files.NotReadable (an OSError) unless it is
    a regular file (a FIFO would block the read forever)."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


_KNOWN: dict[str, tuple[tuple[int, ...], str]] = {}


def sha256_input(path: str | Path) -> str:
    """sha256_file of an input (a model, a data sample), remembered in this process while the file's
    device, inode, size, mtime and ctime stay the same (ctime cannot be set back without the system
    clock): a run worker verifies the same stand-in and held-out files at every step (about a thousand
    files a demo). Outputs are hashed with sha256_file, always."""
    name = os.fspath(path)
    st = os.stat(name)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    known = _KNOWN.get(name)
    if known is not None and known[0] == key:
        return known[1]
    digest = sha256_file(path)
    _KNOWN[name] = (key, digest)
    return digest


def canonical_json(data: Any) -> str:
    """Sorted keys, no whitespace choice left open; Paths and other objects as strings."""
    return json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))


def hash_json(data: Any, length: int | None = None) -> str:
    """Hex sha256 of ``data`` as canonical JSON, optionally shortened (code versions)."""
    digest = sha256_bytes(canonical_json(data).encode())
    return digest[:length] if length else digest


def atomic_write(path: str | Path, data: bytes | str, *, mode: int = 0o644, skip_if_same: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same directory, fsync and rename.

    Readers see the old file or the new one, never a half-written one; a failure leaves no temp file.
    ``skip_if_same`` leaves an identical file (and its mtime) alone.
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if skip_if_same and path.is_file() and path.stat().st_size == len(raw) and sha256_file(path) == sha256_bytes(raw):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path
