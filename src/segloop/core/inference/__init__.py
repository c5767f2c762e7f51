"""Inference: the Model (prepare -> tile -> assemble -> provenance), the sliding
window, engines, post-processing and uncertainty."""
