"""Model package v1: load, save, verify.

A package is a directory (or the same files in a ``.zip``)::

    segloop-model.json   the spec (see ModelSpec), incl. sha256 of the weights
    model.safetensors    weights; never a pickle
    model.onnx           optional export of the same network
    MODEL_CARD.md        optional human-readable card

Nothing is ever unpickled.  Every file's sha256 is checked on load.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from segloop.core._runtime import atomic_output, atomic_write_bytes, fsync_dir, sha256_bytes
from segloop.errors import (
    FormatVersionError,
    IntegrityError,
    ModelNotFoundError,
    ModelPackageError,
    UnsafeModelFileError,
    WriteError,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SPEC_FILE",
    "WEIGHTS_FILE",
    "ONNX_FILE",
    "ModelSpec",
    "ModelPackage",
    "load_package",
    "read_spec",
    "save_package",
    "check_not_pickle",
]

FORMAT = "segloop-model"
FORMAT_VERSION = 1
SPEC_FILE = "segloop-model.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
CARD_FILE = "MODEL_CARD.md"
_ALLOWED_FILES = {SPEC_FILE, WEIGHTS_FILE, ONNX_FILE, CARD_FILE}

_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib"}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild, normalize for and post-process a network.

    Saved as ``segloop-model.json``.  Field names are the contract in
    DESIGN.md ("Model package v1").
    """

    name: str
    version: str
    architecture: str
    architecture_kwargs: dict[str, Any]
    dims: Literal[2, 3]
    in_channels: int
    classes: tuple[str, ...]
    task: Literal["semantic", "instance", "interactive"]
    postprocess: dict[str, Any]
    normalization: dict[str, Any]
    tile: dict[str, Any] = field(default_factory=lambda: {"size": 256, "overlap": 0.25})
    pixel_size: tuple[float, ...] | None = None
    spacing: tuple[float, ...] | None = None
    parent: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    sha256: str = ""
    onnx_sha256: str | None = None
    weights_dtype: str = "float32"
    description: str = ""
    license: str = ""
    modality: str = ""
    context_slices: int = 1
    prompt: dict[str, Any] | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def image_channels(self) -> int:
        """Channels of the image part of the input: ``in_channels`` less the prompt maps."""
        return int(self.in_channels) - (len(self.prompt_spec.maps) if self.task == "interactive" else 0)

    @property
    def prompt_spec(self):
        """The :class:`~segloop.core.formats.prompt.PromptSpec` of an interactive model."""
        from segloop.core.formats.prompt import PromptSpec

        if self.task != "interactive":
            raise ModelPackageError(f"{self.name} is a {self.task} model and has no prompt section")
        return PromptSpec.from_dict(self.prompt, source=f"{self.name}: prompt")

    def _check_prompt(self, source: str) -> tuple[str, ...]:
        from segloop.core.formats.prompt import PromptSpec

        maps = PromptSpec.from_dict(self.prompt, source=f"{source}: prompt").maps
        if len(self.classes) != 2:
            raise ModelPackageError(f"{source}: an interactive model has two classes (background, object), "
                                    f"got {list(self.classes)}")
        if int(self.in_channels) <= len(maps):
            raise ModelPackageError(f"{source}: in_channels ({self.in_channels}) must be the image channels "
                                    f"plus the {len(maps)} prompt maps")
        return maps

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes)
        for k in ("pixel_size", "spacing"):
            if d[k] is not None:
                d[k] = list(d[k])
        # format keys first, for people reading the file
        return {"format": d.pop("format"), "format_version": d.pop("format_version"), **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "segloop-model.json") -> ModelSpec:
        if not isinstance(d, dict):
            raise ModelPackageError(f"{source}: expected a JSON object")
        if d.get("format") != FORMAT:
            raise ModelPackageError(
                f"{source}: 'format' is {d.get('format')!r}, expected {FORMAT!r}; this is not a segloop model package")
        fv = d.get("format_version")
        if fv != FORMAT_VERSION:
            raise FormatVersionError(
                f"{source}: format_version {fv!r} is not supported by this segloop (reads version "
                f"{FORMAT_VERSION}); upgrade napari-segloop or re-export the model")
        required = ["name", "version", "architecture", "architecture_kwargs", "dims", "in_channels",
                    "classes", "task", "normalization"]
        missing = [k for k in required if k not in d]
        if missing:
            raise ModelPackageError(f"{source}: missing required field(s) {', '.join(missing)}")
        known = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in known}
        kw["classes"] = tuple(kw["classes"])
        kw.setdefault("postprocess", {})
        for k in ("pixel_size", "spacing"):
            if kw.get(k) is not None:
                try:
                    kw[k] = tuple(float(v) for v in kw[k])
                except (TypeError, ValueError):
                    raise ModelPackageError(f"{source}: {k} must be a list of numbers, got {kw[k]!r}") from None
        spec = cls(**kw)
        spec.validate(source=source)
        return spec

    def validate(self, *, source: str = "spec") -> None:
        """Check the fields.  Whether this segloop has ``architecture`` is checked when the network
        is built (:func:`segloop.core.inference.model.build_network`): formats do not know the networks."""
        if self.dims not in (2, 3):
            raise ModelPackageError(f"{source}: dims must be 2 or 3, got {self.dims!r}")
        kw = self.architecture_kwargs
        if not isinstance(kw, dict) or not all(isinstance(k, str) for k in kw):
            raise ModelPackageError(f"{source}: architecture_kwargs must be a JSON object of keyword arguments "
                                    f"such as {{\"depth\": 4}}, got {kw!r}")
        if self.task not in ("semantic", "instance", "interactive"):
            raise ModelPackageError(
                f"{source}: task must be 'semantic', 'instance' or 'interactive', got {self.task!r}")
        if len(self.classes) < 2:
            raise ModelPackageError(f"{source}: need at least 2 classes (index 0 = background)")
        if self.task == "instance" and len(self.classes) < 3:
            raise ModelPackageError(f"{source}: instance models need background, interior and boundary classes")
        if int(self.in_channels) < 1:
            raise ModelPackageError(f"{source}: in_channels must be >= 1")
        image_channels = int(self.in_channels)
        if self.task == "interactive":
            image_channels -= len(self._check_prompt(source))
        elif self.prompt is not None:
            raise ModelPackageError(f"{source}: 'prompt' is only for task 'interactive' (this is {self.task!r})")
        k = self.context_slices
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ModelPackageError(f"{source}: context_slices must be an odd integer >= 1, got {k!r}")
        if k > 1 and self.dims != 2:
            raise ModelPackageError(f"{source}: context_slices > 1 (2.5D) needs a 2D network (dims 2)")
        if k > 1 and image_channels % k:
            raise ModelPackageError(
                f"{source}: image channels ({image_channels}) must be a multiple of context_slices ({k})")
        if self.pixel_size is not None:
            from segloop.core.formats.pixel_size import check_pixel_size
            from segloop.errors import InvalidPixelSizeError

            try:
                check_pixel_size(self.pixel_size, source=f"{source}: pixel_size")
            except InvalidPixelSizeError as e:
                raise ModelPackageError(str(e)) from None
        from segloop.core.formats.normalization import spec_from_dict

        spec_from_dict(self.normalization)


