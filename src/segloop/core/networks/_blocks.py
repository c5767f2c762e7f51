"""Building blocks shared by the segmentation networks (2D and 3D).

Everything here works on channels-first tensors ``(N, C, *spatial)`` with
``len(spatial) == dims`` and exports to ONNX (opset 17, TorchScript exporter).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "check_dims", "conv", "conv_transpose", "max_pool", "nearest_upsample", "make_norm",
    "make_act", "dropout_layer", "LayerNormCF", "ConvBlock", "Encoder", "UpBlock",
    "SegmentationNet", "pad_to_multiple", "crop", "widths", "per_level", "level_fraction",
    "NORM_ELEMENTS", "DROPOUT_ELEMENTS",
]

NORMS = ("batch", "instance", "group", "layer", "none")

#: Activation elements a normalisation layer keeps alive for the backward pass, per channel and
#: voxel (its output; :class:`LayerNormCF` is made of elementary ops and keeps ``x - mean``, the
#: normalised ``x`` and its output).  Used by the networks' ``activation_elements``.
NORM_ELEMENTS = {"batch": 1.0, "instance": 1.0, "group": 1.0, "layer": 3.0, "none": 0.0}
#: Element-wise dropout keeps its output and a one-byte mask.
DROPOUT_ELEMENTS = 1.25


def level_fraction(level: int, dims: int) -> float:
    """Voxels at resolution level ``level`` per input voxel: ``2 ** (-dims * level)``."""
    return 2.0 ** (-int(dims) * int(level))


def check_dims(dims: int) -> int:
    """Return ``dims`` if it is 2 or 3, else raise ``ValueError``."""
    if isinstance(dims, bool) or dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    return int(dims)


def conv(dims: int, *args, **kwargs) -> nn.Module:
    """``nn.Conv2d`` or ``nn.Conv3d`` with the given arguments."""
    return (nn.Conv2d, nn.Conv3d)[check_dims(dims) - 2](*args, **kwargs)


def conv_transpose(dims: int, *args, **kwargs) -> nn.Module:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d`` with the given arguments."""
    return (nn.ConvTranspose2d, nn.ConvTranspose3d)[check_dims(dims) - 2](*args, **kwargs)


def max_pool(x: torch.Tensor) -> torch.Tensor:
    """2x (2x2 or 2x2x2) max pooling; spatial sizes must be even."""
    return (F.max_pool2d, F.max_pool3d)[x.dim() - 4](x, 2)


def nearest_upsample(x: torch.Tensor) -> torch.Tensor:
    """2x nearest-neighbour upsampling of ``(N, C, *spatial)`` (ONNX ``Resize``)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def widths(base_width: int, depth: int) -> list[int]:
    """Channel widths ``base_width * 2**level`` for levels ``0 .. depth``."""
    if int(depth) < 1:
        raise ValueError(f"depth must be >= 1, got {depth!r}")
    if int(base_width) < 1:
        raise ValueError(f"base_width must be >= 1, got {base_width!r}")
    return [int(base_width) * 2**i for i in range(int(depth) + 1)]


def per_level(value, n: int, what: str) -> list[int]:
    """Expand an int, or check a sequence of ``n`` ints, into a list of ``n`` positive ints."""
    vals = [int(value)] * n if isinstance(value, numbers.Integral) else [int(v) for v in value]
    if len(vals) != n or min(vals) < 1:
        raise ValueError(f"{what} must be a positive int or {n} positive ints, got {value!r}")
    return vals


class LayerNormCF(nn.Module):
    """LayerNorm over the channel axis of a channels-first tensor.

    Mean and (biased) variance are taken over dim 1, so it applies to
    ``(N, C, H, W)`` and ``(N, C, D, H, W)`` alike and exports to plain ONNX
    ops (ReduceMean, Sub, Pow, Sqrt, Div, Mul, Add).

    Parameters
    ----------
    channels : int
        ``C``.
    eps : float
        Added to the variance.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, *spatial) -> (N, C, *spatial)``."""
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight.view(shape) + self.bias.view(shape)


def make_norm(norm: str, channels: int, dims: int) -> nn.Module:
    """Normalisation layer by name.

    Parameters
    ----------
    norm : {"batch", "instance", "group", "layer", "none"}
        ``"group"`` uses ``gcd(channels, 8)`` groups; ``"layer"`` is
        :class:`LayerNormCF`; ``"instance"`` is affine and needs more than one
        spatial element, i.e. inputs of at least ``2 * divisor``.
    channels : int
        Number of channels normalised.
    dims : {2, 3}
        Spatial dimensionality.
    """
    d = check_dims(dims)
    if norm == "batch":
        return (nn.BatchNorm2d, nn.BatchNorm3d)[d - 2](channels)
    if norm == "instance":
        return (nn.InstanceNorm2d, nn.InstanceNorm3d)[d - 2](channels, affine=True)
    if norm == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    if norm == "layer":
        return LayerNormCF(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")


def make_act(act: str) -> nn.Module:
    """``"relu"`` -> ``nn.ReLU``, ``"gelu"`` -> ``nn.GELU``."""
    if act == "relu":
        return nn.ReLU(inplace=True)
    if act == "gelu":
        return nn.GELU()
    raise ValueError(f"act must be 'relu' or 'gelu', got {act!r}")


def dropout_layer(p: float) -> nn.Module:
    """Element-wise ``nn.Dropout(p)``, or ``nn.Identity`` when ``p == 0``."""
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p!r}")
    return nn.Dropout(p) if p > 0 else nn.Identity()


class ConvBlock(nn.Sequential):
    """``n_convs`` x (3x3[x3] conv -> norm -> activation), then optional dropout.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out.
    dims : {2, 3}
        Spatial dimensionality.
    n_convs : int
        Number of convolutions.
    norm : str
        See :func:`make_norm`; convs have a bias only when ``norm="none"``.
    act : {"relu", "gelu"}
        Activation.
    dropout : float
        Dropout probability after the last activation (0: none).

    Shapes: ``(N, in_channels, *S) -> (N, out_channels, *S)``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, dims: int, n_convs: int = 2,
                 norm: str = "batch", act: str = "relu", dropout: float = 0.0):
        layers: list[nn.Module] = []
        for i in range(int(n_convs)):
            layers += [
                conv(dims, in_channels if i == 0 else out_channels, out_channels, 3, padding=1,
                     bias=norm == "none"),
                make_norm(norm, out_channels, dims),
                make_act(act),
            ]
        if dropout > 0:
            layers.append(dropout_layer(dropout))
        super().__init__(*layers)


