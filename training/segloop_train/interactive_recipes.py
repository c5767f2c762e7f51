"""Recipes of the interactive (click) models, trained on hand-drawn public data.

::

    python -m segloop_train.interactive_recipes nuclei-click-unet --sources SRC --out DIR [--work W] [--resume]
                                                [--steps N] [--threads T] [--device D]
    python -m segloop_train.interactive_recipes ct-click-segunet25d --sources SRC --out DIR ...

``SRC`` holds one entry per source, named as its importer (``SRC/dsb2018-he``, ``SRC/lung-lidc`` ...):
either a training folder already imported (it is used as it is), or the local copy an importer
reads (``segloop import NAME --from SRC/NAME``; imported into ``W/NAME``, re-runs skip what is
there).  ``liver-ct`` needs no copy: it is read from the installed
``liver-ct-segmentation-package==1.6.0`` when ``SRC/liver-ct`` does not exist.

Each recipe trains ONE interactive model (:func:`segloop_train.interactive.train_interactive`)
on the ``train`` splits of its training sources (their ``val`` splits pick the best weights;
their ``test`` splits are never read in training) into ``W/<DIR name>.raw`` (checkpoints in
``W/<DIR name>.raw.ckpt``; ``--resume`` continues an interrupted or cancelled run), then writes ``DIR``
with float16 weights and a ``MODEL_CARD.md`` whose figures are measured with those weights by
the simulated corrector (:func:`segloop_train.interactive.click_scores`): per held-out source
(sources never trained on) and per training source's own ``test`` split (``val`` when it has
none, said so), NoC@85, NoC@90, mIoU after 1 and 3 clicks and milliseconds per click.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = ["INTERACTIVE_RECIPES", "ClickRecipe", "build_click_model", "main", "resolve_source"]


@dataclass(frozen=True)
class ClickRecipe:
    """One interactive model: data, network, schedule (all recorded in the package).

    ``classes`` maps a semantic source to the class ids trained on (others: every class);
    ``heldout`` lists ``(source, splits)`` of sources never trained on.
    """

    name: str
    version: str
    description: str
    modality: str
    arch: str
    arch_kwargs: dict
    normalization: dict
    context_slices: int
    train_sources: tuple[str, ...]
    heldout: tuple[tuple[str, tuple[str, ...]], ...]
    steps: int
    batch: int
    lr: float
    eval_every: int
    license: str
    classes: dict = field(default_factory=dict)
    heldout_classes: dict = field(default_factory=dict)
    val_objects: int = 150
    max_clicks: int = 10
    min_area: int = 16
    heldout_objects: int = 150
    label_notes: dict = field(default_factory=dict)
    known_failures: tuple[str, ...] = ()
    seed: int = 0
    schema_version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_NOT_A_DEVICE = " Not a medical device; research use only."

INTERACTIVE_RECIPES: dict[str, ClickRecipe] = {
    "nuclei-click-unet": ClickRecipe(
        name="nuclei-click-unet", version="1.0.0",
        description="Interactive nuclei segmentation: click a nucleus (or draw a box), click again to correct. ONE "
                    "one-channel network for fluorescence (DAPI / Hoechst) and H&E (read through the hematoxylin "
                    "channel), trained on hand-drawn nuclei of DSB2018 (colour), BBBC039 and S-BSST265",
        modality="fluorescence, histology", arch="unet", arch_kwargs={"base_width": 16, "depth": 4, "norm": "batch"},
        normalization={"kind": "percentile", "low": 1.0, "high": 99.8, "per_channel": True}, context_slices=1,
        train_sources=("dsb2018-he", "bbbc039", "s-bsst265"),
        heldout=(("cpm15", ("train", "val", "test")), ("consep", ("test",)), ("aitslab-bioimaging1", ("test",))),
        steps=4000, batch=16, lr=1e-3, eval_every=500,
        license="BSD-3-Clause (weights). Training data CC0 1.0: DSB2018 colour images (BBBC038v1), BBBC039v1 "
                "(Caicedo et al. 2019), S-BSST265 (Kromp et al. 2020); the held-out sets were only evaluated on.",
        known_failures=("Touching nuclei: the first click often takes a neighbour along; a negative click on it "
                        "fixes that (NoC counts it).",
                        "Pale or out-of-focus nuclei and mitoses were rare in the training data.")),
    "ct-click-segunet25d": ClickRecipe(
        name="ct-click-segunet25d", version="1.0.0",
        description="Interactive 2.5D CT segmentation of organs and tumours on one axial plane (3 neighbouring "
                    "planes as context, soft-tissue window): click the liver, a liver tumour or a lung tumour, "
                    "click again to correct; trained on LiTS case 117 (liver, tumour) and the tumours of LIDC-IDRI "
                    "0314 and the pyradiomics lung cases",
        modality="CT", arch="segunet", arch_kwargs={"depth": 4, "base_width": 16, "norm": "batch"},
        normalization={"kind": "ct_window", "level": 40.0, "width": 400.0}, context_slices=3,
        train_sources=("liver-ct", "lung-lidc", "lung-pyradiomics"),
        classes={"liver-ct": (1, 2), "lung-lidc": (2,), "lung-pyradiomics": (2,)},
        heldout=(("lung-nsclc", ("train", "val", "test")),), heldout_classes={"lung-nsclc": (1, 2)},
        steps=3000, batch=16, lr=1e-3, eval_every=500, min_area=25,
        label_notes={"liver-ct": "LiTS reference", "lung-lidc": "hand-drawn (4 readers)",
                     "lung-pyradiomics": "a person's", "lung-nsclc": "hand-drawn (RTSTRUCT)"},
        license="Non-commercial research use only (LiTS terms, CC BY-NC-SA 4.0, stricter reading CC BY-NC-ND 4.0: "
                "trained on LiTS case 117); also LIDC-IDRI (CC BY 3.0, Armato et al. 2011) and the pyradiomics test "
                "data (BSD-3-Clause). Not shipped in segloop's wheel (docs/data.md section 3)." + _NOT_A_DEVICE,
        known_failures=("Four training volumes: liver and tumours of one LiTS case, three lung tumours. Organs it "
                        "never saw (the held-out lungs) are a test of generalisation, not a use it was made for.",
                        "The lung labels of LIDC-IDRI and pyradiomics are automatic (a threshold): they were left "
                        "out; only their hand-drawn tumours were trained on.")),
}


# --------------------------------------------------------------------------- data


def _catalogue(name: str):
    from segloop.core.formats.importers import NUCLEI_DATASETS, RADIOLOGY_DATASETS, SOURCES

    for cat in (NUCLEI_DATASETS, RADIOLOGY_DATASETS, SOURCES):
        if name in cat:
            return cat[name]
    return None


def resolve_source(name: str, sources: Path, work: Path) -> Path:
    """The training folder of source ``name``: ``sources/name`` when it is one, else imported into
    ``work/name`` from ``sources/name`` (or, for packaged sources such as ``liver-ct``, from the
    installed package when ``sources/name`` does not exist)."""
    from segloop.core.formats.importers import import_data
    from segloop.core.formats.trainfolder import INFO_FILE

    src = sources / name
    if (src / INFO_FILE).is_file():
        return src
    folder = work / name
    rep = import_data(name, folder, path=src if src.exists() else None)
    print(rep.summary().splitlines()[0], flush=True)
    return folder


# --------------------------------------------------------------------------- card

CARD = """# {name} v{version}

