"""qaic_assets/hashing.py: an input's hash is remembered only while the file is provably unchanged; and
qaic_assets/files.py, through which it reads: only a regular file, never a blocking open."""

from __future__ import annotations

import os
import socket
import time

import pytest

from qaic_assets import files, hashing


def test_an_input_is_hashed_once_while_unchanged_and_again_after_an_in_place_edit(tmp_path, monkeypatch):
    f = tmp_path / "0000.raw"
    f.write_bytes(b"a" * 4096)
    first = hashing.sha256_input(f)
    assert first == hashing.sha256_bytes(b"a" * 4096)
    reads = []
    real = hashing.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda p: reads.append(p) or real(p))
    assert hashing.sha256_input(f) == first and reads == []  # remembered: not read again

    before = f.stat()
    time.sleep(0.01)  # past a coarse ctime tick on kernels without fine-grained timestamps
    with open(f, "r+b") as h:  # same inode, same size
        h.write(b"b")
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the mtime set back
    assert hashing.sha256_input(f) == hashing.sha256_bytes(b"b" + b"a" * 4095)
    assert reads == [f]

    f.unlink()
    f.write_bytes(b"a" * 4096)  # replaced: another inode (or ctime)
    assert hashing.sha256_input(f) == first and len(reads) == 2


@pytest.mark.parametrize("kind", ["a FIFO", "a directory", "a character device", "a socket"])
def test_only_a_regular_file_is_read_and_nothing_blocks(tmp_path, kind):
    """A FIFO without a writer would block open() forever: refused at once, naming the path and what it is."""
    path = tmp_path / "input.raw"
    if kind == "a FIFO":
        os.mkfifo(path)
    elif kind == "a directory":
        path.mkdir()
    elif kind == "a character device":
        path = "/dev/zero"  # endless bytes
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
    for read in (hashing.sha256_file, hashing.sha256_input, files.read_bytes, files.require_regular):
        with pytest.raises(files.NotReadable) as caught:
            read(path)
        assert str(caught.value) == f"{path} is {kind}: only a regular file can be read here"
        assert isinstance(caught.value, OSError)  # what callers already handle


def test_a_file_over_its_bound_is_refused_naming_the_limit(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_bytes(b"x" * 101)
    with pytest.raises(files.NotReadable, match=f"^{path} is 101 bytes, more than the 100 bytes such a file may have"):
        files.read_bytes(path, max_bytes=100)
    assert files.read_text(path, max_bytes=101) == "x" * 101
    path.write_bytes(b"a\r\nb\rc\n")  # newlines as Path.read_text gives them
    assert files.read_text(path) == "a\nb\nc\n"
