"""U-Net with a ConvNeXt encoder (Liu et al. 2022 blocks), 2D and 3D."""

from __future__ import annotations

import torch
from torch import nn

from ._blocks import (
    DROPOUT_ELEMENTS,
    LayerNormCF,
    SegmentationNet,
    UpBlock,
    conv,
    dropout_layer,
    level_fraction,
    per_level,
    widths,
)
from .limits import BASE_WIDTH, BLOCKS_PER_STAGE, DEPTH, DROPOUT
from .registry import register

__all__ = ["ConvNeXtBlock", "ConvNeXtUNet"]


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block, channels-first.

    ``x + gamma * pw2(GELU(pw1(LayerNorm(dwconv(x)))))`` with a 7x7 (7x7x7)
    depthwise conv, a 4x inverted bottleneck of 1x1 convs and a per-channel
    layer scale ``gamma``.

    Parameters
    ----------
    channels : int
        ``C``; the block keeps it.
    dims : {2, 3}
        Spatial dimensionality.
    layer_scale_init : float
        Initial ``gamma``; 0 or less disables layer scale.

    Shapes: ``(N, C, *S) -> (N, C, *S)``.
    """

    def __init__(self, channels: int, *, dims: int, layer_scale_init: float = 1e-6):
        super().__init__()
        self.dwconv = conv(dims, channels, channels, 7, padding=3, groups=channels)
        self.norm = LayerNormCF(channels)
        self.pwconv1 = conv(dims, channels, 4 * channels, 1)
        self.act = nn.GELU()
        self.pwconv2 = conv(dims, 4 * channels, channels, 1)
        self.gamma = (nn.Parameter(torch.full((channels,), float(layer_scale_init)))
                      if layer_scale_init and layer_scale_init > 0 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x)))))
        if self.gamma is not None:
            y = y * self.gamma.view((1, -1) + (1,) * (x.dim() - 2))
        return x + y


@register("convnext_unet", limits=(DEPTH, BASE_WIDTH, BLOCKS_PER_STAGE, DROPOUT))
class ConvNeXtUNet(SegmentationNet):
    """U-Net whose encoder stages are ConvNeXt blocks.

    Stem (3x3[x3] conv + LayerNorm) at full resolution, then ``depth + 1``
    stages of :class:`ConvNeXtBlock`; between stages a downsampling layer
    (LayerNorm + 2x2[x2] stride-2 conv) doubles the width.  Decoder as in
    :class:`~segloop.core.networks.unet.UNet` (transposed conv, skip
    concatenation, two 3x3 conv + LayerNorm + GELU), then dropout and a 1x1 head.

    Parameters
    ----------
    in_channels, out_channels : int
        Input channels and output logits.
    dims : {2, 3}
        Spatial dimensionality.
    depth : int
        Number of downsamplings; ``divisor = 2**depth``.
    base_width : int
        Channels of stage 0 (stage ``i``: ``base_width * 2**i``).
    blocks_per_stage : int or sequence of int
        ConvNeXt blocks per stage (sequence: ``depth + 1`` entries).
    dropout : float
        Dropout before the head (> 0 makes ``has_dropout`` True).
    layer_scale_init : float
        Initial layer scale of every block (0 disables layer scale).

    Shapes: ``(N, in_channels, *S) -> (N, out_channels, *S)`` logits, any ``S``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, dims: int = 2, depth: int = 4,
                 base_width: int = 32, blocks_per_stage=2, dropout: float = 0.0,
                 layer_scale_init: float = 1e-6):
        super().__init__(in_channels, out_channels, dims=dims, depth=depth, dropout=dropout)
        w = widths(base_width, depth)
        blocks = per_level(blocks_per_stage, self.depth + 1, "blocks_per_stage")
        self.widths, self.blocks = w, blocks
        self.layer_scale = bool(layer_scale_init and layer_scale_init > 0)
        d = self.dims
        self.stem = nn.Sequential(conv(d, self.in_channels, w[0], 3, padding=1), LayerNormCF(w[0]))
        self.downsample = nn.ModuleList(
            nn.Sequential(LayerNormCF(w[i]), conv(d, w[i], w[i + 1], 2, stride=2))
            for i in range(self.depth))
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock(w[i], dims=d, layer_scale_init=layer_scale_init)
                            for _ in range(blocks[i])))
            for i in range(self.depth + 1))
        self.decoder = nn.ModuleList(
            UpBlock(w[i + 1], w[i], w[i], dims=d, n_convs=2, norm="layer", act="gelu")
            for i in reversed(range(self.depth)))
        self.dropout = dropout_layer(dropout)
        self.head = conv(d, w[0], self.out_channels, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.ConvTranspose3d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages[0](self.stem(x))
        feats = [x]
        for down, stage in zip(self.downsample, self.stages[1:], strict=True):
            x = stage(down(x))
            feats.append(x)
        y = feats[-1]
        for block, skip in zip(self.decoder, reversed(feats[:-1]), strict=True):
            y = block(y, skip)
        return self.head(self.dropout(y))

    def activation_elements(self, *, training: bool) -> float:
        """Activation elements per input voxel and sample (see :meth:`SegmentationNet.activation_elements`).

        Training, per level ``i`` (``f_i`` voxels per input voxel, width ``w_i``): a ConvNeXt
        block keeps ``13 w_i`` (LayerNorm ``3``, the 4x inverted bottleneck and its GELU
        ``8``, the second pointwise conv and the residual ``2``; ``12`` without layer
        scale); the stem and each downsampling LayerNorm ``3 w_i``, each downsampling conv
        its output; a decoder step ``11 w_i`` (up-conv, concatenation, two conv +
        LayerNorm + GELU); plus the input and ``5 * out_channels``.  Inference: the stage
        outputs kept for the skips plus ``10 w_0`` (the inverted bottleneck at full
        resolution), the input and ``2 * out_channels``.
        """
        w, b, d = self.widths, self.blocks, self.dims
        f = [level_fraction(i, d) for i in range(self.depth + 1)]
        if not training:
            return (self.in_channels + sum(fi * wi for fi, wi in zip(f, w, strict=True)) + 10.0 * w[0]
                    + 2.0 * self.out_channels)
        block = 13.0 if self.layer_scale else 12.0
        drop = DROPOUT_ELEMENTS if self.has_dropout else 0.0
        total = self.in_channels + 5.0 * self.out_channels + 3.0 * w[0] + drop * w[0]
        for i in range(self.depth + 1):
            total += f[i] * b[i] * block * w[i]
        for i in range(self.depth):
            total += 3.0 * f[i] * w[i] + f[i + 1] * w[i + 1] + 11.0 * f[i] * w[i]
        return total
