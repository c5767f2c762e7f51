"""Slide blocks on ``dask.distributed``: a local cluster, or any scheduler's workers.

:func:`segloop.core.inference.slide.run_block` takes only a path, a plan (a dict) and a block key,
and opens the slide and loads the model itself (once per worker process), so a block is one small
task.  Workers write their blocks straight into the output OME-Zarr (blocks own whole chunks, so no
two workers write the same chunk) and record each finished block; the caller stitches at the
end.  A worker that dies mid-block leaves no finished record: dask retries the task elsewhere
(``retries``), and a rerun of the whole job resumes from the recorded blocks.

Workers must see the slide and the output folder at the same paths (a shared file system on a
cluster).  For SLURM/PBS, start the cluster with dask-jobqueue and pass its scheduler address
(``segloop predict ... --scheduler tcp://HOST:8786``); GPU workers: start them with
``--resources GPU=1`` and every block asks for one GPU.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator

from segloop.errors import Cancelled, SegloopError

__all__ = ["ClusterError", "make_client", "run_blocks_on"]


class ClusterError(SegloopError, RuntimeError):
    """No cluster: dask.distributed missing, a scheduler that does not answer, a bad --cluster."""


def make_client(cluster: str | None = None, scheduler: str | None = None, *, timeout: float = 10.0,
                threads_per_worker: int = 1):
    """A ``dask.distributed.Client``: ``cluster="local:N"`` starts N worker processes here;
    ``scheduler="tcp://HOST:PORT"`` connects to a running scheduler.

    Raises
    ------
    ClusterError
        dask.distributed is not installed, ``cluster`` is not ``local:N``, or the scheduler does
        not answer within ``timeout`` seconds.
    """
    try:
        from distributed import Client
    except ImportError:
        raise ClusterError('dask.distributed is not installed: pip install "napari-segloop[wsi]"') from None
    if scheduler:
        try:
            return Client(scheduler, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise ClusterError(f"the scheduler at {scheduler} does not answer ({type(e).__name__}); start it or "
                               "check the address") from None
    m = re.fullmatch(r"local:(\d+)", str(cluster or ""))
    if not m or int(m[1]) < 1:
        raise ClusterError(f"--cluster {cluster!r}: write local:N (N worker processes on this machine)")
    # the client owns this cluster (closed with it); not the default scheduler, so the lazy slide
    # arrays this process reads still compute here
    n = int(m[1])
    threads = str(max(1, (os.cpu_count() or 1) // n))    # torch in each worker: its share of the cores
    return Client(n_workers=n, threads_per_worker=threads_per_worker, processes=True, dashboard_address=None,
                  set_as_default=False, env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})


def run_blocks_on(client, run_block: Callable[..., dict], out: str, plan: dict, keys: list[str], *, cancel=None,
                  retries: int = 1) -> Iterator[dict]:
    """Run ``run_block(out, plan, key)`` for each of ``keys`` on ``client``'s workers; yield each
    block's record as it ends (:func:`segloop.core.inference.slide.run_block`).

    Raises
    ------
    Cancelled
        ``cancel`` was set: the blocks not started are cancelled (running ones finish or are
        dropped; finished ones stay recorded).
    SegloopError
        A block failed on a worker (its error, e.g. a read error in the slide), after ``retries``.
    """
    from distributed import as_completed

    resources = {"GPU": 1} if str(plan.get("predict", {}).get("device", "")).startswith("cuda") else None
    futures = [client.submit(run_block, out, plan, key, key=f"segloop-block-{key}-{abs(hash(out))}",
                             retries=retries, pure=False, resources=resources) for key in keys]
    try:
        for fut in as_completed(futures, loop=client.loop):
            if cancel is not None and (cancel.is_set() if hasattr(cancel, "is_set") else cancel()):
                raise Cancelled("cancelled: finished blocks are kept; run again with the same settings to resume")
            try:
                yield fut.result()
            except SegloopError:
                raise
            except Exception as e:  # noqa: BLE001 (a worker's failure: say which block, keep it one line)
                raise SegloopError(f"a worker failed on a block: {type(e).__name__}: {e}") from None
    finally:
        client.cancel([f for f in futures if not f.done()])
