"""Read images for segmentation and write label images.

TIFF (incl. BigTIFF and OME-TIFF; level 0 of pyramids) through tifffile,
memory-mapped when the file is uncompressed so a 20k x 20k image is not read
into memory; PNG / JPEG through scikit-image.  Channels are moved last.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segloop.core._runtime import atomic_output
from segloop.errors import ImageReadError

__all__ = ["ImageInfo", "read_image", "read_pyramid", "write_labels", "read_labels_provenance", "write_overlay",
           "create_label_memmap"]

_TIFF = {".tif", ".tiff", ".btf", ".tf8", ".ome.tif", ".ome.tiff"}
_PLAIN = {".png", ".jpg", ".jpeg", ".bmp"}


@dataclass
class ImageInfo:
    """What was read: axes after reordering (channels last), pixel size if known."""

    path: Path
    axes: str
    shape: tuple[int, ...]
    dtype: str
    memmapped: bool
    pixel_size: tuple[float, float] | None = None
    extra: dict = field(default_factory=dict)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".ome.tif" if name.endswith((".ome.tif", ".ome.tiff")) else path.suffix.lower()


def read_image(path: str | os.PathLike, *, lazy: bool | str = "auto") -> tuple[np.ndarray, ImageInfo]:
    """Read an image with channels (``C``/``S`` axes) last.

    Uncompressed TIFFs are memory-mapped.  Compressed TIFFs with pyramid levels
    or over ``LAZY_BYTES`` are opened lazily (``lazy="auto"``; needs zarr and
    dask): a dask array whose tiles are decoded when a region is read.

    Returns
    -------
    image : ndarray or np.memmap
        ``(H, W)``, ``(H, W, C)``, ``(Z, H, W)`` or ``(Z, H, W, C)``.
    info : ImageInfo

    Raises
    ------
    ImageReadError
        Missing, truncated or unreadable file; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    suf = _suffix(path)
    if suf in _TIFF:
        return _read_tiff(path, lazy=lazy)
    if suf in _PLAIN:
        from skimage.io import imread

        try:
            img = imread(path)
        except (OSError, ValueError, SyntaxError) as e:
            raise ImageReadError(f"{path}: cannot read image ({e}); the file may be truncated") from None
        axes = "YX" if img.ndim == 2 else "YXS"
        return img, ImageInfo(path, axes, img.shape, str(img.dtype), False)
    raise ImageReadError(f"{path}: unsupported file type {suf!r}; use TIFF, PNG or JPEG")


def read_pyramid(path: str | os.PathLike) -> tuple[list, ImageInfo]:
    """Read every resolution level of an (OME-)TIFF pyramid, level 0 first, channels last.

    Level 0 is memory-mapped when uncompressed; other levels (and level 0 of
    compressed files) are lazy dask arrays when zarr and dask are installed,
    else only level 0 is returned, read into memory.  Non-TIFF files give one level.
    """
    path = Path(path)
    if _suffix(path) not in _TIFF:
        image, info = read_image(path)
        return [image], info
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    return _read_tiff(path, pyramid=True)


def _read_tiff(path: Path, *, lazy: bool | str = "auto", pyramid: bool = False):
    import tifffile

    try:
        tf = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError, EOFError) as e:
        raise ImageReadError(f"{path}: cannot read TIFF ({type(e).__name__}: {e}); the file may be truncated "
                             "or corrupt") from None
    keep_open = False            # lazy arrays read through the open file
    try:
        if not tf.series:
            raise ImageReadError(f"{path}: cannot read TIFF: it has no image data; the file may be truncated or "
                                 "corrupt")
        series = tf.series[0]
        levels = list(getattr(series, "levels", None) or [series])
        axes = levels[0].axes
        pixel_size = _pixel_size(tf)
        nbytes = int(np.prod(levels[0].shape)) * np.dtype(levels[0].dtype).itemsize
        want_lazy = lazy is True or (lazy == "auto" and (len(levels) > 1 or nbytes > LAZY_BYTES))
        lazy_levels = _lazy_levels(series, levels) if (want_lazy or (pyramid and len(levels) > 1)) else None
        try:
            images = [tifffile.memmap(path, series=0, level=0, mode="r")]
            memmapped = True
        except (ValueError, tifffile.TiffFileError, OSError):
            memmapped = False
            _check_complete(tf, levels[0], path)          # before a lazy array or a 40 GB allocation
            if want_lazy and lazy_levels is not None:
                images = [lazy_levels[0]]
            else:
                images = [levels[0].asarray()]
                if images[0].size and images[0].shape != tuple(levels[0].shape):
                    raise ImageReadError(f"{path}: TIFF data is incomplete (truncated file?)") from None
        if pyramid and lazy_levels is not None:
            images += lazy_levels[1:]
        keep_open = lazy_levels is not None and (len(images) > 1 or not memmapped and want_lazy)
    except ImageReadError:       # already names the file and the problem (an OSError, caught below otherwise)
        raise
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError, EOFError, RuntimeError) as e:
        # RuntimeError: imagecodecs' decode errors (DeflateError ...) on truncated tiles
        raise ImageReadError(f"{path}: cannot read TIFF ({type(e).__name__}: {e}); the file may be truncated "
                             "or corrupt") from None
    finally:
        if not keep_open:
            tf.close()
    out = []
    for img in images:
        img, ax = _channels_last(img, axes)
        out.append(img)
    info = ImageInfo(path, ax, tuple(out[0].shape), str(out[0].dtype), memmapped, pixel_size,
                     extra={"lazy": keep_open and not memmapped, "levels": len(levels)})
    return (out if pyramid else out[0]), info


