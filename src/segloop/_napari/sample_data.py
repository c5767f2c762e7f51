"""Sample data contributions: real images shipped by installed packages (no downloads)."""

from __future__ import annotations


def ihc_tile():
    """The immunohistochemistry tile that scikit-image ships (``skimage/data/ihc.png``)."""
    from skimage import data

    img = data.immunohistochemistry()
    return [(img, {"name": "IHC tile", "rgb": True, "metadata": {"source": "scikit-image data: ihc.png"}})]
