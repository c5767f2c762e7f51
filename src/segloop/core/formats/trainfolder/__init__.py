"""Training folder v1: write, read and validate corrected samples (DESIGN.md, "Training folder v1").

Layout::

    <folder>/segloop-training.json              FolderInfo: format, format_version, classes, task, modality ...
    <folder>/segloop-samples.json               the sample index: id -> split, sha256 of meta.json, write_id
    <folder>/.segloop.lock                      the writers' lock file; holds no data
    <folder>/samples/<sample_id>/image.tif      the pixels exported, dtype preserved (zlib)
    <folder>/samples/<sample_id>/labels.tif     uint8 class ids, or uint16 / uint32 ids (zlib)
    <folder>/samples/<sample_id>/reviewed.tif   uint8, 1 = a person reviewed this pixel (zlib)
    <folder>/samples/<sample_id>/meta.json      provenance, split, sha256 of the three tifs

Crash safety: every sample is written to a temporary folder and renamed in whole under a
journal, and the index is replaced after the renames.  The protocol is described in :mod:`.storage`.

Modules: :mod:`.schema` (names, constants, records), :mod:`.index` (the sample index file),
:mod:`.storage` (lock, journal, listing, file I/O), :mod:`.checks` (input checks),
:mod:`.regions` (the leak guard between splits),
:mod:`.folder` (:class:`TrainingFolder`), :mod:`.classes` (the classes a folder gets on
export) and :mod:`.validate` (:func:`validate_folder`).
"""

from segloop.core.formats.trainfolder.classes import (
    DEFAULT_CLASSES,
    classes_from_model,
    open_for_export,
)
from segloop.core.formats.trainfolder.folder import TrainingFolder
from segloop.core.formats.trainfolder.schema import (
    ACTIVE_STATE_FILE,
    FORMAT,
    FORMAT_VERSION,
    HOLDOUT_FRACTION,
    HOLDOUT_GAP,
    HOLDOUT_MIN,
    IMAGE_FILE,
    INDEX_FILE,
    INFO_FILE,
    LABELS_FILE,
    LOCK_FILE,
    META_FILE,
    MIN_SOURCES,
    REVIEWED_FILE,
    SAMPLE_FILES,
    SAMPLE_SCHEMA,
    SAMPLE_SCHEMA_VERSION,
    SAMPLES_DIR,
    SPLITS,
    TASKS,
    VAL_FRACTION,
    AddResult,
    FolderInfo,
    LoadedSample,
    Problem,
    SampleRecord,
    ValidationReport,
)
from segloop.core.formats.trainfolder.storage import export_error
from segloop.core.formats.trainfolder.validate import validate_folder

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "INFO_FILE",
    "INDEX_FILE",
    "ACTIVE_STATE_FILE",
    "SAMPLES_DIR",
    "LOCK_FILE",
    "SAMPLE_SCHEMA",
    "SAMPLE_SCHEMA_VERSION",
    "IMAGE_FILE",
    "LABELS_FILE",
    "REVIEWED_FILE",
    "META_FILE",
    "SAMPLE_FILES",
    "SPLITS",
    "TASKS",
    "VAL_FRACTION",
    "MIN_SOURCES",
    "HOLDOUT_FRACTION",
    "HOLDOUT_GAP",
    "HOLDOUT_MIN",
    "FolderInfo",
    "SampleRecord",
    "LoadedSample",
    "AddResult",
    "Problem",
    "ValidationReport",
    "TrainingFolder",
    "validate_folder",
    "DEFAULT_CLASSES",
    "classes_from_model",
    "open_for_export",
    "export_error",
]
