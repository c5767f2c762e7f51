"""Before and after a loop run: its options checked before anything is written, and what a run
that finished no round wrote removed again.

:func:`check_loop_options` and :func:`check_scratch_model` refuse bad options of
:func:`segloop_train.loop.run_loop` up front (messages name the option and its flag of
``segloop-train loop``), so a typo never leaves an ``out`` folder behind.  A run that still fails,
or is cancelled, before its first round finished has nothing worth keeping: :func:`entries_before`
and :func:`remove_new_entries` take away what it created, so the same command can run again.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segloop.errors import ActiveLearningError, ArchitectureArgumentsError, SegloopError

__all__ = ["check_loop_options", "check_scratch_model", "entries_before", "remove_new_entries"]


def _whole(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def check_loop_options(*, initial: int, batch: int, patch, lr: float, methods: Sequence[str], score: str) -> None:
    """Refuse training and ranking options that would only fail after ``out`` was written.

    Raises
    ------
    ActiveLearningError
        A negative ``initial``, ``batch`` or a patch side below 1, a learning rate that is not
        a positive number, an unknown uncertainty method or region score.
    """
    from segloop.core.inference.uncertainty import METHODS
    from segloop.core.learning.regions import SCORES

    if not _whole(initial) or initial < 0:
        raise ActiveLearningError(f"initial (--initial) must be a whole number of regions >= 0, got {initial!r}")
    if not _whole(batch) or batch < 1:
        raise ActiveLearningError(f"batch (--batch) must be at least 1, got {batch!r}")
    sides = [patch] if np.isscalar(patch) else list(patch)
    if not sides or not all(_whole(p) and p >= 1 for p in sides):
        raise ActiveLearningError(f"patch (--patch) must be a positive number of pixels, got {patch!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ActiveLearningError(f"lr (--lr) must be a positive number, got {lr!r}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ActiveLearningError(f"methods (--methods): unknown uncertainty method {unknown[0]!r}; choose from "
                                  f"{', '.join(METHODS)}" if unknown else
                                  f"methods (--methods): give at least one of {', '.join(METHODS)}")
    if score not in SCORES:
        raise ActiveLearningError(f"score (--score): unknown region score {score!r}; choose from {', '.join(SCORES)}")


def check_scratch_model(model) -> None:
    """Refuse a :class:`segloop_train.loop.ScratchModel` whose network cannot be built.

    The architecture and its keyword arguments are tried on PyTorch's ``meta`` device
    (:func:`segloop.core.inference.model.check_network_arguments`: no memory for weights), the
    normalization spec is read, and ``dims`` / ``context_slices`` are checked.

    Raises
    ------
    ArchitectureArgumentsError, UnknownArchitectureError
        ``--arch`` / ``--arch-kwargs`` that do not make a network.
    ActiveLearningError
        ``dims`` or ``context_slices`` out of range.
    ModelPackageError
        A bad normalization spec.
    """
    from segloop.core.formats.normalization import spec_from_dict
    from segloop.core.inference.model import check_network_arguments

    dims, k = model.dims, model.context_slices
    if dims not in (2, 3) or isinstance(dims, bool):
        raise ActiveLearningError(f"dims (--dims) must be 2 or 3, got {dims!r}")
    if not _whole(k) or k < 1 or k % 2 == 0:
        raise ActiveLearningError(f"context_slices (--context-slices) must be an odd number >= 1, got {k!r}")
    if k > 1 and dims != 2:
        raise ActiveLearningError("context_slices (--context-slices) > 1 makes a 2.5D network, which is 2D: give "
                                  "dims 2 with it")
    if model.normalization is not None:
        try:
            spec_from_dict(model.normalization)
        except SegloopError as e:
            raise type(e)(f"normalization (--normalization): {e}") from None
    kwargs = model.architecture_kwargs
    if not isinstance(kwargs, dict):
        raise ArchitectureArgumentsError(f"architecture_kwargs (--arch-kwargs) must be a JSON object such as "
                                         f'{{"depth": 3}}, got {kwargs!r}')
    n_classes = len(model.classes) + (1 if model.task == "instance" else 0)     # instance: + boundary
    check_network_arguments(model.architecture, kwargs, dims=dims, in_channels=k, n_classes=max(n_classes, 2),
                            source="architecture_kwargs (--arch-kwargs)")


def entries_before(*folders: Path) -> dict[Path, set[str] | None]:
    """What each folder holds now (``None``: it does not exist), for :func:`remove_new_entries`."""
    return {Path(f): (set(os.listdir(f)) if Path(f).is_dir() else None) for f in folders}


def remove_new_entries(before: dict[Path, set[str] | None]) -> None:
    """Remove what was created in (or as) the folders of ``before`` since it was taken.

    A folder that did not exist is removed whole; in one that did, only the new entries are.
    Used when a run finished no round: nothing it wrote is a result, and a leftover ``out``
    would block the same command from running again.  Errors while removing are ignored.
    """
    for folder, names in before.items():
        if not folder.is_dir():
            continue
        if names is None:
            shutil.rmtree(folder, ignore_errors=True)
            continue
        for name in set(os.listdir(folder)) - names:
            p = folder / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                try:
                    p.unlink()
                except OSError:
                    pass
