"""Data-parallel training on several processes (``torchrun``); no Qt, no napari.

::

    torchrun --nproc_per_node N -m segloop_train FOLDER... --from MODEL --out DIR ...

:func:`segloop_train.finetune` reads the torchrun environment (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR`` / ``MASTER_PORT``) through :func:`from_env`; with more than
one process it joins the process group (NCCL when training on CUDA, each rank on
``cuda:LOCAL_RANK``; gloo on the CPU) and wraps the network in
:class:`~torch.nn.parallel.DistributedDataParallel`, which averages the gradients.  With one
process (or no torchrun) nothing here is used and a run is exactly a plain run.

How the work is shared:

* **Data** - the patch sampler is random, not an indexed dataset, so the equivalent of a
  ``DistributedSampler`` is the generator of each step: rank ``r`` draws the patches of step
  ``i`` from ``numpy.random.default_rng([seed, i, r])`` (:func:`step_entropy`; rank 0 keeps
  ``[seed, i]``, the stream of a single-process run).  Different ranks therefore draw
  different patches at every step, and a run is reproducible for a given number of processes.
  Each step trains on ``world_size x batch`` patches (the *effective batch*, recorded in the
  package), and an epoch is correspondingly fewer steps.  The learning rate is not scaled
  with the effective batch; pass ``--lr`` for that.
* **Rank 0 only** evaluates, writes checkpoints, prints progress / JSON lines and writes the
  package; it alone reads and checks the checkpoint on ``--resume`` and sends the optimizer
  state to the others (the weights reach them through DDP's initial broadcast), so only
  rank 0 needs to see ``--out`` (every rank reads the training folders and the parent).  The
  other ranks wait in the next collective.  ``--resume`` needs the same number of processes
  as the run that wrote the checkpoint (it is part of the data order), and then continues
  exactly as the uninterrupted run would have on the CPU.
* **Stopping** - before every step the ranks agree (one ``all_reduce(MAX)``) on a stop code:
  cancel (SIGTERM / SIGINT on any rank, or the API's cancel token), early stopping (decided by
  rank 0), or an error on some rank.  After the forward pass a second ``all_reduce`` shares
  the loss (the mean is what is reported) and whether any rank got a non-finite loss, ran out
  of memory (all ranks halve the batch together) or failed.  So an error or a cancel on one
  rank stops all of them at the same step; a rank that fails says why, the others end with
  :class:`PeerFailedError`.  (A crash inside the backward pass itself - the one place with
  no agreement - ends that process; torchrun then stops the others.)

``SIGTERM`` to ``torchrun`` (or Ctrl-C) reaches every worker; they finish the step, rank 0
writes a checkpoint and the package from the best weights, and all exit.  torchrun kills
workers that take longer than its ``--shutdown-timeout`` (30 s by default): raise it for
large models.
BatchNorm statistics are per rank (``broadcast_buffers=False``); only rank 0's are saved.

**Ending cleanly** - gloo runs each collective on a worker thread, which lets go of the
collective's tensors a moment *after* the caller has been woken.  With torch's PyObject
preservation that release needs the GIL; a worker thread that asks for it once the interpreter
is finalizing is ended by ``pthread_exit`` inside a C++ destructor, and the process aborts
("terminate called without an active exception", SIGABRT) after a run that had finished - on a
busy machine, about one run in twenty.  DDP keeps the group's threads alive after
``destroy_process_group``, so :meth:`DistContext.close` first waits, with the GIL free, until
the threads have let go of every tensor this module handed to a collective
(:meth:`DistContext.settle`).
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from segloop.errors import SegloopError

__all__ = ["DEBUG_ENV", "DistContext", "PeerFailedError", "debug_batches", "distributed_requested", "from_env",
           "step_entropy", "step_torch_seed", "wrap_ddp"]

#: When set to a folder, every rank appends one JSON line per step to ``rank-<r>.jsonl`` there:
#: step, rank, world size, pid and the sha256 of the batch it trained on (tests and debugging).
DEBUG_ENV = "SEGLOOP_TRAIN_DEBUG_DIR"


class PeerFailedError(SegloopError, RuntimeError):
    """Another rank of this distributed run failed (that rank says why); this one stopped with it."""

    def __init__(self, message: str, *, ranks: list[int] | None = None, quiet: bool = False):
        super().__init__(message)
        self.ranks = list(ranks or [])
        #: True when rank 0 reports the error: the CLI of the other ranks prints nothing.
        self.quiet = quiet


#: Stop codes agreed before each step (the largest wins).
GO, CANCEL, EARLY, ERROR = 0, 1, 2, 3


def step_entropy(seed: int, step: int, rank: int = 0) -> list[int]:
    """Entropy of the generator of ``step`` on ``rank``: ``[seed, step]`` on rank 0, else ``[seed, step, rank]``."""
    return [int(seed), int(step)] if rank == 0 else [int(seed), int(step), int(rank)]


def step_torch_seed(seed: int, step: int, rank: int = 0) -> int:
    """torch seed of ``step`` on ``rank`` (dropout etc.); rank 0 keeps the single-process seed."""
    return int(seed) * 1_000_003 + int(step) + int(rank) * (1 << 40)


@dataclass
class DistContext:
    """This process's place in a distributed run (``world_size == 1``: a plain run)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False
    device: str = "cpu"             # where collective tensors live (cuda:N with NCCL)
    #: The tensors of the last collectives, until the backend's threads have let go of them.
    handed: deque = field(default_factory=lambda: deque(maxlen=32), repr=False, compare=False)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def to_dict(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend}

    # ------------------------------------------------------------------ collectives

    def max_code(self, code: int) -> int:
        """The largest stop code over all ranks."""
        if not self.enabled:
            return int(code)
        import torch.distributed as dist

        t = torch.tensor([int(code)], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        self.handed.append(t)
        return int(t.item())

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over all ranks (float64)."""
        if not self.enabled:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        self.handed.append(t)
        return [float(v) for v in t.tolist()]

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (rank 0 gets its own object back).

        ``obj`` may hold dicts, lists, tuples, strings, numbers, None and tensors: it is sent as
        ``torch.save`` bytes and read back with ``torch.load(..., weights_only=True)``, as
        checkpoints are, so no arbitrary object is ever unpickled.
        """
        if not self.enabled:
            return obj
        import io

        import torch.distributed as dist

        if self.is_main:
            buf = io.BytesIO()
            torch.save(obj, buf)
            data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8).to(self.device)
            size = torch.tensor([data.numel()], dtype=torch.int64, device=self.device)
        else:
            size = torch.zeros(1, dtype=torch.int64, device=self.device)
        dist.broadcast(size, src=0)
        if not self.is_main:
            data = torch.empty(int(size.item()), dtype=torch.uint8, device=self.device)
        dist.broadcast(data, src=0)
        self.handed.extend((size, data))
        if self.is_main:
            return obj
        return torch.load(io.BytesIO(data.cpu().numpy().tobytes()), map_location="cpu", weights_only=True)

    def agree(self, error: BaseException | None, what: str) -> None:
        """Raise on every rank if any rank failed ``what``; return when none did.

        The rank that failed raises its own error; the others raise :class:`PeerFailedError`.
        When rank 0 failed, the others stay quiet even if they failed too (most likely the same
        error), so the message is printed once.
        """
        if not self.enabled:
            if error is not None:
                raise error
            return
        flags = [0.0] * self.world_size
        flags[self.rank] = 1.0 if error is not None else 0.0
        failed = [r for r, v in enumerate(self.sum(flags)) if v > 0]
        if not failed:
            return
        if error is not None and (self.is_main or 0 not in failed):
            raise error
        raise PeerFailedError(f"stopped because rank(s) {failed} of this distributed run failed {what}",
                              ranks=failed, quiet=0 in failed and not self.is_main)

    def settle(self, timeout: float = 10.0) -> bool:
        """Wait until the backend's threads have let go of the tensors of the last collectives.

        True when they all have; False after ``timeout`` seconds.  A tensor that only this
        context still holds has a reference count of two (the local name and the argument of
        ``sys.getrefcount``); while a gloo work still holds it, torch keeps one more.  Sleeping
        between looks leaves the GIL free for the thread that drops it (see the module's
        "Ending cleanly").
        """
        deadline = time.monotonic() + timeout
        while self.handed:
            t = self.handed.popleft()
            while sys.getrefcount(t) > 2:
                if time.monotonic() > deadline:
                    self.handed.clear()
                    return False
                time.sleep(0.001)
            del t
        return True

    def close(self) -> None:
        self.settle()
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