{description}.

Interactive: `segloop.load_interactive("{name}").segment(image, positive=[(y, x)], negative=[...],
box=None, previous=None)` returns one object's mask; in napari, the click mode of the
Proofread widget. Each call reads only a window around the prompt ({crop} network px, grown by {context} of
the prompt's extent on each side), so a click costs the same on a tile and on a whole slide.

- Network: `{arch}` {arch_kwargs}, {image_channels} image channel(s){slices} + prompt maps
  {maps} (click disks of radius {radius} px), {n_weights:,} weights, float16.
- Normalization: `{normalization}`.{stain}
- Pixel size / spacing: not recorded; windows adapt to the object's extent (the prompt's extent
  x {zoom}), and training scaled the smallest window by x{jitter_lo}-{jitter_hi}.

## Data
Trained on the `train` splits (their `val` splits picked the weights; `test` never read):
{data_lines}

Labels: {labels_note}

## Held-out figures (simulated corrector, float16 weights as shipped)
The first click goes to the object's innermost point, each next one to the innermost point of
the larger error (a positive click in a missed part, a negative one in a leak), with the previous
mask given back (`segloop.core.inference.click_eval`, as in RITM and SAM's NoC). NoC@t: clicks
until IoU >= t (capped at {max_clicks}); mIoU@k: mean IoU after k clicks; ms per click: median time
of one call on CPU ({threads} thread(s)), reading the window included.

| source | split(s) | class | labels | objects | NoC@85 | NoC@90 | mIoU@1 | mIoU@3 | ms/click | never trained on |
|---|---|---|---|---|---|---|---|---|---|---|
{rows}

At most {heldout_objects} objects per source{per_class} (a fixed random draw, seed {seed}).

## Known failures
- {steps} training steps on {device}: small next to interactive models trained for days on GPUs
  (RITM, SAM); expect more clicks on unusual objects.{known_failures}

## Licence
{license}

## Reproduce
`{command}` (seed {seed}, {minutes:.0f} minutes of training, {seconds_per_step} s per step of batch
{batch}). The configuration and the validation history are in `training` in segloop-model.json.
"""


def _rows(scores: dict, recipe: ClickRecipe, origins: dict[str, str]) -> str:
    rows = []
    for src, res in scores.items():
        never = "yes" if src not in recipe.train_sources else "no"
        splits = "+".join(res["splits"]) + (" (picked the weights)" if res.get("selection") else "")
        keys = [k for k in res if k not in ("images", "splits", "selection", "all")] or ["all"]
        for k in keys:
            m = res[k]
            if not m.get("objects"):
                continue
            rows.append(f"| {src} | {splits} | {'nucleus' if k == 'all' and len(keys) == 1 else k} | "
                        f"{origins.get(src, '')} | {m['objects']} | {m['noc@85']:.2f} | {m['noc@90']:.2f} | "
                        f"{m['miou@1']:.3f} | {m['miou@3']:.3f} | {m.get('ms_per_click_median', float('nan')):.0f} "
                        f"| {never} |")
    return "\n".join(rows)


def _short_origin(name: str) -> str:
    d = _catalogue(name)
    o = str(getattr(d, "labels_origin", "") or "")
    return "hand-drawn" if "hand" in o.lower() or "expert" in o.lower() or "person" in o.lower() else o[:40]


def finish(recipe: ClickRecipe, raw: Path, out: Path, folders: dict[str, Path], *, command: str,
           threads: int, device: str = "cpu") -> dict:
    """Write the shipped package: float16 weights scored per source, the card, the licence."""
    import tempfile

    from segloop.core.formats.package import load_package, save_package
    from segloop.core.formats.trainfolder import TrainingFolder
    from segloop.core.inference.interactive import load_interactive
    from segloop_train.interactive import click_scores

    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or choose another --out")
    pkg = load_package(raw)
    training = dict(pkg.spec.training or {})
    training.update(recipe=recipe.to_dict(), command=command, threads=threads,
                    datasets=list(recipe.train_sources), heldout_datasets=[n for n, _ in recipe.heldout])
    spec = replace(pkg.spec, description=recipe.description, license=recipe.license, modality=recipe.modality,
                   training=training)
    plan: dict[str, tuple[tuple[str, ...], bool]] = {}
    for n in recipe.train_sources:                 # same-source held-out: test, else val (which picked the weights)
        counts = TrainingFolder.open(folders[n]).split_counts()
        if counts.get("test"):
            plan[n] = (("test",), False)
        elif counts.get("val"):
            plan[n] = (("val",), True)
    for n, splits in recipe.heldout:
        plan[n] = (tuple(splits), False)
    out.parent.mkdir(parents=True, exist_ok=True)
    scores: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:
        scored = Path(tmp) / out.name
        save_package(scored, spec, pkg.state_dict, weights_dtype="float16")
        model = load_interactive(scored, device=device, precision="fp32")
        for n, (splits, selection) in plan.items():
            t0 = time.perf_counter()
            cls = recipe.heldout_classes.get(n) or recipe.classes.get(n)
            res = click_scores(model, folders[n], splits=splits, classes=cls, max_objects=recipe.heldout_objects,
                               max_clicks=recipe.max_clicks, min_area=recipe.min_area, seed=recipe.seed)
            res["selection"] = selection
            scores[n] = res
            a = res["all"]
            print(f"{n} ({'+'.join(splits)}): {a.get('objects', 0)} objects, NoC@85 {a.get('noc@85')} NoC@90 "
                  f"{a.get('noc@90')} mIoU@1 {a.get('miou@1')} mIoU@3 {a.get('miou@3')} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    training["heldout"] = scores
    cross = [n for n, _ in recipe.heldout if scores.get(n, {}).get("all", {}).get("objects")]
    if cross:
        a = scores[cross[0]]["all"]
        training["shipped_metrics"] = {"weights": "float16", "source": f"{cross[0]} (never trained on)",
                                       **{k: a[k] for k in ("noc@85", "noc@90", "miou@1", "miou@3") if k in a}}
        if "noc@85" in a:            # the one figure `segloop list-models` shows
            training["headline"] = (f"NoC@85 {a['noc@85']:.2f}, mIoU@1 {a['miou@1']:.3f} on {cross[0]} "
                                    "(cross-dataset)")
    origins = {n: recipe.label_notes.get(n) or _short_origin(n) for n in plan}
    data_lines = []
    for n, f in zip(recipe.train_sources, training.get("objects", []), strict=False):
        d = _catalogue(n)
        cls = recipe.classes.get(n)
        data_lines.append(f"- **{n}**: {getattr(d, 'dataset', n)}. Labels: {getattr(d, 'labels_origin', '?')}. "
                          f"Licence: {getattr(d, 'licence', '?')}. Objects (train / val): {f.get('train')} / "
                          f"{f.get('val')}" + (f"; classes {list(cls)} only" if cls else "") + ".")
    for n, splits in recipe.heldout:
        d = _catalogue(n)
        data_lines.append(f"- held out, **{n}** ({'+'.join(splits)}; never trained on): "
                          f"{getattr(d, 'dataset', n)}. Labels: {getattr(d, 'labels_origin', '?')}.")
    p = spec.prompt_spec
    cfg = training.get("config", {})
    card = CARD.format(
        name=spec.name, version=spec.version, description=recipe.description, crop=p.crop, context=p.context,
        arch=spec.architecture, arch_kwargs=spec.architecture_kwargs,
        image_channels=spec.image_channels // spec.context_slices,
        slices=f" x {spec.context_slices} planes" if spec.context_slices > 1 else "", maps=list(p.maps),
        radius=p.radius, n_weights=sum(v.numel() for v in pkg.state_dict.values() if v.is_floating_point()),
        normalization=spec.normalization,
        stain=(" RGB images (H&E, IHC) are read through their hematoxylin channel (colour deconvolution, then "
               "the same percentiles), so one network serves fluorescence and bright-field."
               if spec.image_channels == 1 and spec.normalization.get("kind") == "percentile" else ""),
        zoom=f"{1 + 2 * p.context:g}", jitter_lo=cfg.get("scale_jitter", [0.75])[0],
        jitter_hi=cfg.get("scale_jitter", [0, 1.33])[1], data_lines="\n".join(data_lines),
        labels_note=("every class trained on was labelled by people (the per-source notes above); the classes a "
                     "method drew (the automatic lung masks) were left out." if recipe.classes else
                     "every object trained on was drawn by people (the per-source notes above)."),
        max_clicks=recipe.max_clicks, threads=threads, rows=_rows(scores, recipe, origins),
        heldout_objects=recipe.heldout_objects, per_class=" and class" if recipe.heldout_classes else "",
        seed=recipe.seed, steps=training.get("steps_done"), device=training.get("device", "cpu"),
        known_failures="".join(f"\n- {t}" for t in recipe.known_failures), license=recipe.license,
        command=command, minutes=float(training.get("seconds", 0) or 0) / 60,
        seconds_per_step=training.get("seconds_per_step"), batch=cfg.get("batch"))
    spec = replace(spec, training=training)
    save_package(out, spec, pkg.state_dict, weights_dtype="float16", card=card)
    return scores


def build_click_model(name: str, out: str | Path, *, sources: str | Path, work: str | Path | None = None,
                      resume: bool = False, steps: int | None = None, threads: int | None = 2,
                      device: str = "cpu", cancel=None, progress=None) -> dict:
    """Train one recipe of :data:`INTERACTIVE_RECIPES` and write its package at ``out``.

    Returns
    -------
    dict
        ``package`` and ``scores`` (per source, :func:`segloop_train.interactive.click_scores`).
    """
    import torch

    from segloop.core.formats.package import read_spec
    from segloop_train.interactive import train_interactive

    recipe = INTERACTIVE_RECIPES[name]
    if steps is not None:
        recipe = replace(recipe, steps=int(steps), eval_every=min(recipe.eval_every, int(steps)))
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or choose another --out")
    if threads:
        torch.set_num_threads(int(threads))
    sources = Path(sources)
    work = Path(work) if work is not None else Path(".data/work") / name
    work.mkdir(parents=True, exist_ok=True)
    folders = {n: resolve_source(n, sources, work) for n in (*recipe.train_sources, *(n for n, _ in recipe.heldout))}
    raw = work / f"{out.name}.raw"
    command = (f"python -m segloop_train.interactive_recipes {name} --sources {sources} --out {out} --work {work}"
               + (f" --steps {steps}" if steps else "") + (f" --device {device}" if device != "cpu" else ""))
    done = None
    if (raw / "segloop-model.json").is_file():
        t = read_spec(raw).training or {}
        done = t.get("steps_done") if t.get("stopped") != "cancelled" else None
        if done is not None and done != recipe.steps:
            raise FileExistsError(f"{raw} holds a run of {done} steps, not {recipe.steps}; remove it to train again, "
                                  f"or give --steps {done}")
        if done is None and not resume:
            raise FileExistsError(f"{raw} holds a cancelled run; pass --resume to finish it, or remove it")
    if done is None:
        written = train_interactive(
            [folders[n] for n in recipe.train_sources], out=raw, name=recipe.name, version=recipe.version,
            arch=recipe.arch, arch_kwargs=dict(recipe.arch_kwargs), normalization=dict(recipe.normalization),
            modality=recipe.modality, steps=recipe.steps, batch=recipe.batch, lr=recipe.lr,
            context_slices=recipe.context_slices, classes={k: tuple(v) for k, v in recipe.classes.items()} or None,
            val_objects=recipe.val_objects, max_clicks=recipe.max_clicks, eval_every=recipe.eval_every,
            seed=recipe.seed, device=device, resume=resume, license=recipe.license, description=recipe.description,
            label_source="hand", min_area=recipe.min_area, command=command, cancel=cancel, progress=progress)
        if written is None or (read_spec(raw).training or {}).get("stopped") == "cancelled":
            return {"package": None, "raw": str(raw), "scores": {}}
    scores = finish(recipe, raw, out, folders, command=command, threads=torch.get_num_threads(), device=device)
    return {"package": str(out), "scores": scores}


def main(argv: list[str] | None = None) -> int:
    """``python -m segloop_train.interactive_recipes NAME --sources SRC --out DIR ...``."""
    import signal
    import threading

    ap = argparse.ArgumentParser(prog="python -m segloop_train.interactive_recipes",
                                 description="Train an interactive (click) model recipe and write its package.")
    ap.add_argument("recipe", choices=sorted(INTERACTIVE_RECIPES))
    ap.add_argument("--sources", type=Path, required=True,
                    help="folder with one training folder or local copy per source, named as its importer")
    ap.add_argument("--out", type=Path, required=True, help="the package to write (must not exist)")
    ap.add_argument("--work", type=Path, help="where sources are imported and run state kept (default .data/work/NAME)")
    ap.add_argument("--resume", action="store_true", help="continue the checkpointed run (W/<DIR name>.raw.ckpt)")
    ap.add_argument("--steps", type=int, help="override the recipe's steps")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, auto ...")
    a = ap.parse_args(argv)
    last = {"t": time.perf_counter(), "sim": 0.0, "n": 0}

    def show(ev: dict) -> None:
        kind = ev["event"]
        if kind == "step":
            last["sim"] += ev["simulation_seconds"]
            last["n"] += 1
            if ev["step"] % 50 == 0:
                now = time.perf_counter()
                print(f"step {ev['step']}/{ev['steps']} loss {ev['loss']:.4f} ({(now - last['t']) / last['n']:.2f} "
                      f"s/step, of which simulated rounds {last['sim'] / last['n']:.2f} s)", flush=True)
                last.update(t=now, sim=0.0, n=0)
        elif kind == "eval":
            m = ev["metrics"]
            print(f"step {ev['step']}: val NoC@85 {m.get('noc@85')} NoC@90 {m.get('noc@90')} mIoU@1 {m.get('miou@1')} "
                  f"mIoU@3 {m.get('miou@3')}" + ("  (best)" if ev.get("best") else ""), flush=True)
            last.update(t=time.perf_counter(), sim=0.0, n=0)
        elif kind in ("warning", "start", "cancelled", "done"):
            print(f"{kind}: {ev.get('message') or {k: v for k, v in ev.items() if k != 'event'}}", flush=True)

    cancel = threading.Event()
    prev = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    try:
        res = build_click_model(a.recipe, a.out, sources=a.sources, work=a.work, resume=a.resume, steps=a.steps,
                                threads=a.threads, device=a.device, cancel=cancel, progress=show)
    except FileExistsError as e:
        raise SystemExit(str(e)) from None
    finally:
        signal.signal(signal.SIGINT, prev)
    if res["package"] is None:
        print(f"cancelled; the checkpoint in {res['raw']}.ckpt is kept: rerun with --resume to finish", file=sys.stderr)
        return 130
    print(f"wrote {res['package']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
