"""``DATA-SOURCES.md``: the imported datasets of a training folder and their terms, beside the data."""

from __future__ import annotations

from pathlib import Path

from segloop.core._runtime import atomic_write_text
from segloop.errors import SegloopError

__all__ = ["DATA_NOTICE_FILE", "write_data_notice"]

#: Written into the training folder after every import: each imported dataset and its terms.
DATA_NOTICE_FILE = "DATA-SOURCES.md"


def write_data_notice(tf) -> Path | None:
    """Write ``DATA-SOURCES.md`` into the training folder: every imported dataset (from the
    samples' ``meta.json``), how many samples per split, its licence and citation.  Derived from
    the samples, so it is always current; written atomically.  Returns its path (None when no
    sample came from a named source)."""
    groups: dict[tuple, dict] = {}
    for rec in tf.samples():
        imp = ((rec.meta or {}).get("extra") or {}).get("import") or {}
        if not imp.get("distribution"):
            continue
        key = (imp.get("dataset"), imp.get("distribution"), imp.get("version"))
        g = groups.setdefault(key, {"imp": imp, "splits": {}})
        g["splits"][rec.split] = g["splits"].get(rec.split, 0) + 1
    if not groups:
        return None
    lines = ["# Data in this training folder", "",
             "Written by `segloop import` from the samples' meta.json. Keep this file with the folder: the",
             "terms below apply to the data and to models trained on it.", ""]
    for (dataset, dist, version), g in sorted(groups.items(), key=lambda kv: str(kv[0])):
        imp = g["imp"]
        counts = ", ".join(f"{k} {v}" for k, v in sorted(g["splits"].items()))
        lines += [f"## {dataset}", "",
                  (f"- Read from: `{dist[7:]}` at commit `{version}` (importer `{imp.get('importer')}`); "
                   f"samples: {counts}" if str(dist).startswith("github:") else
                   f"- Read from: `{dist}=={version}` (importer `{imp.get('importer')}`); samples: {counts}"),
                  f"- Licence / terms: {imp.get('licence')}",
                  f"- Labels: {imp.get('labels_origin')}",
                  f"- Cite: {imp.get('citation')}",
                  "- Weights trained on it may ship in a BSD-3 wheel: "
                  + ("yes (keep the notices above)" if imp.get("may_ship_weights") else
                     "**no** (local work only, see docs/data.md)"), ""]
    out = tf.path / DATA_NOTICE_FILE
    try:
        atomic_write_text(out, "\n".join(lines), durable=False)
    except OSError as e:
        raise SegloopError(f"could not write {out} ({e.strerror or e}); the samples were imported, but the folder "
                           "lacks its data notice: check the folder is writable and import again") from None
    return out
