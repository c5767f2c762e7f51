"""Image readers and writers (no Qt, no napari)."""

from segloop.core.io.images import ImageInfo, read_image, read_pyramid, write_labels, write_overlay

__all__ = ["ImageInfo", "read_image", "read_pyramid", "write_labels", "write_overlay"]
