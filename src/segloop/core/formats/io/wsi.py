"""Open whole-slide images lazily, as a pyramid of dask arrays with their pixel size in µm.

Tiled / pyramidal TIFF, OME-TIFF and Aperio SVS are read with tifffile (``aszarr`` + zarr), tile by
tile; the vendor formats tifffile does not read (Hamamatsu ``.ndpi``/``.vms``/``.vmu``, MIRAX
``.mrxs``, Leica ``.scn``, Ventana ``.bif``, Sakura ``.svslide``, DICOM-WSI) with OpenSlide
(``pip install "napari-segloop[wsi]"``).  Opening reads only metadata; a region's tiles are decoded
when the region is computed.

>>> with open_slide("CMU-1.svs") as slide:                          # doctest: +SKIP
...     level, ds = slide.level_for(1.0)                            # >= 1 µm/px would be too coarse
...     region = slide.levels[level][1000:1512, 2000:2512].compute()  # (512, 512, 3) uint8
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from segloop.core.formats.io.images import channels_last, check_tiff_level, tiff_pixel_size
from segloop.errors import ImageReadError, InvalidImageError, InvalidPixelSizeError

__all__ = ["Slide", "open_slide", "is_slide", "is_dicom_wsi", "PLAIN_SUFFIXES", "SLIDE_SUFFIXES",
           "TIFF_SLIDE_SUFFIXES", "OPENSLIDE_SUFFIXES", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
"""Version of :attr:`Slide.metadata`'s layout."""

TIFF_SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".btf", ".tf8", ".ome.tif", ".ome.tiff")
"""Read with tifffile (Aperio SVS is a TIFF)."""