class Encoder(nn.Module):
    """U-Net contracting path: ``ConvBlock`` per level, 2x max pooling between levels.

    Parameters
    ----------
    in_channels : int
        Input channels.
    widths : list of int
        Output channels per level, ``len(widths) == depth + 1`` (last: bottleneck).
    dims : {2, 3}
        Spatial dimensionality.
    convs : list of int
        Convolutions per level (same length as ``widths``).
    norm : str
        See :func:`make_norm`.
    dropout : float
        Dropout at the end of the bottleneck block.
    """

    def __init__(self, in_channels: int, widths: list[int], *, dims: int, convs: list[int],
                 norm: str, dropout: float):
        super().__init__()
        chans = [in_channels, *widths]
        last = len(widths) - 1
        self.blocks = nn.ModuleList(
            ConvBlock(chans[i], chans[i + 1], dims=dims, n_convs=convs[i], norm=norm,
                      dropout=dropout if i == last else 0.0)
            for i in range(len(widths)))

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Features and pooled features.

        Returns
        -------
        feats : list of Tensor
            ``feats[i]``: ``(N, widths[i], *S / 2**i)`` for levels ``0 .. depth``.
        pooled : list of Tensor
            ``pooled[i] = max_pool(feats[i])`` for levels ``0 .. depth - 1``.
        """
        feats, pooled = [], []
        for i, block in enumerate(self.blocks):
            if i:
                pooled.append(max_pool(x))
                x = pooled[-1]
            x = block(x)
            feats.append(x)
        return feats, pooled


class UpBlock(nn.Module):
    """U-Net expanding step: 2x up-convolution, concatenate the skip, ``ConvBlock``.

    Parameters
    ----------
    in_channels, skip_channels, out_channels : int
        Channels of the coarse input, of the skip and of the output.
    dims : {2, 3}
        Spatial dimensionality.
    n_convs : int
        Convolutions after the concatenation.
    norm, act : str
        See :class:`ConvBlock`.
    dropout : float
        Dropout at the end of the block.
    upsample : {"transpose", "nearest"}
        ``"transpose"``: 2x2[x2] stride-2 transposed conv; ``"nearest"``:
        nearest 2x upsampling then 3x3[x3] conv.  Either is one conv layer.

    Shapes: ``x (N, in, *S/2)``, ``skip (N, skip, *S) -> (N, out, *S)``.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, *, dims: int,
                 n_convs: int, norm: str, act: str = "relu", dropout: float = 0.0,
                 upsample: str = "transpose"):
        super().__init__()
        if upsample == "transpose":
            self.up = conv_transpose(dims, in_channels, out_channels, 2, stride=2)
        elif upsample == "nearest":
            self.up = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"),
                                    conv(dims, in_channels, out_channels, 3, padding=1))
        else:
            raise ValueError(f"upsample must be 'transpose' or 'nearest', got {upsample!r}")
        self.conv = ConvBlock(out_channels + skip_channels, out_channels, dims=dims,
                              n_convs=n_convs, norm=norm, act=act, dropout=dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple | None]:
    """Pad the spatial axes of ``x`` up to a multiple of ``multiple``, centred.

    Reflect padding where every pad is smaller than its axis, else replicate.

    Parameters
    ----------
    x : Tensor
        ``(N, C, *S)``.
    multiple : int
        Target multiple (a network's ``divisor``).

    Returns
    -------
    padded : Tensor
        ``(N, C, *S')`` with every ``S'`` a multiple of ``multiple``; ``x`` itself
        when nothing needs padding.
    window : tuple of slice or None
        Index that crops ``padded`` (or an output of the same spatial size) back
        to ``S``; ``None`` when nothing was padded.
    """
    sizes = [int(s) for s in x.shape[2:]]
    before, after = [], []
    for s in sizes:
        total = -s % multiple
        before.append(total // 2)
        after.append(total - total // 2)
    if not any(before) and not any(after):
        return x, None
    mode = "reflect" if all(max(b, a) < s for s, b, a in zip(sizes, before, after, strict=True)) \
        else "replicate"
    pad: list[int] = []
    for b, a in zip(reversed(before), reversed(after), strict=True):
        pad += [b, a]
    window = (slice(None), slice(None)) + tuple(
        slice(b, b + s) for b, s in zip(before, sizes, strict=True))
    return F.pad(x, pad, mode=mode), window


def crop(x: torch.Tensor, window: tuple | None) -> torch.Tensor:
    """Undo :func:`pad_to_multiple` on an output: ``x[window]`` (or ``x`` if ``None``)."""
    return x if window is None else x[window]


class SegmentationNet(nn.Module):
    """Base class: the contract every segloop network follows.

    Subclasses build their layers and implement :meth:`forward_padded` for
    inputs whose spatial sizes are multiples of :attr:`divisor`;
    :meth:`forward` pads any other size and crops the logits back.

    Attributes
    ----------
    in_channels, out_channels, dims, divisor : int
        ``divisor = 2**depth``: inputs whose spatial sizes are multiples of it
        are not padded.
    has_dropout : bool
        True iff the network has dropout (for MC-dropout).
    """

    def __init__(self, in_channels: int, out_channels: int, *, dims: int, depth: int,
                 dropout: float):
        super().__init__()
        self.dims = check_dims(dims)
        if int(in_channels) < 1 or int(out_channels) < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got "
                             f"{in_channels!r}, {out_channels!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.depth = int(depth)
        self.divisor = 2**self.depth
        self.has_dropout = float(dropout) > 0

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for spatial sizes that are multiples of :attr:`divisor`."""
        raise NotImplementedError

    def activation_elements(self, *, training: bool) -> float | None:
        """Activation memory of one sample, in float32 elements per (padded) input voxel.

        A closed-form count of the feature maps alive at the peak, level by level (level
        ``i`` has :func:`level_fraction` voxels per input voxel): with ``training`` those
        autograd keeps for the backward pass (conv / norm outputs, skip concatenations,
        pooling indices, the loss); without, those of an inference forward pass (the
        encoder outputs kept for the skips plus the working set of the finest decoder
        step).  Used by :mod:`segloop.core.networks.memory` on a network built on the
        ``meta`` device, so nothing is allocated.  ``None`` (this base class): unknown, and
        only the weights are estimated.

        Parameters
        ----------
        training : bool
            Training step (autograd on) or inference.

        Returns
        -------
        float or None
        """
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw logits.

        Parameters
        ----------
        x : Tensor
            ``(N, in_channels, H, W)`` (``dims=2``) or ``(N, in_channels, D, H, W)``
            (``dims=3``), float, any spatial size.

        Returns
        -------
        Tensor
            ``(N, out_channels, *same spatial size)``.
        """
        if x.dim() != self.dims + 2:
            raise ValueError(f"{type(self).__name__} with dims={self.dims} expects a "
                             f"{self.dims + 2}D tensor (N, C, ...), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects {self.in_channels} input "
                             f"channels, got {x.shape[1]}")
        x, window = pad_to_multiple(x, self.divisor)
        return crop(self.forward_padded(x), window)
