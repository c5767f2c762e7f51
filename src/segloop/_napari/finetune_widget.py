"""Fine-tune dock widget: training folder + parent model -> a new model version.

Training runs in a separate process (``python -m segloop_train ... --progress-json``),
so a crash or an out-of-memory kill in training cannot take napari down.  The
process prints one JSON object per line; the widget turns them into a progress
bar, a live loss / validation plot and the final comparison.  Cancel sends
SIGTERM: the trainer stops at the next step and keeps the best weights so far.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QPointF, QProcess, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

from segloop._napari import settings
from segloop._napari.model_pick import automatic_models, default_model

__all__ = ["FinetuneWidget", "LossPlot"]


class LossPlot(QWidget):
    """A small live plot: training loss (orange) and the validation score (green), each scaled to its range."""

    def __init__(self):
        super().__init__()
        self.loss: list[tuple[int, float]] = []
        self.score: list[tuple[int, float]] = []
        self.parent_score: float | None = None
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def clear(self):
        self.loss, self.score, self.parent_score = [], [], None
        self.update()

    def paintEvent(self, _event):  # noqa: N802 (Qt)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor(38, 41, 48))
        steps = [s for s, _ in self.loss + self.score] or [1]
        s_max = max(max(steps), 1)

        def draw(points, color, lo=None, hi=None):
            if not points:
                return
            vals = [v for _, v in points]
            lo = min(vals) if lo is None else lo
            hi = max(vals) if hi is None else hi
            span = (hi - lo) or 1.0
            p.setPen(QPen(QColor(color), 2))
            pts = [QPointF(4 + (w - 8) * s / s_max, h - 14 - (h - 24) * (v - lo) / span) for s, v in points]
            for a, b in zip(pts, pts[1:]):
                p.drawLine(a, b)
            if len(pts) == 1:
                p.drawEllipse(pts[0], 2, 2)

        draw(self.loss, "#f0a030")
        if self.score:
            lo = min([v for _, v in self.score] + ([self.parent_score] if self.parent_score is not None else []))
            hi = max([v for _, v in self.score] + ([self.parent_score] if self.parent_score is not None else []))
            if self.parent_score is not None:
                y = h - 14 - (h - 24) * (self.parent_score - lo) / ((hi - lo) or 1.0)
                p.setPen(QPen(QColor("#888888"), 1, Qt.PenStyle.DashLine))
                p.drawLine(QPointF(4, y), QPointF(w - 4, y))
            draw(self.score, "#50d070", lo, hi)
        p.setPen(QColor("#cccccc"))
        p.drawText(6, h - 2, "loss (orange), held-out score (green), parent (dashed)")
        p.end()


class FinetuneWidget(Container):
    """Fine-tune a model on a training folder, watch it learn, then use or compare the new version."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        names = automatic_models()       # click models are trained by `segloop-train interactive`
        self.folder = FileEdit(label="training folder", mode="d")
        self.parent_model = ComboBox(label="start from", choices=lambda _w=None: automatic_models(),
                                     value=default_model(names, ct=False))
        self.steps = SpinBox(label="steps", min=10, max=10**6, step=50, value=400)
        self.lr = FloatSpinBox(label="learning rate", min=1e-6, max=1.0, step=1e-5, value=5e-4)
        self.lr.native.setDecimals(6)                      # 3e-5 must not round to 0
        self.batch = SpinBox(label="batch", min=1, max=256, value=4)
        self.patch = SpinBox(label="patch", min=32, max=2048, step=32, value=192)
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.out = FileEdit(label="models go in", mode="d",
                            tooltip="each run writes a new <model>-<time> folder in here (empty: <training folder>/models)")
        self.start_button = PushButton(text="Fine-tune")
        self.cancel_button = PushButton(text="Cancel (keep the best so far)", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0, visible=False)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.result = Label(value="")
        self.result.native.setWordWrap(True)
        self.use_button = PushButton(text="Use this model", enabled=False)
        self.compare_button = PushButton(text="Compare on held-out samples", enabled=False)
        self.extend([self.folder, self.parent_model, self.steps, self.lr, self.batch, self.patch, self.device, self.out,
                     self.start_button, self.cancel_button, self.progress, self.status])
        self.plot = LossPlot()
        self.native.layout().addWidget(self.plot)
        self.extend([self.result, self.use_button, self.compare_button])
        self.start_button.changed.connect(lambda *_: self.start())
        self.cancel_button.changed.connect(lambda *_: self.cancel())
        self.use_button.changed.connect(lambda *_: self.use_model())
        self.compare_button.changed.connect(lambda *_: self.compare())
        self._compare_worker = None
        self.process: QProcess | None = None
        self.package: Path | None = None
        self.events_seen: list[dict] = []
        self.warnings: list[str] = []
        self._run_args: tuple[Path, str] = (Path("."), "")
        self._buffer = b""
        self._stderr = b""
        self._t0 = 0.0
        self.native.destroyed.connect(self._on_destroyed)
        self._recall_folder()

    def _recall_folder(self):
        folder = settings.training_folder()
        if folder:
            self.folder.value = folder

    @property
    def running(self) -> bool:
        return self.process is not None

    def command(self) -> list[str]:
        folder = Path(self.folder.value)
        base = str(self.out.value)
        base = Path(base) if base and base != "." else folder / "models"
        stem = Path(str(self.parent_model.value)).name.replace(" ", "-")
        out = str(base / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
        from segloop.core.formats.registry import discover_models

        # a registered model exists only in this process: give the training process its path
        parent = str(discover_models().get(str(self.parent_model.value), self.parent_model.value))
        return [sys.executable, "-m", "segloop_train", str(folder), "--from", parent,
                "--out", out, "--steps", str(int(self.steps.value)), "--lr", f"{self.lr.value:g}",
                "--batch", str(int(self.batch.value)), "--patch", str(int(self.patch.value)),
                "--device", str(self.device.value), "--progress-json"]

    def start(self) -> bool:
        if self.running:
            show_info("segloop: a fine-tune is already running")
            return False
        folder = Path(self.folder.value)
        if not (folder / "segloop-training.json").is_file():
            self.status.value = f"{folder} is not a training folder: export corrections into one first"
            show_warning(f"segloop: {self.status.value}")
            return False
        cmd = self.command()
        self._run_args = (folder, str(self.parent_model.value))
        self.events_seen, self._buffer, self._stderr, self.package = [], b"", b"", None
        self.warnings = []
        self.plot.clear()
        self.result.value = ""
        self.use_button.enabled = self.compare_button.enabled = False
        proc = QProcess()
        proc.setProgram(cmd[0])
        proc.setArguments(cmd[1:])
        proc.readyReadStandardOutput.connect(self._on_stdout)
        proc.readyReadStandardError.connect(self._on_stderr)
        proc.finished.connect(self._on_finished)
        proc.errorOccurred.connect(self._on_process_error)
        self.process = proc
        self._t0 = time.perf_counter()
        self.start_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.visible = True
        self.progress.value = 0
        self.status.value = "starting (loading data, measuring the parent on held-out samples)…"
        proc.start()
        return True

    def cancel(self):
        if self.process is not None:
            self.status.value = "cancelling: keeping the best weights so far…"
            self.cancel_button.enabled = False   # a second SIGTERM would abort the writing of the package
            self.process.terminate()             # SIGTERM: the trainer stops after the current step

    # -- the child's JSON lines -----------------------------------------------------
    def _on_stdout(self):
        if self.process is None:
            return
        self._buffer += bytes(self.process.readAllStandardOutput())
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue                      # a stray print: not ours
            if not isinstance(event, dict):
                continue
            self.events_seen.append(event)
            self._handle(event)

    def _on_stderr(self):
        if self.process is not None:
            self._stderr = (self._stderr + bytes(self.process.readAllStandardError()))[-20000:]

    def _handle(self, ev: dict):
        kind = ev.get("event")
        if kind == "start":
            self.progress.max = max(int(ev.get("steps", 1)), 1)
            pm = ev.get("parent_metrics") or {}
            key = _score_key(pm)
            if key:
                self.plot.parent_score = pm[key]
                self.status.value = f"parent on held-out samples: {_fmt(pm)}"
        elif kind == "step":
            self.progress.max = max(int(ev.get("steps", 1)), 1)
            self.progress.value = int(ev.get("step", 0))
            done, total = int(ev.get("step", 0)), max(int(ev.get("steps", 1)), 1)
            loss = ev.get("loss")
            if isinstance(loss, int | float):
                self.plot.loss.append((done, float(loss)))
            eta = (time.perf_counter() - self._t0) / max(done, 1) * (total - done)
            shown = f"{loss:.3f}" if isinstance(loss, int | float) else "n/a"
            self.status.value = f"step {done}/{total}, loss {shown}, about {eta:.0f} s left"
            self.plot.update()
        elif kind == "eval":
            m = ev.get("metrics") or {}
            key = _score_key(m)
            if key and isinstance(m.get(key), int | float):
                self.plot.score.append((int(ev.get("step", 0)), float(m[key])))
                self.plot.update()
        elif kind in ("done", "cancelled"):
            pkg = ev.get("package")
            self.package = Path(pkg) if pkg else None
            self.result.value = _comparison(ev) if kind == "done" else (
                f"cancelled; best weights so far saved to {pkg}" if pkg else "cancelled before any evaluation: "
                "no model was written")
        elif kind == "warning":
            self.warnings.append(str(ev.get("message")))
            show_warning(f"segloop: {ev.get('message')}")
        elif kind == "error":
            self.result.value = f"error: {ev.get('message')}"

    def _on_process_error(self, error):
        if error == QProcess.ProcessError.FailedToStart and self.process is not None:
            self._stderr += f"could not start {self.process.program()}".encode()
            self._on_finished(-1)

    def _on_finished(self, code, _status=None):
        if self.process is None:
            return
        self._on_stdout()
        proc, self.process = self.process, None
        if proc is not None:
            proc.deleteLater()
        self.start_button.enabled = True
        self.cancel_button.enabled = False
        self.progress.visible = False
        kinds = {e.get("event") for e in self.events_seen}
        if "done" in kinds or "cancelled" in kinds:
            self.use_button.enabled = self.compare_button.enabled = self.package is not None
            self.status.value = f"finished in {time.perf_counter() - self._t0:.0f} s"
            if self.package is not None:
                show_info(f"segloop: new model written to {self.package}")
        else:
            msg = next((e.get("message") for e in self.events_seen if e.get("event") == "error"), None)
            tail = self._stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            msg = msg or tail[0] or f"training stopped (exit code {code})"
            self.status.value = f"fine-tuning failed: {msg}"
            show_error(f"segloop: fine-tuning failed: {msg}")

    def use_model(self) -> str | None:
        """Register the new package and select it in every Segment widget of this viewer."""
        if self.package is None:
            return None
        from segloop import register_model
        from segloop.core.formats.package import read_spec
        from segloop.core.formats.registry import discover_models

        spec = read_spec(self.package)
        name = f"{spec.name} v{spec.version}"
        known = discover_models().get(name)
        if known is not None and Path(known).resolve() != Path(self.package).resolve():
            name = f"{name} ({spec.sha256[:8]})"         # another run of the same version: keep both
        name = register_model(self.package, name=name, persist=True)
        self.parent_model.reset_choices()                 # it can be the next run's starting point
        for seg in _segment_widgets(self.viewer):
            seg.add_model_choice(name)
        self.status.value = f"'{name}' is now in the Segment widget's model list"
        return name

    def compare(self, max_samples: int = 3):
        """Segment the folder's held-out samples with the parent and the new model; add both as layers."""
        if self.package is None or self._compare_worker is not None:
            return None
        from napari.qt.threading import create_worker

        self.status.value = "comparing on held-out samples…"
        folder, parent = self._run_args
        self._compare_worker = create_worker(
            _compare_job, folder, parent, self.package, max_samples,
            _connect={"returned": self._on_compared, "errored": self._on_compare_error,
                      "finished": self._on_compare_finished})
        return self._compare_worker

    def _on_compared(self, rows):
        for sid, image, truth, old, new, scores in rows:
            self.viewer.add_image(image, name=f"{sid} image", rgb=image.ndim == 3 and image.shape[-1] in (3, 4))
            self.viewer.add_labels(truth, name=f"{sid} · corrected", visible=False)
            self.viewer.add_labels(old, name=f"{sid} · parent {scores['parent']:.3f}")
            self.viewer.add_labels(new, name=f"{sid} · new {scores['new']:.3f}")
        self.status.value = (f"compared on {len(rows)} held-out sample(s): layer names give each model's score"
                             if rows else "the folder has no held-out (val) samples to compare on")

    def _on_compare_error(self, exc):
        self.status.value = f"compare failed: {exc}"
        show_error(f"segloop: compare failed: {exc}")

    def _on_compare_finished(self):
        self._compare_worker = None

    def _on_destroyed(self, *_):
        """The dock or the viewer closed mid-run: stop training, give it time to write the best weights."""
        proc, self.process = self.process, None
        if proc is None:
            return
        for sig in (proc.readyReadStandardOutput, proc.readyReadStandardError, proc.finished, proc.errorOccurred):
            try:
                sig.disconnect()
            except (TypeError, RuntimeError):
                pass
        proc.terminate()
        if not proc.waitForFinished(30_000):
            proc.kill()
            proc.waitForFinished(2000)


def _compare_job(folder: Path, parent: str, package: Path, max_samples: int):  # noqa: D103
    """Worker: predictions of the parent and the new model on up to ``max_samples`` val samples."""
    import segloop
    from segloop.core.editing import metrics
    from segloop.core.formats.trainfolder import TrainingFolder

    tf = TrainingFolder.open(folder)
    old, new = segloop.load_model(parent), segloop.load_model(package)
    score = metrics.instance_f1 if new.spec.task == "instance" else metrics.dice
    rows = []
    for rec in tf.samples("val")[:max_samples]:
        s = tf.read_sample(rec)
        a, b = old.predict(s.image).labels, new.predict(s.image).labels
        rows.append((rec.sample_id, s.image, s.labels, a, b,
                     {"parent": float(score(s.labels, a)), "new": float(score(s.labels, b))}))
    return rows


def _segment_widgets(viewer):
    from segloop._napari.segment_widget import SegmentWidget

    return [w for w in SegmentWidget.instances() if w.viewer is viewer]


def _score_key(metrics: dict) -> str | None:
    return next((k for k in ("f1@0.5", "dice") if k in (metrics or {})), None)


def _fmt(m: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, int | float))


def _comparison(ev: dict) -> str:
    """Parent vs new model on the held-out samples, one line per metric."""
    new, old = ev.get("metrics") or {}, ev.get("parent_metrics") or {}
    if not new:
        return ("the folder has no held-out (val) samples with reviewed pixels, so the new model could not be "
                "compared with its parent: export corrections from more images (or review the held-out block)")
    rows = []
    for k in new:
        if isinstance(new.get(k), int | float) and isinstance(old.get(k), int | float):
            rows.append(f"{k}: {old[k]:.3f} → {new[k]:.3f} ({new[k] - old[k]:+.3f})")
    verdict = "better than its parent" if ev.get("improved") else "NOT better than its parent"
    return f"new model {verdict} on held-out samples:\n" + "\n".join(rows)
