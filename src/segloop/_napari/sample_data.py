"""Sample data contributions: real images shipped with segloop or its dependencies (no downloads)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"


def ihc_tile():
    """The immunohistochemistry tile that scikit-image ships (``skimage/data/ihc.png``)."""
    from skimage import data

    img = data.immunohistochemistry()
    return [(img, {"name": "IHC tile", "rgb": True, "metadata": {"source": "scikit-image data: ihc.png"}})]


def fluorescence_nuclei():
    """BBBC007 ``A9 p10d``: Drosophila Kc167 nuclei, DNA stain (CC0; held out from nuclei-unet)."""
    import tifffile

    img = tifffile.imread(DATA / "bbbc007_A9_p10d.tif")
    return [(img, {"name": "nuclei (BBBC007 A9 p10d)", "colormap": "gray",
                   "metadata": {"source": "BBBC007v1 A9 p10d (CC0), see segloop/data/README.md"}})]