@dataclass
class ModelPackage:
    """A loaded package: its spec, its weights (fp32 tensors) and where it came from."""

    spec: ModelSpec
    state_dict: dict[str, Any]
    path: Path | None = None
    onnx_bytes: bytes | None = None
    card: str | None = None


def check_not_pickle(path: Path) -> None:
    """Refuse files that would need unpickling (``.pt`` checkpoints and friends)."""
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise UnsafeModelFileError(
            f"{path.name} looks like a PyTorch/pickle checkpoint; segloop never unpickles model files "
            "(they can run code). Convert it to a segloop model package (safetensors weights + "
            "segloop-model.json), e.g. with segloop.core.formats.package.save_package(dest, spec, state_dict)")
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            raise UnsafeModelFileError(f"{path.name} is a pickle; segloop never unpickles model files")


def _read_zip(path: Path) -> dict[str, bytes]:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ModelPackageError(f"{path}: not a valid .zip model package ({e})") from None
    files: dict[str, bytes] = {}
    with zf:
        names = zf.namelist()
        if any(n.endswith("data.pkl") or n.endswith(".pkl") for n in names):
            raise UnsafeModelFileError(
                f"{path.name} is a PyTorch pickle archive, not a segloop model package; segloop never unpickles")
        # Packages may be zipped with or without one top-level folder; other
        # members (e.g. Finder's __MACOSX/) are ignored, but nothing may escape.
        for name in names:
            norm = name.replace("\\", "/")
            if norm.startswith("/") or ".." in norm.split("/") or (len(norm) > 1 and norm[1] == ":"):
                raise UnsafeModelFileError(f"{path.name}: archive member {name!r} points outside the package")
        spec_members = [n for n in names if n.rsplit("/", 1)[-1] == SPEC_FILE and not n.startswith("__MACOSX/")]
        prefix = min(spec_members, key=len)[: -len(SPEC_FILE)] if spec_members else ""
        for info in zf.infolist():
            name = info.filename
            if info.is_dir() or not name.startswith(prefix):
                continue
            rel = name[len(prefix):]
            if rel not in _ALLOWED_FILES:
                continue
            if info.file_size > 2 << 30:
                raise ModelPackageError(f"{path.name}: member {name} is implausibly large")
            files[rel] = zf.read(info)
    return files


