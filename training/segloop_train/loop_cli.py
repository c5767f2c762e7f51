"""``segloop-train loop``: the active-learning loop without a screen, from the command line.

::

    segloop-train loop --images a.tif b.tif --ground-truth a_gt.tif b_gt.tif --arch unet \
                       --strategy uncertainty --out al/

``segloop loop`` runs this command in a subprocess (the ``segloop`` command does not import
the trainer), with the same arguments, output and exit status.  Bad input prints one line
(``PROG: error: ...``) and exits with status 2; a run cancelled with Ctrl-C keeps its finished
rounds and exits with status 130.  See :func:`segloop_train.loop.run_loop`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from segloop.errors import Cancelled, SegloopError

__all__ = ["build_parser", "main"]

PROG = "segloop-train"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    from segloop_train.cli_args import OneLineParser, positive_int

    p = OneLineParser(prog=f"{prog} loop", description=(
        "Simulate active learning: ground truth corrects the regions a strategy picks, fine-tune and evaluate "
        "every round; CSV + plot of quality vs corrected area."))
    p.add_argument("--images", nargs="+", required=True, help="the pool: images (or TIFF stacks) to pick regions from")
    p.add_argument("--ground-truth", nargs="+", required=True,
                   help="label images, one per --images in the same order (object ids, or class ids)")
    p.add_argument("--heldout-images", nargs="+", default=None, help="images evaluated every round, never corrected")
    p.add_argument("--heldout-ground-truth", nargs="+", default=None, help="their labels, same order")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", default=None, help="start from this model (bundled name or package path)")
    who.add_argument("--arch", default=None, help="start from scratch: unet, unet26, segunet, convnext_unet")
    p.add_argument("--arch-kwargs", default=None, help='--arch: JSON, e.g. \'{"depth": 3, "base_width": 16}\'')
    p.add_argument("--classes", default="background,object", help="--arch: class names, background first")
    p.add_argument("--task", choices=["instance", "semantic"], default="instance", help="--arch: the task")
    p.add_argument("--normalization", default=None, help="--arch: percentile (default), ct_window JSON ...")
    p.add_argument("--dims", type=int, choices=[2, 3], default=2, help="--arch: 2 or 3")
    p.add_argument("--context-slices", type=int, default=1, help="--arch: odd; > 1 makes a 2.5D network")
    p.add_argument("--modality", default="other", help="--arch: fluorescence, histology, CT ... (augmentation)")
    p.add_argument("--name", default=None, help="--arch: base name of the packages written")
    p.add_argument("--strategy", choices=["random", "uncertainty", "diversity"], default="uncertainty")
    p.add_argument("--rounds", type=int, default=5, help="active-learning rounds after round 0")
    p.add_argument("--budget", type=int, default=8, help="regions corrected per round")
    p.add_argument("--initial", type=int, default=None,
                   help="random regions corrected in round 0 (default: --budget; 0 with --model: evaluate it as is)")
    p.add_argument("--region-size", type=int, default=64, help="region side in pixels")
    p.add_argument("--region-kind", choices=["tile", "slice", "subvolume"], default="tile",
                   help="stacks: in-plane tiles of one plane, whole planes, or cubes")
    p.add_argument("--methods", default="entropy", help="uncertainty methods, comma-separated: entropy, tta, mc_dropout")
    p.add_argument("--score", choices=["mean", "boundary", "mean+boundary"], default="mean", help="region score")
    p.add_argument("--steps", type=int, default=100, help="fine-tuning steps per round (each fine-tunes round 0's model)")
    p.add_argument("--initial-steps", type=int, default=None,
                   help="training steps of round 0 (default: --steps; from scratch, give more, e.g. 400)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (reproducible), auto, cuda, cuda:N or mps")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--click-model", default=None,
                   help="a click model (e.g. nuclei-click-unet): the CSV gains 'clicks', the effort of the "
                        "corrections in simulated clicks")
    p.add_argument("--folder", default=None, help="new or empty training folder (default: OUT/training-folder)")
    p.add_argument("--out", "-o", required=True, help="new or empty folder: loop.csv, loop.png, models/")
    return p


def _read_ground_truth(path: str):
    import numpy as np
    import tifffile

    from segloop.core.formats.io.images import read_image
    from segloop.errors import ImageReadError

    if Path(path).suffix.lower() in (".tif", ".tiff"):
        if not Path(path).is_file():
            raise ImageReadError(f"{path}: no such file")
        try:
            return np.asarray(tifffile.imread(path))
        except (OSError, ValueError, tifffile.TiffFileError) as e:
            raise ImageReadError(f"{path}: cannot read the ground-truth TIFF ({e})") from None
    return np.asarray(read_image(path)[0])


def _read_pairs(images: list[str], truth: list[str], what: str) -> tuple[dict, dict, dict]:
    import numpy as np

    from segloop.core.formats.io.images import read_image
    from segloop.errors import InvalidLabelsError

    if len(images) != len(truth):
        raise InvalidLabelsError(f"{len(images)} {what} image(s) but {len(truth)} ground-truth file(s); give one "
                                 "ground truth per image, in the same order")
    imgs, gts, sources = {}, {}, {}
    for img_path, gt_path in zip(images, truth):
        name = Path(img_path).stem
        name = name if name not in imgs else Path(img_path).name
        while name in imgs:
            name += "_"
        img = np.asarray(read_image(img_path)[0])
        gt = _read_ground_truth(gt_path)
        if img.ndim not in (gt.ndim, gt.ndim + 1) or tuple(img.shape[:gt.ndim]) != gt.shape:
            raise InvalidLabelsError(f"{what} image {img_path} has shape {img.shape} but its ground truth {gt_path} "
                                     f"has {gt.shape}; give ground truth with the image's spatial shape")
        imgs[name], gts[name], sources[name] = img, gt, str(Path(img_path).resolve())
    return imgs, gts, sources


def _json_object(flag: str, text: str) -> dict:
    """``text`` (the value of ``flag``) as a JSON object, or a one-line error naming the flag."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SegloopError(f"{flag} {text!r} is not JSON ({e}); write a JSON object such as '{{\"depth\": 3}}'") from None
    if not isinstance(value, dict):
        raise SegloopError(f"{flag} {text!r} is not a JSON object; write one such as '{{\"depth\": 3}}'")
    return value


