"""The command-line contract, command by command: bad input -> exit status 2 and ONE stderr line.

Every row runs the real command in a subprocess (``python -m segloop.cli`` / ``python -m
segloop_train``), so the exit status and stderr are the ones a shell sees.  For each row:

* the exit status is 2 and stderr holds exactly one line, ``segloop: error: ...`` (the
  trainer: ``segloop-train: error: ...``), which names the flag or the file (the row's
  expected text), and no ``Traceback``;
* nothing is printed on stdout and nothing partial is written: the row's output path (``OUT``)
  does not exist afterwards;
* the inputs are unchanged: every file of the shared inputs (images, packages, a training
  folder) is hashed before and after.

Further tests: a read-only output folder (also when the tests run as root, by dropping the
capability that lets root write anywhere), a full disk (``RLIMIT_FSIZE`` in the child, so
writes fail with EFBIG as on a full file system), Ctrl-C while ``predict`` writes its outputs,
and an image with NaN pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from .conftest import DATA, tiny_spec, tiny_state

# --------------------------------------------------------------------------- inputs shared by the rows


@pytest.fixture(scope="module")
def world(tmp_path_factory, nuclei_image) -> dict[str, Path]:
    """Small real inputs, good and bad, made once: ``{TOKEN: path}`` for the rows' argv."""
    from segloop.core.formats.package import save_package
    from segloop.core.formats.trainfolder import TrainingFolder

    d = tmp_path_factory.mktemp("cli-contract")
    img = nuclei_image[:96, :96]
    labels = tifffile.imread(DATA / "bbbc007_A9_p10d_labels.tif")[:96, :96].astype(np.uint16)
    w = {name: d / file for name, file in (
        ("IMG", "img.tif"), ("LABELS", "labels.tif"), ("FLABELS", "float_labels.tif"),
        ("SHORT", "short_labels.tif"), ("HUGE", "huge_header.tif"), ("TRUNC", "truncated.tif"),
        ("EMPTY", "empty.tif"), ("ALLNAN", "all_nan.tif"), ("TXT", "notes.txt"), ("MISSING", "missing.tif"),
        ("NOFOLDER", "missing-folder"), ("PKG", "pkg"), ("PKG_FOUR", "pkg-depth-four"),
        ("PKG_LIST", "pkg-kwargs-list"), ("PKG_JSON", "pkg-bad-json"), ("TF", "tf"), ("IM", "images-masks"),
        ("EMPTYDIR", "empty-folder"))}
    tifffile.imwrite(w["IMG"], img)
    tifffile.imwrite(w["LABELS"], labels)
    tifffile.imwrite(w["FLABELS"], labels.astype(np.float32) + 0.5)
    tifffile.imwrite(w["SHORT"], labels[:50])
    _lying_tiff(w["HUGE"], 200_000)
    tifffile.imwrite(d / "stack.tif", np.stack([nuclei_image] * 4), photometric="minisblack")  # cut: truncated
    w["TRUNC"].write_bytes((d / "stack.tif").read_bytes()[: (d / "stack.tif").stat().st_size // 3])
    (d / "stack.tif").unlink()
    w["EMPTY"].write_bytes(b"")
    tifffile.imwrite(w["ALLNAN"], np.full((96, 96), np.nan, np.float32))
    w["TXT"].write_text("a regular file, not a folder\n")
    spec = tiny_spec()
    save_package(w["PKG"], spec, tiny_state(spec))
    for token, change in (("PKG_FOUR", {"depth": "four", "base_width": 4, "norm": "batch"}), ("PKG_LIST", [1])):
        shutil.copytree(w["PKG"], w[token])
        meta = json.loads((w[token] / "segloop-model.json").read_text())
        meta["architecture_kwargs"] = change
        (w[token] / "segloop-model.json").write_text(json.dumps(meta))
    shutil.copytree(w["PKG"], w["PKG_JSON"])
    (w["PKG_JSON"] / "segloop-model.json").write_text('{"format": "segloop-model", "name": ')
    tf = TrainingFolder.create(w["TF"], classes=["background", "nucleus"], task="instance", modality="fluorescence")
    tf.add_sample(img, labels, axes="YX", source="img.tif", split="train", sample_id="s1")
    for sub in ("images", "masks"):
        (w["IM"] / sub).mkdir(parents=True)
    tifffile.imwrite(w["IM"] / "images" / "a.tif", img)
    tifffile.imwrite(w["IM"] / "masks" / "a.tif", labels)
    w["EMPTYDIR"].mkdir()
    return w


def _lying_tiff(path: Path, side: int) -> None:
    """A 16 x 16 TIFF whose header then claims ``side`` x ``side`` pixels (ImageWidth / ImageLength patched)."""
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), metadata=None)
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tf:
        tags = {t.code: t for t in tf.pages[0].tags.values()}
    for code in (256, 257):                               # ImageWidth, ImageLength
        tag = tags[code]
        struct.pack_into({3: "<H", 4: "<I"}[int(tag.dtype)], data, tag.valueoffset, side)
    path.write_bytes(bytes(data))


