"""napari-segloop: annotation-assisted segmentation.

Library use (no napari needed)::

    import segloop
    segloop.list_models()                     # ['nuclei-unet', ...]
    model = segloop.load_model("nuclei-unet")  # device="auto", engine="torch"
    result = model.predict(image)              # result.labels, result.uncertainty
    clicker = segloop.load_interactive("nuclei-click-unet")
    mask = clicker.segment(image, positive=[(120, 80)])   # bool mask of one object
"""

from __future__ import annotations

from segloop._version import __version__

__all__ = ["__version__", "list_models", "load_interactive", "load_model", "register_model"]


def list_models() -> list[str]:
    """Names of the bundled and registered model packages."""
    from segloop.core.formats.registry import list_models as _list

    return _list()


def load_model(name_or_path, *, device: str = "auto", engine: str = "torch", precision: str = "auto"):
    """Load a model package by name or path; see :func:`segloop.core.inference.model.load_model`."""
    from segloop.core.inference.model import load_model as _load

    return _load(name_or_path, device=device, engine=engine, precision=precision)


def load_interactive(name_or_path, *, device: str = "auto", precision: str = "auto", stain: str = "auto"):
    """Load an interactive (click) model; see :func:`segloop.core.inference.interactive.load_interactive`."""
    from segloop.core.inference.interactive import load_interactive as _load

    return _load(name_or_path, device=device, precision=precision, stain=stain)


def register_model(path, *, name: str | None = None, persist: bool = False) -> str:
    """Make a package folder available by name; see :func:`segloop.core.formats.registry.register_model`."""
    from segloop.core.formats.package import read_spec
    from segloop.core.formats.registry import register_model as _reg
    from segloop.core.inference.model import check_architecture

    # refused here, not at first use: an unknown architecture (the registry, a format, checks the hashes)
    check_architecture(read_spec(path), source=str(path))
    return _reg(path, name=name, persist=persist)
