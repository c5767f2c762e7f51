"""DICOM-SEG: write a label volume drawn on a DICOM series as a DICOM Segmentation object.

The object references the source slices, so PACS viewers, 3D Slicer and OHIF show it on the
series.  Needs highdicom (the ``dicom-seg`` extra).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segloop.core._runtime import atomic_output
from segloop.core.formats.io.dicom import PARSE_ERRORS, import_pydicom
from segloop.core.formats.io.geometry import VolumeInfo
from segloop.errors import ExportError, InvalidLabelsError

__all__ = ["write_dicom_seg"]

_SEG_HINT = 'pip install "napari-segloop[dicom-seg]"'


def write_dicom_seg(path, labels: np.ndarray, info: VolumeInfo, *,
                    segment_names: dict[int, str] | None = None,
                    colors: dict[int, tuple[int, int, int]] | None = None) -> Path:
    """Write a label volume drawn on a DICOM series as a DICOM Segmentation (binary) object.

    Each label id becomes one segment (numbered 1..N in id order; the id is kept as the
    segment's TrackingID).  Frames reference the source slices (SOPInstanceUID, position), so
    PACS viewers, 3D Slicer and OHIF show it on the series.  Empty slices are not stored.

    Parameters
    ----------
    path : path
        The ``.dcm`` file to write (replaced atomically if it exists).
    labels : (Z, Y, X) integer ndarray
        Labels in the display orientation of ``volume`` (``info.shape``); 0 is background.
    info : VolumeInfo
        What :func:`read_dicom` returned for the series; its ``extra["files"]`` are re-read
        for the references.
    segment_names : dict of int to str, optional
        Name per label id; default ``"label <id>"``.
    colors : dict of int to (r, g, b), optional
        Display colour (0-255) per label id.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ImportError
        highdicom is not installed (``pip install "napari-segloop[dicom-seg]"``).
    InvalidLabelsError
        Labels of the wrong shape, float or negative values, or nothing labelled.
    ExportError
        ``info`` is not from a DICOM series, the source files changed since they were read,
        or the file could not be written.
    """
    try:
        import highdicom as hd
    except ImportError:
        raise ImportError(f"writing DICOM-SEG needs highdicom: {_SEG_HINT}") from None
    pydicom = import_pydicom()
    from pydicom.sr.codedict import codes

    from segloop._version import __version__

    files = info.extra.get("files") if info.format == "dicom" else None
    if not files:
        raise ExportError(f"{info.path}: DICOM-SEG needs the DICOM series the labels were drawn on; "
                          f"this volume was read from a {info.format or 'non-DICOM'} file -- "
                          "export it as NIfTI or TIFF instead")
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if labels.dtype.kind not in "iu":
        raise InvalidLabelsError(f"labels must be integers (dtype {labels.dtype} given); "
                                 "round or threshold them first")
    if tuple(labels.shape) != tuple(info.shape):
        raise InvalidLabelsError(f"labels have shape {labels.shape}, the series {tuple(info.shape)}; "
                                 "draw the labels on the volume read with this info")
    source = np.ascontiguousarray(info.to_source.from_display(labels))
    if source.min() < 0:
        raise InvalidLabelsError("labels contain negative values; label ids must be >= 0")
    ids = np.unique(source)
    ids = ids[ids > 0]
    if ids.size == 0:
        raise InvalidLabelsError("the labels are empty (all 0): nothing to write as DICOM-SEG")
    if source.shape[0] != len(files):
        raise ExportError(f"info lists {len(files)} source files but the labels have "
                          f"{source.shape[0]} slices in source order; read the series again")

    datasets = []
    uids = info.extra.get("sop_instance_uids") or []
    for k, f in enumerate(files):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
        except PARSE_ERRORS as e:
            raise ExportError(f"{f}: cannot re-read the source slice ({e}); the series must still "
                              "be where it was read from") from None
        if uids and str(ds.get("SOPInstanceUID", "")) != uids[k]:
            raise ExportError(f"{f}: the file changed since the series was read (another "
                              "SOPInstanceUID); read the series again")
        datasets.append(ds)

    segment_numbers = np.zeros(int(ids.max()) + 1, np.uint16)
    segment_numbers[ids] = np.arange(1, ids.size + 1)
    pixel_array = segment_numbers[source]
    names = segment_names or {}
    colours = colors or {}
    algorithm = hd.AlgorithmIdentificationSequence(
        name="napari-segloop", version=__version__, family=codes.DCM.ArtificialIntelligence)
    descriptions = []
    for number, label_id in enumerate(ids.tolist(), start=1):
        kw = {}
        if label_id in colours:
            kw["display_color"] = hd.color.CIELabColor.from_rgb(*[int(c) for c in colours[label_id]])
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=str(names.get(label_id, f"label {label_id}"))[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=f"segloop label {label_id}",
            **kw))
    series_number = int(info.extra.get("series_number") or 0) + 1000
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="napari-segloop", manufacturer_model_name="napari-segloop",
        software_versions=__version__, device_serial_number="none",
        content_label="SEGLOOP", content_description="segloop segmentation",
        series_description=f"segloop labels {info.description}".strip()[:64],
    )
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(dest, durable=False) as tmp:
            seg.save_as(tmp)
    except OSError as e:
        raise ExportError(f"{dest}: cannot write the DICOM-SEG file ({e})") from None
    return dest
