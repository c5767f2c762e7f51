"""Bounds of the networks' settings, checked before anything is built.

A typo in ``--arch-kwargs`` or in a package's ``architecture_kwargs`` (``"depth": 99``,
``"base_width": 100000``) would otherwise make the constructor allocate until the kernel
kills the process.  Each architecture registers the bounds of its settings with
:func:`segloop.core.networks.register`; :func:`check_arguments` refuses a value of the wrong
kind or out of range with one line naming the setting, the value and the allowed range.
What the bounds allow can still be too big for the machine: that is the memory estimate's
job (:mod:`segloop.core.networks.memory`).

The bounds (the same for 2D and 3D):

==================  =========================  ============================================
setting             allowed                    why
==================  =========================  ============================================
depth               integer 1 .. 8             ``2**depth`` is the size divisor: patches and
                                               tiles are rounded up (or padded) to multiples
                                               of it, so 8 already needs 256 px patches
base_width          integer 1 .. 512           channels of level 0; level ``i`` has
                                               ``base_width * 2**i``
convs_per_level     integer 1 .. 8, or a list  convolutions per U-Net block
                    of ``depth + 1`` of them
blocks_per_stage    integer 1 .. 16, or a      ConvNeXt blocks per stage
                    list of ``depth + 1``
dropout             number 0 .. below 1
==================  =========================  ============================================

``unet26`` fixes ``depth`` (4) and ``convs_per_level``; ``norm`` and ``upsample`` are
checked by the constructors (a closed list of names).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from segloop.errors import ArchitectureArgumentsError

from .registry import limits_of

__all__ = ["Limit", "check_arguments", "DEPTH", "BASE_WIDTH", "CONVS_PER_LEVEL", "BLOCKS_PER_STAGE",
           "DROPOUT", "MAX_DEPTH", "MAX_BASE_WIDTH"]

#: Deepest network: ``2**8 = 256`` is the size divisor, a 256 px patch has one pixel at the bottleneck.
MAX_DEPTH = 8
#: Widest first level (channels); the widest level is ``base_width * 2**depth``.
MAX_BASE_WIDTH = 512


@dataclass(frozen=True)
class Limit:
    """The allowed range of one keyword argument of an architecture.

    Attributes
    ----------
    setting : str
        The keyword (``"depth"``).
    lo, hi : float
        Smallest and largest allowed value.
    integer : bool
        Whole numbers only (``4`` and ``4.0`` pass, ``4.5``, ``"4"`` and ``True`` do not).
    per_level : bool
        The value may also be a list of such numbers (one per level).
    hi_open : bool
        ``hi`` itself is not allowed (``dropout < 1``).
    why : str
        Shown after the range in the error message.
    """

    setting: str
    lo: float
    hi: float
    integer: bool = True
    per_level: bool = False
    hi_open: bool = False
    why: str = ""

    def describe(self) -> str:
        """The allowed range in words: ``"an integer from 1 to 8"``."""
        what = "an integer" if self.integer else "a number"
        hi = f"below {self.hi:g}" if self.hi_open else f"{self.hi:g}"
        text = f"{what} from {self.lo:g} to {hi}"
        return text + (" or a list of one per level" if self.per_level else "")

    def _ok_kind(self, v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            return False
        return not self.integer or isinstance(v, numbers.Integral) or (math.isfinite(v) and float(v).is_integer())

    def _in_range(self, v: Any) -> bool:
        v = float(v)
        return self.lo <= v and (v < self.hi if self.hi_open else v <= self.hi)

    def check(self, value: Any, *, architecture: str, source: str | None) -> None:
        """Raise :class:`~segloop.errors.ArchitectureArgumentsError` unless ``value`` is allowed.

        Parameters
        ----------
        value
            The value given for :attr:`setting`.
        architecture : str
            Its architecture, named in the message.
        source : str or None
            Where the value came from (``"--arch-kwargs"``, a ``segloop-model.json`` path),
            the start of the message (None: the message starts with the architecture).
        """
        values = list(value) if self.per_level and isinstance(value, list | tuple) and value else [value]
        why = f" ({self.why})" if self.why else ""
        head = f"{source + ': ' if source else ''}{architecture} {self.setting}={value!r}"
        for v in values:
            if not self._ok_kind(v):
                kind = "an integer" if self.integer else "a number"
                raise ArchitectureArgumentsError(f"{head} is not {kind}: give {self.describe()}{why}")
            if not self._in_range(v):
                raise ArchitectureArgumentsError(f"{head} is out of range: give {self.describe()}{why}")


DEPTH = Limit("depth", 1, MAX_DEPTH, why="2**depth is the size divisor: patches and tiles are rounded to multiples "
                                         "of it")
BASE_WIDTH = Limit("base_width", 1, MAX_BASE_WIDTH, why="channels of level 0; level i has base_width * 2**i")
CONVS_PER_LEVEL = Limit("convs_per_level", 1, 8, per_level=True)
BLOCKS_PER_STAGE = Limit("blocks_per_stage", 1, 16, per_level=True)
DROPOUT = Limit("dropout", 0, 1, integer=False, hi_open=True)


def check_arguments(name: str, kwargs: Any, *, source: str | None = "architecture_kwargs") -> None:
    """Refuse keyword arguments of architecture ``name`` of the wrong kind or out of range.

    Cheap (no torch): call it as soon as the arguments are known.  Settings the
    architecture registered no :class:`Limit` for are left to its constructor.

    Parameters
    ----------
    name : str
        A registered architecture.
    kwargs : mapping
        Its keyword arguments (without ``dims``).
    source : str or None
        Where they came from, the start of the message (``"--arch-kwargs"``, a file); None:
        the message starts with the architecture (for callers that add where).

    Raises
    ------
    UnknownArchitectureError
        ``name`` is not registered.
    ArchitectureArgumentsError
        ``kwargs`` is not a mapping of names, or a value is of the wrong kind or out of range.
    """
    limits = limits_of(name)
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        where = f"{source}: " if source else ""
        raise ArchitectureArgumentsError(f"{where}the settings of {name} must be a JSON object of names and "
                                         f"values, e.g. {{\"depth\": 4, \"base_width\": 16}}; got {kwargs!r}")
    for limit in limits:
        if limit.setting in kwargs:
            limit.check(kwargs[limit.setting], architecture=name, source=source)
