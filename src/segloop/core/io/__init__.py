"""Image readers and writers (no Qt, no napari)."""

from segloop.core.io.images import ImageInfo, read_image, write_labels

__all__ = ["ImageInfo", "read_image", "write_labels"]
