"""``segloop predict``: images, volumes and (through :mod:`segloop.cli_slide`) whole slides.

Called by :mod:`segloop.cli`, which parses the arguments and turns a :class:`SegloopError` into
one line and exit status 2.  Every input is checked before any is read; every output of one
input is written together (:func:`_write_together`), or none.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path

from segloop.errors import Cancelled, SegloopError, WriteError

__all__ = ["cmd_predict", "split_list"]

#: Images with more pixels than this are segmented into an on-disk memmap.
MEMMAP_PIXELS = 64 * 1024 * 1024


def split_list(text: str | None) -> list[str] | None:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; None for no text."""
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mrc", ".map", ".rec", ".dcm")


def _is_volume(path: str) -> bool:
    """A DICOM folder or a NIfTI / MRC / DICOM file (not a DICOM-WSI slide): read with geometry (``read_volume``)."""
    from segloop.core.formats.io.wsi import is_dicom_wsi

    p = Path(path)
    return p.is_dir() or (p.name.lower().endswith(VOLUME_SUFFIXES) and not is_dicom_wsi(p))


def _output_stem(path: str) -> str:
    """File name without its image suffix (``a.v2.ome.tif`` -> ``a.v2``)."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".btf", ".png", ".jpeg", ".jpg", ".bmp",
                   *VOLUME_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _progress_bar(total_images: int, index: int, name: str):
    from tqdm import tqdm

    bar = tqdm(total=1, unit="tile", desc=f"[{index}/{total_images}] {name}", file=sys.stderr,
               disable=None, dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def cmd_predict(args) -> int:
    from segloop.core.inference.model import load_model
    from segloop.core.inference.stain import stain_normalization

    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise SegloopError(f"--out {out_dir} is a file; give a folder")
    for p in args.images:
        if not (Path(p).is_file() or Path(p).is_dir()):
            raise SegloopError(f"{p}: no such file or folder")
    from segloop.cli_slide import check_slide_args, open_client, predict_slide, wants_slide

    check_slide_args(args)
    if args.channels and (len(args.images) != 1 or not _is_volume(args.images[0])):
        raise SegloopError("--channels adds sequences to ONE volume (NIfTI, DICOM, NRRD): give a single volume")
    if _parse_slices(args.slices) is not None:          # checked before anything is read or written
        images = [p for p in args.images if not _is_volume(p)]
        if images:
            raise SegloopError(f"--slices applies to volumes (DICOM, NIfTI, MRC, NRRD); {images[0]} is read as "
                               "an image, whose planes are all segmented")
    if args.pixel_size is not None:
        from segloop.core.formats.pixel_size import parse_pixel_size

        args.pixel_size = parse_pixel_size(args.pixel_size, source="--pixel-size")
        volumes = [p for p in args.images if _is_volume(p)]
        if volumes:
            raise SegloopError(f"--pixel-size applies to images (TIFF, PNG, JPEG); {volumes[0]} is a volume, whose "
                               "voxel spacing comes from its header")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"--out {out_dir}: cannot create the folder ({e.strerror}); choose a folder you can "
                         "write to") from None
    if not os.access(out_dir, os.W_OK):
        raise WriteError(f"--out {out_dir} is not writable; choose a folder you can write to")
    stems = [_output_stem(p) for p in args.images]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise SegloopError(f"several inputs would write {dupes[0]}_labels.tif; segment them into different --out "
                           "folders or rename them")
    if args.model == "auto":
        model, normalization = _AutoModel(args), None        # picked per input, by its modality
    else:
        if args.modality != "auto":
            raise SegloopError(f"--modality {args.modality} picks a model, and --model {args.model} is given; "
                               "drop one of them")
        model = load_model(args.model, device=args.device, engine=args.engine)
        # --stain is never "auto" here, so rgb only matters for --stain-norm, which a grey image
        # refuses later with a message that names it (InvalidImageError from the normalization)
        normalization = stain_normalization(model, rgb=True, stain=args.stain or "none", stain_norm=args.stain_norm)
    cancel = threading.Event()
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda *a: cancel.set()) if on_main else None
    client, slides = None, []
    try:
        for i, path in enumerate(args.images, 1):
            try:
                if not _is_volume(path) and wants_slide(path, args):
                    client = client or open_client(args)
                    slides.append(predict_slide(model, normalization, path, out_dir, args, cancel,
                                                progress_bar=_progress_bar, client=client,
                                                resolve=model.resolve if isinstance(model, _AutoModel) else None))
                elif _is_volume(path):
                    _predict_volume(model, path, out_dir, args, i, normalization, cancel)
                else:
                    _predict_image(model, path, out_dir, args, i, normalization, cancel)
            except (Cancelled, WriteError):
                raise
            except SegloopError as e:                 # an error about this input names it
                raise _naming(path, e) from None
    finally:
        if on_main:
            signal.signal(signal.SIGINT, previous)
        if client is not None:
            client.close()
    if len(slides) > 1:                                 # a cohort: one row per slide
        from segloop.cli_slide import write_summary

        print(f"summary of {len(slides)} slides -> {write_summary(out_dir, slides)}")
    return 0


class _AutoModel:
    """``--model auto``: the model for each input, picked by its modality (``--modality``, or guessed).

    ``model: NAME (picked ...; give --model to choose)`` is printed before the first input and
    again whenever the pick changes; each picked model is loaded once.
    """

    def __init__(self, args):
        self.args, self.loaded, self.said = args, {}, None

    def resolve(self, path: str, image, info):
        """The model, its normalization override and the image to give it, for one input just read."""
        from segloop.core.formats.modality import guess_modality
        from segloop.core.formats.registry import pick_model
        from segloop.core.inference.model import load_model
        from segloop.core.inference.stain import stain_normalization

        args = self.args
        modality = args.modality if args.modality != "auto" else guess_modality(image, info=info)
        if modality is None:
            raise SegloopError(f"{path}: cannot tell which model fits this volume (it is not CT in HU); give "
                               "--modality or --model")
        pick = pick_model(modality, body_part=(getattr(info, "extra", None) or {}).get("body_part"))
        if pick.name not in self.loaded:
            self.loaded[pick.name] = load_model(pick.name, device=args.device, engine=args.engine)
        if pick != self.said:
            print(f"model: {pick.name} (picked {pick.reason}; give --model to choose)", flush=True)
            self.said = pick
        model = self.loaded[pick.name]
        rgb = str(getattr(info, "axes", "")).endswith("S") and image.shape[-1] in (3, 4)
        if rgb and modality == "fluorescence" and int(model.spec.in_channels) == 1 and not args.stain:
            image, rgb = _fluorescence_channel(path, image), False
        stain = args.stain or (pick.stain if rgb else None) or "none"
        return model, stain_normalization(model, rgb=True, stain=stain, stain_norm=args.stain_norm), image


def _fluorescence_channel(path: str, image):
    """One channel of a fluorescence image saved as RGB(A), for a 1-channel model.

    Grey saved as RGB (equal channels) gives its first channel; a coloured one (DAPI shown in
    blue, a composite) gives the maximum over its colour channels, said on stderr.
    """
    import numpy as np

    colour = np.asarray(image[..., :3])
    if all(np.array_equal(colour[..., 0], colour[..., c]) for c in (1, 2)):
        return colour[..., 0]
    print(f"{path}: note: fluorescence saved as colour; segmenting the brightest of its channels at each pixel "
          "(save the nuclear channel alone, or give --model, to choose)", file=sys.stderr)
    return colour.max(axis=-1)


def _naming(path: str, error: SegloopError) -> SegloopError:
    """``error`` with ``path:`` in front of its message, unless the message names the file already."""
    if str(path) in str(error) or Path(path).name in str(error):
        return error
    try:
        return type(error)(f"{path}: {error}")
    except TypeError:                                 # a class with other constructor arguments
        return error


def _predict_image(model, path: str, out_dir: Path, args, index: int, normalization, cancel) -> None:
    """An image (TIFF, PNG ...): segment it and write its labels, provenance (and uncertainty, overlay)."""
    import numpy as np

    from segloop.core.formats.io.images import (
        create_label_memmap,
        read_image,
        write_labels,
        write_overlay,
    )
    from segloop.core.formats.pixel_size import format_pixel_size

    if Path(path).is_dir():
        raise SegloopError(f"{path} is a folder with no DICOM series; give image files")
    image, info = read_image(path)
    if isinstance(model, _AutoModel):
        model, normalization, image = model.resolve(path, image, info)
    stem = _output_stem(path)
    label_path = out_dir / f"{stem}_labels.tif"
    if label_path.exists() and not args.overwrite:
        raise SegloopError(f"{label_path} exists; pass --overwrite or choose another --out")
    bar, update = _progress_bar(len(args.images), index, Path(path).name)
    out = partial = None
    n_px = int(np.prod(image.shape[:2] if image.ndim < 4 else image.shape[:3]))
    use_memmap = args.memmap == "always" or (args.memmap == "auto" and n_px > MEMMAP_PIXELS)
    try:
        if use_memmap and model.spec.task == "instance":
            partial = out_dir / f".{stem}_labels.partial.tif"
            shape = image.shape[:-1] if info.axes.endswith(("S", "C")) else image.shape
            try:
                out = create_label_memmap(partial, shape, np.uint16)
            except OSError as e:
                raise WriteError(f"cannot write {partial} into --out {out_dir}: {e.strerror or e}; free some space "
                                 "or choose another --out") from None
        pixel_size, px_source = _image_pixel_size(model, args, info, image)
        try:
            with _pixel_size_notes(path):
                res = model.predict(image, tile=args.tile, overlap=args.overlap, batch_size=args.batch,
                                    normalization=normalization, uncertainty=args.uncertainty,
                                    skip_background=None if args.skip_background == "auto"
                                    else args.skip_background == "on",
                                    out=out, pixel_size=pixel_size, progress=update, cancel=cancel)
        finally:
            bar.close()
        prov = {**res.provenance, "source": {"path": str(Path(path).resolve()), "axes": info.axes,
                                             "pixel_size": info.pixel_size}}
        prov["pixel_size"] = {**prov.get("pixel_size", {}), "image_source": px_source}
        if partial is not None and res.labels is out:
            def write_label_file(tmp):
                out.flush()
                os.replace(partial, tmp)
        else:
            def write_label_file(tmp):
                write_labels(tmp, res.labels, metadata=prov)
        outputs = [(label_path, write_label_file),
                   (out_dir / f"{stem}_provenance.json",
                    lambda tmp: Path(tmp).write_text(json.dumps(prov, indent=2, default=str)))]
        if res.uncertainty is not None:
            outputs.append((out_dir / f"{stem}_uncertainty.tif",
                            lambda tmp: write_labels(tmp, res.uncertainty, metadata=prov)))
        if args.overlay and res.labels.ndim == 2:
            outputs.append((out_dir / f"{stem}_overlay.png", lambda tmp: write_overlay(tmp, image, res.labels)))
        _write_together(outputs, path, out_dir, cancel)
    finally:
        if partial is not None:
            del out                                   # the memmap; then the file, unless it was renamed
            partial.unlink(missing_ok=True)
    if args.overlay and res.labels.ndim != 2:
        print(f"{path}: --overlay is drawn for 2D images only", file=sys.stderr)
    _note_nonfinite(path, res.provenance)
    _note_stain_norm(path, res.provenance)
    skipped = f", {res.tiles_skipped} background tiles skipped" if res.tiles_skipped else ""
    kind = "objects" if model.spec.task == "instance" else "classes present"
    px = res.provenance.get("pixel_size") or {}
    scaled = (f", run at the model's {format_pixel_size(px['model'])} µm/px (image {format_pixel_size(px['image'])} "
              f"µm/px, scaled x{format_pixel_size(px['scale'])})" if px.get("resampled") else "")
    print(f"{path}: {res.n_objects} {kind} -> {label_path}{skipped}{scaled}")


def _note_nonfinite(path: str, provenance: dict) -> None:
    """Say on stderr when the image had NaN / Inf pixels (the model saw them as 0 after normalization)."""
    stats = (provenance.get("parameters") or {}).get("normalization_stats") or {}
    bad = stats.get("sample_nonfinite")
    if bad:
        print(f"{path}: note: {bad} of the {stats.get('sample_pixels')} pixels sampled for normalization are NaN "
              "or Inf; such pixels were given 0 after normalization. Replace them in the image if they mean "
              "something else", file=sys.stderr)


def _image_pixel_size(model, args, info, image) -> tuple[tuple[float, float] | None, str | None]:
    """The image's pixel size (``--pixel-size``, else the file's metadata) and where it came from.

    A pixel size from the file that the model would refuse (more than 16x its own: a 72 dpi tag)
    is refused here with the file named and ``--pixel-size`` as the way out.
    """
    from segloop.core.inference.resolution import plan_rescale

    if args.pixel_size is not None:
        return args.pixel_size, "--pixel-size"
    if info.pixel_size is None:
        return None, None
    spatial = image.shape[-3:-1] if info.axes.endswith(("S", "C")) else image.shape[-2:]
    plan_rescale(model.spec, info.pixel_size, tuple(spatial),
                 source=f"{info.path}: the pixel size in its metadata (give the real one with --pixel-size)")
    return tuple(info.pixel_size), "file metadata"


@contextlib.contextmanager
def _pixel_size_notes(path: str):
    """Show a model's pixel-size notice as one line ``segloop: note: ...``; other warnings as they were."""
    import warnings

    from segloop.core.inference.resolution import PixelSizeWarning

    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PixelSizeWarning)
            yield
    finally:                                   # outside the recording: the others are shown as usual
        shown = set()
        for w in caught:
            if not issubclass(w.category, PixelSizeWarning):
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
            elif str(w.message) not in shown:
                shown.add(str(w.message))
                print(f"segloop: note: {path}: {w.message}", file=sys.stderr)


