"""Fine-tuning on several processes (torchrun, DDP over gloo on the CPU) and the training precision choice.

Real runs: ``python -m torch.distributed.run --nproc_per_node 2 -m segloop_train ...`` on a tiny
real package and a real training folder (BBBC007 crop, threshold labels).  With
``SEGLOOP_TRAIN_DEBUG_DIR`` every rank writes the sha256 of each batch it trained on.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

import segloop
from segloop.core.formats.package import load_package, save_package
from segloop.core.formats.trainfolder import TrainingFolder
from segloop_train import precision as P
from segloop_train.finetune import checkpoint_dir

from .conftest import tiny_spec, tiny_state

ROOT = Path(__file__).resolve().parents[1]
STEPS = 40
ARGS = ["--steps", str(STEPS), "--eval-every", str(STEPS), "--checkpoint-every", "2", "--batch", "2", "--patch", "32",
        "--device", "cpu", "--threads", "1", "--no-onnx", "--progress-json"]

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(root: Path, out: str, *extra: str) -> tuple[list[str], dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "segloop_train", str(root / "f"), "--from", str(root / "parent"), "--out", str(root / out), *ARGS,
           *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SEGLOOP_TRAIN_DEBUG_DIR": str(root / f"debug-{out}"),
           "SEGLOOP_CACHE_DIR": str(root / "cache")}
    return cmd, env


def _debug(root: Path, out: str) -> dict[int, list[dict]]:
    return {r: [json.loads(line) for line in (root / f"debug-{out}" / f"rank-{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, nuclei_image):
    """A training folder, a tiny parent package and one uninterrupted 2-rank run on them."""
    from skimage.measure import label

    root = tmp_path_factory.mktemp("ddp")
    img = nuclei_image
    lab = label(img > np.percentile(img, 80)).astype(np.uint16)
    tf = TrainingFolder.create(root / "f", classes=("background", "nucleus"), task="instance",
                               modality="fluorescence")
    tf.add_sample(img[:96, :96], lab[:96, :96], axes="YX", source="train0.tif", split="train", sample_id="train0")
    tf.add_sample(img[96:160, :96], lab[96:160, :96], axes="YX", source="val0.tif", split="val", sample_id="val0")
    spec = tiny_spec()
    save_package(root / "parent", spec, tiny_state(spec))
    cmd, env = _torchrun(root, "child")
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    return root, r, time.perf_counter() - t0


def test_precision_is_fp32_on_a_cpu_without_native_bf16_and_says_why():
    from segloop.core.inference.engines import cpu_has_native_bf16

    choice = P.choose_precision("auto", "cpu", None)
    if cpu_has_native_bf16():                       # not this machine: then bf16 must be measured first
        assert "no network was given to measure" in choice.reason and choice.precision == "fp32"
    else:
        assert choice.precision == "fp32" and choice.fp32_ms is None and choice.bf16_ms is None
        assert "CPU has no native bf16 (AVX-512 BF16 / AMX)" in choice.reason
    assert P.choose_precision("auto", "cuda:1").precision == "fp16"          # AMP with a GradScaler
    assert P.choose_precision("fp32", "cpu").reason.startswith("asked for")
    with pytest.raises(ValueError, match="fp16 training needs CUDA"):
        P.choose_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="unknown precision"):
        P.choose_precision("half", "cpu")


def test_a_resumed_auto_run_goes_on_in_its_checkpoints_precision_where_it_runs_well():
    from segloop.core.inference.engines import cpu_has_native_bf16

    measured_bf16 = P.PrecisionChoice("bf16", "a measured step is 1.3x faster in bf16", "auto", 6.0, 4.6)
    kept = P.on_resume("fp32", measured_bf16, "cpu")           # began in fp32: goes on in fp32
    assert kept.precision == "fp32" and kept.reason.startswith("resumed: the checkpoint was trained in fp32")
    assert kept.requested == "auto" and kept.fp32_ms == 6.0
    measured_fp32 = P.PrecisionChoice("fp32", "not faster in bf16", "auto", 6.0, 7.0)
    again = P.on_resume("bf16", measured_fp32, "cpu")
    assert again.precision == ("bf16" if cpu_has_native_bf16() else "fp32")   # emulated bf16 is not kept
    assert P.on_resume("fp16", measured_fp32, "cpu") is measured_fp32          # fp16 needs CUDA
    asked = P.choose_precision("fp32", "cpu")
    assert P.on_resume("bf16", asked, "cpu") is asked                          # --precision is obeyed
    assert P.on_resume(None, measured_fp32, "cpu") is measured_fp32            # an old checkpoint says nothing


def test_bf16_on_a_cpu_that_has_it_is_measured_once_and_cached(monkeypatch, tmp_path):
    from segloop.core.inference import engines
    from segloop.core.networks import build

    threads = torch.get_num_threads()
    torch.set_num_threads(1)                        # 2 threads on a shared 2-core machine are much slower
    monkeypatch.setattr(engines, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(P, "_MEMO", {})
    net = build("unet", 1, 3, dims=2, depth=2, base_width=4, norm="batch")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    calls = []
    real = P.measure_step_ms

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(P, "measure_step_ms", counted)
    first = P.choose_precision("auto", "cpu", net, in_channels=1, batch=4, patch=32)
    assert len(calls) == 1 and first.fp32_ms > 0 and first.bf16_ms > 0       # a real measured step
    assert (first.precision == "bf16") == (first.bf16_ms < P.SPEEDUP * first.fp32_ms)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())   # measured on a copy
    P._MEMO.clear()                                                         # a new process: read from disk
    again = P.choose_precision("auto", "cpu", net, in_channels=1, batch=4, patch=32)
    assert again == first and len(calls) == 1
    assert any(k.startswith("train-") for k in json.loads((engines.cache_dir() / "engine-choice.json").read_text()))
    # the decision itself, on given timings
    for (t32, t16, finite), want, says in (((100.0, 40.0, True), "bf16", "2.5x faster"),
                                           ((100.0, 90.0, True), "fp32", "not faster"),
                                           ((100.0, 10.0, False), "fp32", "non-finite")):
        monkeypatch.setattr(P, "measure_step_ms", lambda *a, _r=(t32, t16, finite), **k: _r)
        c = P.choose_precision("auto", "cpu", net, in_channels=1, batch=4, patch=32, use_cache=False)
        assert c.precision == want and says in c.reason
    torch.set_num_threads(threads)


_SETTLE = r"""
import os, sys, threading, time
import torch, torch.distributed as dist
from segloop_train.distributed import DistContext

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
dist.init_process_group("gloo", rank=0, world_size=1)
ctx = DistContext()
t = torch.zeros(4)
work = dist.all_reduce(t, async_op=True)       # a real gloo work: it holds t until it is dropped
work.wait()
held = sys.getrefcount(t)
box = [work]
del work
threading.Timer(0.3, box.clear).start()        # another thread lets go of it later
ctx.handed.append(t)
del t                                          # as in DistContext's collectives: only ctx keeps it
t0 = time.perf_counter()
first = ctx.settle()
waited = time.perf_counter() - t0
after = len(box)                               # 0: the holder had let go when settle returned

