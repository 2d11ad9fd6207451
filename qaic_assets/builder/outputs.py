"""Output directories that are never half-written: a temp dir (inside a private directory of its own,
so what a compiler writes at ``../`` goes with it) renamed into place on success, an exclusive lock
per output so two writers take turns, and clean-up of what killed runs left behind.

Two writers of one output directory serialize on :func:`output_lock` (``flock`` on a ``.<name>.lock``
sibling, released by the kernel when its holder dies); the second waits, then fails naming the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

from qaic_assets.builder.manifest import MANIFEST_NAME


class MissingOutput(RuntimeError):
    """The command succeeded but an expected output file is missing or empty."""

    def __init__(self, message: str, missing: str, directory: Path):
        super().__init__(message)
        self.missing = missing
        self.directory = directory


# --------------------------------------------------------------------------------------------------
# Atomic output directories

# <name> . tmp|old - <pid> - <hex token>, always hidden (leading dot).
_SIBLING_RE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-(?P<token>[0-9a-f]+)$")
_ACTIVE: set[str] = set()  # temp/old dirs of this process that are in use (threads share a pid)
_ACTIVE_LOCK = threading.Lock()


def _sibling(final_dir: Path, kind: str) -> Path:
    return final_dir.parent / f".{final_dir.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _register(path: Path) -> None:
    with _ACTIVE_LOCK:
        _ACTIVE.add(str(path))


def _unregister(path: Path) -> None:
    with _ACTIVE_LOCK:
        _ACTIVE.discard(str(path))


def _rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def first_symlink(base: Path, rel: str) -> Path | None:
    """The first component of ``base/rel`` (below ``base``) that is a symlink, if any."""
    current = base
    for part in Path(rel).parts:
        current = current / part
        if current.is_symlink():
            return current
    return None


def _check_expected(tmp: Path, final_dir: Path, expected: list[str]) -> None:
    for rel in expected:
        p = tmp / rel
        problem = None
        link = first_symlink(tmp, rel)
        if link is not None:  # a compiler must write its output, not point at some other file
            problem = f"is reached through a symlink ({link.relative_to(tmp)} -> {os.readlink(link)}); refused"
        elif not p.exists():
            problem = "was not produced"
        elif p.is_file() and p.stat().st_size == 0:
            problem = "is empty"
        elif p.is_dir() and not any(p.iterdir()):
            problem = "is an empty directory"
        if problem:
            try:
                present = sorted(str(x.relative_to(tmp)) for x in tmp.rglob("*"))[:20]
            except OSError:  # pragma: no cover
                present = []
            raise MissingOutput(
                f"expected output {rel!r} {problem} in {tmp} (destined for {final_dir}); "
                f"the directory holds: {', '.join(present) if present else 'nothing'}",
                rel,
                final_dir,
            )


@contextlib.contextmanager
def atomic_output_dir(final_dir: Path, expected: list[str]) -> Iterator[Path]:
    """Yield a fresh temp dir for ``final_dir``; on success swap it into place.

    The temp dir is ``<parent>/.<name>.tmp-<pid>-<token>/<name>``: nested one level inside a private
    directory of this call, so what a compiler writes beside its working directory (``../x``) lands in
    that private directory and is removed with it (``stray_entries`` names it first). Out of reach: an
    absolute path, or one that climbs two levels (``../../x``) into the directory the partitions share
    (``stray_entries`` reports what appeared there, it cannot tell it from another writer's file).

    On normal exit every path in ``expected`` (relative to the dir) must exist and be non-empty, else
    MissingOutput. Then the old final dir (if any) is renamed to ``.<name>.old-<pid>-<token>``, the
    temp dir renamed to ``final_dir``, and the old one and the private directory removed. On any
    exception the private directory is removed and ``final_dir`` is untouched.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    private = _sibling(final_dir, "tmp")
    tmp = private / final_dir.name
    _register(private)
    try:
        private.mkdir(mode=0o700)
        tmp.mkdir()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        try:
            yield tmp
            _check_expected(tmp, final_dir, list(expected))
            old = None
            if final_dir.exists() or final_dir.is_symlink():
                old = _sibling(final_dir, "old")
                _register(old)
                os.rename(final_dir, old)
            try:
                os.rename(tmp, final_dir)
            except BaseException:
                if old is not None:  # put the previous result back
                    os.rename(old, final_dir)
                raise
            if old is not None:
                _rmtree(old)
                _unregister(old)
            _fsync_dir(final_dir.parent)
        finally:
            _rmtree(private)  # the temp dir if it is still there, and anything written beside it
    finally:
        _unregister(private)


def neighbours(tmp: Path) -> set[str]:
    """The names in the directory that holds a temp dir's private directory (``final_dir.parent``),
    before a call: what :func:`stray_entries` compares with afterwards."""
    try:
        return set(os.listdir(tmp.parent.parent))
    except OSError:
        return set()


def stray_entries(tmp: Path, before: set[str]) -> tuple[list[str], list[str]]:
    """What a call in ``tmp`` (from atomic_output_dir) wrote outside it: (``removed``: the entries
    beside ``tmp`` in its private directory, as ``../<name>``, removed with that directory;
    ``left``: the absolute paths of visible entries that appeared in the output's parent since
    ``before`` and are no published output (no manifest). Those stay: a concurrent writer of a sibling
    output may own them; the caller reports them by name.)"""
    private, shared = tmp.parent, tmp.parent.parent
    try:
        removed = sorted(f"../{name}" for name in os.listdir(private) if name != tmp.name)
    except OSError:
        removed = []
    left = []
    for name in sorted(neighbours(tmp) - before):
        path = shared / name
        if not name.startswith(".") and not (path.is_dir() and (path / MANIFEST_NAME).exists()):
            left.append(str(path))
    return removed, left


class OutputLocked(RuntimeError):
    """Another process holds the output lock of a directory for longer than we may wait."""

    def __init__(self, message: str, directory: Path, holder: str):
        super().__init__(message)
        self.directory = directory
        self.holder = holder


def _lock_holder(fd: int) -> tuple[str, str]:
    """(who holds the lock, "writing" or "reading") as its holder wrote them into the lock file."""
    try:
        text = os.pread(fd, 256, 0).decode("utf-8", errors="replace").split()
    except OSError:
        text = []
    holder = f"pid {text[0]} on {text[1]}" if len(text) >= 2 else "an unknown process"
    return holder, "reading" if text[2:3] == ["reading"] else "writing"


@contextlib.contextmanager
def output_lock(final_dir: Path, timeout_s: float, *, log: logging.Logger | None = None,
                shared: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on ``final_dir`` for the block, so two writers of one output serialize.

    ``shared=True`` takes it as a reader: readers of an output (a compile loading a profile) hold it
    together and keep its writer (a recalibration) waiting until they are done, so what a reader
    hashed is what its compiler loads. The last reader to leave removes the lock file.

    The lock is ``flock`` on ``<parent>/.<name>.lock`` (it works across processes and hosts sharing a
    file system, and between threads of one process). A second writer waits, logging once whom it
    waits for, up to ``timeout_s``, then raises OutputLocked naming the directory and the holder (pid
    and host, written into the lock file). The kernel drops the lock when its holder dies (SIGKILL
    included), so a killed run never leaves a stale lock. The file is removed on release; a waiter that
    locked a file which was removed meanwhile starts over, so only one holder exists at a time.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    path = final_dir.parent / f".{final_dir.name}.lock"
    deadline = time.monotonic() + timeout_s
    pause, waited_for = 0.02, None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder, doing = _lock_holder(fd)
            os.close(fd)
            if time.monotonic() >= deadline:
                raise OutputLocked(
                    f"{final_dir} is being {'read' if doing == 'reading' else 'written'} by another run "
                    f"({holder}; lock file {path}); gave up after waiting {timeout_s:g} s. Retry once that "
                    "run has finished, or stop it if it hangs",
                    final_dir, holder,
                ) from None
            if log is not None and holder != waited_for:
                log.warning(f"waiting for {final_dir}: {holder} is {doing} it (up to {timeout_s:g} s)")
                waited_for = holder
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.5)
            continue
        except BaseException:
            os.close(fd)
            raise
        try:
            st, current = os.fstat(fd), os.stat(path)
            same = (st.st_dev, st.st_ino) == (current.st_dev, current.st_ino)
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file after we opened it: lock the new one
    try:
        with contextlib.suppress(OSError):  # who holds it, for waiters' messages (best effort: disk full)
            os.ftruncate(fd, 0)
            doing = " reading" if shared else ""
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}{doing}\n".encode(), 0)
        yield path
    finally:
        last = True
        if shared:  # only the last reader may remove the file (no reader left: the upgrade succeeds)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                last = False
        if last:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(parent: Path, name: str | None = None) -> list[Path]:
    """Remove ``.<name>.tmp-*`` / ``.<name>.old-*`` leftovers of killed runs in ``parent``.

    Only entries whose writer process is gone (or this process, when not in use by it) are touched,
    so concurrent compiles into sibling dirs of the same parent are safe. If a run was killed between
    its two renames (final dir missing, ``.old-`` present) the old dir is renamed back into place
    instead of removed. ``name`` restricts cleaning to one final dir's leftovers. Returns what was
    removed or restored.
    """
    parent = Path(parent)
    touched: list[Path] = []
    if not parent.is_dir():
        return touched
    me = os.getpid()
    with _ACTIVE_LOCK:
        active = set(_ACTIVE)
    entries = sorted(parent.iterdir())
    for entry in entries:
        m = _SIBLING_RE.match(entry.name)
        if not m or (name is not None and m["name"] != name):
            continue
        pid = int(m["pid"])
        if str(entry) in active or (pid != me and _pid_alive(pid)):
            continue
        final = parent / m["name"]
        if m["kind"] == "old" and not final.exists() and not final.is_symlink():
            try:
                os.rename(entry, final)
                touched.append(entry)
                continue
            except OSError:
                pass
        _rmtree(entry)
        touched.append(entry)
    return touched


