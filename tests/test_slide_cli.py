"""``segloop predict`` on whole slides, from the command line (in-process ``segloop.cli.main``).

One small Aperio-like SVS is built from scikit-image's IHC tissue (real pixels, mirrored into a
1536 x 2048 mosaic, 0.5 µm/px, tiled JPEG, levels 1 and 1/4) whose right-hand 512 px are glass
(RGB 242), so with ``--block 512`` the last column of blocks has no tissue.  The bundled
``nuclei-unet`` segments it on the hematoxylin channel.  Library-level behaviour (stitching,
resume, NGFF layout) is covered by ``test_slide_segment.py``; here: the options, the files they
write, their coordinates, two local workers, reruns, Ctrl-C, and the one-line errors.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from segloop.cli import main
from segloop.core.editing.metrics import instance_scores
from segloop.core.formats.io.geojson import read_geojson

H, W, GLASS_X = 1536, 2048, 1536        # level-0 size; x >= GLASS_X is glass
MODEL = ["--model", "nuclei-unet", "--stain", "hematoxylin", "--block", "512"]
SUMMARY = re.compile(r"^(?P<path>\S+): (?P<n>\d+) objects \(level (?P<level>\d+), (?P<mpp>[\d.]+) µm/px; "
                     r"(?P<run>\d+) of (?P<blocks>\d+) blocks on tissue, (?P<resumed>\d+) resumed, "
                     r"(?P<joined>\d+) joined across blocks\) -> (?P<outputs>.+)$")


def _ihc_mosaic() -> np.ndarray:
    from skimage import data

    t = data.immunohistochemistry()                                       # (512, 512, 3) uint8
    row = np.concatenate([t, t[:, ::-1], t, t[:, ::-1]], axis=1)
    img = np.ascontiguousarray(np.concatenate([row, row[::-1], row], axis=0))
    img[:, GLASS_X:] = 242
    assert img.shape == (H, W, 3)
    return img


def _write_svs(path: Path, img: np.ndarray) -> Path:
    """Aperio layout: level 0 (tiled), a stripped thumbnail, level 1/4 (tiled); JPEG; MPP in the description."""
    h, w = img.shape[:2]
    desc = (f"Aperio Image Library v12.0.15\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90|AppMag = 20|"
            "MPP = 0.5000|Filename = case")
    jpeg = dict(compression="jpeg", photometric="rgb", metadata=None)
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(256, 256), description=desc, **jpeg)
        tw.write(img[::8, ::8], description=f"Aperio Image Library v12.0.15\n{w}x{h} -> {w // 8}x{h // 8}", **jpeg)
        tw.write(img[::4, ::4], tile=(256, 256), description=desc, **jpeg)
    return path


@pytest.fixture(scope="module")
def svs(tmp_path_factory) -> Path:
    return _write_svs(tmp_path_factory.mktemp("slides") / "case.svs", _ihc_mosaic())


def _predict(slide: Path, out: Path, *extra: str) -> int:
    return main(["predict", str(slide), *MODEL, "--out", str(out), *extra])


def _summary(text: str) -> re.Match:
    lines = [ln for ln in text.strip().splitlines() if SUMMARY.match(ln)]
    assert len(lines) == 1, text
    return SUMMARY.match(lines[0])


def _zarr_labels(path: Path) -> np.ndarray:
    return np.asarray(zarr.open_group(str(path), mode="r")["labels/nuclei/0"])


def _xy(features: list[dict]) -> np.ndarray:
    """Every vertex of every polygon, (N, 2) x, y."""
    rings = []
    for f in features:
        g = f["geometry"]
        polys = [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]
        rings += [np.asarray(ring, float) for poly in polys for ring in poly]
    return np.concatenate(rings)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segloop: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture(scope="module")
def full(svs, tmp_path_factory):
    """The whole slide with every format: (out folder, summary match)."""
    out = tmp_path_factory.mktemp("full")
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        code = _predict(svs, out, "--format", "ome-zarr,geojson", "--format", "csv", "--format", "tif")
    assert code == 0, buf.getvalue()
    return out, _summary(buf.getvalue())


# --------------------------------------------------------------------------- outputs


def test_the_summary_line_names_the_counts_and_the_outputs(svs, full):
    out, m = full
    labels = _zarr_labels(out / "case.zarr")
    n = int(m["n"])
    assert n > 500 and n == len(np.unique(labels)) - 1 == labels.max()
    assert (m["level"], m["mpp"]) == ("0", "0.5")
    assert (int(m["run"]), int(m["blocks"])) == (9, 12)                 # the glass column is skipped
    assert int(m["resumed"]) == 0 and int(m["joined"]) > 0
    assert m["outputs"].split(", ") == [str(out / n_) for n_ in
                                        ("case.zarr", "case.geojson", "case_objects.csv", "case_labels.tif")]
    summary = json.loads((out / "case.zarr" / ".segloop-run" / "summary.json").read_text())
    assert summary["n_objects"] == n and summary["blocks_run"] == 9
    assert not labels[:, GLASS_X + 64:].any()                            # glass stays empty


def test_geojson_has_one_detection_per_object_in_level0_pixels(full):
    out, m = full
    doc = json.loads((out / "case.geojson").read_text())
    assert doc["type"] == "FeatureCollection"
    features = read_geojson(out / "case.geojson")
    assert len(features) == len(doc["features"]) == int(m["n"])
    assert {f["properties"]["objectType"] for f in features} == {"detection"}
    xy = _xy(features)
    assert xy[:, 0].min() >= 0 and xy[:, 0].max() <= W and xy[:, 1].min() >= 0 and xy[:, 1].max() <= H
    assert xy[:, 0].max() <= GLASS_X + 64 and xy[:, 1].max() > 0.9 * H   # where the tissue is, all of it


def test_csv_has_one_row_per_object_with_micrometres(full):
    out, m = full
    with (out / "case_objects.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == int(m["n"])
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        for k in ("centroid_x_um", "centroid_y_um", "area_um2", "perimeter_um"):
            assert r[k] != "" and float(r[k]) > 0, (k, r)
    area_px = np.array([float(r["area_px"]) for r in rows])
    area_um2 = np.array([float(r["area_um2"]) for r in rows])
    cx_px = np.array([float(r["centroid_x_px"]) for r in rows])
    cx_um = np.array([float(r["centroid_x_um"]) for r in rows])
    assert np.allclose(area_um2, area_px * 0.25) and np.allclose(cx_um, cx_px * 0.5)   # 0.5 µm/px
    assert cx_px.max() < GLASS_X + 64


def test_tif_equals_the_ome_zarr_labels(full):
    out, _ = full
    tif = tifffile.imread(out / "case_labels.tif")
    assert tif.shape == (H, W)
    assert np.array_equal(tif, _zarr_labels(out / "case.zarr"))


def test_a_region_without_format_writes_zarr_and_geojson_inside_it(svs, tmp_path, capsys):
    x, y, w, h = 300, 200, 900, 700                     # crosses block borders, not aligned to them
    assert _predict(svs, tmp_path, "--region", f"{x},{y},{w},{h}") == 0
    m = _summary(capsys.readouterr().out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.geojson", "case.zarr"]     # the default formats
    labels = _zarr_labels(tmp_path / "case.zarr")
    assert labels.shape == (h, w) and int(m["n"]) == labels.max() > 50
    features = read_geojson(tmp_path / "case.geojson")
    assert len(features) == int(m["n"])
    xy = _xy(features)
    assert xy[:, 0].min() >= x and xy[:, 0].max() <= x + w and xy[:, 1].min() >= y and xy[:, 1].max() <= y + h
    assert xy[:, 0].max() > x + 0.9 * w and xy[:, 1].max() > y + 0.9 * h       # level-0 px, not region px


def test_level_1_runs_there_and_keeps_level0_coordinates(svs, tmp_path, capsys):
    assert _predict(svs, tmp_path, "--level", "1", "--format", "geojson,tif") == 0
    m = _summary(capsys.readouterr().out)
    assert (m["level"], m["mpp"]) == ("1", "2")
    assert tifffile.imread(tmp_path / "case_labels.tif").shape == (H // 4, W // 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.geojson", "case_labels.tif"]   # no zarr asked for
    xy = _xy(read_geojson(tmp_path / "case.geojson"))
    assert xy.min() >= 0 and xy[:, 0].max() <= W and xy[:, 1].max() <= H
    assert xy[:, 0].max() > 0.6 * W and xy[:, 1].max() > 0.9 * H               # spread over level 0, not 512 px


def test_two_local_workers_match_one_process(svs, full, tmp_path, capsys):
    assert _predict(svs, tmp_path, "--cluster", "local:2", "--format", "ome-zarr") == 0
    m = _summary(capsys.readouterr().out)
    one, two = _zarr_labels(full[0] / "case.zarr"), _zarr_labels(tmp_path / "case.zarr")
    n1, n2 = int(full[1]["n"]), int(m["n"])
    assert n2 == two.max() and abs(n1 - n2) <= 0.005 * n1
    assert instance_scores(one, two)["f1@0.5"] >= 0.99
    assert (int(m["run"]), int(m["blocks"])) == (9, 12)


def _kill_a_worker_after_first_block(out: Path, stop: threading.Event, killed: list) -> threading.Thread:
    """SIGKILL one dask worker process (a child of this process) once the run under ``out`` has
    recorded its first finished block; ``killed`` gets (pid, blocks finished by then)."""
    import psutil

    done = out / ".segloop-run" / "done"

    def watch():
        while not stop.is_set():
            if done.is_dir() and any(done.glob("*.json")):
                workers = [c for c in psutil.Process().children(recursive=True)
                           if "spawn_main" in " ".join(c.cmdline())]
                if workers:
                    n_done = len(list(done.glob("*.json")))
                    workers[0].send_signal(signal.SIGKILL)
                    killed.append((workers[0].pid, n_done))
                    return
            stop.wait(0.02)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_a_worker_killed_mid_run_is_replaced_and_the_slide_finishes_the_same(svs, full, tmp_path, capsys):
    killed: list = []
    stop = threading.Event()
    try:
        watcher = _kill_a_worker_after_first_block(tmp_path / "case.zarr", stop, killed)
        code = _predict(svs, tmp_path, "--cluster", "local:2", "--format", "ome-zarr")
    finally:
        stop.set()
        watcher.join()
    assert killed, "no worker process was found to kill"
    pid, n_done = killed[0]
    assert n_done < 12, "the run had finished before the worker was killed"
    m = _summary(capsys.readouterr().out)
    assert code == 0 and (int(m["run"]), int(m["blocks"])) == (9, 12)
    one, two = _zarr_labels(full[0] / "case.zarr"), _zarr_labels(tmp_path / "case.zarr")
    assert abs(int(full[1]["n"]) - int(m["n"])) <= 0.005 * int(full[1]["n"])
    assert instance_scores(one, two)["f1@0.5"] >= 0.99


def test_a_png_tile_exports_geojson_and_csv_like_its_label_tif(tmp_path, capsys):
    """A pathologist's exported field of view (PNG, no pixel size in it) gets the same exports as a slide."""
    from skimage import data
    from skimage.io import imsave

    png = tmp_path / "field.png"
    imsave(png, data.immunohistochemistry(), check_contrast=False)
    out = tmp_path / "res"
    assert main(["predict", str(png), *MODEL[:4], "--pixel-size", "0.5", "--format", "geojson,csv,tif",
                 "--out", str(out)]) == 0
    m = _summary(capsys.readouterr().out)
    n = int(m["n"])
    assert n > 20 and float(m["mpp"]) == 0.5
    assert len(read_geojson(out / "field.geojson")) == n
    with open(out / "field_objects.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n and float(rows[0]["area_um2"]) == pytest.approx(0.25 * float(rows[0]["area_px"]))
    labels = tifffile.imread(out / "field_labels.tif")
    assert labels.shape == (512, 512) and len(np.unique(labels)) - 1 == n
    assert not (out / "field.zarr").exists()                # not asked for
    # the same tile through the image path (one TIFF of labels): the same nuclei
    plain = tmp_path / "plain"
    assert main(["predict", str(png), *MODEL[:4], "--pixel-size", "0.5", "--out", str(plain)]) == 0
    ref = tifffile.imread(plain / "field_labels.tif")
    assert instance_scores(ref, labels)["f1@0.5"] >= 0.97


# --------------------------------------------------------------------------- reruns and Ctrl-C

REGION = ["--region", "0,0,1536,1024", "--format", "ome-zarr,geojson"]      # 2 x 3 blocks, all tissue
SMALL = ["--region", "0,0,1024,512", "--format", "ome-zarr,geojson"]        # 2 blocks


def test_a_rerun_needs_overwrite_and_leaves_the_first_result_alone(svs, tmp_path, capsys):
    assert _predict(svs, tmp_path, *SMALL) == 0
    n = int(_summary(capsys.readouterr().out)["n"])
    before = {p: p.read_bytes() for p in (tmp_path / "case.geojson", tmp_path / "case.zarr" / "labels" / "nuclei"
                                          / "0" / "0.0")}
    assert _predict(svs, tmp_path, *SMALL) == 2
    line = _one_error_line(capsys)
    assert "exists" in line and "--overwrite" in line
    assert {p: p.read_bytes() for p in before} == before
    assert _predict(svs, tmp_path, *SMALL, "--overwrite") == 0
    assert int(_summary(capsys.readouterr().out)["n"]) == n
    assert len(read_geojson(tmp_path / "case.geojson")) == n


def _interrupt_after_first_block(out: Path, stop: threading.Event) -> threading.Thread:
    """Send this process SIGINT (Ctrl-C) once the run under ``out`` has recorded its first finished block."""
    done = out / ".segloop-run" / "done"

    def watch():
        while not stop.is_set():
            if done.is_dir() and any(done.glob("*.json")):
                os.kill(os.getpid(), signal.SIGINT)
                return
            stop.wait(0.02)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_ctrl_c_keeps_finished_blocks_and_a_rerun_resumes(svs, tmp_path, capsys):
    ref = tmp_path / "ref"
    assert _predict(svs, ref, *REGION) == 0
    capsys.readouterr()
    out = tmp_path / "cut"
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda *a: interrupted.append(a))   # a late SIGINT lands here
    stop = threading.Event()
    try:
        watcher = _interrupt_after_first_block(out / "case.zarr", stop)
        code = _predict(svs, out, *REGION)
    finally:
        stop.set()
        watcher.join()
        signal.signal(signal.SIGINT, previous)
    assert not interrupted, "the run ended before Ctrl-C reached it"
    err = capsys.readouterr().err
    assert code == 130 and "cancelled" in err
    done = list((out / "case.zarr" / ".segloop-run" / "done").glob("*.json"))
    assert 1 <= len(done) < 6 and not (out / "case.geojson").exists()
    assert _predict(svs, out, *REGION) == 0
    m = _summary(capsys.readouterr().out)
    assert int(m["resumed"]) == len(done) and int(m["blocks"]) == 6
    assert np.array_equal(_zarr_labels(out / "case.zarr"), _zarr_labels(ref / "case.zarr"))
    assert len(read_geojson(out / "case.geojson")) == int(m["n"])


