"""2.5D and 3D training patches of volumes (no Qt, no napari).

Two ways to train on volumes ``(Z, Y, X[, C])`` (CT stacks), chosen by the model's spec:

**2.5D** (``dims == 2``, ``context_slices == k > 1``): a 2D network whose input channels are
the ``k`` neighbouring slices ``z - h .. z + h`` (``h = k // 2``) of every image channel,
**slice-major** (input channel ``j * C + c`` is image channel ``c`` of slice ``z - h + j``).
Slice indices are clamped at the volume's ends (edge replicate), so the first slice sees
itself ``h + 1`` times.  Every slice is normalized with the same normalizer, fitted once on
the whole volume.  A patch is ``(k * C, p, p)`` around a *centre slice* ``z``; its target
is the centre slice only, so the labels of the neighbouring slices never reach the loss.
A 2D sample (one slice) is a volume of depth 1: its ``k`` channels are that slice repeated.

**3D** (``dims == 3``): patches ``(C, pz, py, px)`` of the volume, targets ``(pz, py, px)``.
Geometric augmentation is in-plane only (90° rotations in Y/X and a flip of X: the 8
symmetries of the square), never across the Z axis, which is usually sampled more coarsely.
No rescaling (``zoom``) is done in 3D.

Both draw a volume in proportion to its reviewed voxels and centre the patch on a reviewed
foreground voxel (``foreground_fraction`` of the time) or any reviewed voxel, jittered in
Y/X (and Z in 3D) by up to a quarter patch; then raw-intensity jitter (CT: HU shift,
contrast about the window level and noise, **in HU, before** the ``ct_window``
normalization; stain jitter for RGB histology), normalization, flips/rotations, and the
generic gain/offset/gamma on the normalized patch (:mod:`segloop_train.augment`).  Padding
outside the volume replicates the image and is ``IGNORE`` in the target.

Held-out volumes are predicted by ``segloop.core.inference.model.Model.predict`` (the one
sliding window of :mod:`segloop.core.inference.tiling`), as
:class:`segloop_train.evaluate.VolumePredictor` does; this module only samples training patches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segloop.core.inference.normalize import Normalizer
from segloop_train.augment import AugmentConfig, ReviewedPatchSampler
from segloop_train.data import IGNORE

__all__ = ["VolumePatchSampler", "context_indices", "context_stack", "flip_rotate_inplane"]


def context_indices(z: int, depth: int, k: int) -> np.ndarray:
    """The slices ``z - k//2 .. z + k//2`` of a volume of ``depth`` slices, clamped to ``[0, depth)``.

    >>> context_indices(0, 10, 5).tolist()
    [0, 0, 0, 1, 2]
    """
    if k < 1 or k % 2 == 0:
        raise ValueError(f"context_slices must be an odd number >= 1, got {k}")
    h = k // 2
    return np.clip(np.arange(z - h, z + h + 1), 0, depth - 1)


def context_stack(normalized: np.ndarray, z: int, k: int) -> np.ndarray:
    """The 2.5D input of centre slice ``z``: ``(k * C, Y, X)``, slice-major.

    Parameters
    ----------
    normalized : (Z, C, Y, X) float32 ndarray
        A normalized volume (what ``Normalizer(volume)`` returns).
    z : int
    k : int
        ``context_slices`` (odd).

    Returns
    -------
    (k * C, Y, X) float32 ndarray
        Channel ``j * C + c`` is channel ``c`` of slice ``clip(z - k//2 + j)``.
    """
    zs = context_indices(z, normalized.shape[0], k)
    st = normalized[zs]                                       # (k, C, Y, X)
    return st.reshape(-1, *st.shape[2:])


def flip_rotate_inplane(img: np.ndarray, tgt: np.ndarray, rng: np.random.Generator
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The same random in-plane symmetry of ``img`` ``(C, ..., Y, X)`` and ``tgt`` ``(..., Y, X)``.

    A 90° rotation in the Y/X plane (only 0° or 180° when ``Y != X``, so the shape is kept)
    and a flip of X with probability 1/2; Z (if present) is never touched.
    """
    square = img.shape[-1] == img.shape[-2]
    k = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
    img, tgt = np.rot90(img, k, axes=(-2, -1)), np.rot90(tgt, k, axes=(-2, -1))
    if rng.random() < 0.5:
        img, tgt = img[..., ::-1], tgt[..., ::-1]
    return img, tgt


def _pad_to(img: np.ndarray, tgt: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Pad the leading spatial axes of ``img`` (``(*S[, C])``) and ``tgt`` (``S``) at the end up to ``shape``."""
    pads = [(0, int(w) - int(s)) for w, s in zip(shape, tgt.shape, strict=True)]
    if not any(b for _, b in pads):
        return img, tgt
    extra = [(0, 0)] * (img.ndim - tgt.ndim)
    mode = "reflect" if all(b < s for (_, b), s in zip(pads, tgt.shape, strict=True)) else "edge"
    return np.pad(img, pads + extra, mode=mode), np.pad(tgt, pads, constant_values=IGNORE)


class VolumePatchSampler(ReviewedPatchSampler):
    """Random augmented 2.5D or 3D patches of raw volumes.

    Parameters
    ----------
    images : list of (Z, Y, X) or (Z, Y, X, C) ndarray
        Raw volumes as exported (any dtype; HU for CT).
    normalizers : list of Normalizer
        Fitted on each whole volume (``Normalizer.fit(spec, volume, channel_axis=...)``).
    targets : list of (Z, Y, X) uint8 ndarray
        Class ids, ``IGNORE`` (255) where not reviewed.
    modalities : list of str
        Folder modality of each volume (``"CT"`` gets HU jitter).
    patch : int or (int, int, int)
        2.5D: the patch side ``p`` (patches ``(k * C, p, p)``); 3D: ``(pz, py, px)``.
    dims : {2, 3}
        2 with ``context_slices > 1`` for 2.5D (``context_slices == 1`` gives plain 2D
        patches of single slices), 3 for 3D.
    context_slices : int
        ``k`` (odd); only with ``dims == 2``.
    config : AugmentConfig, optional
        Default: ``AugmentConfig()``.
    """

    def __init__(self, images: list[np.ndarray], normalizers: list[Normalizer], targets: list[np.ndarray],
                 modalities: list[str], *, patch: int | Sequence[int], dims: int, context_slices: int = 1,
                 config: AugmentConfig | None = None):
        if not images:
            raise ValueError("no volumes to sample patches from")
        config = config or AugmentConfig()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        if dims == 3 and context_slices != 1:
            raise ValueError("context_slices > 1 is 2.5D: it needs dims == 2")
        for t in targets:
            if t.ndim != 3:
                raise ValueError(f"volume targets must be (Z, Y, X), got shape {t.shape}")
        self.dims, self.k = dims, int(context_slices)
        if dims == 3:
            p = (int(patch),) * 3 if np.isscalar(patch) else tuple(int(v) for v in patch)
            if len(p) != 3:
                raise ValueError(f"a 3D patch is (pz, py, px), got {patch!r}")
            self.patch: int | tuple[int, int, int] = p
        else:
            self.patch = int(patch)
        self._index(images, normalizers, targets, modalities, config, "voxels in any training volume")

    # ------------------------------------------------------------------ steps

    def centre(self, i: int, rng: np.random.Generator) -> tuple[int, int, int]:
        """A reviewed (foreground, ``foreground_fraction`` of the time) voxel of volume ``i``."""
        z, y, x = np.unravel_index(self._centre_index(i, rng), self.targets[i].shape)
        return int(z), int(y), int(x)

    @staticmethod
    def _start(c: int, side: int, n: int, rng: np.random.Generator) -> int:
        q = side // 4
        s = c - side // 2 + int(rng.integers(-q, q + 1))
        return int(np.clip(s, 0, max(n - side, 0)))

    def _normalize(self, i: int, raw: np.ndarray) -> np.ndarray:
        """``(n, ..., Y, X[, C])`` raw -> ``(n, C, Y, X)`` float32 (the normalizer puts C before Y, X)."""
        return self.normalizers[i](raw)

    def sample_25d(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One 2.5D patch of volume ``i``: ``(k * C, p, p)`` float32 and the centre slice's ``(p, p)`` uint8."""
        p = self.patch
        tgt_vol, img_vol = self.targets[i], self.images[i]
        depth, h, w = tgt_vol.shape
        side = self._zoomed_side(p, rng)
        z, cy, cx = self.centre(i, rng)
        y, x = self._start(cy, side, h, rng), self._start(cx, side, w, rng)
        zs = context_indices(z, depth, self.k)
        raw = np.asarray(img_vol[zs, y:y + side, x:x + side])            # (k, side', side'[, C])
        tgt = tgt_vol[z, y:y + side, x:x + side]
        ph, pw = side - tgt.shape[0], side - tgt.shape[1]
        if ph or pw:
            pad = ((0, 0), (0, ph), (0, pw)) + ((0, 0),) * (raw.ndim - 3)
            raw = np.pad(raw, pad, mode="reflect" if min(tgt.shape) > max(ph, pw) else "edge")
            tgt = np.pad(tgt, ((0, ph), (0, pw)), constant_values=IGNORE)
        raw = self._raw_jitter(i, raw, rng)
        img = self._normalize(i, raw)                                      # (k, C, side, side)
        img = img.reshape(-1, side, side)                                  # slice-major channels
        return self._finish(img, tgt, p, rng, flip_rotate_inplane)

    def sample_3d(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One 3D patch of volume ``i``: ``(C, pz, py, px)`` float32 and ``(pz, py, px)`` uint8."""
        tgt_vol, img_vol = self.targets[i], self.images[i]
        c = self.centre(i, rng)
        starts = [self._start(ci, side, n, rng) for ci, side, n in zip(c, self.patch, tgt_vol.shape, strict=True)]
        box = tuple(slice(s, s + side) for s, side in zip(starts, self.patch, strict=True))
        raw, tgt = _pad_to(np.asarray(img_vol[box]), tgt_vol[box], self.patch)
        raw = self._raw_jitter(i, raw, rng)
        img = np.moveaxis(self._normalize(i, raw), 1, 0)                  # (C, pz, py, px)
        return self._finish(img, tgt, None, rng, flip_rotate_inplane)

    def sample(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One augmented patch of volume ``i`` (2.5D or 3D, by ``dims``)."""
        return self.sample_3d(i, rng) if self.dims == 3 else self.sample_25d(i, rng)
