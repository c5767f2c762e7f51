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
    "FormatVersionError",
    "IntegrityError",
    "UnsafeModelFileError",
    "EngineError",
    "OnnxUnavailableError",
    "Cancelled",
    "ImageReadError",
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
