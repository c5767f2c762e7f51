"""Getting a fine-tuning run ready: the new package's spec, the patch size, the training pixels.

No training happens here.  The training images go through the same preparation step as
inference (:meth:`segloop.core.inference.model.Model.prepare`: alpha dropped, channels
checked, normalization fitted on the whole image), so a sample gives the network the same
input in training, in the held-out evaluation and in a user's ``Model.predict``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from segloop.core.formats.normalization import input_channels, output_channels, spec_from_dict
from segloop.core.formats.package import ModelPackage, ModelSpec
from segloop.core.formats.pixel_size import differs, format_pixel_size
from segloop.core.inference.model import check_architecture, check_network_arguments, load_model
from segloop.core.inference.postprocess import InstanceParams
from segloop.core.inference.prepare import prepare_image
from segloop.errors import ModelPackageError, SegloopError, TrainingFolderError
from segloop_train.config import FinetuneOptions
from segloop_train.data import Sample, reviewed_targets
from segloop_train.evaluate import is_volume_spec
from segloop_train.folders import LoadedFolders, check_classes, load_folders

__all__ = ["FolderInfoView", "PreparedSamples", "bump_version", "check_parent_normalization", "fit_patch",
           "fit_patch_3d", "load_spec_and_data", "patch_shape", "prepare_samples", "resolve_parent", "samples_spacing",
           "scratch_input", "scratch_spec", "volume_spec_fields"]


def bump_version(version: str) -> str:
    """Next minor version: ``1.0.0 -> 1.1.0``, ``2.3 -> 2.4.0``; other strings get ``.1`` appended."""
    m = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+))?", str(version).strip())
    if m:
        return f"{int(m.group(1))}.{int(m.group(2)) + 1}.0"
    return f"{version}.1"


def fit_patch(patch: int, sizes: Sequence[tuple[int, int]], divisor: int) -> tuple[int, str | None]:
    """The patch side to train with, and a warning if it differs from the one asked for.

    The patch is rounded down to a multiple of the network's ``divisor``.  When it is larger
    than the largest training sample (its shorter side), it is **reduced** to the largest
    multiple of ``divisor`` that fits that sample (at least ``divisor``).  Samples smaller
    than the patch are **padded**; padded pixels are ignored by the loss.

    Parameters
    ----------
    patch : int
    sizes : sequence of (H, W)
        Spatial sizes of the training samples.
    divisor : int
        The network's size divisor (``2 ** depth`` for a U-Net).
    """
    if int(patch) < 1:
        raise ValueError(f"patch must be a positive number of pixels, got {patch}")
    divisor = max(1, int(divisor))
    fits = max(min(s) for s in sizes)
    want = max(divisor, int(patch) // divisor * divisor)
    if want > fits:
        new = max(divisor, fits // divisor * divisor)
        why = (f"patch {patch} is larger than the largest training sample ({fits} px on its shorter side); "
               f"using {new}, the largest multiple of the network's divisor {divisor} that fits"
               + (" (samples smaller than that are padded; padding is ignored by the loss)" if new > min(
                   min(s) for s in sizes) else ""))
        return new, why
    if want != patch:
        return want, f"patch {patch} is not a multiple of the network's divisor {divisor}; using {want}"
    return want, None


def fit_patch_3d(patch: int | Sequence[int], sizes: Sequence[tuple[int, int, int]], divisor: int
                 ) -> tuple[tuple[int, int, int], str | None]:
    """The 3D patch ``(pz, py, px)`` to train with, and a warning if it differs from the one asked for.

    Each axis as in :func:`fit_patch`: rounded down to a multiple of ``divisor`` (at least
    ``divisor``) and reduced to the largest multiple of ``divisor`` that fits the largest
    training volume along that axis.  Volumes smaller than the patch are padded; padding is
    ignored by the loss.

    Parameters
    ----------
    patch : int or (int, int, int)
        An int means a cube.
    sizes : sequence of (Z, Y, X)
        Spatial sizes of the training volumes.
    divisor : int
        The network's size divisor.
    """
    want = (int(patch),) * 3 if np.isscalar(patch) else tuple(int(v) for v in patch)
    if len(want) != 3 or min(want) < 1:
        raise ValueError(f"a 3D patch is three positive sizes (pz, py, px), got {patch!r}")
    divisor = max(1, int(divisor))
    fits = [max(int(s[a]) for s in sizes) for a in range(3)]
    got = []
    for w, f in zip(want, fits, strict=True):
        g = max(divisor, w // divisor * divisor)
        if g > f:
            g = max(divisor, f // divisor * divisor)
        got.append(g)
    got_t = (got[0], got[1], got[2])
    if got_t == want:
        return got_t, None
    return got_t, (f"patch {list(want)} does not fit the training volumes (largest {fits}) or the network's "
                   f"divisor {divisor}; using {list(got_t)} (volumes smaller than that are padded; padding is "
                   "ignored by the loss)")


def patch_shape(patch: int | tuple[int, ...], dims: int) -> tuple[int, ...]:
    """A patch as one size per spatial axis."""
    return tuple(patch) if isinstance(patch, tuple) else (int(patch),) * dims


class FolderInfoView:
    """The folders' classes and task shaped like a FolderInfo, for :func:`segloop_train.folders.check_classes`."""

    def __init__(self, loaded: LoadedFolders):
        self.classes, self.task = loaded.classes, loaded.task


