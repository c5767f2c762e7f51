"""What machine a benchmark ran on (shared by the scripts in benchmarks/)."""

from __future__ import annotations


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows (the key segloop caches
    its measured engine choices under)."""
    from segloop.core.inference.engines import cpu_id

    return cpu_id()
