"""What an import did: :class:`ImportReport`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ImportReport", "ProgressCallback"]

#: ``progress(done, total)``, in source images.
ProgressCallback = Callable[[int, int], None]


@dataclass
class ImportReport:
    """What an import did.

    Attributes
    ----------
    importer : str
        A name of :data:`SOURCES` or of :data:`FOLDER_LAYOUTS`.
    folder : Path
        The training folder.
    written, skipped : list of str
        Sample ids written now, and ids that were already there (left as they are).
    changed : list of str
        Skipped ids whose mask / label file differs from the one imported then (folder layouts):
        the folder keeps the old labels until the import runs again with ``replace=True``.
    splits : dict
        ``{sample_id: split}`` of every sample this import wrote or found.
    classes : tuple of str
    task : str
    licence : str or None
        The data's terms (None for folders of your own data).
    notices : list of str
        Things a person should know (files skipped, fixed splits, version not checked ...).
    source : str
        Where the data was read from (installed distribution, wheel, folder).
    """

    importer: str
    folder: Path
    classes: tuple[str, ...] = ()
    task: str = ""
    licence: str | None = None
    source: str = ""
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    splits: dict[str, str] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    @property
    def split_counts(self) -> dict[str, int]:
        """Samples per split (written now or already there): ``{"train": n, "val": n, "test": n}``."""
        counts = {"train": 0, "val": 0, "test": 0}
        for s in self.splits.values():
            counts[s] = counts.get(s, 0) + 1
        return counts

    def summary(self) -> str:
        """Lines for people: counts per split, classes, licence, notices."""
        counts = ", ".join(f"{k} {v}" for k, v in self.split_counts.items())
        lines = [f"{self.importer}: {len(self.written)} sample(s) written, {len(self.skipped)} already there, in "
                 f"{self.folder} ({counts})",
                 f"classes: {', '.join(self.classes)} ({self.task})"]
        if self.source:
            lines.append(f"read from: {self.source}")
        lines.append(f"licence: {self.licence}" if self.licence else
                     "licence: not recorded (your own data: its terms travel with it, not with segloop)")
        lines += [f"note: {n}" for n in self.notices]
        if self.changed:
            lines.append(f"note: {len(self.changed)} sample(s) already there have a changed mask in the source folder "
                         f"and were NOT updated: {', '.join(self.changed[:8])}"
                         + (" ..." if len(self.changed) > 8 else "") + "; run the import again with --replace to "
                         "take the new masks (it rewrites those samples)")
        return "\n".join(lines)
