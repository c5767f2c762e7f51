"""Active-learning dock widget: find the regions the model is least sure of and walk through them.

"Find regions" runs the active-learning pipeline (:func:`segloop.core.learning.pipeline.rank_regions`:
uncertainty, a scored grid of regions, ``budget`` of them picked by the chosen strategy) in a napari
thread worker with progress and Cancel.  The result is an uncertainty
heatmap layer, a Shapes overlay of the queued regions and an
:class:`~segloop.core.learning.state.ActiveLearningState`, saved in the training folder so the work can
be resumed another day.

Navigation:

- **Next** means "I am done with this region": it is marked reviewed -- in the labels layer's
  :class:`~segloop._napari.correction_tracking.Tracker` (so Export writes it in ``reviewed.tif``) and in the
  state -- and the camera moves to the next region.  Looking at a region and finding the
  prediction right is a review too: the model learns from confirmed pixels as well as corrected ones.
- **Skip** moves on without marking anything.
- **Previous** goes back one region and changes nothing.

Layers are only touched on the main thread; the worker gets copies of what it needs.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Signal

from segloop._napari import settings
from segloop._napari._regions import spatial_shape
from segloop._napari.correction_tracking import tracker_for
from segloop._napari.model_pick import automatic_models, default_model, is_ct_layer
from segloop._napari.region_overlay import draw_regions, legend_html, show_heatmap, zoom_to_region
from segloop._napari.segment_widget import LOAD_PACKAGE
from segloop.errors import Cancelled, SegloopError

__all__ = ["ActiveLearningWidget", "FindRequest", "KINDS", "STRATEGY_NAMES", "image_id"]

KINDS = {"tile": "tile", "slice": "slice", "sub-volume": "subvolume"}
"""Region kinds as shown -> the core's ``REGION_KINDS``."""

STRATEGY_NAMES = {"uncertainty": "uncertainty", "uncertainty + diversity": "diversity", "random": "random"}
"""Strategies as shown -> the core's ``STRATEGIES`` keys."""

METHOD_LABELS = {"entropy": "entropy", "tta": "TTA (flips)", "mc_dropout": "MC-dropout"}

STATE_KEY = "segloop_active_learning"
"""Labels layer metadata key holding the widget's state while no training folder is set."""

PER_IMAGE_DIR = ".segloop-active-learning"
"""Hidden folder in the training folder keeping one state per image (see widget-needs.md)."""


HINT = "Correct the labels in the cyan region, then press Next (marks it reviewed); Skip leaves it unmarked."


class _Relay(QObject):
    """Carries progress from the worker thread to the main thread (queued signal)."""

    progressed = Signal(str, int, int)


@dataclass(frozen=True)
class FindRequest:
    """Everything one "Find regions" run needs, captured on the main thread."""

    model: str
    device: str
    methods: tuple[str, ...]
    kind: str                 # core name: tile / slice / subvolume
    size: int
    budget: int
    strategy: str             # core name: random / uncertainty / diversity
    image_id: str


def base_data(layer):
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def image_id(layer) -> str:
    """How a saved state recognises its image: the stem of the file it was read from (as
    :func:`segloop.core.learning.pipeline.rank_images` names images), else the layer name."""
    src = (layer.metadata.get("segloop_source") or {}).get("source") or getattr(layer.source, "path", None)
    return Path(str(src)).stem if src else str(layer.name)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text).name or text)[:80] or "image"


