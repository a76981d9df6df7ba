"""One way to write a file atomically, used by checkpoints, ONNX exports, stored photos and
the embedding cache."""

import os
import threading

import pytest

from models.atomic import atomic_write, atomic_write_with


def test_writes_the_file_with_the_usual_permissions_and_no_leftovers(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    atomic_write_with(target, lambda handle: handle.write(b"new"))
    assert target.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert os.listdir(target.parent) == ["file.bin"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")

    def half_then_fail(handle):
        handle.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write_with(target, half_then_fail)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["file.bin"]


def test_concurrent_writers_never_share_a_temporary_name(tmp_path):
    target = tmp_path / "cache.npz"
    names, inside = [], threading.Barrier(2)

    def writer(payload: bytes) -> None:
        with atomic_write(target, suffix=".npz") as tmp:
            names.append(tmp.name)
            tmp.write_bytes(payload)
            inside.wait(5)  # both temporaries exist at once

    threads = [threading.Thread(target=writer, args=(p,)) for p in (b"a" * 10, b"b" * 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 2 and all(n.endswith(".npz") for n in names)
    assert target.read_bytes() in {b"a" * 10, b"b" * 10}
    assert os.listdir(tmp_path) == ["cache.npz"]
