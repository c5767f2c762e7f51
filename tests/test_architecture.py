"""The architecture guards: import contracts, no private names across modules, module size.

The contracts themselves live in ``pyproject.toml`` (``[tool.importlinter]``) and
are checked by import-linter's ``lint-imports``; the layout they guard is in
``docs/architecture.md``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (ROOT / "src" / "segloop", ROOT / "training" / "segloop_train")
MAX_LINES = 800
LONG_REASON = "Why this module is long:"


def _modules():
    for pkg in PACKAGES:
        yield from sorted(pkg.rglob("*.py"))


def _module_name(path: Path) -> str:
    base = path.relative_to(path.parents[len(path.relative_to(ROOT).parts) - 2])
    parts = list(base.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def private_imports(source: str, module: str) -> list[str]:
    """``from other import _name`` statements of ``module`` that reach into another module."""
    found = []
    pkg = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:                       # relative: resolve against the package
            base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
            target = f"{base}.{node.module}" if node.module else base
        else:
            target = node.module or ""
        if not target.startswith(("segloop", "segloop_train")) or target == module:
            continue
        for alias in node.names:
            if alias.name.startswith("_") and not alias.name.startswith("__"):
                found.append(f"{module}:{node.lineno}: from {target} import {alias.name}")
    return found


def long_modules(paths) -> list[tuple[Path, int]]:
    """``(path, lines)`` of the modules over :data:`MAX_LINES` lines with no reason written near their top."""
    out = []
    for p in paths:
        lines = p.read_text(encoding="utf-8").splitlines()
        if len(lines) > MAX_LINES and not any(LONG_REASON in line for line in lines[:60]):
            out.append((p, len(lines)))
    return out


def test_import_contracts_hold():
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c",
                                           "import sys; from importlinter.cli import lint_imports_command as c; "
                                           "sys.exit(c())"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "Contracts:" in res.stdout, res.stdout + res.stderr        # the contracts were read and checked
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    assert " 0 broken" in res.stdout


def test_no_private_names_across_modules():
    found = []
    for p in _modules():
        found += private_imports(p.read_text(encoding="utf-8"), _module_name(p))
    assert not found, "private names imported from another module:\n" + "\n".join(found)


def test_no_module_over_limit_without_a_reason():
    found = [f"{p.relative_to(ROOT)} ({n} lines)" for p, n in long_modules(_modules())]
    assert not found, (f"modules over {MAX_LINES} lines with no '{LONG_REASON}' near the top "
                       "(split them, or say why):\n" + "\n".join(found))


@pytest.mark.parametrize(("source", "module", "n"), [
    ("from segloop.core.inference.tiling import _grid\n", "segloop.core.inference.model", 1),
    ("from .registry import _known\n", "segloop.core.networks.unet", 1),
    ("from segloop.core.inference.tiling import predict_tiled\n", "segloop.core.inference.model", 0),
    ("from segloop._version import __version__\n", "segloop.core.formats.trainfolder", 0),
    ("from numpy import _private\n", "segloop.core.inference.model", 0),
])
def test_private_import_checker_flags_what_it_should(source, module, n):
    assert len(private_imports(source, module)) == n


def test_long_module_checker_needs_a_reason(tmp_path):
    long = tmp_path / "long.py"
    long.write_text("x = 1\n" * (MAX_LINES + 1))
    reasoned = tmp_path / "reasoned.py"
    reasoned.write_text(f'"""{LONG_REASON} one class, one protocol."""\n' + "x = 1\n" * (MAX_LINES + 1))
    short = tmp_path / "short.py"
    short.write_text("x = 1\n" * MAX_LINES)
    assert long_modules([long, reasoned, short]) == [(long, MAX_LINES + 1)]