def _read_dir(path: Path) -> dict[str, bytes]:
    files = {}
    for name in _ALLOWED_FILES:
        p = path / name
        if p.is_file():
            files[name] = p.read_bytes()
    return files


def _check_onnx_external_data(onnx_bytes: bytes, folder: Path | None, source: str) -> None:
    """Refuse ONNX files whose external-data paths leave the package folder."""
    try:
        import onnx
    except ImportError:
        return  # cannot be run without onnx/onnxruntime anyway
    model = onnx.load_model_from_string(onnx_bytes)
    inits = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.t is not None and attr.t.data_location:
                inits.append(attr.t)
    for t in inits:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        p = Path(loc)
        bad = p.is_absolute() or ".." in p.parts or loc.startswith(("/", "\\"))
        if folder is not None and not bad:
            bad = not (folder / p).resolve().is_relative_to(folder.resolve())
        if bad:
            raise UnsafeModelFileError(
                f"{source}: ONNX tensor {t.name!r} reads external data from {loc!r}, outside the package "
                "folder; refusing to load it")
        if folder is None:
            raise UnsafeModelFileError(f"{source}: ONNX external data is not supported inside .zip packages")


def _package_path(path: str | os.PathLike) -> Path:
    """Resolve a package argument (folder, .zip or its spec file); refuse missing paths and pickles."""
    path = Path(path)
    if path.name == SPEC_FILE:
        path = path.parent
    if not path.exists():
        raise ModelNotFoundError(f"no model package at {path}")
    check_not_pickle(path)
    return path


def _spec_from_bytes(data: bytes | None, path: Path) -> ModelSpec:
    """Parse and validate ``segloop-model.json`` read from ``path``."""
    if data is None:
        raise ModelPackageError(f"{path}: {SPEC_FILE} is missing; a model package needs {SPEC_FILE} and {WEIGHTS_FILE}")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelPackageError(f"{path}/{SPEC_FILE} is not valid JSON ({e}); the file may be truncated") from None
    return ModelSpec.from_dict(raw, source=f"{path}/{SPEC_FILE}")