def _cmd_loop(args, prog: str) -> int:
    import math

    from segloop_train.loop import ScratchModel, run_loop

    for label, v, lo in (("--rounds", args.rounds, 0), ("--budget", args.budget, 1),
                         ("--region-size", args.region_size, 1), ("--steps", args.steps, 1),
                         ("--initial-steps", 1 if args.initial_steps is None else args.initial_steps, 1)):
        if v < lo:
            raise SegloopError(f"{label} must be at least {lo}, got {v}")
    if (args.heldout_images is None) != (args.heldout_ground_truth is None):
        raise SegloopError("give --heldout-images and --heldout-ground-truth together (or neither)")
    pool, truth, sources = _read_pairs(args.images, args.ground_truth, "pool")
    heldout = None
    if args.heldout_images is not None:
        ho_img, ho_gt, _ = _read_pairs(args.heldout_images, args.heldout_ground_truth, "held-out")
        heldout = (ho_img, ho_gt)
    if args.model is not None:
        parent = args.model
    else:
        arch_kwargs = (_json_object("--arch-kwargs", args.arch_kwargs) if args.arch_kwargs
                       else {"depth": 3, "base_width": 16, "norm": "batch"})
        norm = (_json_object("--normalization", args.normalization)
                if args.normalization and args.normalization.strip().startswith("{")
                else {"kind": args.normalization} if args.normalization else None)
        parent = ScratchModel(architecture=args.arch, architecture_kwargs=arch_kwargs,
                              classes=tuple(c.strip() for c in args.classes.split(",") if c.strip()), task=args.task,
                              dims=args.dims, context_slices=args.context_slices, normalization=norm,
                              modality=args.modality, name=args.name or f"{args.arch}-scratch")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cancel = threading.Event()
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda *a: cancel.set()) if on_main else None

    shown: set[str] = set()

    def show(ev: dict) -> None:
        if ev["event"] == "round":
            row = ev["row"]
            q = "  ".join(f"{k} {row[k]:.3f}" for k in ("f1@0.5", "dice") if k in row)
            mu = row["mean_uncertainty"]
            print(f"round {row['round']} {row['strategy']}: {row['regions_total']} regions, "
                  f"{row['corrected_area']:,} px corrected ({100 * row['corrected_fraction']:.2f}% of the pool)"
                  + (f", mean uncertainty {mu:.3f}" if math.isfinite(mu) else "") + (f"; held-out {q}" if q else "")
                  + (f", {row['clicks']:,} clicks" if "clicks" in row else "")
                  + f" ({row['seconds']:.0f} s)", flush=True)
        elif ev["event"] == "warning":
            print(f"{prog}: {ev['message']}", file=sys.stderr)
            shown.add(ev["message"])
        elif ev["event"] == "round_start" and ev["round"] == 0:
            print("round 0: random start regions, first model ...", flush=True)

    try:
        res = run_loop(pool, truth, heldout=heldout, out=args.out, folder=args.folder, parent=parent,
                       strategy=args.strategy, rounds=args.rounds, budget=args.budget, initial=args.initial,
                       region_size=args.region_size, region_kind=args.region_kind, steps=args.steps,
                       initial_steps=args.initial_steps,
                       batch=args.batch, patch=args.patch, lr=args.lr, seed=args.seed,
                       methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), score=args.score,
                       device=args.device, sources=sources, click_model=args.click_model, progress=show,
                       cancel=cancel)
    finally:
        if on_main:
            signal.signal(signal.SIGINT, previous)
    for msg in res.messages:
        if msg not in shown:                            # the loop's own warnings were shown as they came
            print(f"{prog}: {msg}", file=sys.stderr)
    if res.rows:
        print(f"wrote {res.csv}" + (f" and {res.plot}" if res.plot else "") + f"; training folder {res.folder}")
    if res.stopped == "cancelled" and not res.rows:
        print(f"{prog}: cancelled before the first round finished; nothing was kept", file=sys.stderr)
        return 130
    if res.stopped == "cancelled":
        print(f"{prog}: cancelled after {len(res.rows)} finished round(s); their results are in {res.out}",
              file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``loop`` with ``argv`` (without the word ``loop``).

    A leading ``--prog NAME`` (what ``segloop loop`` passes) names the command in messages.
    """
    import logging

    argv = list(sys.argv[1:] if argv is None else argv)
    prog = PROG
    if len(argv) >= 2 and argv[0] == "--prog":
        prog, argv = argv[1], argv[2:]
    # tifffile logs its own complaints about corrupt files; ours is the one line.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    args = build_parser(prog).parse_args(argv)
    try:
        return _cmd_loop(args, prog)
    except Cancelled:
        print(f"{prog}: cancelled; the rounds finished so far are kept in the output folder", file=sys.stderr)
        return 130
    except SegloopError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:                          # a full disk, a folder that cannot be written
        where = f"{e.filename}: " if e.filename else ""
        print(f"{prog}: error: {where}{e.strerror or e}; check that --out is writable and the disk has space",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