OPENSLIDE_SUFFIXES = (".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".dcm")
"""Read with OpenSlide (``backend="auto"``)."""

PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg")
"""Tiles that are read whole, as a one-level slide (a pathologist's exported field of view)."""

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide")
"""Suffixes that are whole slides whatever their content (napari's reader opens them as slides)."""

_INSTALL = 'pip install "napari-segloop[wsi]"'
_LEVEL_TOLERANCE = 1e-3
"""A level counts as "not coarser" than a requested pixel size up to 0.1 % (levels of odd sizes are
not exact halves, e.g. 99999 -> 24999 px is a downsample of 4.00016)."""


@dataclass(frozen=True, eq=False)
class Slide:
    """An open whole-slide image.

    Attributes
    ----------
    path : Path
    backend : {"tifffile", "openslide"}
    levels : list of dask arrays
        Level 0 (full resolution) first; ``(Y, X, 3)`` uint8 RGB for brightfield slides (other
        TIFFs: channels last), chunked by the file's own tiles where it has them.  Lazy: a region is
        decoded when computed (``np.asarray(slide.levels[1][:512, :512])``).
    downsamples : list of float
        Level 0 size over each level's size (mean of the two axes, as OpenSlide reports it).
    mpp : (float, float) or None
        µm per pixel ``(y, x)`` at level 0; None when the file does not record it.
    vendor : str
        OpenSlide's vendor name (``aperio``, ``hamamatsu``, ``mirax`` ...), or ``generic-tiff`` /
        ``ome`` for TIFFs read with tifffile.
    objective_power : float or None
        Scanning magnification (Aperio ``AppMag``, OpenSlide ``objective-power``).
    axes : str
        Axes of every level, e.g. ``"YXS"`` (S = RGB samples).
    associated : Mapping[str, ndarray]
        Small images stored with the slide (``label``, ``macro``, ``thumbnail``) by name; each is read
        when it is looked up, as a ``(H, W, 3)`` uint8 array.
    metadata : dict
        JSON-serialisable summary: ``schema_version``, ``source``, ``backend``, ``vendor``, ``mpp``,
        ``objective_power``, ``level_shapes`` (``[height, width]`` per level), ``downsamples``,
        ``tile_shape``, ``axes``, ``associated`` (names) and the vendor ``properties`` (strings).
    """

    path: Path
    backend: Literal["tifffile", "openslide"]
    levels: list
    downsamples: list[float]
    mpp: tuple[float, float] | None
    vendor: str
    objective_power: float | None
    axes: str
    associated: Mapping[str, np.ndarray]
    metadata: dict
    _close: Callable[[], None] = field(repr=False, default=lambda: None)

    def pixel_size(self, level: int) -> tuple[float, float] | None:
        """µm per pixel ``(y, x)`` of ``level`` (None when the slide does not record its pixel size)."""
        self._check_level(level)
        if self.mpp is None:
            return None
        (h0, w0), (h, w) = self._yx(0), self._yx(level)
        return (self.mpp[0] * h0 / h, self.mpp[1] * w0 / w)

    def level_for(self, pixel_size_um: float | tuple[float, float]) -> tuple[int, float]:
        """The coarsest level whose pixels are not coarser than ``pixel_size_um``, and its downsample.

        Parameters
        ----------
        pixel_size_um : float or (float, float)
            Wanted µm per pixel, one value or ``(y, x)``.  Finer than level 0 gives level 0.

        Returns
        -------
        level : int
        downsample : float

        Raises
        ------
        InvalidPixelSizeError
            The value is not a positive finite number, or the slide does not record its pixel size.
        """
        want = _wanted_pixel_size(pixel_size_um)
        if self.mpp is None:
            raise InvalidPixelSizeError(f"{self.path}: the slide does not record its pixel size (µm per pixel), "
                                        "so no level can be chosen by pixel size; choose a level by index")
        best = 0
        for level in range(len(self.levels)):
            py, px = self.pixel_size(level)
            if py <= want[0] * (1 + _LEVEL_TOLERANCE) and px <= want[1] * (1 + _LEVEL_TOLERANCE):
                if py * px > math.prod(self.pixel_size(best)):
                    best = level
        return best, self.downsamples[best]

    def close(self) -> None:
        """Close the file; the levels cannot be read afterwards."""
        self._close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _yx(self, level: int) -> tuple[int, int]:
        return _yx_shape(self.levels[level].shape, self.axes)

    def _check_level(self, level: int) -> None:
        if not isinstance(level, (int, np.integer)) or not 0 <= level < len(self.levels):
            raise InvalidImageError(f"{self.path}: no level {level!r}; the slide has levels 0 to "
                                    f"{len(self.levels) - 1}")


def open_slide(path: str | os.PathLike, *, backend: Literal["auto", "tifffile", "openslide"] = "auto") -> Slide:
    """Open a whole-slide image lazily: only its metadata is read.

    Parameters
    ----------
    path : str or PathLike
        A TIFF / OME-TIFF / Aperio ``.svs`` (read with tifffile), or a ``.ndpi``, ``.mrxs``, ``.scn``,
        ``.bif``, ``.vms``, ``.vmu``, ``.svslide`` or DICOM-WSI ``.dcm`` file (read with OpenSlide).
        A TIFF that is not tiled or has one level gives a one-level slide.
    backend : {"auto", "tifffile", "openslide"}
        ``"auto"`` picks by suffix as above; ``"openslide"`` also reads TIFF / SVS through OpenSlide.

    Returns
    -------
    Slide
        Close it (or use it as a context manager) when done.

    Raises
    ------
    ImageReadError
        Missing, truncated or corrupt file, a format neither backend reads, or OpenSlide needed but
        not installed; the message names the file and what to do.
    """
    path = Path(path)
    if backend not in ("auto", "tifffile", "openslide"):
        raise InvalidImageError(f"backend must be 'auto', 'tifffile' or 'openslide', not {backend!r}")
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file" + ("; give one file of the slide, not its folder"
                                                        if path.is_dir() else ""))
    suffix = _suffix(path)
    if backend == "openslide" or (backend == "auto" and suffix in OPENSLIDE_SUFFIXES):
        return _open_openslide(path)
    if backend == "auto" and not suffix and is_dicom_wsi(path):
        return _open_openslide(path)
    if backend == "tifffile" or suffix in TIFF_SLIDE_SUFFIXES:
        return _open_tifffile(path)
    if suffix in PLAIN_SUFFIXES:
        return _open_plain(path)
    raise ImageReadError(f"{path}: {suffix or 'no suffix'!r} is not a whole-slide format segloop reads; use "
                         f"{', '.join(TIFF_SLIDE_SUFFIXES + OPENSLIDE_SUFFIXES + PLAIN_SUFFIXES)}")


