"""Build small, real DICOM series on disk from pydicom's own ``CT_small.dcm``.

Only files physically shipped inside the installed pydicom package are used (never
``get_testdata_file``, which may download).  Each written slice is a copy of the CT_small
dataset with consistent geometry: a new SOPInstanceUID, ImagePositionPatient stepped along the
slice normal, and *shuffled* file names and InstanceNumbers, so a reader that sorted by name or
number would get the slices in the wrong order.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

TEST_FILES = Path(pydicom.__file__).resolve().parent / "data" / "test_files"
CT_SMALL = TEST_FILES / "CT_small.dcm"
MR_SMALL = TEST_FILES / "MR_small.dcm"
MR_SMALL_RLE = TEST_FILES / "MR_small_RLE.dcm"
MR_TRUNCATED = TEST_FILES / "MR_truncated.dcm"
DICOMDIR = TEST_FILES / "dicomdirtests" / "DICOMDIR"

AXIAL = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
SAGITTAL = ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0))
CORONAL = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0))


@dataclass
class Slice:
    """One written file: where it is, its geometry and its stored (pre-rescale) pixels."""

    path: Path
    ipp: np.ndarray          # LPS mm
    row_cos: np.ndarray      # direction of increasing column index
    col_cos: np.ndarray      # direction of increasing row index
    pixel_spacing: tuple[float, float]   # (between rows, between columns)
    stored: np.ndarray       # (rows, cols) int16
    slope: float
    intercept: float
    sop_uid: str

    def values(self) -> np.ndarray:
        """The modality values (HU for CT) a reader must return for this slice."""
        return self.stored * self.slope + self.intercept

    def lps(self) -> np.ndarray:
        """(rows, cols, 3) LPS position of every pixel centre."""
        r, c = np.mgrid[0:self.stored.shape[0], 0:self.stored.shape[1]]
        dy, dx = self.pixel_spacing
        return (self.ipp + r[..., None] * dy * self.col_cos + c[..., None] * dx * self.row_cos)


def base_pixels(rows: int = 64, cols: int = 48) -> np.ndarray:
    """A crop of CT_small's stored values (int16, 128..2191)."""
    return pydicom.dcmread(CT_SMALL).pixel_array[20:20 + rows, 30:30 + cols].copy()


def _shuffled(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if n < 3 or (np.any(np.diff(perm) < 0) and np.any(np.diff(perm) > 0)):
            return perm


def write_series(folder, n: int = 5, *, rows: int = 64, cols: int = 48,
                 orientation=AXIAL, spacing: float = 5.0, positions=None,
                 pixel_spacing=(0.66, 0.66), origin=(-158.1, -179.0, -75.7),
                 inplane_shift=(0.0, 0.0, 0.0), slope: float = 1.0, intercept: float = -1024.0,
                 stored_offset: int = 0, series_uid: str | None = None, description: str = "abdomen",
                 compress: str | None = None, seed: int = 0, prefix: str = "IM",
                 slice_thickness: float = 1.25) -> list[Slice]:
    """Write ``n`` slices of one series into ``folder``; return them ordered along the normal.

    ``positions`` (mm along the normal, default ``k * spacing``) allows gaps and duplicates;
    ``inplane_shift`` is added per slice index (a gantry tilt).  File names and
    InstanceNumbers are a shuffled permutation of the position order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(CT_SMALL)
    row_cos, col_cos = (np.asarray(v, float) for v in orientation)
    normal = np.cross(row_cos, col_cos)
    positions = [k * spacing for k in range(n)] if positions is None else list(positions)
    n = len(positions)
    perm = _shuffled(n, seed)
    series_uid = series_uid or generate_uid()
    base = base_pixels(rows, cols)
    out = []
    for k, z in enumerate(positions):
        ds = copy.deepcopy(template)
        stored = (np.roll(base, 3 * k, axis=0).astype(np.int32) + stored_offset).astype(np.int16)
        ipp = np.asarray(origin, float) + z * normal + k * np.asarray(inplane_shift, float)
        sop = generate_uid()
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = description
        ds.InstanceNumber = int(perm[k]) + 1
        ds.ImageOrientationPatient = [float(v) for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [round(float(v), 6) for v in ipp]
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
        ds.SliceThickness = slice_thickness       # deliberately not the spacing
        if "SpacingBetweenSlices" in ds:
            del ds.SpacingBetweenSlices
        ds.SliceLocation = 0.0                    # deliberately useless
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.WindowCenter = [40, 300]
        ds.WindowWidth = [400, 1500]
        ds.Rows, ds.Columns = rows, cols
        ds.PixelRepresentation = 1
        ds.PixelData = stored.tobytes()
        if compress == "rle":
            from pydicom.uid import RLELossless

            ds.compress(RLELossless, stored, generate_instance_uid=False)
        path = folder / f"{prefix}{int(perm[k]):04d}{'.dcm' if perm[k] % 2 else ''}"
        ds.save_as(path, enforce_file_format=True)
        out.append(Slice(path, ipp, row_cos, col_cos, tuple(pixel_spacing), stored, slope,
                         intercept, sop))
    return out


def rewrite(path, **changes) -> None:
    """Change header attributes of a written file in place."""
    ds = pydicom.dcmread(path)
    for k, v in changes.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