u = torch.zeros(4)
keep = dist.all_reduce(u, async_op=True)       # never let go: settle gives up after its timeout
keep.wait()
ctx.handed.append(u)
del u
t0 = time.perf_counter()
second = ctx.settle(timeout=0.2)
print(held, first, round(waited, 3), after, second, round(time.perf_counter() - t0, 3), len(ctx.handed))
del keep
dist.destroy_process_group()
"""


def test_settle_waits_until_gloos_threads_let_go_of_the_collectives_tensors():
    """``close()`` first waits until no gloo work holds a tensor of ours.

    A gloo thread that drops the last reference once the interpreter is finalizing cannot take
    the GIL and aborts the process ("terminate called without an active exception") after a
    finished run: seen in CI, and 1 in 20 local runs on a loaded machine (see distributed.py).
    """
    r = subprocess.run([sys.executable, "-c", _SETTLE, str(_free_port())], capture_output=True, text=True,
                       cwd=ROOT, timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                           [str(ROOT / "src"), str(ROOT / "training"), os.environ.get("PYTHONPATH", "")])})
    assert r.returncode == 0, r.stderr[-2000:]
    held, first, waited, after, second, gave_up_after, left = r.stdout.split()
    assert int(held) == 3                       # the work's reference shows (torch's PyObject preservation)
    assert first == "True" and float(waited) >= 0.25 and int(after) == 0
    assert second == "False" and 0.2 <= float(gave_up_after) < 5 and left == "0"


def test_two_gloo_ranks_train_on_different_data_and_write_one_package(ddp_run):
    root, r, seconds = ddp_run
    assert r.returncode == 0, f"stdout: {r.stdout[-1500:]}\nstderr: {r.stderr[-3000:]}"
    events = [json.loads(line) for line in r.stdout.splitlines()]    # rank 0 alone prints, one JSON per line
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("step") == STEPS and kinds.count("done") == 1
    start = events[0]
    assert start["world_size"] == 2 and start["effective_batch"] == 4 and start["precision"] == "fp32"

    # one package, nothing else written (the checkpoint folder is removed once the package is there)
    written = {p.name for p in root.iterdir()} - {"f", "parent", "cache", "debug-child"}
    assert written == {"child"}
    model = segloop.load_model(root / "child")
    t = model.spec.training
    assert t["world_size"] == 2 and t["batch_per_process"] == 2 and t["effective_batch"] == 4
    assert t["config"]["world_size"] == 2 and t["distributed"]["backend"] == "gloo"
    assert t["precision"]["precision"] == "fp32" and t["precision"]["reason"]
    assert t["steps_done"] == STEPS and t["stopped"] == "completed" and t["parent_metrics"]
    assert model.spec.parent["name"] == "tiny"

    # the two ranks drew different patches at every step
    seen = _debug(root, "child")
    assert [e["step"] for e in seen[0]] == [e["step"] for e in seen[1]] == list(range(1, STEPS + 1))
    assert seen[0][0]["sha256"] != seen[1][0]["sha256"]
    assert all(a["sha256"] != b["sha256"] for a, b in zip(seen[0], seen[1]))
    assert seen[0][0]["pid"] != seen[1][0]["pid"] and {e["world_size"] for e in seen[0] + seen[1]} == {2}


def test_a_setup_error_on_rank_0_stops_both_ranks_with_one_message(ddp_run):
    root = ddp_run[0]
    cmd, env = _torchrun(root, "child")                # exists: only rank 0 checks --out, rank 1 stops with it
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=90)
    assert r.returncode != 0
    assert r.stderr.count("segloop-train: error:") == 1 and "already exists" in r.stderr
    assert "[rank 1]" not in r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["event"] == "error"


def test_sigterm_to_torchrun_stops_every_rank_and_resume_gives_the_same_weights(ddp_run):
    import psutil

    root, first, _ = ddp_run
    assert first.returncode == 0
    cmd, env = _torchrun(root, "cut")
    with open(root / "cut-stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, env=env)
        events, sent = [], None
        try:
            for line in proc.stdout:
                events.append(json.loads(line))
                if events[-1]["event"] == "checkpoint" and sent is None:
                    proc.send_signal(signal.SIGTERM)         # to torchrun only; it passes it on to the workers
                    sent = time.perf_counter()
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    stopped_after = time.perf_counter() - sent
    pids = {e["pid"] for rank in _debug(root, "cut").values() for e in rank}
    assert len(pids) == 2
    for pid in pids:                                         # no worker left behind
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert stopped_after < 30, stopped_after
    last = events[-1]
    assert last["event"] == "cancelled" and last["package"] is None and last["step"] < STEPS
    assert not (root / "cut").exists()
    cut_at = int((checkpoint_dir(root / "cut") / "latest").read_text().split("-")[1])
    assert cut_at == last["step"]

    cmd, env = _torchrun(root, "cut", "--resume")
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.splitlines()[0])["resumed_from"] == cut_at
    t = segloop.load_model(root / "cut").spec.training
    assert t["resumed_from"] == cut_at and t["world_size"] == 2 and t["steps_done"] == STEPS
    a, b = load_package(root / "child").state_dict, load_package(root / "cut").state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)   # same data per rank and step