def test_ctrl_c_on_a_slide_says_the_run_resumes(svs, tmp_path, capsys):
    """The message after Ctrl-C must not claim that nothing was written: the finished blocks are kept."""
    out = tmp_path / "cut"
    previous = signal.signal(signal.SIGINT, lambda *a: None)
    stop = threading.Event()
    try:
        watcher = _interrupt_after_first_block(out / "case.zarr", stop)
        code = _predict(svs, out, *REGION)
    finally:
        stop.set()
        watcher.join()
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and len(err) == 1, err
    assert "got no output" not in err[0] and "resume" in err[0], err[0]


FULL_DISK = r"""
set -u
mount -t tmpfs -o size=$SIZE none "$MNT"
head -c "$FILL" /dev/zero > "$MNT/filler"                 # what is left free: less than the result needs
"$SEGLOOP" predict "$SLIDE" --model nuclei-unet --stain hematoxylin --block 512 \
    --region 0,0,1536,1024 --format ome-zarr --out "$MNT/res" 2> "$LOGS/first.err"
echo "$?" > "$LOGS/first.rc"
find "$MNT/res" -path '*done*' -name '*.json' | wc -l > "$LOGS/done.count"
rm "$MNT/filler"                                          # space again: the same command resumes
"$SEGLOOP" predict "$SLIDE" --model nuclei-unet --stain hematoxylin --block 512 \
    --region 0,0,1536,1024 --format ome-zarr --out "$MNT/res" > "$LOGS/second.out" 2> "$LOGS/second.err"
echo "$?" > "$LOGS/second.rc"
cp -r "$MNT/res/case.zarr" "$LOGS/case.zarr"
"""


