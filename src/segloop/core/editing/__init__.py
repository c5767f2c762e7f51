"""Editing: pure label edits, correction tracking, measurements and metrics."""