def _substitute(argv, tokens: dict[str, Path]) -> list[str]:
    """Replace ``TOKEN`` and ``TOKEN/rest`` items of ``argv`` by the paths in ``tokens``."""
    out = []
    for item in argv:
        head, sep, rest = item.partition("/")
        out.append(str(tokens[head]) + sep + rest if head in tokens else item)
    return out


def _snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` -> sha256 of its content (or "dir")."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            snap[os.path.relpath(os.path.join(dirpath, n), root)] = "dir"
        for n in filenames:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                snap[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return snap


def run_cli(prog: str, argv: list[str], *, preexec=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The command ``prog`` (``segloop`` or ``segloop-train``) with ``argv``, in a subprocess."""
    module = {"segloop": "segloop.cli", "segloop-train": "segloop_train"}[prog]
    return subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec)


def error_lines(r: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.strip()]


def assert_one_line_error(r: subprocess.CompletedProcess, prog: str, expect: str) -> None:
    """Exit status 2, no traceback, exactly one stderr line ``prog: error: ...`` holding ``expect``."""
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = error_lines(r)
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), r.stderr
    assert expect in lines[0], f"{expect!r} not in {lines[0]!r}"


# --------------------------------------------------------------------------- the table

P = ["predict", "IMG", "--model", "PKG", "--out", "OUT"]
E = ["export", "--image", "IMG", "--labels", "LABELS", "--folder", "OUT"]
LOOP = ["loop", "--images", "IMG", "--ground-truth", "LABELS", "--arch", "unet", "--rounds", "1", "--steps", "1",
        "--out", "OUT"]
T = ["TF", "--arch", "unet", "--out", "OUT"]

#: (command, case, argv, text the error line must hold)
ROWS = [
    ("segloop", "predict-missing-image", ["predict", "MISSING", "--model", "PKG", "--out", "OUT"], "missing.tif"),
    ("segloop", "predict-empty-file", ["predict", "EMPTY", "--model", "PKG", "--out", "OUT"], "empty.tif"),
    ("segloop", "predict-truncated-tiff", ["predict", "TRUNC", "--model", "PKG", "--out", "OUT"], "truncated.tif"),
    ("segloop", "predict-header-claims-200000px", ["predict", "HUGE", "--model", "PKG", "--out", "OUT"],
     "huge_header.tif"),
    ("segloop", "predict-all-nan-image", ["predict", "ALLNAN", "--model", "PKG", "--out", "OUT"], "all_nan.tif"),
    ("segloop", "predict-not-an-image", ["predict", "TXT", "--model", "PKG", "--out", "OUT"], "notes.txt"),
    ("segloop", "predict-tile-0", [*P, "--tile", "0"], "--tile"),
    ("segloop", "predict-tile-not-a-number", [*P, "--tile", "abc"], "--tile"),
    ("segloop", "predict-batch-0", [*P, "--batch", "0"], "--batch"),
    ("segloop", "predict-overlap-negative", [*P, "--overlap", "-1"], "--overlap"),
    ("segloop", "predict-slices-malformed", [*P, "--slices", "5"], "--slices"),
    ("segloop", "predict-unknown-model", ["predict", "IMG", "--model", "no-such-model", "--out", "OUT"],
     "no-such-model"),
    ("segloop", "predict-package-depth-four", ["predict", "IMG", "--model", "PKG_FOUR", "--out", "OUT"],
     "pkg-depth-four"),
    ("segloop", "predict-package-kwargs-a-list", ["predict", "IMG", "--model", "PKG_LIST", "--out", "OUT"],
     "architecture_kwargs"),
    ("segloop", "predict-package-bad-json", ["predict", "IMG", "--model", "PKG_JSON", "--out", "OUT"],
     "segloop-model.json"),
    ("segloop", "predict-out-below-a-file", ["predict", "IMG", "--model", "PKG", "--out", "TXT/sub"], "--out"),
    ("segloop", "predict-out-is-a-file", ["predict", "IMG", "--model", "PKG", "--out", "TXT"], "--out"),
    ("segloop", "measure-missing-labels", ["measure", "MISSING"], "missing.tif"),
    ("segloop", "measure-header-claims-200000px", ["measure", "HUGE"], "huge_header.tif"),
    ("segloop", "measure-float-labels", ["measure", "FLABELS"], "float_labels.tif"),
    ("segloop", "measure-image-shape-differs", ["measure", "LABELS", "--image", "SHORT"], "--image"),
    ("segloop", "measure-csv-below-a-file", ["measure", "LABELS", "--csv", "TXT/m.csv"], "notes.txt/m.csv"),
    ("segloop", "info-unknown-model", ["info", "no-such-model"], "no-such-model"),
    ("segloop", "info-package-depth-four", ["info", "PKG_FOUR"], "pkg-depth-four"),
    ("segloop", "list-models-unknown-flag", ["list-models", "--bogus"], "--bogus"),
    ("segloop", "demo-unknown-model", ["demo", "--model", "no-such-model"], "no-such-model"),
    ("segloop", "demo-screenshot-below-a-file", ["demo", "--screenshot", "TXT/shot.png"], "--screenshot"),
    ("segloop", "demo-unknown-sample", ["demo", "--sample", "bogus"], "--sample"),
    ("segloop", "export-onnx-missing-package", ["export-onnx", "NOFOLDER"], "missing-folder"),
    ("segloop", "export-onnx-tile-0", ["export-onnx", "PKG", "--tile", "0"], "--tile 0"),
    ("segloop", "export-float-labels", ["export", "--image", "IMG", "--labels", "FLABELS", "--folder", "OUT"],
     "--labels"),
    ("segloop", "export-labels-shape-differs", ["export", "--image", "IMG", "--labels", "SHORT", "--folder", "OUT"],
     "short_labels.tif"),
    ("segloop", "export-crop-malformed", [*E, "--crop", "0:10,abc"], "--crop"),
    ("segloop", "export-crop-empty", [*E, "--crop", "50:10,0:10"], "--crop"),
    ("segloop", "export-crop-wrong-axes", [*E, "--crop", "0:10"], "--crop"),
    ("segloop", "export-missing-image", ["export", "--image", "MISSING", "--labels", "LABELS", "--folder", "OUT"],
     "missing.tif"),
    ("segloop", "export-reviewed-float", [*E, "--reviewed", "FLABELS"], "--reviewed"),
    ("segloop", "export-bad-sample-id", [*E, "--id", "../escape"], "--id"),
    ("segloop", "export-existing-sample-id",
     ["export", "--image", "IMG", "--labels", "LABELS", "--folder", "TF", "--id", "s1", "--split", "train"],
     "--replace"),
    ("segloop", "export-folder-below-a-file",
     ["export", "--image", "IMG", "--labels", "LABELS", "--folder", "TXT/tf"], "notes.txt"),
    ("segloop", "validate-missing-folder", ["validate", "NOFOLDER"], "missing-folder"),
    ("segloop", "validate-a-file", ["validate", "TXT"], "notes.txt"),
    ("segloop", "convert-missing-folder", ["convert", "NOFOLDER", "OUT", "--to", "nnunet"], "missing-folder"),
    ("segloop", "convert-not-a-training-folder", ["convert", "IM", "OUT", "--to", "nnunet"], "images-masks"),
    ("segloop", "convert-dataset-id-0", ["convert", "TF", "OUT", "--to", "nnunet", "--dataset-id", "0"],
     "--dataset-id"),
    ("segloop", "convert-out-below-a-file", ["convert", "TF", "TXT/c", "--to", "nnunet"], "notes.txt/c"),
    ("segloop", "convert-out-not-empty", ["convert", "TF", "IM", "--to", "cellpose"], "images-masks"),
    ("segloop", "import-missing-folder", ["import", "images-masks", "NOFOLDER", "--folder", "OUT"], "missing-folder"),
    ("segloop", "import-empty-folder", ["import", "images-masks", "EMPTYDIR", "--folder", "OUT"], "empty-folder"),
    ("segloop", "import-limit-0", ["import", "images-masks", "IM", "--folder", "OUT", "--limit", "0"], "--limit"),
    ("segloop", "import-limit-negative", ["import", "images-masks", "IM", "--folder", "OUT", "--limit", "-1"],
     "--limit"),
    ("segloop", "import-val-fraction-1.5",
     ["import", "images-masks", "IM", "--folder", "OUT", "--val-fraction", "1.5"], "--val-fraction"),
    ("segloop", "import-folder-below-a-file", ["import", "images-masks", "IM", "--folder", "TXT/tf"], "notes.txt"),
    ("segloop", "import-not-nnunet", ["import", "nnunet", "IM", "--folder", "OUT"], "dataset.json"),
    ("segloop", "import-from-missing-wheel", ["import", "bbbc007", "--from", "MISSING", "--folder", "OUT"],
     "--from"),
    ("segloop", "loop-arch-kwargs-depth-x", [*LOOP, "--arch-kwargs", '{"depth": "x"}'], "--arch-kwargs"),
    ("segloop", "loop-arch-kwargs-a-list", [*LOOP, "--arch-kwargs", "[1]"], "--arch-kwargs"),
    ("segloop", "loop-arch-kwargs-depth-2.5", [*LOOP, "--arch-kwargs", '{"depth": 2.5}'], "--arch-kwargs"),
    ("segloop", "loop-rounds-negative", [*LOOP, "--rounds", "-1"], "--rounds"),
    ("segloop", "loop-budget-0", [*LOOP, "--budget", "0"], "--budget"),
    ("segloop", "loop-batch-0", [*LOOP, "--batch", "0"], "--batch"),
    ("segloop", "loop-initial-negative", [*LOOP, "--initial", "-1"], "--initial"),
    ("segloop", "loop-unknown-method", [*LOOP, "--methods", "bogus"], "--methods"),
    ("segloop", "loop-ground-truth-shape-differs",
     ["loop", "--images", "IMG", "--ground-truth", "SHORT", "--arch", "unet", "--out", "OUT"], "short_labels.tif"),
    ("segloop", "loop-missing-image",
     ["loop", "--images", "MISSING", "--ground-truth", "LABELS", "--arch", "unet", "--out", "OUT"], "missing.tif"),
    ("segloop", "loop-out-below-a-file",
     ["loop", "--images", "IMG", "--ground-truth", "LABELS", "--arch", "unet", "--out", "TXT/al"], "notes.txt/al"),
    ("segloop-train", "train-steps-0", [*T, "--steps", "0"], "--steps"),
    ("segloop-train", "train-batch-0", [*T, "--batch", "0"], "--batch"),
    ("segloop-train", "train-lr-0", [*T, "--lr", "0"], "--lr"),
    ("segloop-train", "train-patch-0", [*T, "--patch", "0"], "--patch"),
    ("segloop-train", "train-threads-0", [*T, "--threads", "0"], "--threads"),
    ("segloop-train", "train-arch-kwargs-not-json", [*T, "--arch-kwargs", "depth=4"], "--arch-kwargs"),
    ("segloop-train", "train-arch-kwargs-a-list", [*T, "--arch-kwargs", "[1]"], "--arch-kwargs"),
    ("segloop-train", "train-arch-kwargs-depth-2.5", [*T, "--arch-kwargs", '{"depth": 2.5}'], "--arch-kwargs"),
    ("segloop-train", "train-arch-kwargs-depth-99", [*T, "--arch-kwargs", '{"depth": 99}'], "depth"),
    ("segloop-train", "train-one-class", [*T, "--classes", "background"], "--classes"),
    ("segloop-train", "train-missing-folder", ["NOFOLDER", "--arch", "unet", "--out", "OUT"], "missing-folder"),
    ("segloop-train", "train-unknown-parent", ["TF", "--from", "no-such-model", "--out", "OUT"], "no-such-model"),
    ("segloop-train", "train-out-below-a-file", ["TF", "--arch", "unet", "--out", "TXT/pkg"], "--out"),
]


@pytest.mark.parametrize("prog, argv, expect", [r[0:1] + r[2:] for r in ROWS], ids=[r[1] for r in ROWS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(world, tmp_path, prog, argv, expect):
    out = tmp_path / "out"
    before = _snapshot(world["PKG"].parent)
    r = run_cli(prog, _substitute(argv, {**world, "OUT": out}))
    assert_one_line_error(r, prog, expect)
    assert r.stdout.strip() == "", r.stdout                  # no partial output on stdout either
    assert not out.exists(), sorted(os.listdir(out))         # nothing written
    assert _snapshot(world["PKG"].parent) == before          # inputs, packages, training folder unchanged


# --------------------------------------------------------------------------- read-only output folders


def _without_root_override():
    """preexec_fn: as root, drop CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH so file modes bind root too.

    Dropped from the bounding set, they are gone from the command that ``exec`` starts next.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):                                    # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:             # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed; cannot make a read-only folder "
                                              "bind root")


READ_ONLY_ROWS = [
    ("segloop", "predict-out", ["predict", "IMG", "--model", "PKG", "--out", "RO"], "--out"),
    ("segloop", "predict-out-below", ["predict", "IMG", "--model", "PKG", "--out", "RO/sub"], "--out"),
    ("segloop", "convert", ["convert", "TF", "RO/layout", "--to", "nnunet"], "read-only-dir/layout"),
    ("segloop", "export", ["export", "--image", "IMG", "--labels", "LABELS", "--folder", "RO/tf"],
     "read-only-dir/tf"),
    ("segloop", "import", ["import", "images-masks", "IM", "--folder", "RO/tf"], "read-only-dir/tf"),
    ("segloop", "export-onnx", ["export-onnx", "ROPKG"], "read-only-pkg"),
    ("segloop", "loop", ["loop", "--images", "IMG", "--ground-truth", "LABELS", "--arch", "unet",
                         "--out", "RO/al"], "read-only-dir/al"),
    ("segloop-train", "train", ["TF", "--arch", "unet", "--out", "RO/pkg"], "--out"),
]


@pytest.mark.parametrize("prog, argv, expect", [r[0:1] + r[2:] for r in READ_ONLY_ROWS],
                         ids=[r[1] for r in READ_ONLY_ROWS])
def test_read_only_output_folder_is_one_line_and_left_as_it_was(world, tmp_path, prog, argv, expect):
    ro, ro_pkg = tmp_path / "read-only-dir", tmp_path / "read-only-pkg"
    ro.mkdir()
    shutil.copytree(world["PKG"], ro_pkg)
    preexec = _without_root_override if os.geteuid() == 0 else None
    before = {p: _snapshot(p) for p in (ro, ro_pkg, world["PKG"].parent)}
    for p in (ro_pkg, ro):
        p.chmod(0o555)
    try:
        probe = subprocess.run([sys.executable, "-c", f"open({str(ro / 'probe')!r}, 'w')"], capture_output=True,
                               text=True, preexec_fn=preexec)
        assert probe.returncode != 0 and "PermissionError" in probe.stderr, "the folder is not read-only here"
        r = run_cli(prog, _substitute(argv, {**world, "RO": ro, "ROPKG": ro_pkg}), preexec=preexec)
    finally:
        for p in (ro, ro_pkg):
            p.chmod(0o755)
    assert_one_line_error(r, prog, expect)
    assert {p: _snapshot(p) for p in before} == before


# --------------------------------------------------------------------------- a full disk

FILE_SIZE_LIMIT = 1000          # bytes: every output is larger, the commands' small lock files are not


def _disk_full():
    """preexec_fn: files cannot grow past FILE_SIZE_LIMIT; writes fail with EFBIG (SIGXFSZ ignored)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


#: (command, case, argv); OUT exists beforehand with a file in it when the case ends in "-existing-out"
DISK_FULL_ROWS = [
    ("segloop", "predict", ["predict", "IMG", "--model", "PKG", "--out", "OUT"]),
    ("segloop", "predict-existing-out", ["predict", "IMG", "--model", "PKG", "--out", "OUT", "--uncertainty"]),
    ("segloop", "predict-memmap", ["predict", "IMG", "--model", "PKG", "--out", "OUT", "--memmap", "always"]),
    ("segloop", "export-new-folder", ["export", "--image", "IMG", "--labels", "LABELS", "--folder", "OUT"]),
    ("segloop", "export-existing-folder",
     ["export", "--image", "IMG", "--labels", "LABELS", "--folder", "TFCOPY", "--id", "new", "--split", "train"]),
    ("segloop", "export-onnx", ["export-onnx", "PKGCOPY"]),
    ("segloop", "convert", ["convert", "TF", "OUT", "--to", "nnunet"]),
    ("segloop", "loop", ["loop", "--images", "IMG", "--ground-truth", "LABELS", "--arch", "unet", "--arch-kwargs",
                         '{"depth": 2, "base_width": 4}', "--rounds", "1", "--steps", "1", "--batch", "1",
                         "--patch", "32", "--out", "OUT"]),
]


@pytest.mark.parametrize("prog, argv", [r[0:1] + r[2:] for r in DISK_FULL_ROWS], ids=[r[1] for r in DISK_FULL_ROWS])
def test_full_disk_is_one_line_and_leaves_nothing_partial(world, tmp_path, request, prog, argv):
    out, tf_copy, pkg_copy = tmp_path / "out", tmp_path / "tf", tmp_path / "pkg"
    shutil.copytree(world["TF"], tf_copy)
    shutil.copytree(world["PKG"], pkg_copy)
    if request.node.callspec.id.endswith("-existing-out"):
        out.mkdir()
        (out / "keep.txt").write_text("written before\n")
    watched = [tf_copy, pkg_copy, world["PKG"].parent] + ([out] if out.exists() else [])
    before = {p: _snapshot(p) for p in watched}
    r = run_cli(prog, _substitute(argv, {**world, "OUT": out, "TFCOPY": tf_copy, "PKGCOPY": pkg_copy}),
                preexec=_disk_full)
    assert "Traceback" not in r.stderr and r.returncode == 2, (r.returncode, r.stderr)
    errors = [ln for ln in error_lines(r) if ": error: " in ln]   # progress lines before the failure are fine
    assert len(errors) == 1 and errors[0] == error_lines(r)[-1], r.stderr
    assert errors[0].startswith(f"{prog}: error: "), r.stderr
    assert any(why in errors[0].lower() for why in ("too large", "grew past")), errors[0]    # says why
    assert {p: _snapshot(p) for p in watched} == before     # pre-existing files unchanged, no temporary file
    if out not in before:
        assert not out.exists(), sorted(os.listdir(out))    # a new output folder is not left half written


# --------------------------------------------------------------------------- Ctrl-C, NaN


def test_ctrl_c_while_predict_writes_its_outputs_exits_130_and_writes_nothing(world, nuclei_image, tmp_path):
    """A real SIGINT, sent when the first temporary output file appears (the tiles are all done).

    The contract is all or nothing: exit 130 with no file, or (a signal that came after the
    last rename) exit 0 with every file.  On a loaded machine the signal can miss the write
    window, so up to three tries; at least one must land inside it.
    """
    img = tmp_path / "nuclei.tif"
    tifffile.imwrite(img, nuclei_image)          # 450 x 450: labels, uncertainty and overlay take a moment
    outcomes = []
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        proc = subprocess.Popen([sys.executable, "-m", "segloop.cli", "predict", str(img), "--model",
                                 str(world["PKG"]), "--out", str(out), "--uncertainty", "--overlay"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sent = False
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                writing = any(n.endswith(".tmp") or ".tmp." in n for n in os.listdir(out))
            except OSError:
                writing = False
            if writing and not sent:
                proc.send_signal(signal.SIGINT)
                sent = True
            time.sleep(0.0005)
        stdout, stderr = proc.communicate(timeout=60)
        assert "Traceback" not in stderr
        left = sorted(os.listdir(out)) if out.exists() else []
        if proc.returncode == 130:
            assert "cancelled" in stderr and "->" not in stdout      # no "nuclei.tif: N objects -> ..." line
            assert left == [], left
        else:                                                      # the signal came after the last rename
            assert proc.returncode == 0, (proc.returncode, stderr)
            assert left == sorted(["nuclei_labels.tif", "nuclei_provenance.json", "nuclei_uncertainty.tif",
                                   "nuclei_overlay.png"]), left
        outcomes.append((sent, proc.returncode))
        if sent and proc.returncode == 130:
            break
    assert (True, 130) in outcomes, f"no SIGINT landed while the outputs were written: {outcomes}"


def test_nan_pixels_are_segmented_and_said(world, nuclei_image, tmp_path):
    """Some NaN pixels: segmented (they are 0 after normalization), and stderr says so, naming the file."""
    img = nuclei_image[:96, :96].astype(np.float32)
    img[::7, ::5] = np.nan
    path = tmp_path / "with_nan.tif"
    tifffile.imwrite(path, img)
    r = run_cli("segloop", ["predict", str(path), "--model", str(world["PKG"]), "--out", str(tmp_path / "out")])
    assert r.returncode == 0, r.stderr
    notes = error_lines(r)
    assert len(notes) == 1 and notes[0].startswith(f"{path}: note: ") and "NaN" in notes[0], r.stderr
    assert tifffile.imread(tmp_path / "out" / "with_nan_labels.tif").shape == img.shape
