"""Volumes with physical geometry: the common description every volume reader returns.

Convention (the contract between readers, writers, widgets and training folders):

* Readers return the voxels as a ``(Z, Y, X)`` array (no channels) reoriented -- by axis
  permutation and flips only, never resampling -- to the nearest of the patient axes so that
  index increases towards **S**uperior along Z, **P**osterior along Y and **L**eft along X
  (ITK's "LPS" voxel orientation; radiological display: the patient's right is on the screen's
  left, anterior at the top).  Axis 0 is the one people scroll (axial for axial scans).
* ``affine`` maps ``(z, y, x, 1)`` indices of *that* array to RAS+ millimetres (NIfTI / nibabel
  convention).  ``spacing`` is ``(dz, dy, dx)`` in mm, the column norms of ``affine[:3, :3]``.
* ``to_source`` records how the returned array relates to the voxel order on disk, so a label
  volume can be written back in the file's original space (``from_display``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["VolumeInfo", "Reorientation"]


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
        a = source.transpose(np.argsort(self.axes))
        return np.flip(a, axis=self.flips) if self.flips else a

    @property
    def is_identity(self) -> bool:
        return tuple(self.axes) == (0, 1, 2) and not self.flips


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
