"""Dice + cross-entropy with ignored (unreviewed) pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segloop_train.data import IGNORE

__all__ = ["dice_ce_loss"]


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, *, class_weights: torch.Tensor | None = None,
                 ignore_index: int = IGNORE, dice_weight: float = 1.0, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice (foreground classes) + weighted cross-entropy.

    Parameters
    ----------
    logits : (N, K, ...) float tensor
    target : (N, ...) int64 tensor
        Class ids; ``ignore_index`` pixels contribute nothing to either term
        (and so nothing to the gradient).
    class_weights : (K,) tensor, optional
    """
    valid = target != ignore_index
    ce = F.cross_entropy(logits, torch.where(valid, target, 0), weight=class_weights, reduction="none")
    vf = valid.to(logits.dtype)
    ce = (ce * vf).sum() / vf.sum().clamp(min=1)
    if dice_weight == 0:
        return ce
    probs = torch.softmax(logits, dim=1)
    k = logits.shape[1]
    onehot = F.one_hot(torch.where(valid, target, 0), k).movedim(-1, 1).to(probs.dtype)
    m = vf.unsqueeze(1)
    dims = (0,) + tuple(range(2, logits.ndim))
    inter = (probs * onehot * m).sum(dims)
    denom = (probs * m).sum(dims) + (onehot * m).sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)
    return ce + dice_weight * (1 - dice[1:].mean())