def _note_stain_norm(path: str, provenance: dict) -> None:
    """Say on stderr when stain normalization was asked for but left the image as it was (no tissue ...)."""
    sn = ((provenance.get("parameters") or {}).get("normalization_stats") or {}).get("stain_norm") or {}
    if sn.get("applied") is False:
        print(f"{path}: note: {sn.get('method')} stain normalization was not applied: {sn.get('reason')}",
              file=sys.stderr)


def _write_together(outputs, source: str, out_dir: Path, cancel) -> None:
    """Write the output files of one input all or none.

    Each file is written to a temporary file beside it; only when every one is complete, and no
    Ctrl-C (``cancel``) has come, are they all renamed into place.  A Ctrl-C that arrives before or
    while they are written, or a write that fails (read-only folder, full disk), leaves none of
    them and no temporary file.

    Parameters
    ----------
    outputs : list of (Path, callable)
        The file and ``write(tmp)``, which writes its content to the temporary path ``tmp``.
    source : str
        The input they belong to (for messages).
    out_dir : Path
        The ``--out`` folder (for messages).
    cancel : threading.Event
        Set by Ctrl-C.

    Raises
    ------
    Cancelled
        A Ctrl-C came; when it came during the renames, the files are complete, and still the
        command stops here.
    WriteError
        A file could not be written; nothing of this input was left.
    """
    from contextlib import ExitStack

    from segloop.core._runtime import atomic_output

    def stop():
        if cancel.is_set():
            raise Cancelled(f"cancelled while writing the outputs of {source}")

    try:
        with ExitStack() as stack:
            for path, write in outputs:
                stop()
                name = path.name.lower()
                suffix = next((s for s in (".nii.gz", ".seg.nrrd") if name.endswith(s)), path.suffix)
                write(stack.enter_context(atomic_output(path, durable=False, suffix=suffix)))
            stop()                                    # the last chance to leave nothing
    except OSError as e:
        why = f"{e.filename}: {e.strerror or e}" if e.filename else (e.strerror or str(e))
        raise WriteError(f"cannot write the outputs of {source} into --out {out_dir} ({why}); "
                         "nothing was written for it. Free some space or choose another --out") from None
    stop()


