"""Image and volume readers and writers (no Qt, no napari)."""

from segloop.core.formats.io.geometry import Reorientation, VolumeInfo, lps_affine
from segloop.core.formats.io.images import (
    ImageInfo,
    read_image,
    read_labels_provenance,
    read_pyramid,
    write_labels,
    write_overlay,
)
from segloop.core.formats.io.label_volume import read_label_volume
from segloop.core.formats.io.samples import liver_ct_paths, load_liver_ct
from segloop.core.formats.io.volume import (
    read_volume,
    write_nifti_labels,
    write_seg_nrrd,
)

__all__ = [
    "ImageInfo",
    "read_image",
    "read_pyramid",
    "write_labels",
    "read_labels_provenance",
    "write_overlay",
    "VolumeInfo",
    "Reorientation",
    "lps_affine",
    "read_volume",
    "read_label_volume",
    "write_nifti_labels",
    "write_seg_nrrd",
    "liver_ct_paths",
    "load_liver_ct",
]