def _check_complete(tf, level, path: Path) -> None:
    """Check, before any pixel is decoded, that the header's promise can be kept.

    Every strip or tile must lie inside the file, there must be as many of them as the declared
    shape needs, and uncompressed data must hold at least the declared number of bytes.  A header
    that declares 200000 x 200000 pixels over a few bytes of data is refused here, instead of
    failing deep inside the lazy (zarr) reader or asking for 40 GB of memory.
    """
    size = tf.filehandle.size
    for page in level.pages:
        if page is None:
            continue
        ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts) if c]
        if not ends or max(ends) > size:
            raise ImageReadError(f"{path}: TIFF data is incomplete (truncated file?)")
        need = int(np.prod(getattr(page, "chunked", None) or (len(page.dataoffsets),)))
        if len(page.dataoffsets) < need:
            raise ImageReadError(f"{path}: the TIFF header declares {'x'.join(map(str, page.shape))} pixels in "
                                 f"{need} strips or tiles but the file holds {len(page.dataoffsets)}; the file is "
                                 "corrupt or its header is wrong")
        key = page.keyframe
        packed = int(key.bitspersample) % 8 != 0          # 1-bit, 12-bit ...: fewer bytes than nbytes
        if int(key.compression) == 1 and not packed and sum(page.databytecounts) < page.nbytes:
            raise ImageReadError(f"{path}: the TIFF header declares {'x'.join(map(str, page.shape))} pixels "
                                 f"({page.nbytes} bytes) but the file holds {sum(page.databytecounts)} bytes of "
                                 "pixel data; the file is truncated or its header is wrong")


LAZY_BYTES = 256 * 2**20
"""Compressed TIFFs larger than this (or with pyramid levels) are read lazily when zarr is installed."""


def _zarr_ok() -> bool:
    try:
        import dask.array  # noqa: F401
        import zarr  # noqa: F401
    except ImportError:
        return False
    return True


def _lazy_levels(series, levels) -> list | None:
    """Every pyramid level as a lazy dask array (tiles decoded on access), or None without zarr/dask."""
    if not _zarr_ok():
        return None
    import dask.array as da
    import zarr

    store = series.aszarr()
    node = zarr.open(store, mode="r")
    if len(levels) == 1 and not hasattr(node, "keys"):
        arrays = [node]
    else:
        arrays = [node[str(i)] for i in range(len(levels))]
    return [da.from_zarr(a) for a in arrays]


