"""The report of an active-learning loop: ``loop.csv`` rows and quality-vs-corrected-area curves.

:func:`write_csv` writes the rows of :func:`segloop_train.loop.run_loop` (atomically),
:func:`plot_curves` draws one or several runs (matplotlib, else Pillow), and
:func:`area_to_reach` reads off how much correction a strategy needed to reach a quality.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from segloop.core._runtime import atomic_output

__all__ = ["HEAD_COLUMNS", "TAIL_COLUMNS", "area_to_reach", "plot_curves", "quality_key", "write_csv"]

#: Columns every row has, in CSV order; the held-out metrics follow, then :data:`TAIL_COLUMNS`.
HEAD_COLUMNS = ("round", "strategy", "regions_selected", "regions_total", "corrected_area", "corrected_fraction",
                "changed_pixels", "object_fixes", "mean_uncertainty")
TAIL_COLUMNS = ("model_version", "model", "select_seconds", "train_seconds", "eval_seconds", "seconds")


def quality_key(task: str) -> str:
    """The held-out metric the loop plots: instance F1 at IoU 0.5, or mean Dice for semantic models."""
    return "f1@0.5" if task == "instance" else "dice"


def area_to_reach(rows: Sequence[Mapping], target: float, *, metric: str, area: str = "corrected_area",
                  sustained: bool = False) -> tuple[float, bool]:
    """The corrected area at which a quality curve reaches ``target``.

    ``sustained=False``: where it *first* reaches it - linear interpolation between the last
    row below ``target`` and the first row at or above it.  ``sustained=True``: from where it
    *stays* at or above it in every later round - interpolation between the last row below
    ``target`` and the next one (a one-round spike followed by a fall does not count).  When
    the curve never reaches it (or ends below it): ``(area of the last row, False)``.

    Parameters
    ----------
    rows : sequence of dict
        Rows of :func:`~segloop_train.loop.run_loop` (or of ``loop.csv``), in round order.
    target : float
    metric : str
        Column holding the quality (``"f1@0.5"``, ``"dice"`` ...).
    area : str
        Column holding the cumulative corrected area.

    Returns
    -------
    (float, bool)
        The area, and whether the target was reached.
    """
    pts = [(float(r[area]), float(r[metric])) for r in rows
           if r.get(metric) not in (None, "") and math.isfinite(float(r[metric]))]
    if not pts:
        raise ValueError(f"no rows with a value for {metric!r}")
    if sustained:
        below = [i for i, (_, q) in enumerate(pts) if q < target]
        if not below:
            return pts[0][0], True
        i = below[-1]
        if i == len(pts) - 1:
            return pts[-1][0], False
        (a0, q0), (a1, q1) = pts[i], pts[i + 1]
        return a0 + (a1 - a0) * (target - q0) / (q1 - q0), True
    prev = None
    for a, q in pts:
        if q >= target:
            if prev is None or q == prev[1]:
                return a, True
            a0, q0 = prev
            return a0 + (a - a0) * (target - q0) / (q - q0), True
        prev = (a, q)
    return pts[-1][0], False


def write_csv(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Rows as CSV (the columns of :func:`~segloop_train.loop.run_loop`, metrics in the order they first appear)."""
    path = Path(path)
    metrics: list[str] = []
    for r in rows:
        metrics += [k for k in r if k not in HEAD_COLUMNS and k not in TAIL_COLUMNS and k not in metrics]
    cols = [*HEAD_COLUMNS, *metrics, *TAIL_COLUMNS]
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k)) for k in cols})
    return path


def _csv_value(v):
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return "" if v is None else v


def plot_curves(curves: Mapping[str, Sequence[Mapping]], path: str | os.PathLike, *, metric: str,
                title: str = "", x: Literal["fraction", "area"] = "fraction", target: float | None = None) -> Path:
    """Quality vs corrected area, one line per curve, written as a PNG.

    Parameters
    ----------
    curves : mapping of str -> rows
        Label -> rows of :func:`~segloop_train.loop.run_loop` (e.g. ``{"random": res_a.rows, "uncertainty": res_b.rows}``).
    path : path-like
        The PNG to write.
    metric : str
        The row key on the y axis.
    title : str
    x : {"fraction", "area"}
        Corrected area as a percentage of the pool, or in pixels (voxels).
    target : float, optional
        Draw a dotted horizontal line at this quality (e.g. random's final quality).

    Uses matplotlib (Agg, no pyplot state) when it is installed, else Pillow.
    """
    path = Path(path)
    xkey = "corrected_fraction" if x == "fraction" else "corrected_area"
    series = []
    for label, rows in curves.items():
        pts = [(float(r[xkey]) * (100.0 if x == "fraction" else 1.0), float(r[metric])) for r in rows
               if r.get(metric) not in (None, "") and math.isfinite(float(r[metric]))]
        if pts:
            series.append((str(label), pts))
    if not series:
        raise ValueError(f"nothing to plot: no rows have {metric!r}")
    xlabel = "corrected area (% of the pool)" if x == "fraction" else "corrected area (pixels)"
    ylabel = f"held-out {metric}"
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return _plot_pillow(series, path, xlabel=xlabel, ylabel=ylabel, title=title, target=target)
    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, pts in series:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, label=label)
    if target is not None:
        ax.axhline(target, ls=":", color="0.4", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))


def _plot_pillow(series, path: Path, *, xlabel: str, ylabel: str, title: str, target: float | None) -> Path:
    """A plain line plot with Pillow (a dependency of scikit-image), for installs without matplotlib."""
    from PIL import Image, ImageDraw, ImageFont

    w, h, left, right, top, bottom = 700, 460, 70, 20, 40, 60
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:                          # Pillow < 10.1
        font = ImageFont.load_default()
    xs = [p[0] for _, pts in series for p in pts]
    ys = [p[1] for _, pts in series for p in pts] + ([target] if target is not None else [])
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x1 = x1 if x1 > x0 else x0 + 1
    pad = (y1 - y0) * 0.05 or 0.01
    y0, y1 = y0 - pad, y1 + pad

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (w - left - right), top + (y1 - y) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for i in range(6):
        xv, yv = x0 + (x1 - x0) * i / 5, y0 + (y1 - y0) * i / 5
        gx, gy = px(xv, yv)
        d.line([gx, top, gx, h - bottom], fill=(225, 225, 225))
        d.line([left, gy, w - right, gy], fill=(225, 225, 225))
        d.text((gx, h - bottom + 6), f"{xv:.3g}", fill="black", font=font, anchor="mt")
        d.text((left - 6, gy), f"{yv:.3f}", fill="black", font=font, anchor="rm")
    if target is not None:
        ty = px(x0, target)[1]
        for sx in range(left, w - right, 8):
            d.line([sx, ty, sx + 3, ty], fill=(100, 100, 100))
    for i, (label, pts) in enumerate(series):
        c = _COLOURS[i % len(_COLOURS)]
        xy = [px(*p) for p in pts]
        if len(xy) > 1:
            d.line(xy, fill=c, width=2)
        for cx, cy in xy:
            d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=c)
        d.text((w - right - 150, h - bottom - 20 - 18 * (len(series) - 1 - i)), f"- {label}", fill=c, font=font)
    d.text(((left + w - right) / 2, h - 22), xlabel, fill="black", font=font, anchor="mt")
    d.text((8, top - 22), ylabel, fill="black", font=font)
    if title:
        d.text((w / 2, 8), title, fill="black", font=font, anchor="mt")
    img.save(path)
    return path

