"""Formats: model packages and their registry, normalization specs, training folders,
readers and writers, importers and converters.  Data only: nothing here runs a model."""
