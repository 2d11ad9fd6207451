"""qaic_assets/hashing.py: an input's hash is remembered only while the file is provably unchanged."""

from __future__ import annotations

import os
import time

from qaic_assets import hashing


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
