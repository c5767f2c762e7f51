"""NRRD volumes (``.nrrd``, ``.nhdr`` with detached data): header, voxels and geometry.

The header is parsed by pynrrd; the voxels are read here so that raw data can be memory-mapped
and compressed data (gzip, bzip2) decompressed chunk by chunk with progress, cancel checks and a
clear error when the file is shorter than its header says.  Geometry follows the NRRD spec:
``space`` names the world frame (LPS, RAS, LAS, scanner-xyz ...), row ``i`` of ``space
directions`` is the world vector of one step along file axis ``i`` and ``space origin`` is the
world position of voxel 0.  :func:`read_nrrd` returns the volume in LPS display order, like every
other reader (see :mod:`segloop.core.formats.io.geometry`).
"""

from __future__ import annotations

import bz2
import os
import warnings as _warnings
import zlib
from pathlib import Path

import numpy as np

from segloop.core._runtime import is_cancelled
from segloop.core.formats.io.geometry import (
    OBLIQUE_DEGREES,
    VolumeInfo,
    lps_reorientation,
    obliquity_deg,
    spacing_of,
)
from segloop.errors import Cancelled, ImageReadError, VolumeReadError

__all__ = ["read_nrrd", "read_nrrd_header", "read_nrrd_array", "nrrd_geometry", "NrrdGeometry"]

_CHUNK = 4 * 2**20
_GZIP_MAX_RATIO = 1100      # deflate cannot expand by more than ~1032:1

_TYPES = {
    "i1": ("signed char", "int8", "int8_t"),
    "u1": ("uchar", "unsigned char", "uint8", "uint8_t"),
    "i2": ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    "u2": ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    "i4": ("int", "signed int", "int32", "int32_t"),
    "u4": ("uint", "unsigned int", "uint32", "uint32_t"),
    "i8": ("longlong", "long long", "long long int", "signed long long", "signed long long int",
           "int64", "int64_t"),
    "u8": ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    "f4": ("float",),
    "f8": ("double",),
}
_DTYPE = {name: code for code, names in _TYPES.items() for name in names}

#: world frame -> signs taking its axes to RAS, and whether it is a patient frame
_SPACES = {
    "left-posterior-superior": ((-1.0, -1.0, 1.0), True), "lps": ((-1.0, -1.0, 1.0), True),
    "right-anterior-superior": ((1.0, 1.0, 1.0), True), "ras": ((1.0, 1.0, 1.0), True),
    "left-anterior-superior": ((-1.0, 1.0, 1.0), True), "las": ((-1.0, 1.0, 1.0), True),
    "scanner-xyz": ((-1.0, -1.0, 1.0), False), "3d-right-handed": ((-1.0, -1.0, 1.0), False),
    "3d-left-handed": ((-1.0, -1.0, 1.0), False),
}
_SPATIAL_KINDS = {"domain", "space"}
_MM = {"mm": 1.0, "millimeter": 1.0, "millimeters": 1.0, "cm": 10.0, "m": 1000.0, "meter": 1000.0,
       "um": 1e-3, "µm": 1e-3, "μm": 1e-3, "micron": 1e-3, "microns": 1e-3}


def _check_cancel(cancel, path: Path) -> None:
    if is_cancelled(cancel):
        raise Cancelled(f"reading {path} was cancelled")