def resolve_parent(parent: str | os.PathLike) -> ModelPackage:
    """The package of a bundled / registered model name or a package path (an automatic model)."""
    from segloop.core.formats.package import read_spec
    from segloop.core.formats.registry import model_path

    spec = read_spec(model_path(parent))
    if spec.task == "interactive":
        raise ModelPackageError(f"{spec.name} is a click (interactive) model: train click models with "
                                "`segloop-train interactive FOLDER... --out DIR --name NAME`")
    return load_model(parent, device="cpu", precision="fp32").package


def check_parent_normalization(ps: ModelSpec, norm: dict) -> None:
    """Refuse a normalization override that does not give the parent's input channels.

    The raw channels are those :meth:`Model.prepare` asks for (:func:`input_channels`).
    """
    raw = input_channels(norm, ps.in_channels // max(1, ps.context_slices))
    if output_channels(spec_from_dict(norm), raw) * ps.context_slices != ps.in_channels:
        raise ModelPackageError(f"normalization {norm['kind']!r} does not give the {ps.in_channels} "
                                f"input channel(s) {ps.name} takes")


def scratch_input(image, spatial: int, normalization: dict | None, context_slices: int = 1) -> tuple[int, dict]:
    """Input channels and normalization (a dict) of a network trained from scratch on ``image``.

    ``image`` has ``spatial`` axes and maybe a trailing channel axis; the normalization defaults
    to percentile; an alpha channel is dropped and hematoxylin reads RGB; a 2.5D network sees
    ``context_slices`` planes of those channels.
    """
    raw_c = image.shape[-1] if np.ndim(image) == spatial + 1 else 1
    norm = spec_from_dict(normalization or {"kind": "percentile"}).to_dict()
    if norm["kind"] == "hematoxylin" or raw_c == 4:
        raw_c = 3
    return output_channels(spec_from_dict(norm), raw_c) * int(context_slices), norm


def scratch_spec(*, arch: str, arch_kwargs: dict | None, loaded: LoadedFolders, classes: Sequence[str] | None,
                 task: str | None, normalization: dict | None, name: str, version: str | None, dims: int = 2,
                 context_slices: int = 1, pixel_size: tuple[float, float] | None = None) -> ModelSpec:
    """The spec of a network trained from scratch on ``loaded`` (classes and task default to the folders';
    ``pixel_size``, µm per pixel, recorded when given)."""
    task = task or loaded.task
    fclasses = tuple(classes) if classes else loaded.classes
    if task == "instance":
        if fclasses[-1] == "boundary" and len(fclasses) >= 3:
            fclasses = fclasses[:-1]
        if len(fclasses) != 2:
            raise TrainingFolderError(
                f"instance models segment one object class; got classes {list(fclasses)}. Give "
                "background and one object class (e.g. --classes background,nucleus)")
        model_classes = (*fclasses, "boundary")
        post = InstanceParams().to_dict()
    else:
        model_classes, post = fclasses, {}
    in_c, norm = scratch_input(loaded.train[0].image, 3 if loaded.volumes else 2, normalization, context_slices)
    modality = sorted(loaded.modalities)[0] if len(loaded.modalities) == 1 else ""
    kind = "3D" if dims == 3 else f"2.5D ({context_slices} slices)" if context_slices > 1 else "2D"
    spec = ModelSpec(name=name, version=version or "0.1.0", architecture=arch,
                     architecture_kwargs=dict(arch_kwargs or {}), dims=dims, in_channels=in_c,
                     classes=tuple(model_classes), task=task, postprocess=post, normalization=norm,
                     tile={"size": 256, "overlap": 0.25}, modality=modality, context_slices=int(context_slices),
                     pixel_size=tuple(pixel_size) if pixel_size is not None else None,
                     description=f"{kind} {task} segmentation trained from scratch with segloop-train")
    spec.validate(source="from-scratch model")
    check_architecture(spec, source="from-scratch model")
    # the arguments too, before any data is prepared or anything written (a meta-device build)
    check_network_arguments(spec.architecture, spec.architecture_kwargs, dims=spec.dims,
                            in_channels=spec.in_channels, n_classes=spec.n_classes,
                            source="arch_kwargs (--arch-kwargs)")
    return spec


def samples_spacing(samples: Sequence[Sample]) -> tuple[float, ...] | None:
    """The spacing all volume samples were exported with (``meta["spacing"]``, ZYX), or None.

    None when any volume has no spacing or they differ (2D samples made volumes are not
    counted).  Never guessed.
    """
    found = {tuple(float(v) for v in s.meta["spacing"]) if s.meta.get("spacing") else None
             for s in samples if s.meta.get("volume") and not s.meta.get("from_2d")}
    if len(found) != 1:
        return None
    only = found.pop()
    return only if only is not None and len(only) == 3 else None


def volume_spec_fields(spec: ModelSpec, loaded: LoadedFolders, patch_used, *, scratch: bool) -> ModelSpec:
    """A 2.5D / 3D spec with the tile a from-scratch 3D run trained with and the data's spacing."""
    tile = dict(spec.tile)
    if scratch and spec.dims == 3:
        tile = {"size": [int(v) for v in patch_used], "overlap": float(tile.get("overlap", 0.25))}
    spacing = samples_spacing([*loaded.train, *loaded.val])
    return replace(spec, tile=tile, spacing=spacing if spacing is not None else spec.spacing)


class PreparedSamples:
    """Training samples made ready for the patch samplers.

    Attributes
    ----------
    images : list of array
        As :meth:`Model.prepare` returns them (alpha dropped; not normalized).
    normalizers : list of Normalizer
        Fitted on each whole image (volume).
    targets : list of uint8 array
        Class ids, 255 where not reviewed.
    modalities : list of str
    """

    def __init__(self, images: list, normalizers: list, targets: list, modalities: list[str]):
        self.images, self.normalizers, self.targets, self.modalities = images, normalizers, targets, modalities


def prepare_samples(samples: Sequence[Sample], spec: ModelSpec, norm: dict) -> PreparedSamples:
    """Images, fitted normalizers, targets and modalities of training samples.

    Each image goes through :func:`segloop.core.inference.prepare.prepare_image` with the spec
    of the network being trained (what :meth:`Model.prepare` runs; the channel axis is known
    from the labels), so training sees the pixels inference sees.  Volumes (2.5D / 3D models) are normalized with statistics of the whole
    volume; a 2.5D model's targets are computed slice by slice.

    Raises
    ------
    TrainingFolderError
        A sample the model cannot read (channels, dtype, axes), naming the sample.
    """
    k = spec.context_slices
    images, normalizers, targets, modalities = [], [], [], []
    for s in samples:
        spatial = np.asarray(s.labels).ndim
        img = np.asarray(s.image)
        try:
            prepared = prepare_image(spec, img, channel_axis=-1 if img.ndim == spatial + 1 else None,
                                     normalization=norm)
        except SegloopError as e:
            per = f" per slice x {k} slices" if k > 1 else ""
            raise TrainingFolderError(
                f"sample {s.source}: {e}. {spec.name} takes {spec.in_channels} channel(s){per} after "
                f"normalization {norm['kind']!r}: export images with the channels it reads, or choose another "
                "normalization (e.g. hematoxylin for RGB tissue)") from None
        images.append(prepared.image)
        normalizers.append(prepared.normalizer)
        targets.append(reviewed_targets(s, spec.task, per_slice=spec.dims == 2 and spatial == 3))
        modalities.append(str(s.meta.get("modality", "")))
    return PreparedSamples(images, normalizers, targets, modalities)


def load_spec_and_data(o: FinetuneOptions, *, normalization: dict | None, out: Path
                       ) -> tuple[ModelPackage | None, ModelSpec, dict, LoadedFolders]:
    """The parent package (or None), the new package's spec, its normalization and the training folders.

    With a parent: its spec with the name and version of the new package, ``parent``
    recorded, and ``normalization`` replacing the parent's when given.  From scratch: the spec
    of ``o.arch`` for the folders' classes and task (:func:`scratch_spec`).  The pixel size is
    the parent's (``o.pixel_size`` may repeat it, or give one to a parent without), or
    ``o.pixel_size`` from scratch; the folders' 2D samples are read at it (:func:`load_folders`).
    """
    parent_pkg = None
    if o.parent is not None:
        if o.classes is not None or o.task is not None or o.arch_kwargs is not None:
            raise ModelPackageError("classes, task and arch_kwargs come from the parent model; give them "
                                    "only when training from scratch (--arch)")
        parent_pkg = resolve_parent(o.parent)
        ps = parent_pkg.spec
        if (o.dims is not None and o.dims != ps.dims) or (o.context_slices is not None
                                                          and o.context_slices != ps.context_slices):
            raise ModelPackageError(
                f"{ps.name} is a {ps.dims}D model with context_slices {ps.context_slices}; dims and "
                "context_slices come from the parent model: give them only when training from scratch "
                "(--arch)")
        norm = spec_from_dict(normalization).to_dict() if normalization else dict(ps.normalization)
        if normalization:
            check_parent_normalization(ps, norm)
        pixel_size = ps.pixel_size
        if o.pixel_size is not None and ps.pixel_size is not None and differs(o.pixel_size, ps.pixel_size):
            raise ModelPackageError(
                f"{ps.name} works at {format_pixel_size(ps.pixel_size)} µm/px and a fine-tuned model keeps its "
                f"parent's pixel size (its samples are resampled to it); drop --pixel-size "
                f"{format_pixel_size(o.pixel_size)}, or train from scratch (--arch) at that pixel size")
        if pixel_size is None and o.pixel_size is not None:
            pixel_size = tuple(o.pixel_size)
        loaded = load_folders(o.folders, spec=ps, volumes=is_volume_spec(ps), pixel_size=pixel_size)
        mods = loaded.modalities - {"other", ""}
        modality = mods.pop() if len(mods) == 1 else ps.modality
        spec = replace(ps, name=o.name or ps.name, version=o.version or bump_version(ps.version),
                       parent={"name": ps.name, "version": ps.version, "sha256": ps.sha256},
                       training=None, sha256="", onnx_sha256=None, normalization=norm,
                       weights_dtype="float32", modality=modality, pixel_size=pixel_size,
                       description=(f"{ps.description} Fine-tuned with segloop-train on "
                                    f"{modality or 'new'} data.").strip())
    else:
        dims, context_slices = int(o.dims or 2), int(o.context_slices or 1)
        loaded = load_folders(o.folders, volumes=dims == 3 or context_slices > 1, pixel_size=o.pixel_size)
        spec = scratch_spec(arch=o.arch, arch_kwargs=o.arch_kwargs, loaded=loaded, classes=o.classes,
                            task=o.task, normalization=normalization, name=o.name or out.stem,
                            version=o.version, dims=dims, context_slices=context_slices, pixel_size=o.pixel_size)
        check_classes(FolderInfoView(loaded), spec, folder=", ".join(str(f.path) for f in loaded.folders))
        norm = spec.normalization
    return parent_pkg, spec, norm, loaded
