"""segloop.core: arrays in, arrays out. No Qt and no napari imports here."""