def _tell(progress, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def _pynrrd():
    try:
        import nrrd
    except ImportError:
        raise VolumeReadError("reading NRRD needs the 'pynrrd' package, which is not installed; install it "
                              "with: pip install 'napari-segloop[dicom]'") from None
    return nrrd


def read_nrrd_header(path: str | os.PathLike) -> tuple[dict, int]:
    """The parsed header of an NRRD file and the byte offset just after it.

    Returns
    -------
    header : dict
        pynrrd's parsed fields (``sizes``, ``space directions`` as arrays; ``key:=value`` pairs as
        strings).
    offset : int
        Where attached data starts (before ``line skip`` / ``byte skip``).

    Raises
    ------
    ImageReadError
        Missing file, not NRRD, or a malformed header.
    """
    nrrd = _pynrrd()
    path = Path(path)
    try:
        with open(path, "rb") as fh, _warnings.catch_warnings():
            _warnings.simplefilter("ignore")            # pynrrd warns about unknown fields
            header = dict(nrrd.read_header(fh))
            offset = fh.tell()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except (nrrd.NRRDError, OSError, ValueError, StopIteration, UnicodeDecodeError) as e:
        raise ImageReadError(f"{path}: cannot read the NRRD header ({type(e).__name__}: {e}); the file may be "
                             "truncated or not NRRD") from None
    for key in ("type", "dimension", "sizes", "encoding"):
        if key not in header:
            raise ImageReadError(f"{path}: the NRRD header has no '{key}' field; the file is malformed")
    return header, offset


def _dtype(header: dict, path: Path) -> np.dtype:
    code = _DTYPE.get(str(header["type"]).strip().lower())
    if code is None:
        raise VolumeReadError(f"{path}: NRRD type '{header['type']}' is not a number type segloop reads "
                              "(integers or float/double)")
    dt = np.dtype(code)
    if dt.itemsize > 1:
        dt = dt.newbyteorder(">" if str(header.get("endian", "little")).lower() == "big" else "<")
    return dt


def _data_file(header: dict, path: Path) -> Path | None:
    name = header.get("data file", header.get("datafile"))
    if name is None:
        return None
    name = str(name).strip()
    if name.upper().startswith("LIST") or len(name.split()) > 1:
        raise VolumeReadError(f"{path}: the NRRD data is split over several files ('data file: {name}'); "
                              "segloop reads one data file - save the volume as a single .nrrd")
    p = Path(name)
    return p if p.is_absolute() else path.parent / p


def _skip_lines(fh, count: int, path: Path) -> None:
    if count < 0:
        raise ImageReadError(f"{path}: NRRD 'line skip' {count} is negative; the header is malformed")
    for _ in range(count):
        fh.readline()


def _decompress(fh, encoding: str, need: int, compressed_bytes: int, path: Path, progress, cancel) -> np.ndarray:
    """``need`` bytes of decompressed data (gzip / bzip2), read in chunks with cancel checks."""
    gz = encoding in ("gzip", "gz")
    if gz and need > _GZIP_MAX_RATIO * max(compressed_bytes, 1):
        raise ImageReadError(f"{path}: the NRRD header declares {need} bytes of voxels but the {compressed_bytes} "
                             "gzip-compressed bytes cannot hold that many; the file is truncated or its header "
                             "is wrong")
    try:
        out = np.empty(need, np.uint8)
    except MemoryError:
        raise VolumeReadError(f"{path}: the NRRD volume needs {need / 2**30:.1f} GiB of memory to decompress, "
                              "more than is available; save it uncompressed (encoding: raw) so it can be "
                              "memory-mapped") from None
    dec = zlib.decompressobj(zlib.MAX_WBITS | 32) if gz else bz2.BZ2Decompressor()
    pos, done = 0, 0
    try:
        while pos < need:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            done += len(chunk)
            if gz:
                data = dec.decompress(chunk, need - pos)
                while True:
                    out[pos:pos + len(data)] = np.frombuffer(data, np.uint8)
                    pos += len(data)
                    if pos >= need or not dec.unconsumed_tail:
                        break
                    data = dec.decompress(dec.unconsumed_tail, need - pos)
            else:
                data = dec.decompress(chunk, need - pos)
                while True:
                    out[pos:pos + len(data)] = np.frombuffer(data, np.uint8)
                    pos += len(data)
                    if pos >= need or dec.eof or dec.needs_input:
                        break
                    data = dec.decompress(b"", need - pos)
            _check_cancel(cancel, path)
            _tell(progress, min(done, compressed_bytes), max(compressed_bytes, 1))
    except (zlib.error, OSError, EOFError, ValueError) as e:
        raise ImageReadError(f"{path}: the NRRD {encoding} data is corrupt ({type(e).__name__}: {e}); the file may "
                             "be truncated") from None
    if pos < need:
        raise ImageReadError(f"{path}: NRRD data is incomplete ({pos} of {need} bytes after decompression; "
                             "truncated file?)")
    return out


def read_nrrd_array(path: str | os.PathLike, header: dict, offset: int, *, lazy: bool | str = "auto",
                    progress=None, cancel=None) -> np.ndarray:
    """The voxels of an NRRD file, indexed in the header's axis order.

    Parameters
    ----------
    path : path-like
        The ``.nrrd`` or ``.nhdr`` file (detached data is found through ``data file``).
    header, offset
        From :func:`read_nrrd_header`.
    lazy : {"auto", True, False}
        Raw data is memory-mapped unless ``lazy`` is False; compressed data is always read now.
    progress, cancel
        ``progress(done, total)`` and a cancel token, as for :func:`read_nrrd`.

    Returns
    -------
    ndarray or np.memmap
        ``array[i0, i1, ...]`` with ``array.shape == tuple(header["sizes"])`` (the first axis is the
        fastest on disk); a transposed view of the C-ordered data.

    Raises
    ------
    ImageReadError
        Data missing, truncated or corrupt.
    VolumeReadError
        An encoding or type segloop does not read.
    """
    path = Path(path)
    dtype = _dtype(header, path)
    sizes = tuple(int(s) for s in np.asarray(header["sizes"]).ravel())
    if any(s <= 0 for s in sizes):
        raise ImageReadError(f"{path}: NRRD sizes {sizes} contain an empty axis")
    count = int(np.prod(sizes, dtype=np.int64))
    nbytes = count * dtype.itemsize
    encoding = str(header["encoding"]).strip().lower()
    line_skip = int(header.get("line skip", header.get("lineskip", 0)))
    byte_skip = int(header.get("byte skip", header.get("byteskip", 0)))
    data_path = _data_file(header, path)
    source = data_path or path
    if data_path is not None and not data_path.is_file():
        raise ImageReadError(f"{path}: its detached data file {data_path} is missing; keep the .nhdr next to "
                             "its data")
    if byte_skip < -1:
        raise ImageReadError(f"{path}: NRRD 'byte skip' {byte_skip} is invalid (must be >= -1)")
    shape_c = sizes[::-1]
    try:
        with open(source, "rb") as fh:
            if data_path is None:
                fh.seek(offset)
            _skip_lines(fh, line_skip, path)
            start = fh.tell()
            size = os.fstat(fh.fileno()).st_size
            if encoding == "raw":
                start = size - nbytes if byte_skip == -1 else start + byte_skip
                if start < 0 or size - start < nbytes:
                    have = max(0, size - max(start, 0))
                    raise ImageReadError(f"{path}: NRRD data is incomplete ({have} of {nbytes} bytes; truncated "
                                         "file?)")
                _tell(progress, 0, 1)
                if lazy is False:
                    fh.seek(start)
                    flat = np.fromfile(fh, dtype=dtype, count=count)
                    arr = flat.reshape(shape_c)
                else:
                    arr = np.memmap(source, dtype=dtype, mode="r", offset=start, shape=shape_c)
            elif encoding in ("gzip", "gz", "bzip2", "bz2"):
                if byte_skip == -1:
                    raise VolumeReadError(f"{path}: 'byte skip: -1' with {encoding} encoding is not supported; "
                                          "re-save the volume (3D Slicer or pynrrd write a plain header)")
                raw = _decompress(fh, encoding, byte_skip + nbytes, size - start, path, progress, cancel)
                arr = raw[byte_skip:].view(dtype).reshape(shape_c)
                if not dtype.isnative:
                    arr = arr.astype(dtype.newbyteorder("="))
            elif encoding in ("ascii", "text", "txt"):
                fh.seek(start)
                words = fh.read().split()
                if len(words) < count:
                    raise ImageReadError(f"{path}: NRRD text data is incomplete ({len(words)} of {count} values; "
                                         "truncated file?)")
                arr = np.asarray([float(w) for w in words[:count]]).astype(dtype.newbyteorder("=")).reshape(shape_c)
            else:
                raise VolumeReadError(f"{path}: NRRD encoding '{encoding}' is not supported; re-save the volume "
                                      "with raw or gzip encoding")
    except (OSError, ValueError) as e:
        if isinstance(e, ImageReadError):
            raise
        raise ImageReadError(f"{path}: cannot read the NRRD data ({type(e).__name__}: {e})") from None
    _check_cancel(cancel, path)
    return arr.T


class NrrdGeometry:
    """Where the spatial axes of an NRRD file are and how they map to RAS.

    Attributes
    ----------
    spatial_axes : list of int
        The header axes that are space (kind ``domain`` / ``space``, or a direction vector).
    other_axes : list of int
        The rest (``list``, ``vector``, ``RGB-color`` ...).
    affine : (4, 4) ndarray
        ``(i, j, k, 1)`` over the spatial axes (in header order) -> RAS mm; a 2D image gets a
        third, 1-voxel axis along the normal.
    warnings : list of str
    """

    def __init__(self, spatial_axes, other_axes, affine, warnings):
        self.spatial_axes = list(spatial_axes)
        self.other_axes = list(other_axes)
        self.affine = affine
        self.warnings = list(warnings)


def _vector(header: dict, key: str, n: int) -> np.ndarray | None:
    if key not in header:
        return None
    v = np.asarray(header[key], float).ravel()
    return v if v.size == n else None


def nrrd_geometry(header: dict, path: str | os.PathLike = "") -> NrrdGeometry:
    """The spatial axes and the RAS affine described by an NRRD header.

    Raises
    ------
    VolumeReadError
        A space with time (4D), more than 3 spatial axes, or degenerate directions.
    """
    path = Path(path)
    dim = int(header["dimension"])
    warns: list[str] = []
    kinds = [str(k).strip().lower() for k in header.get("kinds", [])]
    if kinds and len(kinds) != dim:
        raise ImageReadError(f"{path}: NRRD 'kinds' lists {len(kinds)} axes but 'dimension' is {dim}")
    space = str(header.get("space", "")).strip().lower()
    if space.endswith("-time") or int(header.get("space dimension", 3)) > 3:
        raise VolumeReadError(f"{path}: a 4D NRRD (space '{space or header.get('space dimension')}'); segloop reads "
                              "one 3D volume - extract one time point first")
    directions = header.get("space directions")
    if directions is not None:
        directions = np.asarray(directions, float)
        if directions.ndim != 2 or directions.shape[0] != dim:
            raise ImageReadError(f"{path}: NRRD 'space directions' has {directions.shape[0]} vectors for "
                                 f"{dim} axes; the header is malformed")
        spatial = [a for a in range(dim) if np.isfinite(directions[a]).all()]
    elif kinds:
        spatial = [a for a in range(dim) if kinds[a] in _SPATIAL_KINDS]
    else:
        spatial = list(range(dim))
    neutral = _SPATIAL_KINDS | {"???", "none", ""}
    if kinds:       # a direction vector on a 'vector' / 'RGB-color' / 'list' axis does not make it space
        spatial = [a for a in spatial if kinds[a] in neutral]
    other = [a for a in range(dim) if a not in spatial]
    if len(spatial) > 3 or len(spatial) < 2:
        raise VolumeReadError(f"{path}: NRRD with {len(spatial)} spatial axes (sizes "
                              f"{list(map(int, header['sizes']))}); segloop reads 3D volumes")
    signs, patient = _SPACES.get(space, ((-1.0, -1.0, 1.0), False))
    flip = np.diag(list(signs))
    if directions is not None:
        if directions.shape[1] != 3:
            raise VolumeReadError(f"{path}: NRRD space of {directions.shape[1]} dimensions; segloop reads 3D volumes")
        cols = flip @ directions[spatial].T                      # (3, n_spatial), RAS
        if not space:
            warns.append("the NRRD names no 'space': its directions were taken as LPS (the ITK default); "
                         "patient orientation may be wrong")
        elif not patient:
            warns.append(f"NRRD space '{space}' is not a patient frame: it was taken as LPS; patient "
                         "orientation may be wrong")
    else:
        spacings = _vector(header, "spacings", dim)
        steps = [float(spacings[a]) if spacings is not None and np.isfinite(spacings[a]) and spacings[a] > 0
                 else 1.0 for a in spatial]
        if spacings is None:
            warns.append("the NRRD has no 'space directions' nor 'spacings': 1 mm voxels assumed")
        warns.append("the NRRD has no 'space directions': file axes (i, j, k) taken as (Left, Posterior, "
                     "Superior); patient orientation unknown")
        cols = np.diag([-1.0, -1.0, 1.0])[:, :len(spatial)] * np.asarray(steps)
    origin = _vector(header, "space origin", 3)
    if origin is None or not np.isfinite(origin).all():
        if directions is not None:
            warns.append("the NRRD has no 'space origin': voxel 0 placed at (0, 0, 0) mm")
        origin = np.zeros(3)
    units = header.get("space units")
    scale = 1.0
    if units is not None:
        names = {str(u).strip().lower() for u in units if str(u).strip() not in ("", "none", '""')}
        if len(names) == 1 and names.pop() in _MM:
            scale = _MM[str(units[0]).strip().lower()]
        elif names:
            warns.append(f"NRRD space units {list(units)} were not understood: millimetres assumed")
    cols = cols * scale
    if len(spatial) == 2:
        normal = np.cross(cols[:, 0], cols[:, 1])
        norm = np.linalg.norm(normal)
        cols = np.column_stack([cols, normal / norm if norm > 0 else np.zeros(3)])
        warns.append("a 2D NRRD: read as a volume of one slice (1 mm thick)")
    affine = np.eye(4)
    affine[:3, :3] = cols
    affine[:3, 3] = (flip @ origin) * scale
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise VolumeReadError(f"{path}: the NRRD 'space directions' are degenerate (a zero-length or repeated "
                              "axis); its geometry cannot be trusted - fix the header")
    return NrrdGeometry(spatial, other, affine, warns)


def read_nrrd(path: str | os.PathLike, *, lazy: bool | str = "auto", progress=None, cancel=None):
    """Read a 3D scalar NRRD volume (``.nrrd``, or ``.nhdr`` + detached data) in LPS display order.

    Parameters
    ----------
    path : path-like
    lazy : {"auto", True, False}
        Raw (uncompressed) data is memory-mapped unless ``lazy`` is False.  gzip / bzip2 data
        cannot be memory-mapped and is decompressed now, whatever ``lazy`` says.
    progress : callable, optional
        ``progress(done, total)`` (compressed bytes read).
    cancel : threading.Event or callable, optional
        Checked between chunks; raises :class:`~segloop.errors.Cancelled`.

    Returns
    -------
    volume : (Z, Y, X) ndarray or np.memmap
        Reoriented by permutation/flips only (Z towards Superior, Y Posterior, X Left).
    info : VolumeInfo
        ``format="nrrd"``; ``source_affine`` maps the file's spatial axes ``(i, j, k, 1)`` to
        RAS mm and ``to_source`` gets back to that order.  ``modality`` comes from a
        ``modality:=`` key when present; ``extra["likely_ct"]`` is a guess from the values,
        as for NIfTI.

    Raises
    ------
    ImageReadError
        Missing, truncated or malformed file.
    VolumeReadError
        4D, vector or colour data; an unsupported type or encoding; degenerate geometry.
    """
    path = Path(path)
    _check_cancel(cancel, path)
    _tell(progress, 0, 1)
    header, offset = read_nrrd_header(path)
    sizes = [int(s) for s in np.asarray(header["sizes"]).ravel()]
    geo = nrrd_geometry(header, path)
    kinds = list(header.get("kinds", []))
    extra_axes = [a for a in geo.other_axes if sizes[a] != 1]
    if extra_axes:
        what = ", ".join(f"axis {a} of kind '{kinds[a] if kinds else '?'}' and size {sizes[a]}" for a in extra_axes)
        raise VolumeReadError(f"{path}: a {len(sizes)}D NRRD with non-spatial axes ({what}): a vector, colour or "
                              "multi-volume image; segloop reads one scalar 3D volume - extract one component first")
    _dtype(header, path)
    data = read_nrrd_array(path, header, offset, lazy=lazy, progress=progress, cancel=cancel)
    source = np.squeeze(data, axis=tuple(geo.other_axes)) if geo.other_axes else data
    if len(geo.spatial_axes) == 2:
        source = source[..., None]
    warns = list(geo.warnings)
    to_source = lps_reorientation(geo.affine)
    display_shape = tuple(source.shape[a] for a in np.argsort(to_source.axes))
    affine = geo.affine @ to_source.index_matrix(display_shape)
    oblique_deg = obliquity_deg(geo.affine)
    oblique = oblique_deg > OBLIQUE_DEGREES
    if oblique:
        warns.append(f"the volume is oblique ({oblique_deg:.1f} degrees from the patient axes): it is shown "
                     "reoriented to the nearest axes without resampling, so display directions are "
                     "approximate; info.affine keeps the exact geometry")
    volume = to_source.to_display(source)
    extra = {"nrrd": {"space": str(header.get("space", "")), "encoding": str(header["encoding"]),
                      "type": str(header["type"]), "sizes": sizes, "kinds": [str(k) for k in kinds]},
             "lazy": isinstance(data, np.memmap)}
    modality = str(header.get("modality", header.get("Modality", ""))).strip().upper()
    units = str(header.get("sample units", "")).strip()
    if not modality and isinstance(source, np.ndarray) and source.size and source.dtype.kind in "if":
        step = max(1, int(np.ceil((source.size / 2e6) ** (1 / 3))))
        vmin = float(np.min(source[::step, ::step, ::step]))
        if vmin < -500 and (source.dtype.itemsize == 2 or source.dtype.kind == "f"):
            extra["likely_ct"] = True        # a guess only: NRRD rarely says the modality
    info = VolumeInfo(
        path=path, format="nrrd", shape=tuple(int(s) for s in volume.shape), spacing=spacing_of(affine),
        affine=affine, source_affine=geo.affine, to_source=to_source, modality=modality, units=units,
        description=str(header.get("content", "")).strip(), warnings=warns, oblique=oblique, extra=extra)
    _tell(progress, 1, 1)
    return volume, info
