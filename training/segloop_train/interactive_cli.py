"""``segloop-train interactive``: train an interactive (click) model on training folders.

::

    segloop-train interactive FOLDER... --out DIR --name NAME [--from CLICK_MODEL --version V --steps N --batch B --lr LR
                  --arch unet --arch-kwargs JSON --normalization JSON|KIND --modality M --context-slices K
                  --classes 1,2 --image-channels C --pixel-size UM --crop 128 --eval-every N
                  --checkpoint-every N --val-objects N --max-clicks N --seed S --resume --device D
                  --threads T --license TEXT --description TEXT --labels hand|automatic|partly automatic]

See :func:`segloop_train.interactive.train_interactive`.  Progress goes to stderr, one line per
evaluation and every 10 steps.  The first Ctrl-C (or SIGTERM) stops at the next step and writes the
package from the best weights evaluated so far (the checkpoint is kept for ``--resume``); a second
stops at once.  Bad input prints one line ``segloop-train: error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import threading

from segloop.errors import SegloopError
from segloop_train.cli_args import OneLineParser, json_object, pixel_size, positive_int

__all__ = ["build_parser", "main"]

PROG = "segloop-train"


def _classes(text: str) -> tuple[int, ...]:
    try:
        ids = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of class ids such as 1,2") from None
    if not ids or min(ids) < 1:
        raise argparse.ArgumentTypeError(f"class ids must be whole numbers >= 1 (0 is background), got {text!r}")
    return ids


def _normalization(text: str) -> dict:
    t = text.strip()
    if t.startswith("{"):
        return json_object(t)
    return {"kind": t}


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = OneLineParser(prog=f"{prog} interactive", description=(
        "Train an interactive (click) model on training folders: simulated clicks, boxes and corrections from the "
        "labels; the best weights by NoC@85 on the val split go into a new package (task interactive)."))
    p.add_argument("folders", nargs="+", metavar="FOLDER", help="training folder(s) v1 (instance or semantic)")
    p.add_argument("--out", required=True, metavar="DIR", help="the new package folder (must not exist)")
    p.add_argument("--name", required=True, help="name of the new package")
    p.add_argument("--from", dest="parent", metavar="MODEL",
                   help="a click model (name or package) to fine-tune on the folders: its network, normalization "
                        "and prompt settings are kept; scored first, kept unless beaten")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--steps", type=positive_int, default=2000, help="optimizer steps (default 2000)")
    p.add_argument("--batch", type=positive_int, default=16, help="objects per step (default 16)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--arch", choices=["unet", "unet26", "segunet", "convnext_unet"], default="unet")
    p.add_argument("--arch-kwargs", type=json_object, metavar="JSON",
                   help='default \'{"base_width": 16, "depth": 4, "norm": "batch"}\'')
    p.add_argument("--normalization", type=_normalization, metavar="JSON|KIND",
                   help='e.g. \'{"kind": "ct_window", "level": 40, "width": 400}\' (default percentile 1-99.8)')
    p.add_argument("--modality", default="", help="fluorescence, histology, CT ... (recorded)")
    p.add_argument("--context-slices", type=positive_int, default=1, metavar="K",
                   help="odd; > 1: 2.5D, the K planes around the clicked one as channels")
    p.add_argument("--classes", type=_classes, metavar="IDS",
                   help="semantic folders: the class ids that are objects, e.g. 1,2 (default all)")
    p.add_argument("--image-channels", type=positive_int,
                   help="image channels of the network (default from the samples; RGB counts as 1, read through "
                        "the hematoxylin channel)")
    p.add_argument("--pixel-size", type=pixel_size, metavar="UM", help="µm per pixel the model works at (recorded)")
    p.add_argument("--crop", type=positive_int, default=128, help="window side in network pixels (default 128)")
    p.add_argument("--eval-every", type=positive_int, help="steps between evaluations (default steps/5, <= 500)")
    p.add_argument("--checkpoint-every", type=positive_int, help="steps between checkpoints")
    p.add_argument("--val-objects", type=int, default=150, help="val objects scored (default 150)")
    p.add_argument("--max-clicks", type=positive_int, default=10, help="clicks per scored object (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in DIR.ckpt")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's)")
    p.add_argument("--license", default="", help="licence text recorded in the package")
    p.add_argument("--description", default="", help="description recorded in the package")
    p.add_argument("--labels", choices=["hand", "automatic", "partly automatic"], default="hand",
                   help="who drew the labels (default hand)")
    p.add_argument("--progress-json", action="store_true", help="one JSON object per event on stdout")
    return p


def _printer(as_json: bool):
    def show(ev: dict) -> None:
        if as_json:
            sys.stdout.write(json.dumps(ev, default=str) + "\n")
            sys.stdout.flush()
            return
        kind = ev["event"]
        if kind == "start":
            print(f"{ev['train_objects']} train / {ev['val_objects']} val objects in {ev['samples']} sample(s); "
                  f"{ev['steps']} steps, batch {ev['batch']}, {ev['device']}"
                  + (f"; resuming from step {ev['resumed_from']}" if ev.get("resumed_from") else ""), file=sys.stderr)
        elif kind == "step" and (ev["step"] % 10 == 0 or ev["step"] == ev["steps"]):
            print(f"step {ev['step']}/{ev['steps']} loss {ev['loss']:.4f} ({ev['seconds']:.2f} s, simulated rounds "
                  f"{ev['simulation_seconds']:.2f} s)", file=sys.stderr)
        elif kind == "eval":
            m = ev["metrics"]
            print(f"step {ev['step']}: " + "  ".join(f"{k}={m[k]}" for k in ("noc@85", "noc@90", "miou@1", "miou@3",
                                                                              "ms_per_click_median") if k in m)
                  + ("  (best)" if ev.get("best") else ""), file=sys.stderr)
        elif kind == "warning":
            print(f"{PROG}: warning: {ev['message']}", file=sys.stderr)
        elif kind in ("done", "cancelled"):
            print(ev.get("message") or f"wrote {ev.get('package')}")
    return show


def main(argv: list[str] | None = None) -> int:
    """Run ``segloop-train interactive`` with ``argv`` (without the word ``interactive``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    cancel = threading.Event()

    def on_signal(signum, frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        if not args.progress_json:
            print(f"{PROG}: {signal.Signals(signum).name}: stopping at the next step ...", file=sys.stderr)

    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        from segloop.core.formats.prompt import PromptSpec
        from segloop_train.interactive import train_interactive

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        train_interactive(
            args.folders, out=args.out, name=args.name, version=args.version, arch=args.arch,
            arch_kwargs=args.arch_kwargs, normalization=args.normalization, modality=args.modality,
            prompt=PromptSpec(crop=args.crop), steps=args.steps, batch=args.batch, lr=args.lr,
            context_slices=args.context_slices, classes=args.classes, image_channels=args.image_channels,
            pixel_size=args.pixel_size, val_objects=args.val_objects, max_clicks=args.max_clicks,
            eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device,
            resume=args.resume, license=args.license, description=args.description, label_source=args.labels,
            command=" ".join([PROG, "interactive", *map(shlex.quote, argv)]), parent=args.parent, cancel=cancel,
            progress=_printer(args.progress_json))
    except (SegloopError, ValueError, OSError) as e:
        msg = str(e).replace("\n", " ")
        if isinstance(e, OSError) and not isinstance(e, SegloopError):
            msg = (f"{e.filename or args.out}: {e.strerror or e}; check that --out {args.out} is writable and the "
                   "disk has space")
        if args.progress_json:
            sys.stdout.write(json.dumps({"event": "error", "message": msg}) + "\n")
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the last checkpoint is kept for --resume", file=sys.stderr)
        return 130
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
