"""Reader and writer contributions, on top of ``segloop.core.io``."""

from __future__ import annotations

from segloop.core.io.images import read_pyramid, write_labels

_SUFFIXES = (".tif", ".tiff", ".btf", ".png", ".jpg", ".jpeg")


def get_reader(path):
    """Return a reader for one image file segloop can read, else None."""
    if isinstance(path, list) or not str(path).lower().endswith(_SUFFIXES):
        return None
    return _read


def _read(path):
    levels, info = read_pyramid(path)   # ImageReadError says what is wrong; napari shows it
    image = levels[0]                   # memmap or lazy (dask over zarr) for big/compressed pyramids
    rgb = info.axes.endswith(("S", "C")) and image.shape[-1] in (3, 4)
    meta = {"source": str(info.path), "axes": info.axes, "pixel_size": info.pixel_size}
    kwargs = {"name": info.path.stem, "rgb": rgb, "metadata": {"segloop_source": meta}}
    if info.pixel_size and not rgb:
        kwargs["scale"] = (1.0,) * (image.ndim - 2) + tuple(info.pixel_size)
    elif info.pixel_size:
        kwargs["scale"] = (1.0,) * (image.ndim - 3) + tuple(info.pixel_size)
    if len(levels) > 1:
        kwargs["multiscale"] = True
        return [(levels, kwargs, "image")]
    return [(image, kwargs, "image")]


def write_labels_tiff(path, data, meta):
    """Save a Labels layer as an (atomically written) TIFF with its provenance."""
    write_labels(path, data, metadata=meta.get("metadata", {}).get("segloop", {}))
    return [str(path)]
