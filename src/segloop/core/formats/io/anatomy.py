"""Orientation known from anatomy, for volume files whose format records none.

MRC stores sections, rows and columns but no patient orientation, so
:func:`segloop.core.formats.io.volume.read_mrc` takes them as (Z, Y, X) = (S, P, L).  For the
one MRC volume segloop uses as real CT data - LiTS case 117 from ``liver-ct-segmentation-package``
1.6.0 (:mod:`segloop.core.formats.io.samples`) - that is wrong: it is stored like a NIfTI
``(i, j, k)`` array, axis 2 running foot to head.  This module knows such files by their
content (size, then sha256: a copy anywhere is recognised, an edited file is not) and gives the
affine of the array *as stored*, so :func:`segloop.core.formats.io.geometry.axial_axis` finds
the axial axis of the stored array and ``segloop measure lab_117.mrc`` measures what the napari
CT tools measure on the reoriented sample.

Imports only :mod:`.geometry` (the reader and the sample loader both import this).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segloop.core._runtime import sha256_file
from segloop.core.formats.io.geometry import Reorientation, lps_affine

__all__ = ["LIVER_CT_REORIENTATION", "KnownOrientation", "known_orientation"]

#: How the stored LiTS 117 MRC arrays relate to LPS display order.  Checked by eye on mid slices of
#: every axis (see ``samples.load_liver_ct``): stored axis 0 runs patient right -> left (the liver is at
#: low indices, the spine near index 90), axis 1 anterior -> posterior (vertebral bodies and kidneys at
#: high indices), axis 2 inferior -> superior (bowel and kidney at low indices, the lung bases and the
#: liver dome at the top).  I.e. the array is stored like a NIfTI ``(i, j, k)`` in LPS order, so the
#: display array is the transpose ``(2, 1, 0)``; no flips.
LIVER_CT_REORIENTATION = Reorientation(axes=(2, 1, 0), flips=())


@dataclass(frozen=True)
class KnownOrientation:
    """A file whose orientation is known although its format does not record it.

    Attributes
    ----------
    reorientation : Reorientation
        Stored array -> LPS display order (``reorientation.to_display(stored)``).
    description : str
        What the file is, for the reader's warning.
    stored_axes : str
        The patient directions of the stored axes, e.g. ``"(R->L, A->P, I->S)"``.
    """

    reorientation: Reorientation
    description: str
    stored_axes: str

    def stored_affine(self, spacing: Sequence[float], shape: Sequence[int],
                      origin: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
        """The 4x4 affine of the array as stored: stored indices ``(i, j, k, 1)`` -> RAS+ mm.

        Parameters
        ----------
        spacing, shape : 3 numbers each
            Per stored axis.
        origin : (3,) float
            RAS mm of the first voxel of the display array (as :func:`lps_affine` takes it).
        """
        axes = self.reorientation.axes
        disp_spacing = [0.0] * 3
        disp_shape = [0] * 3
        for src, disp in enumerate(axes):
            disp_spacing[disp] = float(spacing[src])
            disp_shape[disp] = int(shape[src])
        display = lps_affine(disp_spacing, origin)
        return display @ np.linalg.inv(self.reorientation.index_matrix(disp_shape))


_LITS = "LiTS case 117 ({}, liver-ct-segmentation-package 1.6.0)"
_KNOWN: dict[tuple[int, str], KnownOrientation] = {
    (8389632, "6519548844be8c92a6f37dff22961800ec4baad72a4efbb9f7061ffd265e1780"):
        KnownOrientation(LIVER_CT_REORIENTATION, _LITS.format("CT, img_117.mrc"), "(R->L, A->P, I->S)"),
    (4195328, "0f4950afdb218ae1a8790c2367a3f1bffe3d68cf186239cdfae897e4d4f99240"):
        KnownOrientation(LIVER_CT_REORIENTATION, _LITS.format("labels, lab_117.mrc"), "(R->L, A->P, I->S)"),
}
_SIZES = {size for size, _ in _KNOWN}


def known_orientation(path: str | os.PathLike) -> KnownOrientation | None:
    """The known orientation of the file at ``path``, or None (the usual case: costs one ``stat``).

    The file is hashed only when its size is that of a known file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size not in _SIZES:
            return None
        return _KNOWN.get((size, sha256_file(path)))
    except OSError:
        return None
