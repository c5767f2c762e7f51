"""``segloop-train``: fine-tune a model package on training folders (or train one from scratch).

::

    segloop-train FOLDER... --from MODEL --out DIR [--epochs N | --steps N] [--lr --batch --patch
                  --device --precision --seed --resume --eval-every --checkpoint-every --patience
                  --version --name]
    segloop-train FOLDER... --arch unet --out DIR [--arch-kwargs JSON --classes a,b
                  --task semantic|instance --normalization JSON --dims 2|3 --context-slices K
                  --pixel-size UM] ...

    segloop-train loop --images ... --ground-truth ... (--arch unet | --model M) --out DIR ...
    segloop-train interactive FOLDER... --out DIR --name NAME [--steps --batch ...]
    segloop-train tune-postprocess MODEL --folder F [--folder F2 ...] --out DIR

The ``loop`` form simulates active learning with ground truth as the oracle
(:mod:`segloop_train.loop_cli`, :func:`segloop_train.loop.run_loop`; ``segloop loop`` runs it).
``segloop-train interactive`` trains a click model (:mod:`segloop_train.interactive_cli`);
``segloop-train tune-postprocess`` chooses an instance model's thresholds on validation images
(:mod:`segloop_train.tune_postprocess`).
To fine-tune on a training folder that is literally called ``loop`` or ``interactive``, write
``./loop``.

2.5D and 3D (CT stacks): ``--arch segunet --context-slices 5`` trains a 2D network on the 5
slices around each slice; ``--arch unet --dims 3 --patch 32,96,96`` a 3D network on 3D
patches ``(pz, py, px)``.  Fine-tuning a 2.5D / 3D package (``--from``) trains the same way.

A progress bar goes to the terminal.  With ``--progress-json`` stdout carries instead ONE JSON
object per line, for programs (the napari widget runs training in a subprocess)::

    {"event": "start", "steps": N, "parent_metrics": {...}, "epochs": E, "steps_per_epoch": S,
     "batch": B, "patch": P, "device": "cpu", "train": n, "val": n, "resumed_from": null|step, ...}
    {"event": "step", "step": i, "steps": N, "epoch": e, "loss": x, "lr": x, "batch": B}
    {"event": "eval", "step": i, "epoch": e, "metrics": {...}, "best": bool, "best_step": i}
    {"event": "checkpoint", "step": i, "path": "..."}
    {"event": "warning", "message": "..."}
    {"event": "done", "package": path, "metrics": {...}, "parent_metrics": {...}, "improved": bool|null, ...}
    {"event": "cancelled", "package": path|null, "message": "..."}
    {"event": "error", "message": "..."}

On several processes (DistributedDataParallel; NCCL on GPUs, gloo on CPUs)::

    torchrun --nproc_per_node N -m segloop_train FOLDER... --from MODEL --out DIR ...

Each process trains on its own patches (``--batch`` is per process); only rank 0 prints
progress, evaluates, checkpoints and writes the package.  ``SIGTERM`` to torchrun (or to any
worker) cancels all of them at the next step; see :mod:`segloop_train.distributed`.

SIGINT / SIGTERM cancel the run at the next step: the package is written from the best weights
evaluated so far (if any) and the checkpoint is kept for ``--resume``.  Errors print one line
``segloop-train: error: ...`` on stderr (and an ``error`` event with ``--progress-json``) and
exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import signal
import sys
import threading
import time
import warnings

from segloop.errors import SegloopError
from segloop_train.cli_args import OneLineParser, json_object, pixel_size, positive_int

__all__ = ["main", "build_parser", "options_from_args"]

PROG = "segloop-train"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Fine-tune a segloop model package on training folders "
                                "and write a new, evaluated package (parent recorded).")
    p.add_argument("folders", nargs="+", metavar="FOLDER", help="training folder(s) v1 (segloop export)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from", dest="parent", metavar="MODEL",
                     help="model to fine-tune: a bundled name (segloop list-models) or a package path")
    src.add_argument("--arch", choices=["unet", "unet26", "segunet", "convnext_unet"],
                     help="train this architecture from scratch instead")
    p.add_argument("--out", required=True, metavar="DIR", help="the new package folder (must not exist)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps (default 500)")
    length.add_argument("--epochs", type=int, help="epochs (an epoch draws as many pixels as the samples hold)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4)")
    p.add_argument("--batch", type=int, default=8, help="patches per step and process (default 8)")
    p.add_argument("--patch", type=_patch, default=256, metavar="P|PZ,PY,PX",
                   help="patch side in pixels (default 256; reduced to fit); 3D models: pz,py,px (or one side: a cube)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto (default): fp16 AMP on CUDA; bf16 on a CPU only with native bf16 and when a measured "
                        "step is faster, else fp32")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in DIR.ckpt")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (default: an epoch, <= 20 evals)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: an epoch)")
    p.add_argument("--patience", type=int, help="stop after this many evaluations without improvement")
    p.add_argument("--version", help="version of the new package (default: the parent's, minor bumped)")
    p.add_argument("--name", help="name of the new package (default: the parent's)")
    p.add_argument("--arch-kwargs", type=json_object, metavar="JSON", help='from scratch: e.g. \'{"depth": 4}\'')
    p.add_argument("--classes", help="from scratch: class names, e.g. background,nucleus")
    p.add_argument("--task", choices=["semantic", "instance"], help="from scratch: default the folders' task")
    p.add_argument("--dims", type=int, choices=[2, 3], help="from scratch: 3 for a 3D network (default 2)")
    p.add_argument("--context-slices", type=int, metavar="K",
                   help="from scratch: 2.5D, the K (odd) slices around each slice as input channels (default 1)")
    p.add_argument("--pixel-size", type=pixel_size, metavar="UM",
                   help="µm per pixel the new 2D model works at (one number, or Y,X): samples whose spacing is "
                        "known are resampled to it, and it is recorded (default: the parent's; from scratch: none)")
    p.add_argument("--normalization", metavar="JSON",
                   help='e.g. \'{"kind": "hematoxylin"}\' or just hematoxylin; default: the parent\'s')
    p.add_argument("--no-onnx", action="store_true", help="do not export model.onnx")
    p.add_argument("--keep-checkpoint", action="store_true", help="keep DIR.ckpt after writing the package")
    p.add_argument("--progress-json", action="store_true", help="one JSON object per line on stdout")
    return p


def options_from_args(args: argparse.Namespace, *, command: str | None = None):
    """The :class:`segloop_train.config.FinetuneOptions` of parsed ``segloop-train`` arguments."""
    from segloop_train.config import FinetuneOptions

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    return FinetuneOptions.from_kwargs(
        args.folders, parent=args.parent, out=args.out, steps=args.steps, epochs=args.epochs, lr=args.lr,
        batch=args.batch, patch=args.patch, device=args.device, seed=args.seed, resume=args.resume,
        eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, patience=args.patience,
        version=args.version, name=args.name, arch=args.arch, arch_kwargs=args.arch_kwargs, classes=classes,
        task=args.task, normalization=args.normalization, dims=args.dims, context_slices=args.context_slices,
        onnx=not args.no_onnx, keep_checkpoint=args.keep_checkpoint, precision=args.precision, command=command,
        pixel_size=args.pixel_size)


def _patch(text: str) -> int | tuple[int, ...]:
    """``"256"`` -> 256; ``"32,96,96"`` -> (32, 96, 96)."""
    try:
        parts = [int(v) for v in str(text).replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"patch must be a number or pz,py,px, got {text!r}") from None
    if len(parts) not in (1, 3) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"patch must be one positive size or three (pz,py,px), got {text!r}")
    return parts[0] if len(parts) == 1 else tuple(parts)


class _Printer:
    """Turns progress events into a tqdm bar and short lines (or JSON lines)."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.bar = None

    def __call__(self, ev: dict) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps(_clean(ev), allow_nan=False, default=str) + "\n")
            sys.stdout.flush()
            return
        kind = ev["event"]
        if kind == "start":
            from tqdm import tqdm

            pm = ev.get("parent_metrics") or {}
            self.line(f"{ev['train']} train / {ev['val']} val image(s); {ev['steps']} steps "
                      f"({ev['steps_per_epoch']}/epoch), batch {ev['batch']}, patch {ev['patch']}, {ev['device']}"
                      + (f"; resuming from step {ev['resumed_from']}" if ev.get("resumed_from") else ""))
            if pm:
                self.line("parent: " + _fmt(pm))
            self.bar = tqdm(total=ev["steps"], initial=ev.get("resumed_from") or 0, unit="step",
                            dynamic_ncols=True, file=sys.stderr)
        elif kind == "step" and self.bar is not None:
            self.bar.update(ev["step"] - self.bar.n)
            self.bar.set_postfix(epoch=ev["epoch"], loss=f"{ev['loss']:.4f}")
        elif kind == "eval":
            self.line(f"step {ev['step']}: " + _fmt(ev["metrics"]) + ("  (best)" if ev.get("best") else ""))
        elif kind == "warning":
            self.line(f"{PROG}: warning: {ev['message']}")
        elif kind in ("done", "cancelled"):
            self.close()
            print(ev.get("message") or f"wrote {ev.get('package')}")
            if ev.get("metrics"):
                if ev.get("parent_metrics"):
                    print("parent: " + _fmt(ev["parent_metrics"]))
                print("new:    " + _fmt(ev["metrics"]))

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _clean(obj):
    """JSON-safe: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def _fmt(metrics: dict) -> str:
    return "  ".join(f"{k}={v:.3f}" for k, v in metrics.items() if not k.startswith(("dice:", "jaccard:")))


#: Seconds within which a repeated signal under torchrun is the same Ctrl-C passed on by torchrun.
_SIGNAL_ECHO_S = 3.0


def _distributed() -> bool:
    import os

    try:
        return int(os.environ.get("WORLD_SIZE", 1)) > 1
    except ValueError:
        return False


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    import os

    try:
        return int(os.environ.get("RANK", 0)) if _distributed() else 0
    except ValueError:
        return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["loop"]:                      # segloop-train loop ...: the active-learning loop
        from segloop_train.loop_cli import main as loop_main

        return loop_main(argv[1:])
    if argv[:1] == ["interactive"]:               # segloop-train interactive ...: a click model
        from segloop_train.interactive_cli import main as interactive_main

        return interactive_main(argv[1:])
    if argv[:1] == ["tune-postprocess"]:          # an instance model's thresholds, on validation images
        from segloop_train.tune_postprocess import main as tune_main

        return tune_main(argv[1:])
    args = build_parser().parse_args(argv)
    rank = _rank()
    under_torchrun = _distributed()
    who = f"{PROG} [rank {rank}]" if rank else PROG
    printer = _Printer(args.progress_json)
    cancel = threading.Event()
    first_signal: list[float] = []

    def on_signal(signum, frame):
        if cancel.is_set():
            # Under torchrun a Ctrl-C reaches each worker twice: from the terminal and again from
            # torchrun passing it on.  Only a later one means "stop now".
            if under_torchrun and time.monotonic() - first_signal[0] < _SIGNAL_ECHO_S:
                return
            raise KeyboardInterrupt              # a second Ctrl-C: stop now
        first_signal.append(time.monotonic())
        cancel.set()
        if not args.progress_json and rank == 0:
            printer.line(f"{PROG}: {signal.Signals(signum).name}: stopping at the next step ...")

    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    command = " ".join([PROG, *map(shlex.quote, argv)])
    try:
        from segloop_train.finetune import FinetuneWarning, run_finetune
        from segloop_train.folders import SkippedSampleWarning

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        with warnings.catch_warnings():            # shown through the printer instead
            warnings.simplefilter("ignore", FinetuneWarning)
            warnings.simplefilter("ignore", SkippedSampleWarning)
            run_finetune(options_from_args(args, command=command), progress=printer, cancel=cancel)
    except (SegloopError, ValueError, OSError) as e:
        printer.close()
        if getattr(e, "quiet", False):             # another rank failed and rank 0 says why
            return 2
        msg = str(e).replace("\n", " ")
        if isinstance(e, OSError) and not isinstance(e, SegloopError):      # a full disk, a read-only folder
            msg = (f"{e.filename or args.out}: {e.strerror or e}; check that --out {args.out} is writable and the "
                   "disk has space (the last complete checkpoint, if any, is kept for --resume)")
        if args.progress_json and rank == 0:
            printer({"event": "error", "message": msg})
        print(f"{who}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        printer.close()
        print(f"{who}: interrupted; the last checkpoint is kept for --resume", file=sys.stderr)
        return 130
    except Exception as e:
        printer.close()
        if args.progress_json and rank == 0:
            printer({"event": "error", "message": f"{type(e).__name__}: {e}".replace("\n", " ")})
        raise
    finally:
        printer.close()
        for s, h in old.items():
            signal.signal(s, h)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