def load_package(path: str | os.PathLike, *, verify: bool = True) -> ModelPackage:
    """Load a model package from a directory or ``.zip``.

    Parameters
    ----------
    path : path-like
        Package directory, ``.zip``, or its ``segloop-model.json``.
    verify : bool
        Check the sha256 of the weights (and ONNX file) against the spec.

    Raises
    ------
    ModelNotFoundError, ModelPackageError, FormatVersionError, IntegrityError, UnsafeModelFileError
        (an unknown architecture is refused when the network is built:
        :func:`segloop.core.inference.model.build_network`)
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    path = _package_path(path)
    if path.is_dir():
        files, folder = _read_dir(path), path
    elif zipfile.is_zipfile(path):
        files, folder = _read_zip(path), None
    else:
        raise ModelPackageError(
            f"{path} is neither a model package folder nor a .zip package (expected {SPEC_FILE} + {WEIGHTS_FILE})")
    spec = _spec_from_bytes(files.get(SPEC_FILE), path)
    if WEIGHTS_FILE not in files:
        raise ModelPackageError(f"{path}: {WEIGHTS_FILE} is missing; a model package needs {SPEC_FILE} and {WEIGHTS_FILE}")
    weights = files[WEIGHTS_FILE]
    if verify:
        digest = sha256_bytes(weights)
        if not spec.sha256:
            raise IntegrityError(f"{path}: the spec records no sha256 for {WEIGHTS_FILE}; re-save the package")
        if digest != spec.sha256:
            raise IntegrityError(
                f"{path}/{WEIGHTS_FILE} has sha256 {digest[:12]}..., the spec records {spec.sha256[:12]}...: "
                "the weights were changed or truncated. Restore the original file")
    try:
        state = st_load(weights)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise ModelPackageError(f"{path}/{WEIGHTS_FILE} cannot be read as safetensors ({e}); it may be truncated") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    onnx_bytes = files.get(ONNX_FILE)
    if onnx_bytes is not None and not spec.onnx_sha256:
        warnings.warn(f"{path}/{ONNX_FILE} has no sha256 in the spec and is ignored; "
                      "re-create it with segloop export-onnx", stacklevel=2)
        onnx_bytes = None
    if onnx_bytes is not None:
        if verify and sha256_bytes(onnx_bytes) != spec.onnx_sha256:
            raise IntegrityError(f"{path}/{ONNX_FILE} does not match the sha256 in the spec; re-run segloop export-onnx")
        try:
            _check_onnx_external_data(onnx_bytes, folder, str(path))
        except UnsafeModelFileError:
            raise
        except Exception as e:  # onnx raises protobuf DecodeError and others for junk
            raise ModelPackageError(f"{path}/{ONNX_FILE} is not a valid ONNX model ({type(e).__name__}); "
                                    "re-run segloop export-onnx") from None
    card = files.get(CARD_FILE)
    return ModelPackage(spec, state, path, onnx_bytes, card.decode("utf-8", "replace") if card else None)


def read_spec(path: str | os.PathLike) -> ModelSpec:
    """Read and validate only ``segloop-model.json`` (no weights): cheap, for UIs and listings.

    Use :func:`load_package` before running anything: only it checks the hashes.
    """
    path = _package_path(path)
    if path.is_dir():
        spec_path = path / SPEC_FILE
        return _spec_from_bytes(spec_path.read_bytes() if spec_path.is_file() else None, path)
    if zipfile.is_zipfile(path):
        return _spec_from_bytes(_read_zip(path).get(SPEC_FILE), path)
    raise ModelPackageError(f"{path} is neither a model package folder nor a .zip package")


def _atomic_dir_write(dest: Path, files: dict[str, bytes], *, overwrite: bool) -> None:
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise ModelPackageError(f"{dest} already exists; choose a new folder (packages are never overwritten)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)            # mkdtemp makes 0700; packages are shared
    try:
        for name, data in files.items():     # each file complete and fsynced, then the folder renamed in
            atomic_write_bytes(tmp / name, data)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)      # left over from an interrupted replace
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_package(dest: str | os.PathLike, spec: ModelSpec, state_dict: dict[str, Any], *,
                 weights_dtype: Literal["float32", "float16"] = "float32",
                 onnx_bytes: bytes | None = None, card: str | None = None,
                 overwrite: bool = False) -> ModelSpec:
    """Write a package directory atomically (or a ``.zip`` when ``dest`` ends in .zip).

    The weights' sha256 is computed and stored in the spec, which is validated
    first.  Existing packages are never overwritten unless ``overwrite=True``.

    Returns
    -------
    ModelSpec
        The spec as written (with ``sha256`` filled in).
    """
    import torch
    from safetensors.torch import save as st_save

    spec.validate(source=str(dest))
    dt = torch.float16 if weights_dtype == "float16" else torch.float32
    tensors = {k: (v.detach().to("cpu").to(dt) if v.is_floating_point() else v.detach().to("cpu")).contiguous()
               for k, v in state_dict.items()}
    # One metadata key only: safetensors orders several keys nondeterministically,
    # and the sha256 of identical weights must be identical.
    weights = st_save(tensors, metadata={"format": FORMAT})
    spec = replace(spec, sha256=sha256_bytes(weights), weights_dtype=weights_dtype,
                   onnx_sha256=sha256_bytes(onnx_bytes) if onnx_bytes else None)
    files = {SPEC_FILE: (json.dumps(spec.to_dict(), indent=2) + "\n").encode(), WEIGHTS_FILE: weights}
    if onnx_bytes:
        files[ONNX_FILE] = onnx_bytes
    if card:
        files[CARD_FILE] = card.encode()
    dest = Path(dest)
    if dest.suffix == ".zip":
        if dest.exists() and not overwrite:
            raise ModelPackageError(f"{dest} already exists; packages are never overwritten")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        atomic_write_bytes(dest, buf.getvalue())
    else:
        _atomic_dir_write(dest, files, overwrite=overwrite)
    return spec


def add_onnx(path: str | os.PathLike, onnx_bytes: bytes) -> ModelSpec:
    """Add (or replace) ``model.onnx`` in a package folder and record its sha256.

    Only ``model.onnx`` and ``segloop-model.json`` are replaced: both are
    written to temporary files first and renamed into place only when both are
    complete; everything else in the folder is left as it is.

    Raises
    ------
    WriteError
        The folder is read-only or the disk is full; the package is unchanged.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelPackageError(f"{path}: export-onnx works on package folders; unzip the package first")
    pkg = load_package(path)
    spec = replace(pkg.spec, onnx_sha256=sha256_bytes(onnx_bytes))
    files = ((ONNX_FILE, onnx_bytes), (SPEC_FILE, (json.dumps(spec.to_dict(), indent=2) + "\n").encode()))
    try:
        with ExitStack() as stack:          # both written in full before either is renamed into place
            for name, data in files:
                with open(stack.enter_context(atomic_output(path / name)), "xb") as f:
                    f.write(data)
    except OSError as e:
        raise WriteError(f"cannot write {ONNX_FILE} into {path} ({e.strerror or e}); the package is unchanged. "
                         "Check that the folder is writable and the disk has space") from None
    return spec
