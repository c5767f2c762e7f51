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


def liver_ct():
    """LiTS case 117 (128^3 abdominal CT, HU) with its liver/tumour reference labels.

    Read from the installed ``liver-ct-segmentation-package`` (never shipped with segloop; LiTS data
    are for non-commercial use, see docs/data.md).  Missing package: an ImageReadError gives the
    install command.
    """
    from segloop._napari.io import volume_layer_kwargs
    from segloop.core.formats.io.samples import load_liver_ct

    hu, labels, info = load_liver_ct()
    image_kw = volume_layer_kwargs(info, name="CT liver (LiTS 117)")
    image_kw["metadata"]["source"] = "LiTS case 117 via liver-ct-segmentation-package 1.6.0 (CC BY-NC-SA 4.0)"
    labels_kw = {"name": "liver/tumour (reference)", "scale": image_kw["scale"], "opacity": 0.5,
                 "metadata": {"segloop_volume": info, "segloop_reference": {"classes": list(info.extra["classes"])}}}
    return [(hu, image_kw, "image"), (labels, labels_kw, "labels")]
