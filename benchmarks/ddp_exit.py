"""How often a finished 2-rank gloo run aborts at exit, with and without ``DistContext.settle``.

A reliability count, not a timing: the end of every ``segloop-train`` run under torchrun is
one broadcast (the outcome) and then :meth:`DistContext.close`.  Each trial starts a 2-rank
torchrun whose workers wrap a small network in DDP (which keeps gloo's threads alive after the
group is destroyed, as in a real run), broadcast a result, and then either

* ``destroy``: destroy the process group directly (the code before the fix, the named baseline), or
* ``close``: ``DistContext.close()``, which settles first.

Busy processes load the CPUs (the race needs gloo's thread to be descheduled for a few
milliseconds, as on a shared CI machine).  A trial is an *abort* when a worker dies with
"terminate called without an active exception".

    python benchmarks/ddp_exit.py --trials 60 --hogs 3
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import sys, torch
import torch.distributed as dist
from segloop_train.distributed import from_env, wrap_ddp
ctx, _ = from_env("cpu")
ddp = wrap_ddp(torch.nn.Conv2d(1, 4, 3), ctx, "cpu")
ctx.broadcast({"a": list(range(1000))})
if sys.argv[1] == "close":
    ctx.close()
else:
    dist.destroy_process_group()
"""


def trial(script: Path, mode: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "training")])}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", str(random.randint(30000, 50000)), str(script), mode],
                       capture_output=True, text=True, env=env, timeout=120)
    if "terminate called without an active exception" in r.stderr:
        return "abort"
    return "ok" if r.returncode == 0 else "other"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=60, help="runs per mode")
    ap.add_argument("--hogs", type=int, default=3, help="busy processes loading the CPUs")
    args = ap.parse_args()
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "worker.py"
            script.write_text(WORKER)
            print(f"{'mode':8} {'trials':>6} {'ok':>4} {'aborts':>6} {'other':>5} {'s/trial':>7}")
            for mode in ("destroy", "close"):
                t0 = time.perf_counter()
                out = [trial(script, mode) for _ in range(args.trials)]
                print(f"{mode:8} {args.trials:6d} {out.count('ok'):4d} {out.count('abort'):6d} "
                      f"{out.count('other'):5d} {(time.perf_counter() - t0) / args.trials:7.1f}", flush=True)
    finally:
        for h in hogs:
            h.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
