"""Volume geometry: the description every volume reader returns, and the LPS convention.

Convention (the contract between readers, writers, widgets and training folders):

* Readers return the voxels as a ``(Z, Y, X)`` array (no channels) reoriented -- by axis
  permutation and flips only, never resampling -- to the nearest of the patient axes so that
  index increases towards **S**uperior along Z, **P**osterior along Y and **L**eft along X
  (ITK's "LPS" voxel orientation; radiological display: the patient's right is on the screen's
  left, anterior at the top).  Axis 0 is the one people scroll (axial for axial scans).
  A format that records no orientation (MRC) is returned as stored; its ``affine`` then says
  which way the stored axes run where that is known otherwise (see
  :mod:`segloop.core.formats.io.anatomy`), so axis 0 need not be axial.  Code that needs the
  axial direction (measurements) asks :func:`axial_axis`, never assumes axis 0.
* ``affine`` maps ``(z, y, x, 1)`` indices of *that* array to RAS+ millimetres (NIfTI / nibabel
  convention).  ``spacing`` is ``(dz, dy, dx)`` in mm, the column norms of ``affine[:3, :3]``.
* ``to_source`` records how the returned array relates to the voxel order on disk, so a label
  volume can be written back in the file's original space (``from_display``).

Every reader (:mod:`segloop.core.formats.io.volume`, :mod:`segloop.core.formats.io.dicom`)
imports from here; this module imports no reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segloop.errors import VolumeReadError

__all__ = [
    "Reorientation",
    "VolumeInfo",
    "axial_axis",
    "lps_affine",
    "lps_reorientation",
    "obliquity_deg",
    "spacing_of",
    "OBLIQUE_DEGREES",
]


@dataclass(frozen=True)
class Reorientation:
    """How a displayed ``(Z, Y, X)`` array maps back to the source voxel array.

    ``source = np.flip(display, axis=flips).transpose(axes)`` -- i.e. first undo the flips
    (applied to the display axes listed in ``flips``), then ``transpose(axes)``.
    Identity: ``axes=(0, 1, 2)``, ``flips=()``.
    """

    axes: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[int, ...] = ()

    def from_display(self, display: np.ndarray) -> np.ndarray:
        """Display-ordered array -> source voxel order (a view where possible)."""
        a = np.flip(display, axis=self.flips) if self.flips else display
        return a.transpose(self.axes)

    def to_display(self, source: np.ndarray) -> np.ndarray:
        """Source voxel order -> display order (the inverse of :meth:`from_display`)."""
        a = source.transpose(tuple(int(i) for i in np.argsort(self.axes)))   # a tuple: dask needs one
        return np.flip(a, axis=self.flips) if self.flips else a

    @property
    def is_identity(self) -> bool:
        return tuple(self.axes) == (0, 1, 2) and not self.flips

    def index_matrix(self, display_shape: Sequence[int]) -> np.ndarray:
        """4x4 matrix taking display indices ``(z, y, x, 1)`` to source voxel indices.

        ``source_affine = display_affine @ inv(M)`` and ``display_affine = source_affine @ M``.
        """
        m = np.zeros((4, 4))
        m[3, 3] = 1.0
        for src_axis, disp_axis in enumerate(self.axes):
            if disp_axis in self.flips:
                m[src_axis, disp_axis] = -1.0
                m[src_axis, 3] = display_shape[disp_axis] - 1
            else:
                m[src_axis, disp_axis] = 1.0
        return m

    def source_shape(self, display_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of the source voxel array for a display array of ``display_shape``."""
        return tuple(int(display_shape[a]) for a in self.axes)


@dataclass
class VolumeInfo:
    """Geometry and provenance of a volume as read (see the module docstring for axes)."""

    path: Path
    format: str                                   # "dicom" | "nifti" | "mrc" | "tiff"
    shape: tuple[int, int, int]                   # (Z, Y, X) of the returned array
    spacing: tuple[float, float, float]           # (dz, dy, dx) mm
    affine: np.ndarray                            # 4x4: (z, y, x, 1) of returned array -> RAS mm
    source_affine: np.ndarray | None = None       # the file's own affine (NIfTI: voxel (i,j,k) -> RAS)
    to_source: Reorientation = field(default_factory=Reorientation)
    modality: str = ""                            # "CT", "MR", ... ("" unknown)
    units: str = ""                               # "HU" for CT after rescale; "" unknown
    window: tuple[float, float] | None = None     # (level, width) HU suggested by the file
    series_uid: str = ""
    description: str = ""
    other_series: list[dict] = field(default_factory=list)   # [{uid, description, n_slices}] not read
    warnings: list[str] = field(default_factory=list)        # things a person should know
    oblique: bool = False                         # affine not aligned with patient axes
    extra: dict = field(default_factory=dict)     # reader-specific (e.g. DICOM source datasets' UIDs)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (1 mL = 1000 mm^3)."""
        dz, dy, dx = self.spacing
        return float(dz * dy * dx) / 1000.0

    def to_meta(self) -> dict:
        """JSON-safe summary for training-folder ``meta.json`` and layer metadata."""
        return {
            "format": self.format, "path": str(self.path), "shape": list(self.shape),
            "spacing": [float(s) for s in self.spacing],
            "affine": np.asarray(self.affine, float).round(6).tolist(),
            "orientation": "LPS", "modality": self.modality, "units": self.units,
            "series_uid": self.series_uid,
        }


