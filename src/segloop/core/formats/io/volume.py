"""Volume readers (NIfTI, MRC, TIFF stacks; DICOM through :mod:`segloop.core.formats.io.dicom`)
and label writers (NIfTI, 3D Slicer ``.seg.nrrd``).

Every reader returns a ``(Z, Y, X)`` array in LPS display order and a
:class:`~segloop.core.formats.io.geometry.VolumeInfo`; the convention is described in
:mod:`segloop.core.formats.io.geometry`.
"""

from __future__ import annotations

import os
import warnings as _warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from segloop.core._runtime import atomic_output, is_cancelled
from segloop.core.formats.io.anatomy import known_orientation
from segloop.core.formats.io.geometry import (
    OBLIQUE_DEGREES,
    VolumeInfo,
    lps_affine,
    lps_reorientation,
    obliquity_deg,
    spacing_of,
)
from segloop.core.formats.io.nrrd_volume import read_nrrd
from segloop.errors import (
    Cancelled,
    ExportError,
    ImageReadError,
    InvalidLabelsError,
    VolumeReadError,
)

__all__ = [
    "read_volume",
    "write_nifti_labels",
    "write_seg_nrrd",
    "file_grid",
    "is_dicom_file",
    "looks_like_dicom_dir",
    "LAZY_BYTES",
]


# ---------------------------------------------------------------------------------------------
# small helpers

LAZY_BYTES = 2**30
"""Compressed volumes (``.nii.gz``) whose voxels take more than this are returned as a dask array
(``lazy="auto"``); uncompressed files are memory-mapped whatever their size."""

_MM_PER_UNIT = {
    "m": 1000.0, "meter": 1000.0, "cm": 10.0, "centimeter": 10.0, "mm": 1.0, "millimeter": 1.0,
    "um": 1e-3, "µm": 1e-3, "μm": 1e-3, "micron": 1e-3, "microns": 1e-3, "micrometer": 1e-3,
    "nm": 1e-6, "nanometer": 1e-6, "å": 1e-7, "angstrom": 1e-7, "inch": 25.4, "in": 25.4,
}
def _check_cancel(cancel, path: Path) -> None:
    if is_cancelled(cancel):
        raise Cancelled(f"reading {path} was cancelled")


