"""The one way to open a file the project did not just write itself (a config, an SDK's version file,
a manifest, an input list, a model).

A FIFO where a file is expected blocks ``open()`` until a writer comes (forever), and a device can
yield endless bytes: so open without blocking, look at what was opened, and read only a regular file,
up to a size bound where the caller has one. The error is an ``OSError`` (callers already handle
those) whose text names the path and what it is.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import BinaryIO

#: A bound for files of settings and records (configs, version files, manifests, JSON the project or
#: a compiler writes): real ones are kilobytes.
SMALL_FILE_BYTES = 16 << 20

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class NotReadable(OSError):
    """A path that is not a regular file, or a file over its size bound; ``strerror`` says which."""

    def __str__(self) -> str:
        return f"{self.filename} {self.strerror}"


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | Path, max_bytes: int | None = None) -> BinaryIO:
    """``path`` opened for reading in binary mode; NotReadable when it is not a regular file or is
    larger than ``max_bytes``. Never blocks on a FIFO (O_NONBLOCK until fstat said what it is)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket cannot be opened
            raise NotReadable(errno.EINVAL, f"is {_kind(os.stat(path).st_mode)}: only a regular file can be "
                                            "read here", str(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotReadable(errno.EINVAL, f"is {_kind(st.st_mode)}: only a regular file can be read here",
                              str(path))
        if max_bytes is not None and st.st_size > max_bytes:
            raise NotReadable(errno.EFBIG, f"is {st.st_size} bytes, more than the {max_bytes} bytes such a "
                                           "file may have here", str(path))
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | Path, max_bytes: int | None = None) -> bytes:
    """The content of the regular file ``path`` (at most ``max_bytes``, even if it grows meanwhile)."""
    with open_regular(path, max_bytes) as f:
        data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise NotReadable(errno.EFBIG, f"is more than the {max_bytes} bytes such a file may have here", str(path))
    return data


def read_text(path: str | Path, max_bytes: int | None = None, encoding: str = "utf-8") -> str:
    """read_bytes decoded, newlines made "\\n" as Path.read_text does (UnicodeDecodeError when it is
    not ``encoding``)."""
    return read_bytes(path, max_bytes).decode(encoding).replace("\r\n", "\n").replace("\r", "\n")


def require_regular(path: str | Path) -> None:
    """For a path handed to a library that opens it itself (onnx, onnxruntime): NotReadable unless it
    is a regular file (FileNotFoundError when it is missing)."""
    open_regular(path).close()