_LPS_SIGN = {0: -1.0, 1: -1.0, 2: 1.0}    # RAS world axis -> direction of the display axis (L, P, S)
OBLIQUE_DEGREES = 0.1
"""A voxel axis more than this far from its nearest patient axis makes a volume oblique."""


def lps_affine(spacing: Sequence[float], origin: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Affine of an axis-aligned display array: ``(z, y, x, 1)`` -> RAS mm.

    Parameters
    ----------
    spacing : (dz, dy, dx) float
        Voxel size in mm.
    origin : (3,) float
        RAS mm of voxel ``(0, 0, 0)``.

    Returns
    -------
    (4, 4) ndarray
        z runs towards Superior (+S), y towards Posterior (-A), x towards Left (-R).
    """
    dz, dy, dx = (float(s) for s in spacing)
    aff = np.eye(4)
    aff[:3, :3] = [[0.0, 0.0, -dx], [0.0, -dy, 0.0], [dz, 0.0, 0.0]]
    aff[:3, 3] = np.asarray(origin, float)
    return aff


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """``(dz, dy, dx)``: the column norms of ``affine[:3, :3]`` (mm)."""
    norms = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    return tuple(float(v) for v in norms)


def axial_axis(geometry=None) -> int:
    """The array axis that runs head to foot, i.e. the axis whose slices are axial.

    The one rule for "axial" (``segloop measure`` and the napari CT tools both use it): the
    voxel axis whose direction in the affine is closest to the patient's superior-inferior
    axis (the largest ``|affine[2, j]|`` relative to the column's length; for an oblique
    volume the nearest one, the first on a tie).

    Parameters
    ----------
    geometry : VolumeInfo, (4, 4) array-like or None
        A :class:`VolumeInfo` (its ``affine``), or an affine mapping array indices
        ``(i, j, k, 1)`` to RAS+ mm.  None (geometry unknown): 0, the readers' convention.

    Returns
    -------
    int
        0, 1 or 2.

    Raises
    ------
    VolumeReadError
        The affine is not a 4 x 4 (or 3 x 3) matrix of finite numbers with no zero-length axis.
    """
    if geometry is None:
        return 0
    affine = getattr(geometry, "affine", geometry)
    if affine is None:
        return 0
    m = np.asarray(affine, dtype=float)
    if m.shape not in ((4, 4), (3, 3)) or not np.isfinite(m).all():
        raise VolumeReadError(f"the volume's affine {m.tolist()} is not a 4 x 4 matrix of finite numbers; "
                              "its orientation is unknown - reopen the volume from its file")
    cols = m[:3, :3]
    norms = np.linalg.norm(cols, axis=0)
    if not (norms > 0).all():
        raise VolumeReadError("the volume's affine has a voxel axis of zero length; its orientation is unknown - "
                              "fix the file's header")
    return int(np.argmax(np.abs(cols[2]) / norms))


def obliquity_deg(affine: np.ndarray) -> float:
    """Largest angle (degrees) between a voxel axis and its nearest patient axis."""
    rot = np.asarray(affine, float)[:3, :3]
    rot = rot / np.where(np.linalg.norm(rot, axis=0) == 0, 1.0, np.linalg.norm(rot, axis=0))
    cos = np.clip(np.abs(rot).max(axis=0).min(), -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)))


def lps_reorientation(source_affine: np.ndarray) -> Reorientation:
    """The permutation/flips taking a source voxel array to LPS display order (Z=S, Y=P, X=L)."""
    from nibabel.orientations import io_orientation

    ornt = io_orientation(np.asarray(source_affine, float))   # per source axis: (RAS axis, +1/-1)
    axes, flips = [], []
    for world, sign in ornt:
        if np.isnan(world):
            raise VolumeReadError("the affine is degenerate (a voxel axis has zero length); "
                                  "the file's geometry cannot be trusted - fix its header")
        disp = 2 - int(world)                     # S -> 0, A/P -> 1, R/L -> 2
        axes.append(disp)
        if sign != _LPS_SIGN[int(world)]:
            flips.append(disp)
    return Reorientation(axes=tuple(axes), flips=tuple(sorted(flips)))
