"""U-Net (Ronneberger et al. 2015) for 2D and 3D, and the 26-layer nuclei preset."""

from __future__ import annotations

import torch
from torch import nn

from ._blocks import (
    DROPOUT_ELEMENTS,
    NORM_ELEMENTS,
    Encoder,
    SegmentationNet,
    UpBlock,
    conv,
    level_fraction,
    per_level,
    widths,
)
from .limits import BASE_WIDTH, CONVS_PER_LEVEL, DEPTH, DROPOUT
from .registry import register

__all__ = ["UNet", "unet26", "UNET26_DEPTH", "UNET26_CONVS"]


@register("unet", limits=(DEPTH, BASE_WIDTH, CONVS_PER_LEVEL, DROPOUT))
class UNet(SegmentationNet):
    """U-Net: conv blocks + max pooling down, up-convolution + skip concatenation up.

    Level ``i`` has ``base_width * 2**i`` channels; level ``depth`` is the
    bottleneck.  Every block is ``convs`` x (3x3[x3] conv, norm, ReLU); the head
    is a 1x1[x1] conv.  Total conv layers (``nn.Conv*`` and
    ``nn.ConvTranspose*``, head included)::

        sum(convs[:depth]) (encoder) + convs[depth] (bottleneck)
        + sum(convs[:depth]) (decoder) + depth (up-convs) + 1 (head)

    i.e. ``convs_per_level * (2 * depth + 1) + depth + 1`` for an int
    (23 at the defaults, as in the original U-Net).

    Parameters
    ----------
    in_channels, out_channels : int
        Input channels and number of output logits (classes).
    dims : {2, 3}
        2D ``(N, C, H, W)`` or 3D ``(N, C, D, H, W)`` network.
    depth : int
        Number of 2x poolings; ``divisor = 2**depth``.
    base_width : int
        Channels of the first level.
    convs_per_level : int or sequence of int
        Convolutions per block; a sequence has ``depth + 1`` entries (levels
        ``0 .. depth - 1``, then the bottleneck) and the decoder block of level
        ``i`` uses entry ``i``.
    norm : {"batch", "instance", "group", "layer", "none"}
        Normalisation after each 3x3 conv.
    dropout : float
        Element-wise dropout at the end of the bottleneck and of every decoder
        block (0: none; > 0 makes ``has_dropout`` True).
    upsample : {"transpose", "nearest"}
        Up-convolution: stride-2 transposed conv, or nearest upsampling + 3x3 conv.

    Shapes: ``(N, in_channels, *S) -> (N, out_channels, *S)`` logits, any ``S``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, dims: int = 2, depth: int = 4,
                 base_width: int = 32, convs_per_level=2, norm: str = "batch",
                 dropout: float = 0.0, upsample: str = "transpose"):
        super().__init__(in_channels, out_channels, dims=dims, depth=depth, dropout=dropout)
        w = widths(base_width, depth)
        convs = per_level(convs_per_level, self.depth + 1, "convs_per_level")
        self.widths, self.convs, self.norm_kind, self.upsample_kind = w, convs, norm, upsample
        self.encoder = Encoder(self.in_channels, w, dims=self.dims, convs=convs, norm=norm,
                               dropout=dropout)
        self.decoder = nn.ModuleList(
            UpBlock(w[i + 1], w[i], w[i], dims=self.dims, n_convs=convs[i], norm=norm,
                    dropout=dropout, upsample=upsample)
            for i in reversed(range(self.depth)))
        self.head = conv(self.dims, w[0], self.out_channels, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        feats, _ = self.encoder(x)
        y = feats[-1]
        for block, skip in zip(self.decoder, reversed(feats[:-1]), strict=True):
            y = block(y, skip)
        return self.head(y)

    def activation_elements(self, *, training: bool) -> float:
        """Activation elements per input voxel and sample (see :meth:`SegmentationNet.activation_elements`).

        Training, summed over levels ``i`` (``f_i`` voxels per input voxel, width ``w_i``,
        ``n_i`` convs, ``c`` = :data:`NORM_ELEMENTS` of the norm):
        encoder ``f_i n_i w_i (1 + c)``; pooling ``3 f_(i+1) w_i`` (output + int64 indices);
        decoder ``f_i w_i (3 + n_i (1 + c))`` (up-conv, concatenation, convs; nearest
        upsampling ``+ 2``); dropout ``1.25`` per element it touches; plus the input and
        ``5 * out_channels`` (logits and the loss).  Inference: the encoder outputs
        ``sum f_i w_i`` plus ``5 w_0`` (``7 w_0`` nearest) for the finest decoder step, the
        input and ``2 * out_channels``.
        """
        w, n, d = self.widths, self.convs, self.dims
        f = [level_fraction(i, d) for i in range(self.depth + 1)]
        c = NORM_ELEMENTS.get(self.norm_kind, 1.0)
        up = 3.0 if self.upsample_kind == "nearest" else 1.0
        drop = DROPOUT_ELEMENTS if self.has_dropout else 0.0
        if not training:
            return (self.in_channels + sum(fi * wi for fi, wi in zip(f, w, strict=True))
                    + (4.0 + up) * w[0] + 2.0 * self.out_channels)
        total = self.in_channels + 5.0 * self.out_channels + f[-1] * w[-1] * drop
        for i in range(self.depth + 1):
            total += f[i] * n[i] * w[i] * (1.0 + c)
        for i in range(self.depth):
            total += 3.0 * f[i + 1] * w[i] + f[i] * w[i] * (up + 2.0 + n[i] * (1.0 + c) + drop)
        return total


UNET26_DEPTH = 4
UNET26_CONVS = (2, 2, 2, 3, 3)


@register("unet26", limits=(BASE_WIDTH, DROPOUT))
def unet26(in_channels: int, out_channels: int, *, dims: int = 2, **kwargs) -> UNet:
    """The 26-conv-layer nuclei U-Net (Lizard / CPM nuclei work) as a :class:`UNet` preset.

    ``depth=4`` and ``convs_per_level=(2, 2, 2, 3, 3)``: two convs per block at
    the three finest levels, three at the coarsest level and the bottleneck.
    Conv layers (every ``nn.Conv*`` / ``nn.ConvTranspose*``)::

        encoder    2 + 2 + 2 + 3 =  9
        bottleneck             3 =  3
        decoder    3 + 2 + 2 + 2 =  9
        up-convs   1 per level   =  4
        head (1x1)               =  1
                                   --
                                   26

    Parameters
    ----------
    in_channels, out_channels : int
        Input channels and output logits.
    dims : {2, 3}
        Spatial dimensionality.
    **kwargs
        Other :class:`UNet` keywords (``base_width``, ``norm``, ``dropout``,
        ``upsample``).  ``depth`` / ``convs_per_level`` may be given only with
        the preset values.

    Returns
    -------
    UNet
        ``(N, in_channels, *S) -> (N, out_channels, *S)``, ``divisor == 16``.
    """
    fixed = {"depth": UNET26_DEPTH, "convs_per_level": UNET26_CONVS}
    for key, value in fixed.items():
        given = kwargs.pop(key, value)
        if isinstance(given, list):
            given = tuple(given)
        if given != value:
            raise ValueError(f"unet26 fixes {key}={value!r} (26 conv layers); got {given!r}. "
                             f"Use architecture 'unet' for other layouts")
    return UNet(in_channels, out_channels, dims=dims, **fixed, **kwargs)