def _channels_last(img: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    # Drop singleton non-spatial axes (T/Q/I of length 1), then put C/S last.
    keep = [i for i, a in enumerate(axes) if not (img.shape[i] == 1 and a not in "YX")]
    if len(keep) != len(axes):
        img = img.reshape([img.shape[i] for i in keep])
        axes = "".join(axes[i] for i in keep)
    for ch in "SC":
        if ch in axes and axes[-1] != ch:
            i = axes.index(ch)
            img = np.moveaxis(img, i, -1)
            axes = axes[:i] + axes[i + 1:] + ch
    return img, axes


#: Length units of OME ``PhysicalSize*Unit`` and ImageJ ``unit=``, in µm.
_UNITS_UM = {"µm": 1.0, "\u03bcm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "nm": 1e-3, "Å": 1e-4,
             "mm": 1e3, "cm": 1e4, "m": 1e6}


def _pixel_size(tf) -> tuple[float, float] | None:
    """µm per pixel ``(y, x)``: OME-XML ``PhysicalSizeY/X``, else the resolution tags (inch, cm, or
    ImageJ's ``unit=micron``); None when the file does not say, or says nonsense (0, NaN)."""
    import math

    px = _ome_pixel_size(tf)
    if px is None:
        try:
            page = tf.pages[0]
            xr, yr = page.tags["XResolution"].value, page.tags["YResolution"].value
            unit = page.tags.get("ResolutionUnit")
            scale = {2: 25400.0, 3: 10000.0}.get(int(unit.value) if unit else 1)
            if scale is None and tf.is_imagej:           # ImageJ: unit NONE, the unit in its description
                scale = _UNITS_UM.get(str((tf.imagej_metadata or {}).get("unit", "")).strip())
            if scale is None:
                return None
            px = (scale * yr[1] / yr[0], scale * xr[1] / xr[0])
        except (KeyError, ZeroDivisionError, TypeError, AttributeError, ValueError):
            return None
    return px if all(math.isfinite(v) and v > 0 for v in px) else None


def _ome_pixel_size(tf) -> tuple[float, float] | None:
    """``PhysicalSizeY/X`` of the first OME ``Pixels`` element (µm unless a unit says otherwise)."""
    if not getattr(tf, "is_ome", False):
        return None
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(tf.ome_metadata)
        pixels = next(el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels")
        size = [float(pixels.attrib[f"PhysicalSize{a}"]) * _UNITS_UM[pixels.attrib.get(f"PhysicalSize{a}Unit", "µm")]
                for a in "YX"]
    except (ET.ParseError, StopIteration, KeyError, ValueError, TypeError):
        return None
    return (size[0], size[1])


def create_label_memmap(path: str | os.PathLike, shape: tuple[int, ...], dtype) -> np.memmap:
    """A writable, uncompressed TIFF label image on disk, filled as a memmap."""
    import tifffile

    return tifffile.memmap(path, shape=shape, dtype=dtype, bigtiff=int(np.prod(shape)) * np.dtype(dtype).itemsize > 2**31,
                           photometric="minisblack", metadata={"axes": "ZYX"[-len(shape):]})


def write_labels(path: str | os.PathLike, labels: np.ndarray, *, metadata: dict | None = None,
                 compress: bool = True) -> Path:
    """Write a label image as TIFF atomically (temp file, then rename).

    ``metadata`` (JSON-able) is stored in the ImageDescription.
    """
    import json

    import tifffile

    path = Path(path)
    big = labels.nbytes > 2**31
    with atomic_output(path, durable=False) as tmp:
        tifffile.imwrite(tmp, labels, bigtiff=big, photometric="minisblack",
                         compression="zlib" if compress else None,
                         tile=(256, 256) if labels.ndim >= 2 and min(labels.shape[-2:]) >= 256 else None,
                         # ' : ' keeps tifffile from taking a nested "shape": key for its own
                         # shaped-array description (it then fails to read the file)
                         description=json.dumps({"segloop": metadata or {}}, separators=(", ", " : ")),
                         metadata=None)
    return path


def read_labels_provenance(path: str | os.PathLike) -> dict | None:
    """The provenance :func:`write_labels` stored in a label TIFF, or None if it has none.

    Never raises for a file without it (labels drawn elsewhere, another program's TIFF, a
    PNG): the caller then has no model to take classes from.
    """
    import json

    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            desc = tf.pages[0].description if tf.pages else ""
        meta = json.loads(desc).get("segloop") if desc.lstrip().startswith("{") else None
    except (OSError, ValueError, AttributeError, tifffile.TiffFileError):
        return None
    return meta if isinstance(meta, dict) and meta else None


def write_overlay(path: str | os.PathLike, image: np.ndarray, labels: np.ndarray, *, max_side: int = 2048) -> Path:
    """Save a PNG of ``image`` with label outlines, downsampled to at most ``max_side``.

    Parameters
    ----------
    image : (H, W) or (H, W, 3|4) array-like
        Grey images are contrast-stretched (1st-99.8th percentile).
    labels : (H, W) integer array-like
    """
    from skimage.io import imsave
    from skimage.segmentation import find_boundaries

    h, w = labels.shape[:2]
    s = max(1, int(np.ceil(max(h, w) / max_side)))
    img = np.asarray(image[::s, ::s]).astype(np.float32)
    lab = np.asarray(labels[::s, ::s])
    if img.ndim == 3:
        img = img[..., :3]
    finite = img[np.isfinite(img)]
    lo, hi = (np.percentile(finite, (1, 99.8)) if finite.size else (0.0, 1.0))
    img = np.clip((np.nan_to_num(img) - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img
    edges = find_boundaries(lab, mode="inner")
    rgb[edges] = (1.0, 0.85, 0.0)
    path = Path(path)
    imsave(path, (rgb * 255).astype(np.uint8), check_contrast=False)
    return path


# -- shared with the whole-slide reader (wsi.py) ---------------------------------------------------

def tiff_pixel_size(tf) -> tuple[float, float] | None:
    """µm per pixel ``(y, x)`` of an open :class:`tifffile.TiffFile`: OME ``PhysicalSizeY/X``, else the
    resolution tags of its first page; None when the file does not say, or says nonsense."""
    return _pixel_size(tf)


def check_tiff_level(tf, level, path: Path) -> None:
    """Raise :class:`ImageReadError` when a tifffile series (level) declares more tiles or bytes than
    the file holds; reads only the tile offsets, never pixel data."""
    _check_complete(tf, level, path)


def channels_last(img, axes: str) -> tuple:
    """``img`` (numpy or dask) with singleton non-spatial axes dropped and ``C``/``S`` moved last,
    and its new axes string."""
    return _channels_last(img, axes)


__all__ += ["tiff_pixel_size", "check_tiff_level", "channels_last"]