class ActiveLearningWidget(Container):
    """Rank regions by uncertainty and step through them (see the module docstring)."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self._models: dict[tuple, object] = {}
        self._worker = None
        self._cancel: threading.Event | None = None
        self._closed = False
        self._started = 0.0
        self.state = None                 # ActiveLearningState of the current image/labels
        self._state_layers: tuple | None = None   # (image layer, labels layer) the state belongs to
        self._overlay = None
        self._heatmap = None
        self._budget_told = False
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)

        self.image = ComboBox(label="image", choices=self._choices(Image), nullable=True)
        self.labels = ComboBox(label="labels", choices=self._choices(Labels), nullable=True,
                               tooltip="the Labels layer you correct; reviewed regions are marked on it")
        names = automatic_models()       # uncertainty needs an automatic model, not a click model
        self.model = ComboBox(label="model", choices=lambda _w=None: [*automatic_models(), LOAD_PACKAGE],
                              value=default_model(names, ct=False) or LOAD_PACKAGE)
        self.package = FileEdit(label="package", mode="d", visible=not names)
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.entropy = CheckBox(text=METHOD_LABELS["entropy"], value=True,
                                tooltip="how spread the class probabilities are (one pass)")
        self.tta = CheckBox(text=METHOD_LABELS["tta"], value=False,
                            tooltip="disagreement between flipped copies of the image (4 passes)")
        self.mc_dropout = CheckBox(text=METHOD_LABELS["mc_dropout"], value=False,
                                   tooltip="disagreement between passes with dropout on (models trained with dropout)")
        self.methods = Container(label="uncertainty", layout="horizontal", labels=False,
                                 widgets=[self.entropy, self.tta, self.mc_dropout])
        self.methods.margins = (0, 0, 0, 0)
        # a callable: napari's reset_choices (every layer change) must not bring back stack-only kinds
        self.kind = ComboBox(label="region", choices=self._kind_choices, value="tile",
                             tooltip="tile: a square of each plane; slice: a whole plane; sub-volume: a cube (stacks)")
        self.size = SpinBox(label="region size", min=8, max=4096, step=16, value=128,
                            tooltip="side of a tile / sub-volume, in pixels")
        self.budget = SpinBox(label="budget", min=1, max=10_000, value=20, tooltip="how many regions to review")
        self.strategy = ComboBox(label="strategy", choices=list(STRATEGY_NAMES), value="uncertainty")
        self.folder = FileEdit(label="training folder", mode="d",
                               tooltip="the progress is saved here (the Export widget's folder by default)")
        self.show_heatmap = CheckBox(text="show uncertainty heatmap", value=True)
        self.find_button = PushButton(text="Find regions")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0, visible=False)
        self.prev_button = PushButton(text="◀ Previous", enabled=False,
                                      tooltip="back to the previous region (changes nothing)")
        self.skip_button = PushButton(text="Skip", enabled=False,
                                      tooltip="move on without marking this region reviewed")
        self.next_button = PushButton(text="Next ▶", enabled=False,
                                      tooltip="mark this region reviewed (you looked at it and corrected it), "
                                              "then go to the next one")
        self.nav = Container(layout="horizontal", labels=False,
                             widgets=[self.prev_button, self.skip_button, self.next_button])
        self.nav.margins = (0, 0, 0, 0)
        self.resume_button = PushButton(text="Resume", visible=False)
        self.reviewed_text = Label(label="reviewed", value="no regions yet")
        self.reviewed_text.native.setStyleSheet("font-weight: bold")
        self.legend = Label(value=legend_html(), visible=False)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.reviewed_text.native.setWordWrap(True)
        self.extend([self.image, self.labels, self.model, self.package, self.device, self.methods, self.kind,
                     self.size, self.budget, self.strategy, self.folder, self.show_heatmap, self.find_button,
                     self.cancel_button, self.progress, self.nav, self.resume_button, self.reviewed_text,
                     self.legend, self.status])

        self.find_button.changed.connect(lambda *_: self.find())
        self.cancel_button.changed.connect(lambda *_: self.cancel())
        self.next_button.changed.connect(lambda *_: self.next())
        self.prev_button.changed.connect(lambda *_: self.previous())
        self.skip_button.changed.connect(lambda *_: self.skip())
        self.resume_button.changed.connect(lambda *_: self.resume())
        self.show_heatmap.changed.connect(self._on_show_heatmap)
        self.model.changed.connect(self._on_model_changed)
        self.package.changed.connect(self._on_model_changed)
        self.image.changed.connect(self._on_image_changed)
        self.labels.changed.connect(self._on_labels_changed)
        self.kind.changed.connect(self._on_kind_changed)
        self.folder.changed.connect(lambda *_: self._offer_resume())
        layers = self.viewer.layers
        layers.events.inserted.connect(self._refresh)
        layers.events.removed.connect(self._refresh)
        self.native.destroyed.connect(self._on_destroyed)
        self._recall_folder()
        self._refresh()
        self._on_model_changed()

    # -- choices and defaults ----------------------------------------------------------
    def _choices(self, kind):
        def choices(_w=None):
            return [(layer.name, layer) for layer in self.viewer.layers
                    if isinstance(layer, kind) and not layer.metadata.get("segloop_overlay_of")]
        return choices

    def _refresh(self, *_):
        if self._closed:
            return
        for combo in (self.image, self.labels):
            combo.reset_choices()
        labels = [c for c in self.labels.choices if c is not None]
        if self.labels.value is None and labels:
            self.labels.value = labels[-1]
        if self.image.value is None and any(c is not None for c in self.image.choices):
            self.image.value = self._default_image()
        if self._overlay is not None and self._overlay not in self.viewer.layers:
            self._overlay = None
        if self._heatmap is not None and self._heatmap not in self.viewer.layers:
            self._heatmap = None
        if self._state_layers is not None and any(la not in self.viewer.layers for la in self._state_layers):
            self._drop_state("the image or labels layer of the regions was removed")
        self._update_nav()

    def _default_image(self):
        """The image the labels were segmented from, else the last image segloop did not make."""
        layer = self.labels.value
        src = ((layer.metadata.get("segloop") or {}).get("source_layer")) if layer is not None else None
        choices = [im for im in self.image.choices if im is not None]
        plain = [im for im in choices if "segloop" not in im.metadata]
        named = [im for im in choices if src and im.name == src]
        return (named or plain or choices)[-1]

    def _kind_choices(self, _w=None) -> list[str]:
        layer = self.image.value if hasattr(self, "image") else None
        n = len(spatial_shape(layer)) if layer is not None else 2
        return list(KINDS) if n >= 3 else ["tile"]

    def _on_image_changed(self, *_):
        layer = self.image.value
        self.kind.reset_choices()
        if layer is not None and self.model.value != LOAD_PACKAGE and not self._recorded_model():
            self.model.value = default_model([c for c in self.model.choices if c != LOAD_PACKAGE],
                                             ct=is_ct_layer(layer)) or self.model.value
        self._offer_resume()

    def _on_labels_changed(self, *_):
        src = self._recorded_model()
        if src is not None:
            name, path = src
            if name:
                self.model.value = name
            else:
                self.model.value = LOAD_PACKAGE
                self.package.value = path
        layer = self.labels.value
        if layer is not None:
            src_name = (layer.metadata.get("segloop") or {}).get("source_layer")
            if src_name and src_name in self.viewer.layers and isinstance(self.viewer.layers[src_name], Image):
                self.image.value = self.viewer.layers[src_name]
        self._offer_resume()

    def _recorded_model(self) -> tuple[str | None, str] | None:
        """The model Segment recorded on the labels layer: (registered name, "") or (None, package path)."""
        from segloop.core.formats.registry import discover_models

        layer = self.labels.value
        info = ((layer.metadata.get("segloop") or {}).get("model") or {}) if layer is not None else {}
        name, path = info.get("name"), info.get("path") or ""
        known = discover_models()
        if name in known and (not path or Path(known[name]).resolve() == Path(path).resolve()):
            return name, ""
        if path and Path(path).exists():
            return None, path
        if name in known:
            return name, ""
        return None

    def _on_kind_changed(self, *_):
        kind = KINDS[self.kind.value]
        self.size.enabled = kind != "slice"
        if kind == "subvolume" and self.size.value > 64:
            self.size.value = 32

    def _model_id(self) -> str | None:
        if self.model.value == LOAD_PACKAGE:
            p = Path(self.package.line_edit.value.strip() or ".")
            ok = (p / "segloop-model.json").is_file() or (p.suffix == ".zip" and p.is_file())
            return str(p) if str(p) not in ("", ".") and ok else None
        return self.model.value

    def _on_model_changed(self, *_):
        """Show the package picker when needed; MC-dropout only for a network with dropout."""
        self.package.visible = self.model.value == LOAD_PACKAGE
        mid = self._model_id()
        ok = False
        if mid:
            try:
                from segloop.core.formats.package import read_spec
                from segloop.core.formats.registry import discover_models

                spec = read_spec(discover_models().get(mid, Path(mid)))       # JSON only, no weights here
                ok = float(spec.architecture_kwargs.get("dropout", 0) or 0) > 0
            except (SegloopError, OSError, TypeError, ValueError):
                ok = False
        self._set_mc_dropout(ok)

    def _set_mc_dropout(self, supported: bool):
        self.mc_dropout.enabled = supported
        if not supported:
            self.mc_dropout.value = False
        self.mc_dropout.tooltip = ("disagreement between passes with dropout on" if supported else
                                   "this model has no dropout layers (or is not a torch model): not available")

    def _recall_folder(self):
        """The Export widget's training folder, when none is chosen here."""
        if self.folder.line_edit.value.strip():
            return
        folder = settings.training_folder()
        if folder:
            self.folder.value = folder

    def _folder(self) -> Path | None:
        """The training folder, or None when the field is empty (FileEdit reads an empty field as ".")."""
        self._recall_folder()
        text = self.folder.line_edit.value.strip()
        return None if text in ("", ".") else Path(text)

    # -- Find regions ----------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._worker is not None

    def request(self) -> FindRequest:
        methods = tuple(m for m, box in (("entropy", self.entropy), ("tta", self.tta),
                                         ("mc_dropout", self.mc_dropout)) if box.value and box.enabled)
        layer = self.image.value
        return FindRequest(model=self._model_id() or "", device=self.device.value, methods=methods,
                           kind=KINDS[self.kind.value], size=int(self.size.value), budget=int(self.budget.value),
                           strategy=STRATEGY_NAMES[self.strategy.value],
                           image_id=image_id(layer) if layer is not None else "")

    def find(self):
        """Start ranking regions (returns the worker, or None when nothing was started)."""
        if self.running:
            show_info("segloop: regions are already being found; cancel first")
            return None
        img, lab = self.image.value, self.labels.value
        problem = None
        if img is None or img not in self.viewer.layers:
            problem = "choose an image layer (the one you segmented)"
        elif lab is None or lab not in self.viewer.layers:
            problem = "choose the Labels layer you are correcting (run Segment first)"
        req = self.request()
        if problem is None and not req.model:
            problem = "choose a model, or a model package folder under 'package'"
        if problem is None and not req.methods:
            problem = "tick at least one uncertainty method"
        if problem:
            self.status.value = problem
            show_error(f"segloop: {problem}")
            return None
        shape = spatial_shape(img)
        if len(shape) not in (2, 3):
            msg = (f"active learning needs a 2D image or a 3D stack (Z, Y, X); {img.name!r} has "
                   f"{len(shape)} spatial axes {tuple(shape)}")
            self.status.value = msg
            show_error(f"segloop: {msg}")
            return None
        if tuple(spatial_shape(lab)) != tuple(shape):
            msg = (f"image {img.name!r} has spatial shape {tuple(shape)} but labels {lab.name!r} have "
                   f"{tuple(spatial_shape(lab))}; pick the labels segmented from this image")
            self.status.value = msg
            show_error(f"segloop: {msg}")
            return None
        if req.kind != "tile" and len(shape) < 3:
            req = FindRequest(**{**req.__dict__, "kind": "tile"})
        from segloop.core.editing.corrections import ReviewedRegions

        reviewed, skipped = self._earlier_keys(lab, req.image_id)
        tr = tracker_for(lab)
        job = {"image": base_data(img), "rgb": bool(getattr(img, "rgb", False)), "shape": tuple(shape),
               "reviewed": reviewed, "skipped": skipped, "exclude": set(reviewed) | set(skipped),
               "looked_at": ReviewedRegions(tr.reviewed.shape, tr.reviewed.boxes),   # a copy for the worker
               "image_layer": img, "labels_layer": lab}
        self._cancel = threading.Event()
        self._started = time.perf_counter()
        self.progress.visible = True
        self.progress.max, self.progress.value = 1, 0
        self.find_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = "loading model…"

        from napari.qt.threading import create_worker

        self._worker = create_worker(self._find, job, req, self._cancel, _start_thread=False,
                                     _connect={"returned": lambda res: self._on_found(res, job, req),
                                               "errored": self._on_errored, "finished": self._on_finished})
        worker = self._worker
        worker.start()
        return worker

    def _earlier_keys(self, lab, iid: str) -> tuple[list[str], list[str]]:
        """Reviewed and skipped region keys of earlier rounds: this widget's, the folder's (also this
        image's own copy) and the one kept on the labels layer.

        They carry over to the new round and are not proposed again.  Keys name their image, so
        rounds of other images do no harm.
        """
        states = [self.state, lab.metadata.get(STATE_KEY)]
        folder = self._folder()
        if folder is not None:
            from segloop.core.learning.state import ActiveLearningState

            for path in self._state_paths(folder, iid):
                try:
                    states.append(ActiveLearningState.load(path))
                except SegloopError:
                    pass                       # a corrupt file: reported by _offer_resume, replaced on save
        reviewed = list(dict.fromkeys(k for st in states if st is not None for k in st.reviewed))
        done = set(reviewed)
        skipped = [k for k in dict.fromkeys(k for st in states if st is not None for k in st.skipped) if k not in done]
        return reviewed, skipped

    def _load_model(self, req: FindRequest):
        import segloop

        key = (req.model, req.device)
        if key not in self._models:
            self._models[key] = segloop.load_model(req.model, device=req.device, engine="torch")
        return self._models[key]

    def _find(self, job: dict, req: FindRequest, cancel: threading.Event):
        """Worker thread: never touches the viewer or its layers."""
        from segloop.core.inference.stain import stain_normalization
        from segloop.core.inference.uncertainty import supports_mc_dropout
        from segloop.core.learning.pipeline import rank_regions
        from segloop.core.learning.state import ActiveLearningState, model_info

        model = self._load_model(req)
        mc_ok = supports_mc_dropout(model)
        rgb = job["rgb"]
        looked_at = job["looked_at"]
        # regions already fully reviewed on this layer (Proofread, an earlier round) are not proposed;
        # diversity computes encoder features for its candidate pool only (feature_scope="pool"): the
        # encoder pass over every tile of a large image would cost more than the ranking is worth
        ranking = rank_regions(model, {req.image_id: job["image"]}, size=req.size, kind=req.kind,
                               methods=req.methods, strategy=req.strategy, k=req.budget, exclude=job["exclude"],
                               exclude_where=lambda r: bool(looked_at.mask(r.slices).all()), seed=0,
                               feature_scope="pool", keep_uncertainty=True,
                               channel_axis=-1 if rgb else "auto",
                               normalization=stain_normalization(model, rgb=rgb),
                               progress=self._relay.progressed.emit, cancel=cancel)
        unc = ranking.images[req.image_id].uncertainty
        info = {**model_info(model), "methods": list(req.methods)}
        state = ActiveLearningState.from_ranking(ranking.selected, strategy=req.strategy, region_size=req.size,
                                                 region_kind=req.kind, budget=req.budget, model=info)
        return {"state": state, "uncertainty": unc.astype(np.float16), "mc_ok": mc_ok,
                "n_candidates": len(ranking.candidates), "n_excluded": len(ranking.excluded)}

    def _on_progress(self, stage: str, done: int, total: int):
        if self._closed:
            return
        self.progress.max = max(total, 1)
        self.progress.value = min(done, max(total, 1))
        elapsed = time.perf_counter() - self._started
        eta = elapsed / done * (total - done) if done and stage == "uncertainty" else None
        text = f"{stage}: {100 * done // max(total, 1)}%" if total > 1 else f"{stage}…"
        self.status.value = text + (f", about {eta:.0f} s left" if eta else "")

    def _on_found(self, res: dict, job: dict, req: FindRequest):
        if self._closed:
            return
        self._set_mc_dropout(res["mc_ok"])
        img, lab = job["image_layer"], job["labels_layer"]
        gone = [la.name for la in (img, lab) if la not in self.viewer.layers]
        if gone:
            msg = f"the layer {gone[0]!r} was removed while regions were being found; nothing was added"
            self.status.value = msg
            show_warning(f"segloop: {msg}")
            return
        state = res["state"]
        # carry earlier rounds over (also what Next / Skip marked while this run was going)
        now = self.state
        state.reviewed = list(dict.fromkeys([*job["reviewed"], *(now.reviewed if now else ())]))
        state.skipped = [k for k in dict.fromkeys([*job["skipped"], *(now.skipped if now else ())])
                         if k not in state.reviewed]
        if not state.queue:
            msg = ("every region is already reviewed or skipped; nothing left to rank (choose another region "
                   "size, or another image)")
            self.status.value = msg
            show_info(f"segloop: {msg}")
            return
        self._show_heatmap_layer(res["uncertainty"], lab)
        self._use_state(state, img, lab)
        self._save_state()
        secs = time.perf_counter() - self._started
        done = f", {res['n_excluded']} done before left out" if res["n_excluded"] else ""
        self.status.value = (f"{len(state.queue)} of {res['n_candidates']} regions queued in {secs:.1f} s{done}. "
                             f"{HINT}")
        self._go_to(state.current())

    def _on_errored(self, exc: BaseException):
        if self._closed:
            return
        if isinstance(exc, Cancelled):
            self.status.value = "cancelled; nothing was changed"
            show_info("segloop: finding regions cancelled")
        elif isinstance(exc, SegloopError):
            self.status.value = f"error: {exc}"
            show_error(f"segloop: {exc}")
        else:
            self.status.value = f"failed: {type(exc).__name__}: {exc}"
            show_error(f"segloop: finding regions failed ({type(exc).__name__}: {exc})")

    def _on_finished(self):
        self._worker = None
        if self._closed:
            return
        self.find_button.enabled = True
        self.cancel_button.enabled = False
        self.progress.visible = False

    def cancel(self):
        """Stop finding regions (after the batch in progress)."""
        if self._cancel is not None and self.running:
            self._cancel.set()
            self.status.value = "cancelling…"

    # -- layers ----------------------------------------------------------------------
    def _show_heatmap_layer(self, unc: np.ndarray, lab):
        self._heatmap = show_heatmap(self.viewer, unc, lab, visible=bool(self.show_heatmap.value))

    def _on_show_heatmap(self, *_):
        if self._heatmap is not None and self._heatmap in self.viewer.layers:
            self._heatmap.visible = bool(self.show_heatmap.value)

    def _draw_overlay(self):
        """(Re)build the regions overlay: outlines queued, current in cyan, reviewed filled green."""
        if self.state is None or self._state_layers is None:
            return
        self._overlay = draw_regions(self.viewer, self._overlay, self.state, self._state_layers[1])

    # -- state -------------------------------------------------------------------------
    def _use_state(self, state, img, lab):
        self.state = state
        self._state_layers = (img, lab)
        self._budget_told = state.n_reviewed >= min(state.budget, len(state.queue))
        lab.metadata[STATE_KEY] = state
        self._draw_overlay()
        self._update_nav()
        self.resume_button.visible = False

    def _drop_state(self, why: str):
        self.state = None
        self._state_layers = None
        self.status.value = f"{why}; find regions again"
        self._update_nav()

    def _update_nav(self):
        st = self.state
        has = st is not None and bool(st.queue)
        self.next_button.enabled = self.skip_button.enabled = has and st.current() is not None
        self.prev_button.enabled = has and st.cursor > 0
        self.legend.visible = has
        if not has:
            self.reviewed_text.value = "no regions yet"
            return
        text = st.progress_text()
        cur = st.current()
        if cur is not None:
            text += f" · region {st.cursor + 1} of {len(st.queue)} (uncertainty {cur.mean_uncertainty:.2f})"
        self.reviewed_text.value = text

    def _state_paths(self, folder: Path, iid: str) -> list[Path]:
        """Where this image's state may be: its own hidden copy, then the folder's state file."""
        return [folder / PER_IMAGE_DIR / _slug(iid), folder]

    def _matches(self, state, iid: str, shape) -> bool:
        """The state was made for this image: same id or layer name, boxes inside its shape."""
        if state is None or not state.queue:
            return False
        layer = self.image.value
        names = {iid} | ({layer.name} if layer is not None else set())
        shape = tuple(shape)
        return all(r.image in names and len(r.box) == len(shape)
                   and all(0 <= a < b <= n for (a, b), n in zip(r.box, shape)) for r in state.queue)

    def _saved_state(self, iid: str):
        from segloop.core.learning.state import ActiveLearningState

        folder = self._folder()
        layer = self.image.value
        if folder is None or layer is None:
            return None
        for path in self._state_paths(folder, iid):
            try:
                state = ActiveLearningState.load(path)
            except SegloopError as e:          # corrupt or newer: say so; Find regions starts afresh
                self.status.value = f"saved regions not usable: {e}"
                continue
            if self._matches(state, iid, spatial_shape(layer)):
                return state
        return None

    def _offer_resume(self):
        """Show "Resume" when a state for this image exists and is not the one in use."""
        if self._closed:
            return
        img, lab = self.image.value, self.labels.value
        self.resume_button.visible = False
        if img is None or lab is None:
            return
        if self.state is not None and self._state_layers == (img, lab):
            return
        saved = self._saved_state(image_id(img))
        held = lab.metadata.get(STATE_KEY)
        state = saved or (held if self._matches(held, image_id(img), spatial_shape(img)) else None)
        if state is not None:
            self.resume_button.text = f"Resume: {state.progress_text()}"
            self.resume_button.visible = True

    def resume(self) -> bool:
        """Take up the saved state of this image: overlay, progress and the current region."""
        img, lab = self.image.value, self.labels.value
        if img is None or lab is None:
            show_error("segloop: choose the image and its Labels layer first")
            return False
        if tuple(spatial_shape(img)) != tuple(spatial_shape(lab)):
            show_error(f"segloop: image {img.name!r} and labels {lab.name!r} have different shapes")
            return False
        iid = image_id(img)
        state = self._saved_state(iid)
        held = lab.metadata.get(STATE_KEY)
        if state is None and self._matches(held, iid, spatial_shape(img)):
            state = held
        if state is None:
            self.status.value = "no saved regions for this image here"
            show_info("segloop: no saved regions for this image in the training folder; press Find regions")
            return False
        self._sync_fields(state)
        self._use_state(state, img, lab)
        self.status.value = f"resumed: {state.progress_text()}"
        self._go_to(state.current())
        return True

    def _sync_fields(self, state):
        kinds = {v: k for k, v in KINDS.items()}
        strategies = {v: k for k, v in STRATEGY_NAMES.items()}
        if kinds.get(state.region_kind) in self.kind.choices:
            self.kind.value = kinds[state.region_kind]
        self.size.value = int(state.region_size)
        self.budget.value = int(state.budget)
        if state.strategy in strategies:
            self.strategy.value = strategies[state.strategy]

    def _save_state(self) -> Path | None:
        """Write the state to the training folder (if one is set); failures are a notification only."""
        st = self.state
        if st is None or self._state_layers is None:
            return None
        img, lab = self._state_layers
        lab.metadata[STATE_KEY] = st
        folder = self._folder()
        if folder is None:
            return None
        try:
            self._ensure_training_folder(folder, lab, img)
            path = st.save(folder)
            own = self._state_paths(folder, image_id(img))[0]
            own.mkdir(parents=True, exist_ok=True)
            st.save(own)
        except (SegloopError, OSError) as e:
            msg = (f"could not save the review progress in {folder} ({e}); it is kept with the labels layer "
                   "for this session — choose a folder you can write to")
            self.status.value = msg
            show_warning(f"segloop: {msg}")
            return None
        return path

    def _ensure_training_folder(self, folder: Path, lab, img):
        """Make the folder a training folder first, so Export can still add samples to it."""
        from segloop.core.formats.trainfolder import INFO_FILE, open_for_export

        if (folder / INFO_FILE).is_file():
            return
        prov = lab.metadata.get("segloop") or {}
        model = prov.get("model") or {}
        modality = model.get("modality") or ("histology" if getattr(img, "rgb", False) else "other")
        open_for_export(folder, modality=modality, model=model,
                        postprocess=(prov.get("parameters") or {}).get("postprocess"))

    # -- navigation --------------------------------------------------------------------
    def _nav_ready(self) -> bool:
        if self.state is None or self._state_layers is None:
            show_info("segloop: press Find regions first")
            return False
        gone = [la.name for la in self._state_layers if la not in self.viewer.layers]
        if gone:
            self._drop_state(f"the layer {gone[0]!r} was removed")
            show_warning(f"segloop: the layer {gone[0]!r} was removed; find regions again")
            return False
        return True

    def next(self):
        """Mark the current region reviewed (Tracker and state), then go to the next one."""
        if not self._nav_ready():
            return None
        st = self.state
        cur = st.current()
        if cur is not None:
            tracker_for(self._state_layers[1]).mark(cur.box)
            st.mark_reviewed(cur.key)
        return self._moved(st.next())

    def skip(self):
        """Go to the next region without marking this one."""
        if not self._nav_ready():
            return None
        return self._moved(self.state.skip())

    def previous(self):
        """Go back one region; nothing is marked or unmarked."""
        if not self._nav_ready():
            return None
        return self._moved(self.state.previous())

    def _moved(self, region):
        self._save_state()
        self._draw_overlay()
        self._update_nav()
        st = self.state
        if st.n_reviewed >= min(st.budget, len(st.queue)) and not self._budget_told:
            self._budget_told = True
            msg = (f"Budget reached: {st.progress_text()}. Export them (Export to training folder, 'whole image' "
                   "keeps only the reviewed regions in reviewed.tif), then Fine-tune on the folder.")
            self.status.value = msg
            show_info(f"segloop: {msg}")
        elif region is None:
            self.status.value = (f"no more queued regions ({st.progress_text()}); Export, or Find regions "
                                 "again for more")
        else:
            self.status.value = HINT
        if region is not None:
            self._go_to(region)
        return region

    def _go_to(self, region) -> None:
        """Move the camera (and the slice) so that ``region`` fills the view."""
        if region is None or self._state_layers is None:
            return
        zoom_to_region(self.viewer, self._state_layers[1], region)

    # -- teardown ----------------------------------------------------------------------
    def _on_destroyed(self, *_):
        self._closed = True
        if self._cancel is not None:
            self._cancel.set()
        layers = self.viewer.layers
        for event in (layers.events.inserted, layers.events.removed):
            try:
                event.disconnect(self._refresh)
            except (TypeError, ValueError, RuntimeError):
                pass