def _parse_slices(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError:
        raise SegloopError(f"--slices {text!r}: write first:stop (stop excluded), e.g. 40:60") from None
    if not 0 <= a < b:
        raise SegloopError(f"--slices {text!r}: need 0 <= first < stop")
    return a, b


def _extra_channels(paths: str, info, cancel) -> list:
    """``--channels a.nii.gz,b.nii.gz``: each volume, checked to lie on the first one's voxel grid."""
    import numpy as np

    from segloop.core.formats.io.volume import read_volume

    out = []
    for p in split_list(paths) or []:
        vol, other = read_volume(p, cancel=cancel, lazy=False)
        if tuple(other.shape) != tuple(info.shape) or not np.allclose(other.affine, info.affine, atol=1e-3):
            raise SegloopError(f"--channels {p}: its voxel grid ({other.shape}, spacing {other.spacing}) differs from "
                               f"{info.path.name}'s ({info.shape}, spacing {info.spacing}); register the sequences "
                               "to one grid first")
        out.append(np.asarray(vol))
    return out


def _predict_volume(model, path: str, out_dir: Path, args, index: int, normalization, cancel) -> None:
    """A CT/MR volume: segment it and write labels in the source's own space (NIfTI; Slicer .seg.nrrd)."""
    import numpy as np

    from segloop.core.editing.measure import measure_volume
    from segloop.core.formats.io.geometry import Reorientation, lps_reorientation
    from segloop.core.formats.io.volume import read_volume, write_nifti_labels, write_seg_nrrd
    from segloop.core.formats.modality import check_input_modality

    stem = _output_stem(path.rstrip("/\\"))
    label_path = out_dir / f"{stem}_labels.nii.gz"
    nrrd_path = out_dir / f"{stem}.seg.nrrd"
    for p in (label_path, nrrd_path if args.seg_nrrd else None):
        if p is not None and p.exists() and not args.overwrite:
            raise SegloopError(f"{p} exists; pass --overwrite or choose another --out")
    volume, info = read_volume(path, cancel=cancel)
    for w in info.warnings:
        print(f"{path}: note: {w}", file=sys.stderr)
    if isinstance(model, _AutoModel):
        model, normalization, volume = model.resolve(path, volume, info)
    check_input_modality(model.spec, volume, info, what=path)
    # Models segment axial slices in display order (Z=S, Y=P, X=L, as in napari): a volume
    # stored in another order (an MRC stored like a NIfTI) is segmented in that order, and its
    # labels are put back in the stored order.
    to_display = lps_reorientation(info.affine) if info.affine is not None else Reorientation()
    axial_volume = to_display.to_display(volume)
    if getattr(args, "channels", None):        # more sequences of this scan: channels after the first
        axial_volume = np.stack([np.asarray(axial_volume), *(to_display.to_display(v) for v in
                                                            _extra_channels(args.channels, info, cancel))], -1)
    z_range = _parse_slices(args.slices)
    if z_range is not None and z_range[1] > axial_volume.shape[0]:
        raise SegloopError(f"--slices {args.slices}: the volume has {axial_volume.shape[0]} slices along its axial axis")
    bar, update = _progress_bar(len(args.images), index, Path(path).name)
    try:
        # the spacing of the axial (display) array: the models resample a scan to the spacing they learnt
        spacing = tuple(float(info.spacing[i]) for i in np.argsort(to_display.axes))
        res = model.predict(axial_volume, tile=args.tile, overlap=args.overlap, batch_size=args.batch,
                            normalization=normalization, progress=update, cancel=cancel, spacing=spacing,
                            **({"z_range": z_range} if z_range else {}))
    finally:
        bar.close()
    labels = np.asarray(res.labels)
    if z_range is not None:                       # the labels of the other slices are 0
        full = np.zeros(axial_volume.shape, labels.dtype)
        full[z_range[0]:z_range[1]] = labels
        labels = full
    labels = np.ascontiguousarray(to_display.from_display(labels))
    names = {i: c for i, c in enumerate(model.spec.classes) if i} if model.spec.task == "semantic" else None
    prov = {**res.provenance, "source": {"path": str(Path(path).resolve()), **info.to_meta()}}
    outputs = [(label_path, lambda tmp: write_nifti_labels(tmp, labels, info)),
               (out_dir / f"{stem}_provenance.json",
                lambda tmp: Path(tmp).write_text(json.dumps(prov, indent=2, default=str)))]
    if args.seg_nrrd:
        outputs.append((nrrd_path, lambda tmp: write_seg_nrrd(tmp, labels, info, names=names)))
    _write_together(outputs, path, out_dir, cancel)
    rows = measure_volume(labels, info, image=volume, names=names)      # the same numbers as `segloop measure`
    print(f"{path}: {res.n_objects} {'objects' if model.spec.task == 'instance' else 'classes present'}"
          f" -> {label_path}" + (f" and {nrrd_path}" if args.seg_nrrd else ""))
    for r in rows[:20]:
        hu = f", mean {r['hu_mean']:.0f} {info.units}".rstrip() if r["hu_mean"] == r["hu_mean"] else ""
        print(f"  {r.get('name') or r['label']}: {r['volume_ml']:.2f} mL, largest axial diameter "
              f"{r['max_diameter_mm']:.1f} mm{hu}")
