"""The queue a person works through, saved in the training folder."""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from segloop.core._runtime import atomic_write_bytes
from segloop.core.formats.trainfolder import ACTIVE_STATE_FILE, export_error
from segloop.core.learning.regions import Region
from segloop.errors import (
    ActiveLearningError,
    ActiveLearningStateError,
    ExportError,
)

if TYPE_CHECKING:
    from segloop.core.inference.model import Model


# ---------------------------------------------------------------------------
# The queue a person works through
# ---------------------------------------------------------------------------


def model_info(model: Model) -> dict:
    """``{"name", "version", "sha256"}`` of a model, as :class:`ActiveLearningState` records it."""
    s = model.spec
    return {"name": s.name, "version": s.version, "sha256": s.sha256}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _save_error(e: OSError, folder: Path) -> ExportError:
    return export_error(e, folder, "save the active-learning state",
                         after=f"then try again. The previous {ActiveLearningState.FILE} (if any) is unchanged")


@dataclass
class ActiveLearningState:
    """A round of active learning: the proposed regions and what a person did with them.

    Saved as ``segloop-active-learning.json`` in the training folder root
    (documented in ``docs/formats.md``).  Navigation: :meth:`current` is the
    region under the cursor; :meth:`next` moves to the next region not yet
    reviewed or skipped; :meth:`previous` moves back one (any region, to look
    again); :meth:`skip` marks the current one skipped and moves on.

    Attributes
    ----------
    strategy : str
    region_size : int
    region_kind : str
    budget : int
        Regions asked for (the queue may be shorter when fewer were open).
    queue : list of Region
        In visiting order.
    reviewed, skipped : list of str
        :attr:`Region.key` values, in the order they were marked; kept across
        rounds (pass them as ``exclude`` to the next ranking).
    cursor : int
        Index into ``queue``; ``len(queue)`` when past the end.
    model : dict or None
        name, version, sha256 of the model that scored the regions.
    created, updated : str
        ISO 8601 UTC times; set by :meth:`save`.
    """

    strategy: str
    region_size: int
    region_kind: str
    budget: int
    queue: list[Region] = field(default_factory=list)
    reviewed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    cursor: int = 0
    model: dict | None = None
    created: str = ""
    updated: str = ""

    FILE: ClassVar[str] = ACTIVE_STATE_FILE
    FORMAT: ClassVar[str] = "segloop-active-learning"
    FORMAT_VERSION: ClassVar[int] = 1

    @classmethod
    def from_ranking(cls, regions: Sequence[Region], *, strategy: str, region_size: int, region_kind: str,
                     budget: int | None = None, model: Model | dict | None = None,
                     previous: ActiveLearningState | None = None) -> ActiveLearningState:
        """A new round: ``regions`` (e.g. :func:`rank_images`) as the queue.

        ``previous`` carries the reviewed and skipped keys of the last round over.
        """
        info = model_info(model) if model is not None and not isinstance(model, dict) else model
        return cls(strategy=str(strategy), region_size=int(region_size), region_kind=str(region_kind),
                   budget=int(len(regions) if budget is None else budget), queue=list(regions),
                   reviewed=list(previous.reviewed) if previous else [],
                   skipped=list(previous.skipped) if previous else [], cursor=0, model=info, created=_now())

    # -- progress and navigation ----------------------------------------------
    @property
    def done_keys(self) -> set[str]:
        """Keys reviewed or skipped: what the next ranking should exclude."""
        return set(self.reviewed) | set(self.skipped)

    @property
    def n_reviewed(self) -> int:
        """Regions of the queue marked reviewed."""
        rev = set(self.reviewed)
        return sum(r.key in rev for r in self.queue)

    @property
    def n_skipped(self) -> int:
        """Regions of the queue skipped (and not reviewed since)."""
        sk = set(self.skipped) - set(self.reviewed)
        return sum(r.key in sk for r in self.queue)

    def progress_text(self) -> str:
        """E.g. ``"3 of 20 regions reviewed"``."""
        n = len(self.queue)
        return f"{self.n_reviewed} of {n} region{'s' if n != 1 else ''} reviewed"

    def remaining(self) -> list[Region]:
        """Queue regions neither reviewed nor skipped, in order."""
        done = self.done_keys
        return [r for r in self.queue if r.key not in done]

    def current(self) -> Region | None:
        """The region under the cursor, or None past the end (or with an empty queue)."""
        return self.queue[self.cursor] if 0 <= self.cursor < len(self.queue) else None

    def next(self) -> Region | None:
        """Move to the next region after the cursor not yet reviewed or skipped; None when none is left."""
        done = self.done_keys
        i = max(self.cursor, -1) + 1
        while i < len(self.queue) and self.queue[i].key in done:
            i += 1
        self.cursor = min(i, len(self.queue))
        return self.current()

    def previous(self) -> Region | None:
        """Move back one region (reviewed or not); stays on the first."""
        if self.queue:
            self.cursor = max(0, min(self.cursor, len(self.queue)) - 1)
        return self.current()

    def skip(self) -> Region | None:
        """Mark the current region skipped and move to the next open one (returned)."""
        r = self.current()
        if r is not None and r.key not in self.skipped and r.key not in self.reviewed:
            self.skipped.append(r.key)
        return self.next()

    def mark_reviewed(self, key: str) -> None:
        """Record ``key`` (a :attr:`Region.key`) as reviewed (no longer skipped); the cursor stays."""
        key = key.key if isinstance(key, Region) else str(key)
        if key not in self.reviewed:
            self.reviewed.append(key)
        if key in self.skipped:
            self.skipped.remove(key)

    # -- file -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": self.FORMAT, "format_version": self.FORMAT_VERSION, "strategy": self.strategy,
                "region_size": int(self.region_size), "region_kind": self.region_kind, "budget": int(self.budget),
                "cursor": int(self.cursor), "model": self.model, "created": self.created, "updated": self.updated,
                "queue": [r.to_dict() for r in self.queue], "reviewed": list(self.reviewed),
                "skipped": list(self.skipped)}

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "active-learning state") -> ActiveLearningState:
        """Parse :meth:`to_dict` output; :class:`ActiveLearningStateError` on anything else."""
        if not isinstance(d, dict) or d.get("format") != cls.FORMAT:
            raise ActiveLearningStateError(
                f"{source} is not a segloop active-learning state (format must be {cls.FORMAT!r}); "
                "delete or move it to start a new round")
        version = d.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ActiveLearningStateError(f"{source} has no valid format_version; delete it to start a new round")
        if version > cls.FORMAT_VERSION:
            raise ActiveLearningStateError(
                f"{source} has format_version {version}, written by a newer segloop (this one reads up to "
                f"{cls.FORMAT_VERSION}); upgrade segloop")
        if version < 1:
            raise ActiveLearningStateError(f"{source} has an unknown format_version {version}")
        try:
            keys = [d["reviewed"], d["skipped"]]
            if not all(isinstance(x, list) and all(isinstance(s, str) for s in x) for x in keys):
                raise TypeError("reviewed and skipped must be lists of region keys")
            if not isinstance(d["queue"], list):
                raise TypeError("queue must be a list")
            model = d.get("model")
            if model is not None and not isinstance(model, dict):
                raise TypeError("model must be an object or null")
            state = cls(strategy=str(d["strategy"]), region_size=int(d["region_size"]),
                        region_kind=str(d["region_kind"]), budget=int(d["budget"]),
                        queue=[Region.from_dict(r) for r in d["queue"]], reviewed=list(d["reviewed"]),
                        skipped=list(d["skipped"]), cursor=int(d.get("cursor", 0)), model=model,
                        created=str(d.get("created", "")), updated=str(d.get("updated", "")))
        except (KeyError, TypeError, ValueError, ActiveLearningError) as e:
            what = f"missing {e}" if isinstance(e, KeyError) else str(e)
            raise ActiveLearningStateError(f"{source} is malformed ({what}); delete it to start a new round") from None
        state.cursor = min(max(state.cursor, 0), len(state.queue))
        return state

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the state to ``folder / FILE`` atomically; returns the path.

        Written to a temporary file in the same folder, fsynced, renamed over
        the old file (``os.replace``) and the folder fsynced: a crash leaves
        the old or the new state, never a mix.  Sets ``updated`` (and
        ``created`` the first time) only when the write succeeded.

        Raises
        ------
        ExportError
            The folder does not exist, or cannot be written (read-only, full
            disk, permissions); the previous file is left as it was.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise ExportError(f"cannot save the active-learning state: {folder} is not a folder; create the "
                              "training folder first (export a sample, or TrainingFolder.create)")
        now = _now()
        data = self.to_dict()
        data["created"] = self.created or now
        data["updated"] = now
        payload = (json.dumps(data, indent=1, allow_nan=False) + "\n").encode("utf-8")
        target = folder / self.FILE
        try:
            atomic_write_bytes(target, payload, durable=True)
        except OSError as e:
            raise _save_error(e, folder) from None
        self.created, self.updated = data["created"], data["updated"]
        return target

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ActiveLearningState | None:
        """The state saved in ``folder``, or None when there is none.

        Raises
        ------
        ActiveLearningStateError
            The file is unreadable, not JSON (corrupt, truncated), has the
            wrong schema or a newer ``format_version``.
        """
        path = Path(folder) / cls.FILE
        if not path.is_file():
            return None
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise ActiveLearningStateError(f"{path} cannot be read ({e.strerror or e})") from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ActiveLearningStateError(
                f"{path} is not valid JSON (corrupt or truncated); delete it to start a new round of "
                "active learning") from None
        return cls.from_dict(data, source=str(path))
