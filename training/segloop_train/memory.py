"""The memory a training run needs, checked before its network is built.

A training step holds the weights four times (weights, gradients, AdamW's two moments) and the
activations autograd keeps for a batch of patches.  :func:`check_training_memory` estimates both
without allocating (:func:`segloop.core.networks.check_network`: bounds of the architecture's
settings, a ``meta``-device build, a closed-form activation count; the formula is in
:mod:`segloop.core.networks.memory`) and refuses, with the figures, a run that would not fit in
the memory available on its device - instead of the kernel killing it half-way.
:func:`fit_training_patch` finds the patch the run will use without building the network.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from segloop.core.formats.package import ModelSpec
from segloop.core.networks import MemoryEstimate, build, check_network, network_facts
from segloop_train.preparation import fit_patch, fit_patch_3d, patch_shape, scratch_input

__all__ = ["SCRATCH_SOURCE", "check_loop_memory", "check_training_memory", "fit_training_patch", "network_divisor"]

#: How messages name the settings of a network trained from scratch.
SCRATCH_SOURCE = "arch_kwargs (--arch-kwargs)"


def network_divisor(spec: ModelSpec, *, source: str | None = None) -> int:
    """The size divisor (``2**depth``) of ``spec``'s network, from a ``meta``-device build (nothing allocated).

    Raises
    ------
    ArchitectureArgumentsError, UnknownArchitectureError
        Settings out of bounds, or that the constructor refuses.
    """
    facts = network_facts(spec.architecture, spec.in_channels, spec.n_classes, dims=spec.dims,
                          kwargs=spec.architecture_kwargs, source=source)
    if facts is not None:
        return facts.divisor
    # a constructor that cannot run on the meta device: build it to ask
    return int(getattr(build(spec.architecture, spec.in_channels, spec.n_classes, dims=spec.dims,
                             **spec.architecture_kwargs), "divisor", 1))


def fit_training_patch(spec: ModelSpec, patch, sizes: Sequence[tuple[int, ...]], *, source: str | None = None
                       ) -> tuple[int | tuple[int, int, int], str | None]:
    """The patch a run on samples of ``sizes`` trains with, and a warning if it differs from ``patch``.

    :func:`~segloop_train.preparation.fit_patch` (2D, 2.5D) or
    :func:`~segloop_train.preparation.fit_patch_3d` with the network's divisor
    (:func:`network_divisor`).

    Raises
    ------
    ValueError
        A 2D / 2.5D model given three patch sizes.
    """
    divisor = network_divisor(spec, source=source)
    if spec.dims == 3:
        return fit_patch_3d(patch, sizes, divisor)
    if not np.isscalar(patch):
        raise ValueError(f"a 2D / 2.5D model trains on square patches: give one patch side (--patch), not {patch!r}")
    return fit_patch(int(patch), [tuple(sz[-2:]) for sz in sizes], divisor)


def check_training_memory(spec: ModelSpec, patch, *, batch: int, device, scratch: bool,
                          source: str | None = None) -> MemoryEstimate | None:
    """Refuse a training step of ``spec``'s network that would not fit in memory, before it is built.

    Parameters
    ----------
    spec : ModelSpec
        The network to train (from scratch or a parent's).
    patch : int or tuple of int
        The patch the run trains with (after fitting), an int is a square / cube.
    batch : int
        Patches per step and process.
    device : str
        Where the run trains (``"cpu"``, ``"cuda:0"`` ...).  On the CPU, the processes of a
        ``torchrun`` on this machine (``LOCAL_WORLD_SIZE``) share its memory.
    scratch : bool
        Trained from scratch (the advice names ``--arch-kwargs``) or fine-tuning a parent.
    source : str, optional
        The start of the message; default :data:`SCRATCH_SOURCE` from scratch, the parent's
        name otherwise.

    Returns
    -------
    MemoryEstimate or None
        None when the architecture cannot be estimated.

    Raises
    ------
    ArchitectureArgumentsError
        Settings out of bounds.
    NetworkTooLargeError
        The estimate is above the memory available; the message gives both figures, what to
        lower and, when one would, the largest batch that fits.
    """
    processes = 1
    if str(device) == "cpu":
        try:
            processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        except ValueError:
            processes = 1
    advice = ("lower depth or base_width (--arch-kwargs), --patch or --batch" if scratch
              else "lower --patch or --batch")
    return check_network(spec.architecture, spec.in_channels, spec.n_classes, dims=spec.dims,
                         kwargs=spec.architecture_kwargs, shape=patch_shape(patch, spec.dims), batch=int(batch),
                         training=True, device=device, source=source or (SCRATCH_SOURCE if scratch else spec.name),
                         advice=advice, batch_flag="--batch", processes=processes)


def check_loop_memory(parent, model, classes: Sequence[str], task: str, pool: Mapping[str, np.ndarray],
                      truth: Mapping[str, np.ndarray], *, patch, batch: int, device) -> MemoryEstimate | None:
    """:func:`check_training_memory` for the rounds of an active-learning loop, before it writes anything.

    Parameters
    ----------
    parent : segloop_train.loop.ScratchModel or str
        What the loop starts from.
    model : Model or None
        The loaded parent model; None for a network trained from scratch (``parent``).
    classes : sequence of str
        The folder's classes (instance models: background and one object class).
    task : {"instance", "semantic"}
    pool, truth : mapping of str -> ndarray
        The pool images and their ground truth.  A scratch network's input channels come from
        the first image; each round exports whole images, so the patch is fitted to the
        ground truth's shapes as :func:`segloop_train.finetune` will.
    patch, batch, device
        Of each round's fine-tuning.

    Raises
    ------
    ArchitectureArgumentsError, NetworkTooLargeError
    """
    first = next(iter(truth))
    if model is not None:
        spec, scratch = model.spec, False
    else:
        in_c, norm = scratch_input(pool[first], truth[first].ndim, parent.normalization, parent.context_slices)
        model_classes = (*classes, "boundary") if task == "instance" else tuple(classes)
        spec = ModelSpec(name=parent.name, version="0.0.0", architecture=parent.architecture,
                         architecture_kwargs=dict(parent.architecture_kwargs), dims=parent.dims, in_channels=in_c,
                         classes=model_classes, task=task, postprocess={}, normalization=norm,
                         context_slices=parent.context_slices)
        scratch = True
    source = "architecture_kwargs (--arch-kwargs)" if scratch else spec.name
    patch_used, _ = fit_training_patch(spec, patch, [g.shape for g in truth.values()], source=source)
    return check_training_memory(spec, patch_used, batch=batch, device=device, scratch=scratch, source=source)
