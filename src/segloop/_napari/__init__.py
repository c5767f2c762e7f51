"""napari contributions (Qt lives here only; ``segloop.core`` never imports this)."""
