"""Runs the ```python blocks of one Markdown file for tests/test_docs.py, in one namespace.

Started once per Markdown file (``python tests/_docs_python.py``) in that file's working
directory.  It reads one JSON request per line on stdin, ``{"source": ..., "file": ...,
"line": ...}``, executes the source in a namespace shared by every block of the file, and
answers with one line on stdout: ``MARKER`` followed by ``{"ok": bool, "stdout": ...,
"stderr": ..., "error": traceback or null}``.  Anything else the block writes straight to the
file descriptors (a subprocess, a C library) reaches the caller as ordinary output lines.

Tracebacks point at the Markdown file and line: each block is compiled with the file's name
and padded with blank lines to its first line in the file.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback

MARKER = "\x00docs-test-result "


def run_block(source: str, file: str, line: int, namespace: dict) -> dict:
    """Execute one block in ``namespace``; return what it printed and its traceback, if any.

    Parameters
    ----------
    source : str
        The block's code.
    file, line : str, int
        Where the block's first code line is in the Markdown file (for tracebacks).
    namespace : dict
        Globals shared by the blocks of one file.

    Returns
    -------
    dict
        ``ok``, ``stdout``, ``stderr`` and ``error`` (the formatted traceback, or None).
    """
    out, err = io.StringIO(), io.StringIO()
    error = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = compile("\n" * (line - 1) + source, file, "exec")
            exec(code, namespace)
        except BaseException:          # noqa: BLE001 - reported to the test, which fails
            error = traceback.format_exc()
    return {"ok": error is None, "stdout": out.getvalue(), "stderr": err.getvalue(), "error": error}


def main() -> int:
    """Serve blocks from stdin until it closes."""
    namespace: dict = {"__name__": "__main__"}
    for raw in sys.stdin:
        if not raw.strip():
            continue
        req = json.loads(raw)
        result = run_block(req["source"], req["file"], req["line"], namespace)
        sys.__stdout__.write(MARKER + json.dumps(result) + "\n")
        sys.__stdout__.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
