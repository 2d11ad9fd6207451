"""Copying a directory we were handed (``register --from``) without following it anywhere else.

The source is walked without following symlinks. Regular files and directories are copied. A
symlink is accepted only when it resolves (no loop) to a regular file or a directory inside the
source directory, and never as the binary itself; a FIFO, socket or device is refused. Files are
opened with ``O_NOFOLLOW`` and checked again after opening, so a swap between the check and the copy
cannot smuggle another file in. Every refusal names the entry and what to do.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path


class UnsafeSource(ValueError):
    """An entry of a directory to import that would reach outside it or is not a plain file."""


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device"}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file or directory")


def _resolve_inside(link: Path, root: Path) -> Path:
    """Where an in-tree symlink points; refused if it loops, dangles or leaves ``root``."""
    try:
        target = link.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop this way
        raise UnsafeSource(f"{link} is a symlink loop: replace it with the file it should name") from None
    except OSError as exc:
        what = "a symlink loop" if exc.errno == 40 else f"a dangling symlink ({exc.strerror})"
        raise UnsafeSource(f"{link} is {what}: replace it with the file it should name") from None
    if target != root and root not in target.parents:
        raise UnsafeSource(f"{link} is a symlink to {target}, outside {root}: copy the file into the "
                           "directory instead of linking to it")
    return target


def check_tree(root: Path, binary: str) -> list[tuple[Path, Path]]:
    """(source file, relative destination) of every file to copy; raises UnsafeSource on the first bad
    entry. ``binary`` (relative to root) must be a regular file, not a symlink."""
    root = Path(os.path.realpath(root))
    bin_path = root / binary
    try:
        st = os.lstat(bin_path)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise UnsafeSource(f"{bin_path} is a symlink (to {os.readlink(bin_path)}): the binary must be a "
                           "regular file; copy the real file there")
    files: list[tuple[Path, Path]] = []
    stack: list[tuple[Path, Path, frozenset]] = [(root, Path(), frozenset({root}))]
    while stack:
        directory, rel_dir, ancestors = stack.pop()
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            path, rel = Path(entry.path), rel_dir / entry.name
            mode = entry.stat(follow_symlinks=False).st_mode
            real = path
            if stat.S_ISLNK(mode):
                real = _resolve_inside(path, root)
                mode = os.stat(real).st_mode
                if stat.S_ISDIR(mode) and real in ancestors:
                    raise UnsafeSource(f"{path} is a symlink loop (to its own ancestor {real}): remove it")
            if stat.S_ISDIR(mode):
                stack.append((real, rel, ancestors | {real}))
            elif stat.S_ISREG(mode):
                files.append((real, rel))
            else:
                raise UnsafeSource(f"{path} is {_kind(mode)}: only regular files and directories can be "
                                   "registered; remove it from the directory")
    return files


def copy_checked(files: list[tuple[Path, Path]], dest: Path) -> None:
    """Copy what ``check_tree`` listed into ``dest``; each source must still be a regular file."""
    for src, rel in files:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fin:
            if not stat.S_ISREG(os.fstat(fin.fileno()).st_mode):
                raise UnsafeSource(f"{src} changed into {_kind(os.fstat(fin.fileno()).st_mode)} while it "
                                   "was copied: retry once nothing writes the directory")
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "xb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
