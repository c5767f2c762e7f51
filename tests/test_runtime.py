"""segloop.core._runtime: the one atomic write, cancel check and sha256 every part uses."""

from __future__ import annotations

import hashlib
import os
import stat
import threading

import pytest

from segloop.core._runtime import (
    atomic_output,
    atomic_write_bytes,
    atomic_write_text,
    cache_dir,
    is_cancelled,
    sha256_bytes,
    sha256_file,
)


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "state.json"
    p.write_text("old")
    atomic_write_text(p, "new")
    assert p.read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX permission bits")
def test_atomic_write_honours_the_umask_like_open(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        (tmp_path / "b.bin").write_bytes(b"x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "a.bin").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "b.bin").st_mode) == 0o644


def test_an_error_inside_atomic_output_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    p = tmp_path / "labels.nii.gz"
    p.write_bytes(b"drawn by a person")
    with pytest.raises(KeyboardInterrupt), atomic_output(p, suffix=".nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"half a fi")
        raise KeyboardInterrupt
    assert p.read_bytes() == b"drawn by a person"
    assert sorted(os.listdir(tmp_path)) == ["labels.nii.gz"]


def test_a_write_into_a_missing_folder_raises_and_writes_nothing(tmp_path):
    with pytest.raises(OSError):
        atomic_write_bytes(tmp_path / "missing" / "x.bin", b"x")
    assert os.listdir(tmp_path) == []


def test_is_cancelled_reads_events_callables_and_none():
    ev = threading.Event()
    assert not is_cancelled(None)
    assert not is_cancelled(ev)
    ev.set()
    assert is_cancelled(ev)
    assert is_cancelled(lambda: True) and not is_cancelled(lambda: False)


def test_sha256_of_bytes_and_of_a_file_read_in_chunks(tmp_path):
    data = os.urandom(3000)
    (tmp_path / "f").write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert sha256_bytes(data) == want
    assert sha256_file(tmp_path / "f", chunk=1000) == want


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SEGLOOP_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SEGLOOP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "segloop"
