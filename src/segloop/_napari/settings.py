"""What the widgets remember between sessions: one small JSON file per widget in segloop's cache folder.

One owner for each setting: :func:`training_folder` is the folder last chosen
in the Export widget, which the Fine-tune and Active learning widgets offer as
their default; no widget reads another widget's file.  A missing, unreadable
or read-only file is never an error (settings are a convenience).
"""

from __future__ import annotations

import json
from pathlib import Path

from segloop.core._runtime import atomic_write_text, cache_dir

__all__ = ["load", "save", "settings_path", "training_folder", "remember_training_folder"]


def settings_path(widget: str) -> Path:
    """The settings file of ``widget`` (e.g. ``"segment-widget"``)."""
    return cache_dir() / f"{widget}.json"


def load(widget: str) -> dict:
    """The saved settings of ``widget``; ``{}`` when there are none or the file is unreadable."""
    try:
        saved = json.loads(settings_path(widget).read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def save(widget: str, data: dict) -> None:
    """Replace the saved settings of ``widget`` (atomically; silently skipped on a read-only home)."""
    try:
        p = settings_path(widget)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p, json.dumps(data), durable=False)
    except OSError:
        pass


def training_folder() -> str | None:
    """The training folder last chosen in the Export widget, or None."""
    folder = load("export-widget").get("folder")
    return str(folder) if folder else None


def remember_training_folder(folder) -> None:
    """Remember ``folder`` as the training folder (the Export widget's choice)."""
    save("export-widget", {**load("export-widget"), "folder": str(folder)})
