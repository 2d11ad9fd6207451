"""Opening the Dagster instance of $DAGSTER_HOME for the demo and the CLI, and saying clearly why it
cannot be written.

Dagster creates a SQLite instance's databases the first time it opens them, with no lock: two first
commands at once on a fresh DAGSTER_HOME can both create the tables and both stamp the alembic
revision, and every later command then fails on two schema heads (issue 27). So the demo and the
CLI open the instance under an exclusive `flock` on a file in DAGSTER_HOME, held until every storage
has been created and read once. (Dagster's own processes, `dagster dev`, do not take it: start the
UI after the first demo, or on an instance that exists.)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sqlite3
from collections.abc import Iterator

import dagster as dg

from qaic_assets.orchestration.keys import SDK_KEY

#: In DAGSTER_HOME; kept after use (removing a lock file lets a waiter lock a file nobody else sees).
INSTANCE_LOCK = ".qaic_assets-instance.lock"


@contextlib.contextmanager
def instance_lock() -> Iterator[None]:
    """Exclusive over every demo and CLI command on this DAGSTER_HOME (none when it is unset, missing
    or read-only: DagsterInstance.get() then says what is wrong)."""
    home = os.environ.get("DAGSTER_HOME")
    try:
        fd = os.open(os.path.join(home or "", INSTANCE_LOCK), os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:  # none, or read-only: nothing can be created there, so there is no first open to guard
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def open_instance() -> dg.DagsterInstance:
    """DagsterInstance.get(), created or opened under instance_lock(): its constructor creates the run,
    event log and schedule storages; the two reads make sure the first two open (the schedule
    storage has no public read)."""
    with instance_lock(), contextlib.ExitStack() as opened:  # closed again if a read fails
        instance = opened.enter_context(dg.DagsterInstance.get())
        instance.get_run_records(limit=1)
        instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=SDK_KEY), limit=1)
        opened.pop_all()
    return instance


#: sqlite's messages for a database it cannot write (SQLAlchemy's errors wrap them, with the text).
_WRITE_ERRORS = ("database or disk is full", "disk i/o error", "unable to open database file",
                 "attempt to write a readonly database")
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO)


def storage_error(exc: BaseException) -> str | None:
    """sqlite's (or the OS's) reason when `exc`, or an error it wraps, says the instance's database
    could not be written; None for any other error."""
    import sqlalchemy.exc

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (sqlite3.Error, sqlalchemy.exc.DBAPIError)):
            text = str(getattr(exc, "orig", None) or exc)
            if any(m in text.lower() for m in _WRITE_ERRORS):
                return text.strip().splitlines()[0]
        if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS and str(exc.filename or "").startswith(
                os.environ.get("DAGSTER_HOME") or "\0"):
            return f"{exc.strerror}: {exc.filename}"
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__
    return None


def storage_error_message(reason: str) -> str:
    """The one message for an instance that cannot be written: where, how much room, the fix."""
    home = os.path.abspath(os.environ.get("DAGSTER_HOME", "."))
    try:
        free = shutil.disk_usage(home).free
        free = f"{free / 2**20:.1f} MiB free there" if free >= 2**20 else f"{free >> 10} KiB free there"
    except OSError as exc:
        free = f"free space unknown: {exc.strerror}"
    return (f"the Dagster instance in DAGSTER_HOME={home} cannot be written ({reason}; {free}): free space "
            f"there and make it writable, or point DAGSTER_HOME at a directory on a disk with room, then run "
            f"the command again (what was built is kept)")
