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

from ._blocks import (
    DROPOUT_ELEMENTS,
    NORM_ELEMENTS,
    ConvBlock,
    Encoder,
    SegmentationNet,
    conv,
    level_fraction,
    nearest_upsample,
    per_level,
    widths,
)
from .limits import BASE_WIDTH, CONVS_PER_LEVEL, DEPTH, DROPOUT
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


@register("segunet", limits=(DEPTH, BASE_WIDTH, CONVS_PER_LEVEL, DROPOUT))
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
        self.widths, self.convs, self.norm_kind = w, convs, norm
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

    def activation_elements(self, *, training: bool) -> float:
        """Activation elements per input voxel and sample (see :meth:`SegmentationNet.activation_elements`).

        As :meth:`UNet.activation_elements <segloop.core.networks.unet.UNet.activation_elements>`,
        but a decoder step keeps the 1x1 conv's output (``f_(i+1) w_i``), the unpooled
        features and the switch mask (``2 f_i w_i``) beside the concatenation and its convs,
        and inference also keeps the pooled features for the switch masks and a wider
        working set (``7 w_0``).
        """
        w, n, d = self.widths, self.convs, self.dims
        f = [level_fraction(i, d) for i in range(self.depth + 1)]
        c = NORM_ELEMENTS.get(self.norm_kind, 1.0)
        drop = DROPOUT_ELEMENTS if self.has_dropout else 0.0
        if not training:
            pooled = sum(f[i + 1] * w[i] for i in range(self.depth))
            return (self.in_channels + sum(fi * wi for fi, wi in zip(f, w, strict=True)) + pooled
                    + 7.0 * w[0] + 2.0 * self.out_channels)
        total = self.in_channels + 5.0 * self.out_channels + f[-1] * w[-1] * drop
        for i in range(self.depth + 1):
            total += f[i] * n[i] * w[i] * (1.0 + c)
        for i in range(self.depth):
            total += 4.0 * f[i + 1] * w[i] + f[i] * w[i] * (4.0 + n[i] * (1.0 + c) + drop)
        return total
