"""Small runtime helpers shared by every part of ``segloop.core``.

One of each: the cancel-token check, the atomic file write, the directory
fsync, file and byte sha256, and the cache folder.  This module imports
nothing of segloop's (standard library only), so every part may use it.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_text",
    "cache_dir",
    "fsync_dir",
    "is_cancelled",
    "sha256_bytes",
    "sha256_file",
]


def is_cancelled(cancel) -> bool:
    """Whether a cancel token says stop.

    Parameters
    ----------
    cancel : None, threading.Event-like (with ``is_set()``) or callable
        ``None`` never cancels; a callable is called with no arguments.
    """
    if cancel is None:
        return False
    if callable(cancel) and not hasattr(cancel, "is_set"):
        return bool(cancel())
    return bool(cancel.is_set())


def cache_dir() -> Path:
    """Where segloop caches engine choices and registrations.

    ``$SEGLOOP_CACHE_DIR``, else ``$XDG_CACHE_HOME/segloop``, else ``~/.cache/segloop``.
    """
    d = os.environ.get("SEGLOOP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "segloop")
    return Path(d)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte pieces (memory does not grow with the file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in directory ``path`` durable (no-op on Windows)."""
    if os.name == "nt":          # directories cannot be opened for fsync there; renames are journaled by NTFS
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


@contextmanager
def atomic_output(path: str | os.PathLike, *, durable: bool = True, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path``; renamed over ``path`` when the block ends without error.

    For writers that want a file name (tifffile, nibabel, pynrrd, pydicom)::

        with atomic_output(dest) as tmp:
            tifffile.imwrite(tmp, labels)

    ``suffix`` is appended to the temporary name for writers that choose the
    format by extension (``".nii.gz"``).  On any error, a cancel included,
    the temporary file is removed and ``path`` is untouched.  With
    ``durable=True`` the file is fsynced before the rename and the folder
    after it.
    """
    path = Path(path)
    tmp = _temp_name(path)
    tmp = tmp.with_name(tmp.name + suffix)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` all or nothing (through :func:`atomic_output`).

    Readers see the old file or the new one, never a part; on any error the
    old file is untouched and no temporary file is left.

    Returns
    -------
    Path
        ``path``.
    """
    with atomic_output(path, durable=durable) as tmp, open(tmp, "xb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8",
                      durable: bool = True) -> Path:
    """:func:`atomic_write_bytes` for text."""
    return atomic_write_bytes(path, text.encode(encoding), durable=durable)
