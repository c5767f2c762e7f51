"""Writer process for tests/test_trainfolder.py (crash, disk-full, read-only and concurrency tests).

Run as ``python _trainfolder_child.py COMMAND ...``; imports only numpy, tifffile and
segloop.core.formats.trainfolder so it starts fast.

Commands
--------
serve FOLDER MODE
    A fork server (so each kill does not pay for a Python start): prints ``serving``, then for
    each ``SEED N`` line on stdin forks a writer that prints ``ready <pid>`` and adds N samples
    (N = 0: until killed), then prints ``done``; when the writer has ended the server prints
    ``exit <code>`` (-9 for SIGKILL).  MODE is ``new`` (512 x 512 uint16, split given), ``pair`` (auto split,
    one source: sample + held-out block), ``replace`` (replace=True of ``fixed`` (a pair) and
    ``fixed2`` in turn) or ``vol`` (a 24 x 192 x 192 int16 volume).
crashat FOLDER N SEED
    Replace ``fixed`` (a pair) once, SIGKILLing itself right after the N-th ``os.rename`` or
    ``os.replace`` of that add (N = 0: before the first one): the journal, 2 folders moved
    aside, 2 new folders, then the sample index.  Prints ``done`` if it survives.
write FOLDER
    One 256 x 256 add; prints ``OK <ids>`` or ``ERR <type>|<message>`` (exit status 3).
writer FOLDER NAME N
    Print ``ready``, wait for a line on stdin, add N small samples (auto split), printing each id.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np
import tifffile

from segloop.core.formats.trainfolder import TrainingFolder

CLASSES = ("background", "cell")


def make_sample(mode: str, i: int) -> tuple[dict, dict]:
    """The arrays and the add_sample options for op ``i`` of ``mode`` (deterministic)."""
    rng = np.random.default_rng(i)
    if mode == "vol":
        image = rng.integers(-1000, 2000, (24, 192, 192)).astype(np.int16)
        labels = np.zeros(image.shape, np.uint16)
        labels[4:20, 20:120, 30:150] = 1 + i % 7
        return ({"image": image, "labels": labels},
                {"axes": "ZYX", "split": "train", "source": f"vol{i}.nii.gz", "spacing": (2.5, 0.7, 0.7)})
    image = rng.integers(0, 4096, (512, 512)).astype(np.uint16)
    labels = np.zeros(image.shape, np.uint16)
    labels[100:300, 50:250] = 1 + i % 5
    labels[350:500, 300:480] = 7
    arrays = {"image": image, "labels": labels}
    if mode == "new":
        return arrays, {"axes": "YX", "split": "train", "source": f"new{i}.tif"}
    if mode == "pair":
        return arrays, {"axes": "YX", "source": "pair-source.tif"}
    if mode == "replace":
        if i % 2 == 0:
            return arrays, {"axes": "YX", "source": "replace-source.tif", "sample_id": "fixed", "replace": True}
        return arrays, {"axes": "YX", "split": "test", "source": "other.tif", "sample_id": "fixed2",
                        "replace": True}
    raise SystemExit(f"unknown mode {mode}")


def _warm_up() -> None:
    """Import everything the first write needs, so the loop's timing is that of a warm process."""
    import io

    tifffile.imwrite(io.BytesIO(), np.zeros((4, 4), np.uint8), compression="zlib")


def _write_loop(tf: TrainingFolder, mode: str, seed: int, n: int) -> None:
    os.write(1, f"ready {os.getpid()}\n".encode())
    for i in range(seed * 1000, seed * 1000 + (n or 10**6)):
        arrays, opts = make_sample(mode, i)
        tf.add_sample(arrays["image"], arrays["labels"], **opts)
    os.write(1, b"done\n")
    os._exit(0)


def serve(folder: str, mode: str) -> None:
    import shutil
    import tempfile

    tf = TrainingFolder.open(folder)
    scratch = tempfile.mkdtemp()
    try:                                 # run every code path once, so forked writers start warm
        warm = TrainingFolder.create(os.path.join(scratch, "warm"), classes=tf.info.classes, task=tf.info.task)
        for i in range(2):
            arrays, opts = make_sample(mode, i)
            warm.add_sample(arrays["image"], arrays["labels"], **opts)
    finally:
        shutil.rmtree(scratch)
    print("serving", flush=True)
    while line := sys.stdin.readline():
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                seed, n = map(int, line.split())
                _write_loop(tf, mode, seed, n)
            finally:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)


def crashat(folder: str, n: int, seed: int) -> None:
    tf = TrainingFolder.open(folder)
    _warm_up()
    arrays, opts = make_sample("replace", 0)
    image = np.random.default_rng(seed).integers(0, 4096, (512, 512)).astype(np.uint16)
    count = 0

    def killing(real):
        def rename(src, dst):
            nonlocal count
            if n == 0:                       # die before the first rename
                os.kill(os.getpid(), signal.SIGKILL)
            real(src, dst)
            count += 1
            if count == n:
                os.kill(os.getpid(), signal.SIGKILL)
        return rename

    os.rename, os.replace = killing(os.rename), killing(os.replace)
    tf.add_sample(image, arrays["labels"], **opts)
    print("done", flush=True)


def write(folder: str) -> int:
    tf = TrainingFolder.open(folder)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 65535, (256, 256)).astype(np.uint16)
    labels = np.zeros(image.shape, np.uint16)
    labels[10:100, 10:100] = 1
    try:
        res = tf.add_sample(image, labels, axes="YX", split="train", source="written.tif")
    except Exception as e:
        print(f"ERR {type(e).__name__}|{e}", flush=True)
        return 3
    print("OK", " ".join(r.sample_id for r in res.records), flush=True)
    return 0


def writer(folder: str, name: str, n: int) -> None:
    tf = TrainingFolder.open(folder)
    _warm_up()
    rng = np.random.default_rng(int.from_bytes(name.encode(), "little") % 2**32)
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(n):
        image = rng.integers(0, 255, (64, 64)).astype(np.uint8)
        labels = (image > 128).astype(np.uint16)
        res = tf.add_sample(image, labels, axes="YX", source=f"/data/{name}/{i}/scan.tif", extra={"writer": name})
        print(" ".join(r.sample_id for r in res.records), flush=True)
        time.sleep(rng.uniform(0.0, 0.01))


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "serve":
        serve(args[0], args[1])
    elif cmd == "crashat":
        crashat(args[0], int(args[1]), int(args[2]))
    elif cmd == "write":
        sys.exit(write(args[0]))
    elif cmd == "writer":
        writer(args[0], args[1], int(args[2]))
    else:
        raise SystemExit(f"unknown command {cmd}")
