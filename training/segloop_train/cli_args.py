"""What the trainer's two commands (``segloop-train`` and ``segloop-train loop``) parse alike.

:class:`OneLineParser` gives argparse's errors the commands' one-line form; :func:`json_object`
and :func:`positive_int` are argument types that refuse bad values with a message naming them.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["OneLineParser", "json_object", "pixel_size", "positive_int"]


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors read like every other error: ONE line ``segloop-train: error: ...``, exit 2.

    (``segloop`` has the same for its own parser; the trainer does not import the ``segloop`` command.)
    """

    def error(self, message: str):
        """Print ``<command>: error: <message> (see <prog> --help)`` and exit with status 2."""
        root = self.prog.split()[0]
        self.exit(2, f"{root}: error: {message} (see {self.prog} --help)\n")


def json_object(text: str) -> dict:
    """An argparse type: ``--arch-kwargs '{"depth": 4}'`` -> ``{"depth": 4}``; anything but a JSON object is refused."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({e}); write a JSON object such as "
                                         "'{\"depth\": 4}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object; write one such as '{{\"depth\": 4}}'")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def pixel_size(text: str) -> tuple[float, float]:
    """An argparse type: ``--pixel-size 0.25`` -> ``(0.25, 0.25)``; ``0.25,0.3`` -> (y, x); 0, NaN, junk refused."""
    from segloop.core.formats.pixel_size import parse_pixel_size
    from segloop.errors import InvalidPixelSizeError

    try:
        return parse_pixel_size(text, source="")
    except InvalidPixelSizeError as e:
        raise argparse.ArgumentTypeError(str(e).strip()) from None
