"""Image and volume readers and writers (no Qt, no napari)."""

from segloop.core.io.images import ImageInfo, read_image, read_pyramid, write_labels, write_overlay
from segloop.core.io.samples import liver_ct_paths, load_liver_ct
from segloop.core.io.volume import (
    Reorientation,
    VolumeInfo,
    read_volume,
    write_nifti_labels,
    write_seg_nrrd,
)

__all__ = [
    "ImageInfo",
    "read_image",
    "read_pyramid",
    "write_labels",
    "write_overlay",
    "VolumeInfo",
    "Reorientation",
    "read_volume",
    "write_nifti_labels",
    "write_seg_nrrd",
    "liver_ct_paths",
    "load_liver_ct",
]
