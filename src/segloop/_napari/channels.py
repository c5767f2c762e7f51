"""Models that read several co-registered sequences (the brain model: FLAIR then T1c) in the Segment widget.

A scan's sequences usually open as separate image layers (one NIfTI or DICOM series each).  When the
chosen model reads more raw channels (``in_channels / context_slices``) than the image layer has,
:class:`ExtraChannels` shows one "channel N" choice per missing sequence, pre-filled with the other
image layers of the same shape (in layer order), and :meth:`ExtraChannels.stack` gives the model the
sequences stacked channels-last, cropped like the image.  Layers of another shape are refused with a
message (register the sequences to one grid first).  Stacking the whole volume for live mode is done
once and kept while the layers' data stay the same, so the volume's normalizer is fitted once.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox, Container
from napari.layers import Image

from segloop.errors import InvalidImageError

__all__ = ["MAX_EXTRA", "ExtraChannels", "model_channels"]

#: At most this many further sequences are offered.
MAX_EXTRA = 3


def model_channels(spec) -> int:
    """Raw image channels a package reads (its input channels over its 2.5D context slices)."""
    # image channels: an interactive model's in_channels also count its prompt maps
    return max(1, int(getattr(spec, "image_channels", spec.in_channels)) // max(1, int(spec.context_slices or 1)))


def _layer_channels(layer) -> int:
    if layer is None:
        return 1
    if layer.rgb:
        return int(layer.data.shape[-1]) if not getattr(layer, "multiscale", False) else 3
    return 1


class ExtraChannels:
    """The "channel 2 .. N" choices of the Segment widget (hidden unless the model needs them)."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.combos = [ComboBox(label=f"channel {i + 2}", choices=self._choices, nullable=True, visible=False)
                       for i in range(MAX_EXTRA)]
        self.container = Container(widgets=self.combos, labels=True, visible=False)
        self.needed = 0
        self._cache: tuple | None = None

    def _choices(self, _w=None) -> list:
        return [ly for ly in self.viewer.layers if isinstance(ly, Image) and not ly.rgb]

    def update(self, spec, layer) -> None:
        """Show as many choices as ``spec`` needs beyond ``layer``'s channels; pre-fill them."""
        self.needed = max(0, min(MAX_EXTRA, model_channels(spec) - _layer_channels(layer)))
        self.container.visible = self.needed > 0
        others = [ly for ly in self._choices() if ly is not layer and layer is not None
                  and tuple(ly.data.shape) == tuple(layer.data.shape)]
        for i, combo in enumerate(self.combos):
            combo.reset_choices()
            combo.visible = i < self.needed
            fits = combo.value is not None and combo.value is not layer and combo.value in others
            if i < self.needed and not fits:                    # none yet, the image itself, or another grid
                combo.value = others[i] if i < len(others) else None

    def layers(self) -> list:
        """The chosen further sequences; InvalidImageError when one is missing."""
        chosen = [c.value for c in self.combos[:self.needed]]
        if any(c is None for c in chosen):
            raise InvalidImageError(f"the model reads {self.needed + 1} sequences: choose 'channel 2'"
                                    + (f" to 'channel {self.needed + 1}'" if self.needed > 1 else "")
                                    + " (open each sequence as an image layer on the same grid)")
        return chosen

    def stack(self, data, where, layer):
        """``data`` (the image layer cropped by ``where``) with the further sequences stacked channels-last;
        ``data`` itself when the model needs none."""
        if self.needed == 0:
            return data
        extra = self.layers()
        shape = tuple(layer.data.shape)
        for ly in extra:
            if tuple(ly.data.shape) != shape:
                raise InvalidImageError(f"'{ly.name}' has shape {tuple(ly.data.shape)}, '{layer.name}' {shape}: the "
                                        "sequences must lie on one voxel grid (register them first)")
        sl = tuple(where) if where else (slice(None),)
        return np.stack([np.asarray(data), *(np.asarray(ly.data[sl]) for ly in extra)], axis=-1)

    def stack_whole(self, data, layer):
        """The whole volume stacked (live mode), made once while the layers' data stay the same."""
        if self.needed == 0:
            return data
        extra = self.layers()
        key = (id(data), *(id(ly.data) for ly in extra))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.stack(data, None, layer))
        return self._cache[1]