def _tell(progress, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def _require(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise VolumeReadError(f"{what} needs the '{module}' package, which is not installed; "
                              "install it with: pip install 'napari-segloop[dicom]'") from None


def _sample_min(arr) -> float | None:
    """Minimum of a strided sample (at most ~2M voxels) of an in-memory or memory-mapped array."""
    if not isinstance(arr, np.ndarray) or arr.size == 0:
        return None
    step = max(1, int(np.ceil((arr.size / 2e6) ** (1 / 3))))
    return float(np.min(arr[::step, ::step, ::step]))


# ---------------------------------------------------------------------------------------------
# detection and dispatch

def is_dicom_file(path: str | os.PathLike) -> bool:
    """True if ``path`` is a file with a ``.dcm`` suffix or the DICOM preamble (``DICM`` at byte 128)."""
    p = Path(path)
    if p.suffix.lower() == ".dcm" or p.name.upper() == "DICOMDIR":
        return p.is_file()
    try:
        with open(p, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def looks_like_dicom_dir(path: str | os.PathLike, *, max_files: int = 16, max_depth: int = 3) -> bool:
    """Quick test whether a folder holds DICOM files: peeks at no more than ``max_files`` files.

    Folders are searched breadth first down to ``max_depth`` levels (patient/study/series trees);
    hidden files are skipped.  Reading stops at the first DICOM file found.
    """
    root = Path(path)
    if not root.is_dir():
        return False
    queue, seen = [(root, 0)], 0
    while queue and seen < max_files:
        folder, depth = queue.pop(0)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_file():
                if seen >= max_files:
                    break
                seen += 1
                if is_dicom_file(e.path):
                    return True
            elif e.is_dir() and depth + 1 < max_depth:
                queue.append((Path(e.path), depth + 1))
    return False


def _kind(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "dicom"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".mrc", ".map", ".rec")):
        return "mrc"
    if name.endswith((".tif", ".tiff")):
        return "tiff"
    if name.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    if is_dicom_file(path):
        return "dicom"
    return ""


def read_volume(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    series_uid: str | None = None,
    lazy: bool | str = "auto",
    progress: Callable[[int, int], None] | None = None,
    cancel=None,
):
    """Read a 3D grayscale volume with its geometry, reoriented to LPS display order.

    The format is chosen by content and suffix: a folder, a list of files, a ``.dcm`` file or
    any file with the DICOM preamble -> DICOM (:func:`segloop.core.formats.io.dicom.read_dicom`);
    ``.nii`` / ``.nii.gz`` -> NIfTI (nibabel); ``.mrc`` / ``.map`` / ``.rec`` -> MRC (mrcfile);
    ``.tif`` / ``.tiff`` -> a TIFF z-stack (tifffile); ``.nrrd`` / ``.nhdr`` -> NRRD
    (:func:`segloop.core.formats.io.nrrd_volume.read_nrrd`; pynrrd parses the header).

    Parameters
    ----------
    path : path-like or sequence of path-likes
        File, DICOM folder, or list of DICOM files.
    series_uid : str, optional
        DICOM only: which series to read when the folder holds several (see ``list_series``).
        Ignored for other formats.
    lazy : {"auto", True, False}
        ``"auto"``: memory-map uncompressed files; a ``.nii.gz`` over ``LAZY_BYTES`` comes back as
        a dask array (slices decoded on access); gzip NRRD is always decompressed now.  ``True``: never load everything now (memory map
        or dask).  ``False``: an in-memory ndarray.
    progress : callable, optional
        ``progress(done, total)``.
    cancel : threading.Event or callable, optional
        Checked between steps; raises :class:`~segloop.errors.Cancelled`.

    Returns
    -------
    volume : (Z, Y, X) ndarray, np.memmap or dask array
        Voxels by permutation/flips only (no resampling): Z towards Superior, Y towards Posterior,
        X towards Left.  NIfTI intensities have ``scl_slope``/``scl_inter`` applied (float32 when
        they are not 1/0, the stored dtype otherwise).
    info : VolumeInfo
        ``info.affine`` maps ``(z, y, x, 1)`` of ``volume`` to RAS mm; ``info.to_source`` gets
        back to the file's voxel order; ``info.warnings`` lists what a person should know.

    Raises
    ------
    ImageReadError
        The file is missing, truncated or not readable.
    VolumeReadError
        Not a 3D grayscale volume (4D, RGB ...), an unsupported type, or untrustworthy geometry.
    """
    if isinstance(path, (list, tuple)):
        return _read_dicom(list(path), series_uid=series_uid, lazy=lazy, progress=progress, cancel=cancel)
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: no such file or folder")
    kind = _kind(p)
    if kind == "dicom":
        return _read_dicom(p, series_uid=series_uid, lazy=lazy, progress=progress, cancel=cancel)
    if kind == "nifti":
        return _read_nifti(p, lazy=lazy, progress=progress, cancel=cancel)
    if kind == "mrc":
        return read_mrc(p, lazy=lazy, progress=progress, cancel=cancel)
    if kind == "tiff":
        return _read_tiff_volume(p, lazy=lazy, progress=progress, cancel=cancel)
    if kind == "nrrd":
        return read_nrrd(p, lazy=lazy, progress=progress, cancel=cancel)
    raise VolumeReadError(f"{p}: not a volume format segloop reads ({p.suffix or 'no suffix'}); use a DICOM "
                          "folder or file, NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MRC (.mrc) or a TIFF z-stack")


def _read_dicom(path, **kw):
    try:
        from segloop.core.formats.io.dicom import read_dicom
    except ModuleNotFoundError as e:
        if e.name != "segloop.core.formats.io.dicom":
            raise
        raise VolumeReadError(f"{path}: DICOM reading is not available in this version of segloop; "
                              "convert the series to NIfTI (e.g. with dcm2niix) and open the .nii.gz") from None
    return read_dicom(path, **kw)


# ---------------------------------------------------------------------------------------------
# NIfTI

class _ProxySlices:
    """Array-like over a nibabel ArrayProxy for dask: scaled, cast, trailing singleton axes dropped."""

    def __init__(self, proxy, shape: tuple[int, int, int], dtype):
        self._proxy = proxy
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.ndim = 3
        self._extra = (0,) * (len(proxy.shape) - 3)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        return np.asarray(self._proxy[tuple(key) + self._extra], dtype=self.dtype)


def _nifti_scaled(proxy) -> bool:
    slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
    return not ((slope in (1.0, None) or np.isnan(slope)) and (inter in (0.0, None) or np.isnan(inter)))


def _read_nifti(path: Path, *, lazy="auto", progress=None, cancel=None):
    nib = _require("nibabel", "reading NIfTI")
    _check_cancel(cancel, path)
    _tell(progress, 0, 1)
    try:
        img = nib.load(str(path), mmap="r")
        hdr = img.header
        shape = tuple(int(s) for s in img.shape)
        source_affine = np.asarray(img.affine, float)
    except Exception as e:  # nibabel raises ImageFileError, HeaderDataError, EOFError, gzip errors ...
        raise ImageReadError(f"{path}: cannot read NIfTI ({type(e).__name__}: {e}); the file may be "
                             "truncated or not NIfTI") from None
    if hdr.get_data_dtype().fields is not None or hdr.get_data_dtype().kind not in "iuf":
        raise VolumeReadError(f"{path}: NIfTI data type {hdr.get_data_dtype()} is not grayscale; "
                              "segloop reads one intensity per voxel (RGB NIfTI: split the channels first)")
    if len(shape) > 3 and any(s != 1 for s in shape[3:]):
        raise VolumeReadError(f"{path}: a {len(shape)}D NIfTI of shape {shape} (extra dims "
                              f"{shape[3:]}); segloop reads one 3D volume - extract one volume first, "
                              "e.g. nibabel.funcs.four_to_three or fslroi")
    if len(shape) < 2:
        raise VolumeReadError(f"{path}: NIfTI of shape {shape} is not an image")
    src3 = (shape + (1,))[:3] if len(shape) == 2 else shape[:3]

    warns: list[str] = []
    sform_code, qform_code = int(hdr["sform_code"]), int(hdr["qform_code"])
    if sform_code == 0 and qform_code == 0:
        warns.append("the NIfTI has neither sform nor qform (both codes 0): orientation unknown; "
                     "nibabel's default (Analyze, LAS) was assumed")
    if len(shape) > 3:
        warns.append(f"NIfTI shape {shape}: the trailing length-1 axes were dropped")
    to_source = lps_reorientation(source_affine)
    display_shape = tuple(src3[a] for a in np.argsort(to_source.axes))
    affine = source_affine @ to_source.index_matrix(display_shape)
    oblique_deg = obliquity_deg(source_affine)
    oblique = oblique_deg > OBLIQUE_DEGREES
    if oblique:
        warns.append(f"the volume is oblique ({oblique_deg:.1f} degrees from the patient axes): it is shown "
                     "reoriented to the nearest axes without resampling, so display directions are "
                     "approximate; info.affine keeps the exact geometry")

    proxy = img.dataobj
    scaled = _nifti_scaled(proxy)
    out_dtype = np.dtype(np.float32) if scaled else hdr.get_data_dtype().newbyteorder("=")
    nbytes = int(np.prod(src3)) * out_dtype.itemsize
    compressed = path.name.lower().endswith(".gz")
    mappable = not compressed and not scaled and len(shape) >= 3
    use_dask = (lazy is True and not mappable) or (lazy == "auto" and not mappable and nbytes > LAZY_BYTES)
    try:
        if use_dask:
            import dask.array as da

            plane = max(1, src3[0] * src3[1] * out_dtype.itemsize)
            kchunk = int(max(1, min(src3[2], (32 * 2**20) // plane)))
            source = da.from_array(_ProxySlices(proxy, src3, out_dtype), chunks=(src3[0], src3[1], kchunk),
                                   asarray=False, fancy=False, lock=True,
                                   meta=np.empty((0, 0, 0), out_dtype))
            if compressed:
                warns.append("the volume is gzip-compressed and large, so it is read lazily: gzip has no "
                             "random access, each new slice range decompresses the file up to it (slow); "
                             "for faster browsing save it uncompressed (.nii)")
        elif mappable and lazy is not False:
            source = np.asanyarray(proxy).reshape(src3)
        elif scaled:
            source = np.asarray(img.get_fdata(dtype=np.float32)).reshape(src3)
        else:
            source = np.array(np.asanyarray(proxy)).reshape(src3)
    except (OSError, EOFError, ValueError) as e:
        raise ImageReadError(f"{path}: cannot read the NIfTI voxels ({type(e).__name__}: {e}); the file "
                             "may be truncated") from None
    _check_cancel(cancel, path)
    volume = to_source.to_display(source)

    extra = {"nifti": {"sform_code": sform_code, "qform_code": qform_code, "source_shape": list(shape),
                       "scl_slope": float(proxy.slope), "scl_inter": float(proxy.inter),
                       "dtype_on_disk": str(hdr.get_data_dtype())},
             "lazy": bool(use_dask or isinstance(source, np.memmap))}
    vmin = _sample_min(source)
    raw_int16 = hdr.get_data_dtype().newbyteorder("=") == np.int16
    if vmin is not None and vmin < -500 and (raw_int16 or out_dtype.kind == "f"):
        extra["likely_ct"] = True     # a guess only: NIfTI does not say the modality
    cal_min, cal_max = float(hdr["cal_min"]), float(hdr["cal_max"])
    window = ((cal_min + cal_max) / 2, cal_max - cal_min) if cal_max > cal_min else None
    descrip = hdr["descrip"].item()
    descrip = descrip.decode("latin-1", "replace") if isinstance(descrip, bytes) else str(descrip)
    info = VolumeInfo(
        path=path, format="nifti", shape=tuple(int(s) for s in volume.shape), spacing=spacing_of(affine),
        affine=affine, source_affine=source_affine, to_source=to_source, window=window,
        description=descrip.strip("\x00 "), warnings=warns, oblique=oblique, extra=extra)
    _tell(progress, 1, 1)
    return volume, info


# ---------------------------------------------------------------------------------------------
# MRC

def read_mrc(path: Path, *, lazy="auto", progress=None, cancel=None):
    mrcfile = _require("mrcfile", "reading MRC")
    _check_cancel(cancel, path)
    _tell(progress, 0, 1)
    warns: list[str] = []
    try:
        with _warnings.catch_warnings(record=True) as caught:
            _warnings.simplefilter("always")
            with mrcfile.open(str(path), mode="r", permissive=True, header_only=True) as m:
                header = m.header
                if header is None:
                    raise ImageReadError(f"{path}: not an MRC file (no valid header)")
                vs = m.voxel_size
                voxel = (float(vs.z), float(vs.y), float(vs.x))
                origin = (float(header.origin.x), float(header.origin.y), float(header.origin.z))
                nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
                mz = int(header.mz)
                ispg = int(header.ispg)
                mapcrs = (int(header.mapc), int(header.mapr), int(header.maps))
                dtype = mrcfile.utils.data_dtype_from_header(header)
                offset = 1024 + int(header.nsymbt)
                label = bytes(header.label[0]).decode("latin-1", "replace").strip("\x00 ") if header.nlabl else ""
        warns += [f"MRC header: {w.message}" for w in caught]
    except ImageReadError:
        raise
    except Exception as e:  # mrcfile raises ValueError, OSError ...
        raise ImageReadError(f"{path}: cannot read MRC ({type(e).__name__}: {e}); the file may be truncated "
                             "or not MRC") from None
    if dtype.kind not in "iuf" or dtype.fields is not None:
        raise VolumeReadError(f"{path}: MRC mode with data type {dtype} is not a grayscale volume")
    if ispg >= 401 and mz > 0 and nz != mz:
        raise VolumeReadError(f"{path}: an MRC volume stack ({nz // mz} volumes of {mz} sections); segloop "
                              "reads one 3D volume - extract one first")
    shape = (nz, ny, nx)
    need = offset + int(np.prod(shape)) * dtype.itemsize
    if path.stat().st_size < need:
        raise ImageReadError(f"{path}: MRC data is incomplete ({path.stat().st_size} of {need} bytes; "
                             "truncated file?)")
    source = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    if lazy is False:
        source = np.array(source)
    _check_cancel(cancel, path)

    known = known_orientation(path)
    if known is None:
        warns.append("MRC has no patient orientation: axes (sections, rows, columns) were taken as (Z, Y, X) "
                     "= (Superior, Posterior, Left) as stored; directions may be wrong")
    else:
        axial = known.reorientation.axes.index(0)
        warns.append(f"MRC has no patient orientation, but this is {known.description}, whose stored axes run "
                     f"{known.stored_axes} (known from its anatomy): the array is kept as stored, so its axial "
                     f"slices are along axis {axial}")
    if mapcrs != (1, 2, 3):
        warns.append(f"MRC axis mapping (mapc, mapr, maps) = {mapcrs} was not applied: the sections/rows/columns "
                     "are shown as stored")
    if min(voxel) <= 0:
        spacing = (1.0, 1.0, 1.0)
        warns.append("spacing unknown (MRC voxel size 0): 1 mm voxels assumed, so lengths and volumes are not physical")
    else:
        spacing = tuple(v * _MM_PER_UNIT["å"] for v in voxel)      # MRC voxel size is in Å
    ox, oy, oz = (o * _MM_PER_UNIT["å"] for o in origin)
    affine = (lps_affine(spacing, (-ox, -oy, oz)) if known is None     # MRC x,y,z taken as L, P, S
              else known.stored_affine(spacing, shape, (-ox, -oy, oz)))
    info = VolumeInfo(path=path, format="mrc", shape=shape, spacing=tuple(float(s) for s in spacing),
                      affine=affine, description=label, warnings=warns,
                      extra={"mrc": {"voxel_size_angstrom": voxel[::-1], "mapcrs": list(mapcrs), "ispg": ispg},
                             "lazy": isinstance(source, np.memmap)})
    _tell(progress, 1, 1)
    return source, info


# ---------------------------------------------------------------------------------------------
# TIFF z-stacks

def _unit_mm(unit) -> float | None:
    if unit is None:
        return None
    u = str(unit).strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ").lower()
    return _MM_PER_UNIT.get(u)


def _tiff_geometry(tf) -> tuple[list[float | None], str, tuple[float, float] | None]:
    """(dz, dy, dx) in mm (None when unknown), where they came from, and an ImageJ display window."""
    sizes: list[float | None] = [None, None, None]
    window = None
    if tf.is_ome and tf.ome_metadata:
        import xml.etree.ElementTree as ET

        try:
            root = ET.fromstring(tf.ome_metadata)
        except ET.ParseError:
            root = None
        pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None) if root is not None else None
        if pixels is not None:
            for i, ax in enumerate("ZYX"):
                val = pixels.get(f"PhysicalSize{ax}")
                scale = _unit_mm(pixels.get(f"PhysicalSize{ax}Unit", "µm"))
                if val is not None and scale is not None and float(val) > 0:
                    sizes[i] = float(val) * scale
            if any(s is not None for s in sizes):
                return sizes, "OME PhysicalSize", window
    ij = tf.imagej_metadata or {}
    if "min" in ij and "max" in ij and float(ij["max"]) > float(ij["min"]):
        lo, hi = float(ij["min"]), float(ij["max"])
        window = ((lo + hi) / 2, hi - lo)
    page = tf.pages[0]
    unit_scale = _unit_mm(ij.get("unit")) if ij else None
    if unit_scale is None:
        res_unit = page.tags.get("ResolutionUnit")
        unit_scale = {2: 25.4, 3: 10.0}.get(int(res_unit.value) if res_unit is not None else 1)
    if unit_scale is not None:
        for i, tag in ((1, "YResolution"), (2, "XResolution")):
            t = page.tags.get(tag)
            if t is not None:
                num, den = t.value
                if num > 0 and den > 0 and not (num == 1 and den == 1):
                    sizes[i] = den / num * unit_scale
        if ij.get("spacing") is not None and float(ij["spacing"]) > 0:
            sizes[0] = float(ij["spacing"]) * unit_scale
    return sizes, "ImageJ metadata / resolution tags", window


def _read_tiff_volume(path: Path, *, lazy="auto", progress=None, cancel=None):
    import tifffile

    from segloop.core.formats.io.images import read_image

    _check_cancel(cancel, path)
    _tell(progress, 0, 1)
    image, iinfo = read_image(path, lazy=lazy)
    axes = iinfo.axes
    if axes.endswith(("S", "C")):
        raise VolumeReadError(f"{path}: a TIFF with {image.shape[-1]} channels (axes {axes}) is not a grayscale "
                              "volume; open RGB or multi-channel images with segloop.core.formats.io.read_image "
                              "(napari: the segloop image reader)")
    if axes == "YX":
        image = image[None]
    elif len(axes) != 3 or axes[0] not in "ZQI":
        raise VolumeReadError(f"{path}: TIFF axes {axes} (shape {tuple(image.shape)}) are not a z-stack; segloop "
                              "reads (Z, Y, X) grayscale stacks - save one time point / channel per file")
    try:
        with tifffile.TiffFile(path) as tf:
            sizes, source, window = _tiff_geometry(tf)
    except (tifffile.TiffFileError, ValueError, OSError, KeyError, TypeError) as e:
        raise ImageReadError(f"{path}: cannot read TIFF metadata ({type(e).__name__}: {e})") from None
    warns = ["a TIFF stack has no patient orientation: (Z, Y, X) taken as (Superior, Posterior, Left) as stored"]
    if sizes[1] is None and sizes[2] is not None:
        sizes[1] = sizes[2]
    if sizes[2] is None and sizes[1] is not None:
        sizes[2] = sizes[1]
    if sizes[1] is None:
        sizes[1] = sizes[2] = 1.0
        warns.append("pixel size unknown (no resolution tags or OME PhysicalSize): 1 mm assumed")
    if sizes[0] is None:
        sizes[0] = sizes[2] if image.shape[0] > 1 else 1.0
        if image.shape[0] > 1:
            warns.append(f"z spacing unknown: the pixel size ({sizes[2]:.6g} mm) was assumed (isotropic voxels)")
    spacing = tuple(float(s) for s in sizes)
    info = VolumeInfo(path=path, format="tiff", shape=tuple(int(s) for s in image.shape), spacing=spacing,
                      affine=lps_affine(spacing), window=window, warnings=warns,
                      extra={"tiff": {"axes": axes, "spacing_from": source},
                             "lazy": bool(iinfo.memmapped or iinfo.extra.get("lazy"))})
    _tell(progress, 1, 1)
    return image, info


# ---------------------------------------------------------------------------------------------
# writers

def _checked_labels(labels, info: VolumeInfo) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim == 2 and tuple(info.shape[:1]) == (1,):
        lab = lab[None]
    if tuple(lab.shape) != tuple(info.shape):
        raise InvalidLabelsError(f"labels of shape {tuple(lab.shape)} do not match the volume's shape "
                                 f"{tuple(info.shape)} (Z, Y, X); write the labels drawn on that volume")
    if lab.dtype.kind not in "biu":
        if lab.dtype.kind == "f" and lab.size and np.array_equal(lab, np.round(lab)):
            lab = lab.astype(np.int64)
        else:
            raise InvalidLabelsError(f"labels must be integers, got {lab.dtype}; round or cast them first")
    if lab.size and lab.dtype.kind == "i" and lab.min() < 0:
        raise InvalidLabelsError("labels contain negative values; label ids must be >= 0 (0 = background)")
    return lab


def _label_dtype(maxval: int, *, limit_uint16: bool = False):
    if maxval <= 255:
        return np.uint8
    if maxval <= 65535:
        return np.uint16
    if limit_uint16:
        raise InvalidLabelsError(f"label id {maxval} is above 65535, which this format cannot hold; "
                                 "relabel sequentially (skimage.segmentation.relabel_sequential)")
    return np.uint32


def file_grid(labels: np.ndarray, info: VolumeInfo) -> tuple[np.ndarray, np.ndarray]:
    """The voxel order and affine a label volume is written in.

    * NIfTI- and NRRD-origin volumes: the source file's own voxel order (``info.to_source``) and
      its affine (``info.source_affine``), so the labels overlay the original file voxel for voxel.
    * Everything else (DICOM, MRC, TIFF): the display array with file axes ``(i, j, k) = (X, Y, Z)``
      (Left, Posterior, Superior; the usual DICOM / ITK voxel order) and ``info.affine`` with its
      columns reordered to match.

    Returns
    -------
    array : (I, J, K) ndarray
        ``array[i, j, k]`` is voxel ``(i, j, k)`` of the file.
    affine : (4, 4) ndarray
        ``(i, j, k, 1)`` -> RAS mm.
    """
    if info.source_affine is not None and info.format in ("nifti", "nrrd"):
        return info.to_source.from_display(labels), np.asarray(info.source_affine, float)
    return labels.transpose(2, 1, 0), np.asarray(info.affine, float)[:, [2, 1, 0, 3]]


def write_nifti_labels(path: str | os.PathLike, labels, info: VolumeInfo, *, description: str = "segloop labels") -> Path:
    """Write a label volume drawn on a display-ordered volume as NIfTI, in the source's space.

    Parameters
    ----------
    path : path-like
        ``.nii`` or ``.nii.gz`` (compressed by name).
    labels : (Z, Y, X) integer array
        Labels in display (LPS) order, ``labels.shape == info.shape``.
    info : VolumeInfo
        From :func:`read_volume`.  See :func:`file_grid` for the voxel order written: a NIfTI
        source gets back its own shape and affine; other sources are written from ``info.affine``.

    Returns
    -------
    Path
        The file written (atomically: temp file, then rename).  uint8 when the largest label
        is <= 255, uint16 up to 65535, uint32 above.  sform and qform are both set (codes copied
        from a NIfTI source, else 1 = scanner).
    """
    nib = _require("nibabel", "writing NIfTI")
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise ExportError(f"{path}: a NIfTI label file must end in .nii or .nii.gz; choose such a name")
    lab = _checked_labels(labels, info)
    arr, affine = file_grid(lab, info)
    arr = np.ascontiguousarray(arr, dtype=_label_dtype(int(lab.max()) if lab.size else 0))
    codes = (info.extra.get("nifti") or {}) if info.format == "nifti" else {}
    scode = int(codes.get("sform_code") or 0) or 1
    qcode = int(codes.get("qform_code") or 0) or scode
    img = nib.Nifti1Image(arr, affine)
    img.header.set_sform(affine, code=scode)
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")        # qform cannot hold shears; sform is exact
        img.header.set_qform(affine, code=qcode)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = description.encode("ascii", "replace")[:79]
    img.header.set_slope_inter(1.0, 0.0)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"    # nibabel picks by suffix
    try:
        with atomic_output(path, suffix=suffix, durable=False) as tmp:
            nib.save(img, str(tmp))
    except OSError as e:
        raise ExportError(f"{path}: cannot write the labels ({e}); check the folder exists and is writable "
                          "and the disk has space - nothing was written") from None
    return path


def _default_color(value: int) -> tuple[float, float, float]:
    import colorsys

    h = (value * 0.618033988749895) % 1.0
    return colorsys.hsv_to_rgb(h, 0.65, 0.95)


def _color01(color) -> tuple[float, float, float]:
    c = [float(v) for v in tuple(color)[:3]]
    if len(c) != 3:
        raise InvalidLabelsError(f"a segment colour needs 3 values (r, g, b), got {color!r}")
    if max(c) > 1.0:
        c = [v / 255.0 for v in c]
    return tuple(min(max(v, 0.0), 1.0) for v in c)


def write_seg_nrrd(
    path: str | os.PathLike,
    labels,
    info: VolumeInfo,
    *,
    names: dict[int, str] | None = None,
    colors: dict[int, tuple] | None = None,
) -> Path:
    """Write a label volume as a 3D Slicer segmentation (``.seg.nrrd``, one binary-labelmap layer).

    The file is a 3D NRRD (``space: left-posterior-superior``; ``space directions`` and
    ``space origin`` in LPS mm) whose voxel values are the label ids, with the segment keys Slicer's
    ``vtkMRMLSegmentationStorageNode`` writes: ``Segment{i}_ID/Name/Color/ColorAutoGenerated/
    NameAutoGenerated/Extent/Tags/LabelValue/Layer``, ``Segmentation_MasterRepresentation`` (Binary
    labelmap), ``Segmentation_ContainedRepresentationNames`` and
    ``Segmentation_ReferenceImageExtentOffset`` (0 0 0).  The voxel grid is the one of
    :func:`file_grid` (a NIfTI source's own grid, else the display grid as (X, Y, Z)).

    Parameters
    ----------
    path : path-like
        Should end in ``.seg.nrrd``.
    labels : (Z, Y, X) integer array
        Display-ordered labels, ``labels.shape == info.shape``; ids up to 65535.
    info : VolumeInfo
    names : dict, optional
        ``{label id: segment name}``; default ``"Segment_{id}"``.  Ids named here but absent
        from ``labels`` are written as empty segments.
    colors : dict, optional
        ``{label id: (r, g, b[, a])}`` in 0..1 or 0..255; default a fixed palette.

    Returns
    -------
    Path
        The file written (atomically).
    """
    nrrd = _require("nrrd", "writing .seg.nrrd")
    path = Path(path)
    lab = _checked_labels(labels, info)
    arr, affine = file_grid(lab, info)
    arr = np.asarray(arr, dtype=_label_dtype(int(lab.max()) if lab.size else 0, limit_uint16=True))
    ras_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = ras_to_lps @ affine
    names = {int(k): str(v) for k, v in (names or {}).items()}
    colors = {int(k): v for k, v in (colors or {}).items()}
    present = [int(v) for v in np.unique(arr) if v != 0]
    values = sorted(set(present) | {k for k in names if k != 0})
    header: dict = {
        "type": str(arr.dtype), "dimension": 3, "space": "left-posterior-superior",
        "sizes": np.array(arr.shape), "space directions": lps[:3, :3].T.copy(),
        "space origin": lps[:3, 3].copy(), "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
    }
    for i, v in enumerate(values):
        mask = arr == v
        if mask.any():
            idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
            extent = " ".join(f"{int(ix[0])} {int(ix[-1])}" for ix in idx)
        else:
            extent = "0 -1 0 -1 0 -1"
        r, g, b = _color01(colors[v]) if v in colors else _default_color(v)
        header.update({
            f"Segment{i}_ID": f"Segment_{v}",
            f"Segment{i}_Name": names.get(v, f"Segment_{v}"),
            f"Segment{i}_NameAutoGenerated": "0" if v in names else "1",
            f"Segment{i}_Color": f"{r:.6g} {g:.6g} {b:.6g}",
            f"Segment{i}_ColorAutoGenerated": "0" if v in colors else "1",
            f"Segment{i}_Extent": extent,
            f"Segment{i}_LabelValue": str(v),
            f"Segment{i}_Layer": "0",
            f"Segment{i}_Tags": "Segmentation.Status:inprogress|",
        })
    header.update({
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    })
    try:
        with atomic_output(path, durable=False) as tmp:
            nrrd.write(str(tmp), arr, header, index_order="F")
    except OSError as e:
        raise ExportError(f"{path}: cannot write the segmentation ({e}); check the folder exists and is "
                          "writable and the disk has space - nothing was written") from None
    return path
