"""The prompt section of an interactive model package (``task: "interactive"``).

An interactive (click) model sees a square window of the image around the prompt, resampled
to ``crop`` x ``crop`` network pixels, plus one map per entry of ``maps``:

- ``positive`` / ``negative``: a disk of ``radius`` network pixels at each click,
- ``box``: 1 inside the box, 0 outside,
- ``previous``: the object's mask from the previous round (0 before the first click),

and returns the probability that each pixel belongs to the prompted object. The window is
the extent of the prompt (clicks, box corners, previous mask) grown by ``context`` of its size
on each side, and never smaller than ``crop`` pixels at the model's pixel size, so a small
object is seen at its training resolution and a large one is zoomed out to fit.

The network's ``in_channels`` is the image's channels (times ``context_slices`` for 2.5D)
plus ``len(maps)``; the image channels come first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from segloop.errors import ModelPackageError

__all__ = ["PROMPT_MAPS", "PromptSpec"]

#: The maps an interactive network may read, in the order they are stacked after the image.
PROMPT_MAPS = ("positive", "negative", "box", "previous")


@dataclass(frozen=True)
class PromptSpec:
    """How prompts are drawn for an interactive network (``segloop-model.json`` ``prompt``).

    Attributes
    ----------
    maps : tuple of str
        Which of :data:`PROMPT_MAPS` the network reads, in that order; ``positive`` is required.
    crop : int
        Side of the network's input window, in network pixels (a multiple of 16).
    radius : float
        Radius of a click's disk, in network pixels.
    context : float
        Margin added around the prompt's extent on each side, as a fraction of that extent.
    threshold : float
        Probability above which a pixel belongs to the object.
    """

    maps: tuple[str, ...] = PROMPT_MAPS
    crop: int = 128
    radius: float = 5.0
    context: float = 0.4
    threshold: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["maps"] = list(self.maps)
        return d

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "prompt") -> PromptSpec:
        """Read and check a ``prompt`` section.

        Raises
        ------
        ModelPackageError
            Not an object, an unknown key or map, or a value out of range.
        """
        if not isinstance(d, dict):
            raise ModelPackageError(f"{source}: an interactive model needs a 'prompt' object such as "
                                    f"{{\"maps\": [\"positive\", \"negative\"], \"crop\": 128}}, got {d!r}")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ModelPackageError(f"{source}: unknown prompt key(s) {', '.join(unknown)}; known: "
                                    f"{', '.join(cls.__dataclass_fields__)}")
        kw = dict(d)
        if "maps" in kw:
            maps = kw["maps"]
            if not isinstance(maps, (list, tuple)) or not all(isinstance(m, str) for m in maps):
                raise ModelPackageError(f"{source}: prompt maps must be a list of names, got {maps!r}")
            kw["maps"] = tuple(maps)
        spec = cls(**kw)
        spec.validate(source=source)
        return spec

    def validate(self, *, source: str = "prompt") -> None:
        bad = [m for m in self.maps if m not in PROMPT_MAPS]
        if bad or "positive" not in self.maps or len(set(self.maps)) != len(self.maps):
            raise ModelPackageError(f"{source}: prompt maps {list(self.maps)!r} must be distinct names from "
                                    f"{list(PROMPT_MAPS)} including 'positive'")
        if list(self.maps) != [m for m in PROMPT_MAPS if m in self.maps]:
            raise ModelPackageError(f"{source}: prompt maps must keep the order {list(PROMPT_MAPS)}, "
                                    f"got {list(self.maps)}")
        crop = self.crop
        if isinstance(crop, bool) or not isinstance(crop, int) or not 32 <= crop <= 1024 or crop % 16:
            raise ModelPackageError(f"{source}: prompt crop must be a multiple of 16 in [32, 1024], got {crop!r}")
        for name, lo, hi in (("radius", 0.5, 64.0), ("context", 0.0, 4.0), ("threshold", 0.01, 0.99)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= float(v) <= hi:
                raise ModelPackageError(f"{source}: prompt {name} must be a number in [{lo}, {hi}], got {v!r}")
