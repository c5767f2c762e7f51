"""Checkpoints of a fine-tuning run: written atomically, read back safely, checked before a resume.

``<out>.ckpt/latest`` names the newest ``step-NNNNNNN/`` folder, which holds
``weights.safetensors``, ``best.safetensors`` (best evaluated weights so far),
``checkpoint.json`` (architecture, config, history ...) and ``state.pt`` (optimizer,
scheduler, RNG and step as plain tensors and dicts, saved with ``torch.save`` and read back
only with ``torch.load(..., weights_only=True)``).  Each folder is written to a temporary
folder and renamed into place, and ``latest`` is replaced atomically
(:mod:`segloop.core._runtime`), so a kill leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import torch

from segloop.core._runtime import atomic_output, atomic_write_bytes, atomic_write_text, fsync_dir
from segloop.core.formats.package import ModelSpec
from segloop.errors import ModelPackageError
from segloop_train.config import RESUME_KEYS, FinetuneConfig, resume_value

__all__ = ["CKPT_FORMAT", "CKPT_VERSION", "arch_of", "check_out", "check_resume", "checkpoint_dir",
           "load_checkpoint", "save_checkpoint", "state_copy"]

CKPT_FORMAT = "segloop-train-checkpoint"
CKPT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
#: Values of model keys that checkpoints written before the key existed did not record.
_ARCH_DEFAULTS = {"context_slices": 1}


def checkpoint_dir(out: str | os.PathLike) -> Path:
    """Where a run writing ``out`` keeps its checkpoints: ``<out>.ckpt`` next to it."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


def check_out(out: Path, ckpt: Path, *, resume: bool) -> None:
    """Refuse an existing or unwritable ``out`` before any work is done."""
    if out.exists():
        raise ModelPackageError(f"{out} already exists; packages are never overwritten, choose a new --out")
    for parent in (out.parent, ckpt.parent):
        try:
            parent.mkdir(parents=True, exist_ok=True)
            probe = Path(tempfile.mkdtemp(prefix=".segloop-write-test-", dir=parent))
            probe.rmdir()
        except OSError as e:
            raise ModelPackageError(
                f"cannot write the new package to {out}: {parent} is not a writable folder "
                f"({e.strerror or e}); choose an --out in a folder you can write to") from None
    latest = ckpt / "latest"
    if not resume and latest.exists():
        raise ModelPackageError(
            f"{ckpt} holds a checkpoint of an earlier run; pass --resume to continue it, or delete "
            f"{ckpt} to start again")


def state_copy(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The network's weights, detached, on the CPU, contiguous (safe to keep while training goes on)."""
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in net.state_dict().items()}


def save_checkpoint(ckpt: Path, *, meta: dict, weights: dict[str, torch.Tensor],
                    best: dict[str, torch.Tensor] | None, state: dict) -> Path:
    """Write ``ckpt/step-NNNNNNN`` atomically, point ``latest`` at it, drop older ones."""
    from safetensors.torch import save as st_save

    ckpt.mkdir(parents=True, exist_ok=True)
    name = f"step-{meta['step']:07d}"
    tmp = ckpt / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        atomic_write_bytes(tmp / "weights.safetensors", st_save(weights, metadata={"format": CKPT_FORMAT}))
        if best is not None:
            atomic_write_bytes(tmp / "best.safetensors", st_save(best, metadata={"format": CKPT_FORMAT}))
        with atomic_output(tmp / "state.pt") as path:
            torch.save(state, path)
        atomic_write_text(tmp / "checkpoint.json", json.dumps(meta, indent=1) + "\n")
        dest = ckpt / name
        if dest.exists():                      # left by a run killed before it updated `latest`
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        fsync_dir(ckpt)
        atomic_write_text(ckpt / "latest", name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for p in ckpt.iterdir():
        if p.name != name and (_STEP_DIR.match(p.name) or p.name.startswith((".tmp-", ".latest"))):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return ckpt / name


def load_checkpoint(ckpt: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict]:
    """(meta, weights, best weights or None, trainer state) of the newest checkpoint in ``ckpt``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    latest = ckpt / "latest"
    if not latest.is_file():
        raise ModelPackageError(
            f"nothing to resume: no checkpoint in {ckpt}; run without --resume to start a new run")
    step_dir = ckpt / latest.read_text().strip()
    try:
        meta = json.loads((step_dir / "checkpoint.json").read_text())
        if meta.get("format") != CKPT_FORMAT or meta.get("format_version") != CKPT_VERSION:
            raise ValueError(f"format {meta.get('format')!r} version {meta.get('format_version')!r}")
        weights = load_file(step_dir / "weights.safetensors")
        best_path = step_dir / "best.safetensors"
        best = load_file(best_path) if best_path.is_file() else None
        state = torch.load(step_dir / "state.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, SafetensorError, RuntimeError) as e:
        raise ModelPackageError(f"checkpoint {step_dir} cannot be read ({type(e).__name__}: {e}); delete "
                                f"{ckpt} and start again") from None
    return meta, weights, best, state


def arch_of(spec: ModelSpec) -> dict:
    """The network a checkpoint was made for (a resume must build the same one)."""
    return {"architecture": spec.architecture, "architecture_kwargs": spec.architecture_kwargs,
            "dims": spec.dims, "in_channels": spec.in_channels, "classes": list(spec.classes),
            "context_slices": spec.context_slices}


def check_resume(meta: dict, ckpt: Path, spec: ModelSpec, config: FinetuneConfig, fingerprints: list[str],
                 parent_sha: str | None) -> None:
    """Refuse to resume a checkpoint of another network, other settings, other data or another parent."""
    have, want = {**_ARCH_DEFAULTS, **meta.get("model", {})}, arch_of(spec)
    if have != want:
        diffs = [f"{k} {have.get(k)!r} (this run: {want[k]!r})" for k in want if have.get(k) != want[k]]
        raise ModelPackageError(
            f"checkpoint {ckpt} was made for another network: {'; '.join(diffs)}. Resume with the same "
            f"--from / --arch as the run that wrote it, or delete {ckpt} to start again")
    cfg = meta.get("config", {})
    new = json.loads(json.dumps(config.to_dict()))
    diffs = [f"{k} {resume_value(k, cfg)!r} (now {new[k]!r})" for k in RESUME_KEYS
             if resume_value(k, cfg) != new[k]]
    if "world_size" in [d.split()[0] for d in diffs]:
        diffs.append(f"resume with torchrun --nproc_per_node {cfg.get('world_size', 1)} (or without torchrun "
                     "when that is 1)")
    if diffs:
        raise ModelPackageError(
            f"checkpoint {ckpt} was made with other settings: {'; '.join(diffs)}. Resume with the same "
            f"settings, or delete {ckpt} to start again")
    if meta.get("fingerprints") != fingerprints:
        raise ModelPackageError(
            f"the training data changed since checkpoint {ckpt} was written (folder fingerprints differ); "
            f"resume on the same folders, or delete {ckpt} to start again")
    if meta.get("parent_sha256") != parent_sha:
        raise ModelPackageError(f"checkpoint {ckpt} was made from another parent model; resume with the same "
                                f"--from, or delete {ckpt} to start again")