def debug_batches(ctx: DistContext):
    """A ``(step, x, y) -> None`` recorder of batch hashes when :data:`DEBUG_ENV` is set, else None."""
    folder = os.environ.get(DEBUG_ENV)
    if not folder:
        return None
    import hashlib
    import json
    from pathlib import Path

    path = Path(folder) / f"rank-{ctx.rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)

    def record(step: int, x, y) -> None:
        h = hashlib.sha256()
        h.update(x.tobytes())
        h.update(y.tobytes())
        line = {"step": int(step), "rank": ctx.rank, "world_size": ctx.world_size, "pid": os.getpid(),
                "batch": int(len(x)), "sha256": h.hexdigest()}
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")

    return record


def wrap_ddp(net: torch.nn.Module, ctx: DistContext, device: str) -> torch.nn.Module:
    """``net`` in DistributedDataParallel (``net`` itself with one process).

    Rank 0's weights and buffers reach the others once, at construction; after that BatchNorm
    statistics stay per rank (only rank 0's are saved), which saves a broadcast per step.
    """
    if not ctx.enabled:
        return net
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    ids = [torch.device(device).index] if device.startswith("cuda") else None
    return DistributedDataParallel(net, device_ids=ids, **no_sync)


def distributed_requested() -> bool:
    """True under torchrun with more than one process, or inside an initialized process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return _env_int("WORLD_SIZE", 1) > 1


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def from_env(device: str) -> tuple[DistContext, str]:
    """Join the torchrun process group when there is one; return the context and the device to use.

    ``device`` is the resolved device (``cpu``, ``cuda``, ``cuda:N``, ``mps``).  With more than
    one process a CUDA device becomes ``cuda:LOCAL_RANK`` and the backend NCCL; the CPU uses
    gloo.  An already initialized default process group (a caller's own) is used as it is.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        ws, rank = dist.get_world_size(), dist.get_rank()
        if ws <= 1:
            return DistContext(), device
        backend = str(dist.get_backend())
        local = _env_int("LOCAL_RANK", rank)
        if device.startswith("cuda"):
            device = f"cuda:{local}"
            torch.cuda.set_device(device)
        return DistContext(ws, rank, local, backend, False, device if backend == "nccl" else "cpu"), device
    ws = _env_int("WORLD_SIZE", 1)
    if ws <= 1:
        return DistContext(), device
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch has no torch.distributed")
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device == "mps":
        raise ValueError("distributed training runs on CUDA (NCCL) or on the CPU (gloo), not on MPS; "
                         "use --device cpu")
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, init_method="env://", world_size=ws, rank=rank)
    return DistContext(ws, rank, local, backend, True, device if backend == "nccl" else "cpu"), device
