"""``segloop click``: point annotations and boxes -> instance masks with an interactive model.

::

    segloop click IMAGE --points points.csv --out labels.tif [--model nuclei-click-unet]
    segloop click IMAGE --point 120,80 --point 40,200 --box 10,10,60,90 --labels old.tif --out new.tif

Each point is the one click of an object and each box the box of one; objects only paint
background, so the objects of ``--labels`` are kept. The work is
:func:`segloop.core.inference.prompted_labels.label_prompts`.
"""

from __future__ import annotations

from pathlib import Path

from segloop.errors import SegloopError

__all__ = ["add_click_parser"]

DEFAULT_MODEL = "nuclei-click-unet"


def _numbers(text: str, n: tuple[int, ...], flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(";", ",").split(","))
    except ValueError:
        values = ()
    if len(values) not in n:
        want = " or ".join({2: "Y,X", 3: "Z,Y,X", 4: "Y0,X0,Y1,X1"}[k] for k in n)
        raise SegloopError(f"{flag} {text!r}: give {want} in pixels")
    return values


def _cmd_click(args) -> int:
    import numpy as np

    from segloop.core.formats.io.images import read_image, write_labels
    from segloop.core.inference.interactive import load_interactive
    from segloop.core.inference.prompted_labels import label_prompts, read_points_csv

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SegloopError(f"--out {out} exists; pass --overwrite or choose another file")
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise SegloopError(f"--out {out}: write labels to a .tif file")
    model = load_interactive(args.model, device=args.device, stain=args.stain)
    image, info = read_image(args.image)
    points = [_numbers(p, (2, 3), "--point") for p in args.point or ()]
    for f in args.points or ():
        points += read_points_csv(f, ndim=3 if args.volume else 2)
    boxes = [_numbers(b, (4,), "--box") for b in args.box or ()]
    if not points and not boxes:
        raise SegloopError("no prompts: give --points CSV, --point Y,X or --box Y0,X0,Y1,X1")
    labels = None
    if args.labels:
        labels, _ = read_image(args.labels)
        labels = np.asarray(labels)
    pixel_size = args.pixel_size or (info.pixel_size[0] if info.pixel_size else None)
    res = label_prompts(model, image, points=points, boxes=boxes, labels=labels, z=args.z, pixel_size=pixel_size)
    s = model.spec
    write_labels(out, res.labels, metadata={
        "model": {"name": s.name, "version": s.version, "sha256": s.sha256, "task": s.task},
        "source": str(args.image), "prompted": res.objects, "skipped": res.skipped,
        "labels_in": str(args.labels) if args.labels else None})
    ms = [o["milliseconds"] for o in res.objects]
    speed = f", {np.median(ms):.0f} ms per object" if ms else ""
    print(f"{out}: {len(res.objects)} object(s) from {len(points) + len(boxes)} prompt(s){speed}; "
          f"{len(res.skipped)} skipped")
    reasons: dict[str, int] = {}
    for sk in res.skipped:
        reasons[sk["why"]] = reasons.get(sk["why"], 0) + 1
    for why, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        print(f"  skipped {n}: {why}")
    return 0


def add_click_parser(sub) -> None:
    """The ``click`` subcommand."""
    p = sub.add_parser("click", help="one object per point / box with an interactive model (points -> masks)")
    p.add_argument("image", help="TIFF / PNG / JPEG image (or a TIFF stack with --volume)")
    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=f"interactive model: bundled name or package path (default {DEFAULT_MODEL})")
    p.add_argument("--points", action="append", metavar="CSV",
                   help="points file: napari's Points CSV (axis-0, axis-1), or columns y,x (z,y,x with --volume)")
    p.add_argument("--point", action="append", metavar="Y,X", help="one object's click, in pixels (repeat)")
    p.add_argument("--box", action="append", metavar="Y0,X0,Y1,X1", help="one object's box, in pixels (repeat)")
    p.add_argument("--labels", help="existing labels (TIFF) to add to; their objects are kept")
    p.add_argument("--out", required=True, help="label TIFF to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--volume", action="store_true", help="the image is a Z stack; points are z,y,x")
    p.add_argument("--z", type=int, default=None, help="plane of a stack for --box prompts")
    p.add_argument("--pixel-size", type=float, default=None, metavar="UM",
                   help="µm per pixel (default: the file's, if it says)")
    p.add_argument("--stain", choices=["auto", "none", "hematoxylin"], default="auto",
                   help="RGB on a one-channel model: read the hematoxylin channel (auto)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=_cmd_click)