#: SOP Class UID of "VL Whole Slide Microscopy Image Storage" (DICOM-WSI, PS3.4 B.5).
DICOM_WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


def is_dicom_wsi(path: str | os.PathLike) -> bool:
    """True for a DICOM file whose SOP class is VL Whole Slide Microscopy Image (DICOM-WSI).

    Reads only the file's header (never its pixels); a CT/MR slice, an RTSTRUCT or a file that
    cannot be read gives False.
    """
    from segloop.core.formats.io.volume import is_dicom_file

    path = Path(path)
    if not is_dicom_file(path):                  # a .dcm file, or the DICOM preamble
        return False
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:                      # no pydicom: OpenSlide still reads it when asked
        return False
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError, KeyError, EOFError):
        return False
    return str(getattr(ds, "SOPClassUID", "")) == DICOM_WSI_SOP_CLASS


def is_slide(path: str | os.PathLike) -> bool:
    """True for a vendor slide suffix (``.svs``, ``.ndpi`` ...), a DICOM-WSI file and a TIFF with
    pyramid levels.

    Reads only the file's header; a file that cannot be read gives False (reading it then says why).
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix in SLIDE_SUFFIXES:
        return True
    if suffix == ".dcm" or (not suffix and path.is_file()):      # DICOM files often have no suffix
        return is_dicom_wsi(path)
    if suffix not in TIFF_SLIDE_SUFFIXES or not path.is_file():
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            return bool(tf.series) and len(tf.series[0].levels) > 1
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError, EOFError):
        return False


# -- PNG / JPEG tiles ----------------------------------------------------------------------------

def _open_plain(path: Path) -> Slide:
    """A PNG / JPEG tile (grey, 16-bit grey or RGB) as a one-level slide, read whole (such files fit in
    memory); it records no pixel size."""
    import dask.array as da

    from segloop.core.formats.io.images import read_image

    image, _ = read_image(path)                     # ImageReadError names the file
    if image.ndim == 3 and image.shape[-1] in (2, 4):
        image = image[..., :3] if image.shape[-1] == 4 else image[..., 0]    # RGBA / grey + alpha: not stain
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise ImageReadError(f"{path}: a tile read as a slide must be grey (Y, X) or RGB (Y, X, 3), got "
                             f"{image.shape}")
    axes = "YXS" if image.ndim == 3 else "YX"
    h, w = image.shape[:2]
    meta = {"schema_version": 1, "source": str(path), "backend": "tifffile", "vendor": "image", "mpp": None,
            "objective_power": None, "level_shapes": [[h, w]], "downsamples": [1.0], "tile_shape": None,
            "axes": axes, "associated": [], "properties": {}}
    return Slide(path=path, backend="tifffile", levels=[da.from_array(image, chunks=(512, 512) + image.shape[2:])],
                 downsamples=[1.0], mpp=None, vendor="image", objective_power=None, axes=axes, associated={},
                 metadata=meta)


# -- tifffile ----------------------------------------------------------------------------------------

def _open_tifffile(path: Path) -> Slide:
    import tifffile
    import zarr
    from tifffile.tifffile import svs_description_metadata

    try:
        tf = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError, EOFError) as e:
        raise ImageReadError(f"{path}: cannot read it as a TIFF slide ({type(e).__name__}: {e}); the file may be "
                             "truncated or corrupt, or not a TIFF") from None
    try:
        if not tf.series:
            raise ImageReadError(f"{path}: the TIFF has no image data; the file may be truncated or corrupt")
        _check_directories(tf, path)
        series = tf.series[0]
        series_levels = list(series.levels)
        for level in series_levels:
            check_tiff_level(tf, level, path)      # tile offsets only: a truncated file is refused here
        node = zarr.open(series.aszarr(), mode="r")
        arrays = [node] if not hasattr(node, "keys") else [node[str(i)] for i in range(len(series_levels))]
        levels, axes = [], series.axes
        for i, arr in enumerate(arrays):
            lazy = _dask_level(_TiffLevel(arr, path, i), arr.chunks, _chunk_name("tifffile", path, i))
            img, axes = channels_last(lazy, series.axes)
            levels.append(img)
        page = tf.pages.first
        props: dict[str, str] = {}
        mpp, power, vendor = None, None, "ome" if tf.is_ome else "generic-tiff"
        if tf.is_svs:
            vendor = "aperio"
            aperio = svs_description_metadata(page.description)
            props = {f"aperio.{k}": str(v) for k, v in aperio.items()}
            mpp = _positive(aperio.get("MPP"))
            mpp = (mpp, mpp) if mpp else None
            power = _positive(aperio.get("AppMag"))
        elif tf.is_ome:
            power = _ome_objective_power(tf.ome_metadata)
        mpp = mpp or tiff_pixel_size(tf)
        associated = {s.name.lower(): s for s in tf.series[1:] if s.name.lower() in ("label", "macro", "thumbnail")}
        for s in associated.values():
            check_tiff_level(tf, s, path)
    except ImageReadError:
        tf.close()
        raise
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError, EOFError, RuntimeError) as e:
        tf.close()
        raise ImageReadError(f"{path}: cannot read TIFF slide ({type(e).__name__}: {e}); the file may be "
                             "truncated or corrupt") from None
    tile = tuple(int(c) for c in arrays[0].chunks)
    tile_yx = _yx_shape(tile, series.axes) if len(tile) == len(series.axes) else None
    return _slide(path, "tifffile", levels, axes, mpp, vendor, power,
                  _Associated({k: (lambda s=s: _rgb(s.asarray())) for k, s in associated.items()}, path),
                  props, tile_yx, tf.close)


def _check_directories(tf, path: Path) -> None:
    """Refuse a TIFF whose chain of image directories (or page 0's SubIFDs) points past the end of the
    file: tifffile then drops the missing pages with a logged warning, and a truncated slide would
    open with fewer levels instead of failing."""
    import struct

    fh, tiff, size = tf.filehandle, tf.tiff, tf.filehandle.size
    last = tf.pages[len(tf.pages) - 1]              # indexes every top-level directory (headers only)
    fh.seek(last.offset)
    try:
        tagno = struct.unpack(tiff.tagnoformat, fh.read(tiff.tagnosize))[0]
        fh.seek(last.offset + tiff.tagnosize + tagno * tiff.tagsize)
        following = struct.unpack(tiff.offsetformat, fh.read(tiff.offsetsize))[0]
    except struct.error:
        following = size
    subifds = tuple(getattr(tf.pages.first, "subifds", None) or ())
    if following != 0 or any(not 0 < o < size for o in subifds):
        raise ImageReadError(f"{path}: the TIFF is truncated or corrupt: an image directory points past the end "
                             "of the file (levels or pages are missing)")


class _TiffLevel:
    """One pyramid level as a numpy-like array for ``dask.array.from_array``; decode errors are typed."""

    def __init__(self, arr, path: Path, level: int):
        self._arr, self._path, self._level = arr, path, level
        self.shape, self.dtype, self.ndim = tuple(arr.shape), np.dtype(arr.dtype), len(arr.shape)

    def __getitem__(self, key):
        try:
            return np.asarray(self._arr[key])
        except (RuntimeError, ValueError, OSError, KeyError, IndexError, EOFError) as e:
            # imagecodecs' decode errors (JpegError ...) are RuntimeErrors
            raise ImageReadError(f"{self._path}: cannot decode level {self._level} ({type(e).__name__}: {e}); "
                                 "the file is corrupt") from None


def _ome_objective_power(xml: str) -> float | None:
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "Objective" and "NominalMagnification" in el.attrib:
            return _positive(el.attrib["NominalMagnification"])
    return None


# -- OpenSlide ---------------------------------------------------------------------------------------

def _import_openslide(path: Path):
    try:
        import openslide
    except (ImportError, OSError) as e:             # OSError: the shared library is missing
        raise ImageReadError(f"{path}: reading {_suffix(path) or 'this'} slides needs OpenSlide, which is not "
                             f"installed ({e}); {_INSTALL}") from None
    return openslide


def _open_openslide(path: Path) -> Slide:
    openslide = _import_openslide(path)
    try:
        osr = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        raise ImageReadError(f"{path}: not a whole-slide format OpenSlide reads (Aperio, Hamamatsu, Leica, "
                             "MIRAX, Philips, Sakura, Trestle, Ventana, generic tiled TIFF, DICOM); the file may be "
                             "truncated, corrupt or of another kind") from None
    except (openslide.OpenSlideError, OSError, ValueError) as e:
        raise ImageReadError(f"{path}: cannot read slide ({type(e).__name__}: {e}); the file may be truncated "
                             "or corrupt") from None
    try:
        props = {str(k): str(v) for k, v in osr.properties.items()}
        background = _hex_rgb(props.get("openslide.background-color", "FFFFFF"))
        levels = []
        for i, ((w, h), ds) in enumerate(zip(osr.level_dimensions, osr.level_downsamples)):
            tile = (int(props.get(f"openslide.level[{i}].tile-height", 0)) or 512,
                    int(props.get(f"openslide.level[{i}].tile-width", 0)) or 512)
            reader = _OpenSlideLevel(osr, i, float(ds), (int(h), int(w)), background, path)
            levels.append(_dask_level(reader, (*tile, 3), _chunk_name("openslide", path, i)))
        mpp_x, mpp_y = _positive(props.get("openslide.mpp-x")), _positive(props.get("openslide.mpp-y"))
        mpp = (mpp_y, mpp_x) if mpp_x and mpp_y else None
        names = list(osr.associated_images)
        tile0 = tuple(int(c) for c in levels[0].chunksize[:2])
    except (openslide.OpenSlideError, OSError, ValueError) as e:
        osr.close()
        raise ImageReadError(f"{path}: cannot read slide ({type(e).__name__}: {e}); the file may be truncated "
                             "or corrupt") from None
    assoc = _Associated({n: (lambda n=n: _rgb(np.asarray(osr.associated_images[n]), background)) for n in names},
                        path)
    return _slide(path, "openslide", levels, "YXS", mpp, props.get("openslide.vendor", "unknown"),
                  _positive(props.get("openslide.objective-power")), assoc, props, tile0, osr.close)


class _OpenSlideLevel:
    """One OpenSlide level as a ``(Y, X, 3)`` uint8 numpy-like array, read with ``read_region``."""

    def __init__(self, osr, level: int, downsample: float, shape_yx: tuple[int, int], background, path: Path):
        self._osr, self._level, self._ds, self._bg, self._path = osr, level, downsample, background, path
        self.shape, self.dtype, self.ndim = (*shape_yx, 3), np.dtype(np.uint8), 3

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        if not all(isinstance(k, slice) for k in key[:2]):
            raise IndexError("slide levels are read by slices: level[y0:y1, x0:x1]")
        (y0, y1, sy), (x0, x1, sx) = (k.indices(n) for k, n in zip(key[:2], self.shape[:2]))
        h, w = max(y1 - y0, 0), max(x1 - x0, 0)
        if h == 0 or w == 0:
            return np.zeros((h, w, 3), np.uint8)[::sy, ::sx, key[2]]
        from openslide import OpenSlideError

        try:
            rgba = np.asarray(self._osr.read_region((int(x0 * self._ds), int(y0 * self._ds)), self._level, (w, h)))
        except (OpenSlideError, OSError, ValueError) as e:
            raise ImageReadError(f"{self._path}: cannot read level {self._level} at y={y0}, x={x0} "
                                 f"({type(e).__name__}: {e}); the file is corrupt") from None
        return _rgb(rgba, self._bg)[::sy, ::sx, key[2]]


def _hex_rgb(text: str) -> tuple[int, int, int]:
    try:
        return tuple(int(text[i:i + 2], 16) for i in (0, 2, 4))    # type: ignore[return-value]
    except ValueError:
        return (255, 255, 255)


# -- shared ------------------------------------------------------------------------------------------

class _Associated(Mapping):
    """Associated images by name, each read (and converted to RGB) when looked up."""

    def __init__(self, readers: dict[str, Callable[[], np.ndarray]], path: Path):
        self._readers, self._path = readers, path

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._readers:
            raise KeyError(f"{self._path} has no associated image {name!r}; it has {sorted(self._readers)}")
        try:
            return self._readers[name]()
        except (RuntimeError, ValueError, OSError) as e:
            raise ImageReadError(f"{self._path}: cannot read the associated image {name!r} "
                                 f"({type(e).__name__}: {e}); the file is corrupt") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._readers)

    def __len__(self) -> int:
        return len(self._readers)


def _slide(path, backend, levels, axes, mpp, vendor, power, associated, props, tile_yx, close) -> Slide:
    shapes = [_yx_shape(lv.shape, axes) for lv in levels]
    (h0, w0) = shapes[0]
    downsamples = [float((w0 / w + h0 / h) / 2) for h, w in shapes]
    metadata = {"schema_version": SCHEMA_VERSION, "source": str(path), "backend": backend, "vendor": vendor,
                "mpp": list(mpp) if mpp else None, "objective_power": power,
                "level_shapes": [list(s) for s in shapes], "downsamples": downsamples,
                "tile_shape": list(tile_yx) if tile_yx else None, "axes": axes,
                "associated": list(associated), "properties": props}
    return Slide(path=path, backend=backend, levels=levels, downsamples=downsamples, mpp=mpp, vendor=vendor,
                 objective_power=power, axes=axes, associated=associated, metadata=metadata, _close=close)


def _dask_level(reader, chunks, name: str):
    import dask.array as da

    return da.from_array(reader, chunks=tuple(int(c) for c in chunks), name=name, lock=False, fancy=False,
                         asarray=False, meta=np.empty((0,) * reader.ndim, reader.dtype))


def _chunk_name(backend: str, path: Path, level: int) -> str:
    """A dask name that is the same for the same unchanged file, so cached chunks are shared."""
    st = path.stat()
    return f"{backend}-{path.resolve()}-{st.st_size}-{st.st_mtime_ns}-level{level}"


def _rgb(img: np.ndarray, background=(255, 255, 255)) -> np.ndarray:
    """``(H, W, 3)`` uint8: RGBA composited over ``background`` (OpenSlide's transparent margins)."""
    img = np.asarray(img)
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=-1)
    if img.shape[-1] != 4:
        return img
    alpha = img[..., 3:].astype(np.uint16)
    rgb = img[..., :3].astype(np.uint16)
    bg = np.asarray(background, np.uint16)
    return ((rgb * alpha + bg * (255 - alpha) + 127) // 255).astype(np.uint8)


def _yx_shape(shape, axes: str) -> tuple[int, int]:
    return int(shape[axes.index("Y")]), int(shape[axes.index("X")])


def _wanted_pixel_size(value) -> tuple[float, float]:
    try:
        vals = [float(v) for v in (value if isinstance(value, (tuple, list, np.ndarray)) else (value,))]
    except (TypeError, ValueError):
        vals = []
    if len(vals) == 1:
        vals *= 2
    if len(vals) != 2 or not all(math.isfinite(v) and v > 0 for v in vals):
        raise InvalidPixelSizeError(f"pixel size {value!r} must be one positive number of µm per pixel or (y, x)")
    return (vals[0], vals[1])


def _positive(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".ome.tif" if name.endswith((".ome.tif", ".ome.tiff")) else path.suffix.lower()