def test_a_full_disk_mid_run_is_one_line_keeps_finished_blocks_and_a_rerun_resumes(svs, tmp_path, capsys):
    """A real full disk: a 16 MB tmpfs in a private mount namespace (``unshare``; without root, in a
    user namespace), with all but 1.5 MB of it taken, so the run stops partway through its 6 blocks."""
    import shutil
    import subprocess
    import sys

    unshare = shutil.which("unshare")
    assert unshare, "needs util-linux's unshare"
    ref = tmp_path / "ref"
    assert _predict(svs, ref, *REGION) == 0
    capsys.readouterr()
    mnt, logs = tmp_path / "mnt", tmp_path / "logs"
    mnt.mkdir()
    logs.mkdir()
    env = {**os.environ, "SIZE": "16m", "FILL": str(16 * 2**20 - 1536 * 1024), "MNT": str(mnt), "LOGS": str(logs),
           "SEGLOOP": str(Path(sys.executable).with_name("segloop")), "SLIDE": str(svs)}
    # root: a mount namespace of its own; anyone else: a user namespace that maps them to root in it
    ns = ["--mount"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--mount"]
    r = subprocess.run([unshare, *ns, "bash", "-c", FULL_DISK], env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0 and (logs / "second.rc").is_file(), r.stderr[-2000:]
    first = (logs / "first.err").read_text().strip().splitlines()
    assert (logs / "first.rc").read_text().strip() == "2", first
    assert len(first) == 1 and "No space left on device" in first[0] and "Traceback" not in first[0], first
    assert "free some space" in first[0]
    n_done = int((logs / "done.count").read_text())
    assert (logs / "second.rc").read_text().strip() == "0", (logs / "second.err").read_text()[-2000:]
    m = _summary((logs / "second.out").read_text())
    assert int(m["resumed"]) == n_done < 6 and int(m["blocks"]) == 6
    assert np.array_equal(_zarr_labels(logs / "case.zarr"), _zarr_labels(ref / "case.zarr"))


# --------------------------------------------------------------------------- errors


def _assert_refused(capsys, code: int, out: Path, message: str) -> str:
    line = _one_error_line(capsys)
    assert code == 2 and message in line, line
    assert not out.exists(), sorted(out.rglob("*"))                   # the command made it; nothing is left
    return line


def test_a_truncated_slide_is_one_line_and_writes_nothing(svs, tmp_path, capsys):
    data = svs.read_bytes()
    for i, size in enumerate((len(data) // 2, len(data) - 30_000)):    # directories lost; tile data lost
        cut = tmp_path / f"cut{i}.svs"
        cut.write_bytes(data[:size])
        out = tmp_path / f"o{i}"
        line = _assert_refused(capsys, _predict(cut, out), out, cut.name)
        assert "truncated" in line


def test_random_bytes_named_ndpi_is_one_line_and_writes_nothing(tmp_path, capsys):
    junk = tmp_path / "junk.ndpi"
    junk.write_bytes(np.random.default_rng(0).bytes(64 * 1024))
    out = tmp_path / "o"
    line = _assert_refused(capsys, _predict(junk, out), out, "junk.ndpi")
    assert "OpenSlide" in line


@pytest.mark.parametrize("extra, message", [
    (["--region", "1500,1000,1000,1000"], "not inside the slide (2048 x 1536 px at level 0)"),
    (["--region", "10,10,0,100"], "not inside the slide"),
    (["--region", "1,2,3"], "--region '1,2,3': write x,y,w,h"),
    (["--level", "7"], "level 7 does not exist; the slide has levels 0..1"),
    (["--level", "-1"], "--level -1"),
    (["--format", "bogus"], "--format 'bogus': choose from ome-zarr, geojson, csv, tif"),
    (["--format", "geojson,bogus"], "--format 'bogus'"),
    (["--block", "100"], "--block 100: use at least 256"),
    (["--cluster", "local:0"], "write local:N"),
    (["--cluster", "two"], "write local:N"),
    (["--cluster", "local:1", "--scheduler", "tcp://127.0.0.1:1"], "not both"),
])
def test_bad_slide_options_are_one_line_errors_with_no_output(svs, tmp_path, capsys, extra, message):
    out = tmp_path / "o"
    _assert_refused(capsys, _predict(svs, out, *extra), out, message)


def test_a_scheduler_that_does_not_answer_is_one_line_error(svs, tmp_path, capsys):
    out = tmp_path / "o"
    line = _assert_refused(capsys, _predict(svs, out, "--scheduler", "tcp://127.0.0.1:1"), out, "does not answer")
    assert "tcp://127.0.0.1:1" in line and "start it or check the address" in line


def test_an_out_folder_under_a_file_is_refused_cleanly(svs, tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a folder")
    out = blocker / "results"
    code = _predict(svs, out)
    line = _one_error_line(capsys)
    assert code == 2 and "--out" in line and "cannot create the folder" in line
    assert blocker.read_text() == "not a folder" and sorted(tmp_path.iterdir()) == [blocker]
    assert _predict(svs, blocker) == 2                                 # --out is the file itself
    assert "is a file" in _one_error_line(capsys)
    assert blocker.read_text() == "not a folder"
