"""SegUNet: SegNet max-unpooling with U-Net skip concatenation (2D and 3D).

SegNet's decoder puts each coarse value back at the position the encoder's
max pooling took it from.  ``MaxUnpool`` with argmax indices exports poorly to
ONNX, so the pooling switches are kept as a *switch mask* instead::

    pooled = max_pool(x)
    mask = (x == nearest_upsample(pooled))     # 1 at each window's max
    unpooled = nearest_upsample(y) * mask      # y placed at the max locations

This equals unpooling with argmax indices except where a window has tied
maxima (e.g. all-zero ReLU windows), where every tied position gets the value.
"""

from __future__ import annotations

import torch
from torch import nn

from ._blocks import ConvBlock, Encoder, SegmentationNet, conv, nearest_upsample, per_level, widths
from .registry import register

__all__ = ["SegUNet", "switch_mask", "unpool"]


def switch_mask(x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """Where each 2x max-pooling window took its maximum.

    Parameters
    ----------
    x : Tensor
        ``(N, C, *S)`` pooling input, ``S`` even.
    pooled : Tensor
        ``(N, C, *S / 2)``, ``max_pool(x)``.

    Returns
    -------
    Tensor
        ``(N, C, *S)`` of ``x.dtype``: 1 at the maxima, 0 elsewhere.
    """
    return (x == nearest_upsample(pooled)).to(x.dtype)


def unpool(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max-unpool ``y`` ``(N, C, *S / 2)`` to ``(N, C, *S)`` through a :func:`switch_mask`."""
    return nearest_upsample(y) * mask


class UnpoolBlock(nn.Module):
    """1x1 conv to the skip's width, unpool with the switch mask, concat skip, ``ConvBlock``.

    Shapes: ``y (N, in, *S/2)``, ``skip (N, out, *S)``, ``mask (N, out, *S)``
    ``-> (N, out, *S)``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, dims: int, n_convs: int,
                 norm: str, dropout: float):
        super().__init__()
        self.reduce = conv(dims, in_channels, out_channels, 1)
        self.conv = ConvBlock(2 * out_channels, out_channels, dims=dims, n_convs=n_convs,
                              norm=norm, dropout=dropout)

    def forward(self, y: torch.Tensor, skip: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([unpool(self.reduce(y), mask), skip], dim=1))


@register("segunet")
class SegUNet(SegmentationNet):
    """SegNet-style switch unpooling plus U-Net skips (MSD lung-tumour SegUNet).

    Encoder as in :class:`~segloop.core.networks.unet.UNet`; each decoder step
    brings the coarse features to the skip's width with a 1x1 conv, unpools
    them to the encoder's max locations (:func:`unpool`), concatenates the
    encoder features and applies a conv block; 1x1 conv head.

    Parameters
    ----------
    in_channels, out_channels : int
        Input channels and output logits.
    dims : {2, 3}
        Spatial dimensionality.
    depth : int
        Number of poolings; ``divisor = 2**depth``.
    base_width : int
        Channels of level 0 (level ``i``: ``base_width * 2**i``).
    convs_per_level : int or sequence of int
        3x3 convs per block (sequence: ``depth + 1`` entries, bottleneck last).
    norm : {"batch", "instance", "group", "layer", "none"}
        Normalisation after each 3x3 conv.
    dropout : float
        Dropout at the end of the bottleneck and of every decoder block.

    Shapes: ``(N, in_channels, *S) -> (N, out_channels, *S)`` logits, any ``S``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, dims: int = 2, depth: int = 4,
                 base_width: int = 32, convs_per_level=2, norm: str = "batch",
                 dropout: float = 0.0):
        super().__init__(in_channels, out_channels, dims=dims, depth=depth, dropout=dropout)
        w = widths(base_width, depth)
        convs = per_level(convs_per_level, self.depth + 1, "convs_per_level")
        self.encoder = Encoder(self.in_channels, w, dims=self.dims, convs=convs, norm=norm,
                               dropout=dropout)
        self.decoder = nn.ModuleList(
            UnpoolBlock(w[i + 1], w[i], dims=self.dims, n_convs=convs[i], norm=norm,
                        dropout=dropout)
            for i in reversed(range(self.depth)))
        self.head = conv(self.dims, w[0], self.out_channels, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        feats, pooled = self.encoder(x)
        y = feats[-1]
        for block, skip, down in zip(self.decoder, reversed(feats[:-1]), reversed(pooled),
                                     strict=True):
            y = block(y, skip, switch_mask(skip, down))
        return self.head(y)
