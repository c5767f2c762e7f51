"""Training folder v1: write, read and validate corrected samples (DESIGN.md, "Training folder v1").

Layout::

    <folder>/segloop-training.json              FolderInfo: format, format_version, classes, task, modality ...
    <folder>/.segloop.lock                      the writers' lock file; holds no data
    <folder>/samples/<sample_id>/image.tif      the pixels exported, dtype preserved (zlib)
    <folder>/samples/<sample_id>/labels.tif     uint8 class ids, or uint16 / uint32 ids (zlib)
    <folder>/samples/<sample_id>/reviewed.tif   uint8, 1 = a person reviewed this pixel (zlib)
    <folder>/samples/<sample_id>/meta.json      provenance, split, sha256 of the three tifs

Crash safety
------------
Every sample is written into ``samples/.tmp-<uuid>/`` (each file fsynced, ``meta.json``
last, then the directory) and renamed to ``samples/<sample_id>`` in one step, so a sample
folder is either complete or absent.  Writers hold ``.segloop.lock`` for the whole add.

Adds that change more than one sample folder at once (a replace, or a sample with its
held-out validation block) first write a journal ``samples/.txn-<uuid>.json`` listing
what goes in and what is moved aside (``samples/.old-<uuid>-<sample_id>``).  The change
takes effect when the last new folder is renamed in; until then readers see the old state
(:func:`.storage.scan_samples` applies the journal when listing), and :meth:`TrainingFolder.cleanup` (run
by every writer before it writes) rolls an interrupted change back or finishes it.
Nothing starting with ``.`` in ``samples/`` is ever listed as a sample.

Modules: :mod:`.schema` (names, constants, records), :mod:`.storage` (lock, journal, listing,
file I/O), :mod:`.checks` (input checks), :mod:`.regions` (the leak guard between splits),
:mod:`.folder` (:class:`TrainingFolder`) and :mod:`.validate` (:func:`validate_folder`).
"""

from segloop.core.formats.trainfolder.folder import TrainingFolder
from segloop.core.formats.trainfolder.schema import (
    ACTIVE_STATE_FILE,
    FORMAT,
    FORMAT_VERSION,
    HOLDOUT_FRACTION,
    HOLDOUT_GAP,
    HOLDOUT_MIN,
    IMAGE_FILE,
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
    "export_error",
]
