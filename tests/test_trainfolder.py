"""Training folder v1: round trips, bad input, splits, crash safety, full and read-only disks, concurrency."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from segloop import __version__
from segloop.core.formats.trainfolder import (
    FORMAT,
    FORMAT_VERSION,
    AddResult,
    TrainingFolder,
    validate_folder,
)
from segloop.errors import (
    ExportError,
    FolderLockedError,
    FolderVersionError,
    InvalidImageError,
    InvalidLabelsError,
    SampleExistsError,
    TrainingFolderError,
)

from . import _trainfolder_child as child

CHILD = Path(__file__).with_name("_trainfolder_child.py")
TIFS = ("image.tif", "labels.tif", "reviewed.tif")
SEMANTIC = ("background", "tumour", "stroma")


def _blobs(shape, n, seed=0, dtype=np.uint16):
    """Instance labels: ``n`` rectangles with ids 1..n (later ones overwrite earlier ones)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, dtype)
    for i in range(1, n + 1):
        lo = [int(rng.integers(0, max(1, s - 8))) for s in shape]
        lab[tuple(slice(a, a + int(rng.integers(2, 9))) for a in lo)] = i
    return lab


def _debris(folder: TrainingFolder) -> list[str]:
    return sorted(n for n in os.listdir(folder.samples_dir) if n.startswith("."))


def _snapshot(root: Path) -> dict:
    """Every file and folder under ``root`` with its content hash (directory mtimes excluded)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def _check_consistent(path: Path) -> dict[str, str]:
    """The folder validates and every listed sample is complete with matching hashes: id -> write_id."""
    report = validate_folder(path)
    assert report.ok, report.summary()
    seen = {}
    for rec in TrainingFolder.open(path).samples():
        for name in TIFS:
            assert hashlib.sha256((rec.path / name).read_bytes()).hexdigest() == rec.meta["files"][name], rec
        seen[rec.sample_id] = rec.meta["write_id"]
    return seen


def _run_child(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHILD), *map(str, args)], capture_output=True, timeout=120, **kw)


# --------------------------------------------------------------------------- round trips


def _case(kind: str):
    rng = np.random.default_rng(3)
    if kind == "grey":
        image = rng.integers(0, 256, (96, 80)).astype(np.uint8)
        labels = rng.integers(0, 3, (96, 80)).astype(np.uint8)
        reviewed = rng.random((96, 80)) > 0.3
        return "semantic", image, labels, reviewed, {"axes": "YX", "crop": [[100, 196], [40, 120]]}, np.uint8
    if kind == "rgb":
        image = rng.integers(0, 256, (70, 90, 3)).astype(np.uint8)
        labels = _blobs((70, 90), 40, seed=1, dtype=np.uint32)
        labels[labels > 0] += 70_000                      # ids above 65,535 must survive
        return "instance", image, labels, None, {"axes": "YXC"}, np.uint32
    if kind == "ct":
        image = rng.integers(-1024, 3000, (12, 40, 48)).astype(np.int16)
        labels = rng.integers(0, 3, (12, 40, 48)).astype(np.int64)
        return ("semantic", image, labels, None,
                {"axes": "ZYX", "spacing": (2.5, 0.7, 0.7), "slice_range": (30, 42)}, np.uint8)
    image = rng.normal(0, 1, (50, 60)).astype(np.float32)
    labels = _blobs((50, 60), 12, seed=2, dtype=np.int32)
    return "instance", image, labels, None, {"axes": "YX"}, np.uint16


@pytest.mark.parametrize("kind", ["grey", "rgb", "ct", "float"])
def test_round_trip_keeps_pixels_dtypes_and_metadata(tmp_path, kind):
    task, image, labels, reviewed, opts, label_dtype = _case(kind)
    classes = SEMANTIC if task == "semantic" else ("background", "cell")
    path = tmp_path / "Trainings Daten ü" / "年 set"
    tf = TrainingFolder.create(path, classes=classes, task=task, modality="histology")
    originals = [image.copy(), labels.copy(), None if reviewed is None else reviewed.copy()]
    model = {"name": "nuclei-unet", "version": "1.2.0", "sha256": "ab" * 32}
    res = tf.add_sample(image, labels, reviewed, source="/data/Gewebe ü 1.ome.tif", source_sha256="cd" * 32,
                        model=model, corrections={"merged": 2, "pixels_changed": 150}, split="train",
                        extra={"note": "ü"}, **opts)
    assert isinstance(res, AddResult) and res.notice is None and len(res.records) == 1
    sid = res.records[0].sample_id
    assert sid == "gewebe-u-1_0001"

    tf2 = TrainingFolder.open(path)                      # a fresh reader
    assert tf2.info.classes == classes and tf2.info.task == task and tf2.info.modality == "histology"
    assert [r.sample_id for r in tf2.samples()] == [sid]
    s = tf2.read_sample(sid)
    assert s.image.dtype == image.dtype and np.array_equal(s.image, image)
    assert s.labels.dtype == label_dtype and np.array_equal(s.labels, labels)
    want_rev = np.ones(labels.shape, np.uint8) if reviewed is None else reviewed.astype(np.uint8)
    assert s.reviewed.dtype == np.uint8 and np.array_equal(s.reviewed, want_rev)
    for given, kept in zip((image, labels, reviewed), originals):   # the caller's arrays are untouched
        assert kept is None or np.array_equal(given, kept)

    m = s.meta
    assert m["schema"] == "segloop-sample" and m["schema_version"] == 1 and m["sample_id"] == sid
    assert m["axes"] == opts["axes"] and m["shape"] == list(image.shape)
    assert m["dtypes"] == {"image": str(image.dtype), "labels": np.dtype(label_dtype).name, "reviewed": "uint8"}
    assert m["source"] == "/data/Gewebe ü 1.ome.tif" and m["source_sha256"] == "cd" * 32
    assert m["model"] == model and m["corrections"] == {"merged": 2, "pixels_changed": 150}
    assert m["split"] == "train" and m["extra"] == {"note": "ü"} and m["segloop_version"] == __version__
    assert m["crop"] == opts.get("crop") and m["holdout"] is None
    assert m["spacing"] == (list(opts["spacing"]) if "spacing" in opts else None)
    assert m["slice_range"] == (list(opts["slice_range"]) if "slice_range" in opts else None)
    assert m["created"].endswith("+00:00")
    for name in TIFS:
        assert m["files"][name] == hashlib.sha256((path / "samples" / sid / name).read_bytes()).hexdigest()
    assert m["reviewed_fraction"] == pytest.approx(want_rev.mean())
    if task == "instance":
        assert m["n_objects"] == len(np.unique(labels)) - 1
    else:
        assert m["class_pixels"] == {c: int((labels == i).sum()) for i, c in enumerate(classes)}
    info = json.loads((path / "segloop-training.json").read_text())
    assert info["format"] == FORMAT and info["format_version"] == FORMAT_VERSION
    assert info["created_by"] == f"segloop {__version__}" and info["classes"] == list(classes)
    assert tf2.validate().ok


def test_array_likes_bool_labels_and_unicode_only_sources(tmp_path):
    da = pytest.importorskip("dask.array")
    tf = TrainingFolder.create(tmp_path / "f", classes=("background", "fg"), task="semantic")
    image = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    labels = image % 7 == 0
    res = tf.add_sample(da.from_array(image, chunks=16), labels, axes="YX", source="切片.tif", split="val")
    s = tf.read_sample(res.records[0])
    assert res.records[0].sample_id == "sample_0001"      # no ASCII in the name: a valid generic id
    assert np.array_equal(s.image, image) and s.labels.dtype == np.uint8 and np.array_equal(s.labels, labels)


# --------------------------------------------------------------------------- bad input


def _good(**changes):
    kw = {"image": np.zeros((40, 40), np.uint16), "labels": np.zeros((40, 40), np.uint16), "axes": "YX",
          "split": "train"}
    kw.update(changes)
    return kw


@pytest.mark.parametrize("changes, error, match", [
    ({"labels": np.zeros((40, 41), np.uint16)}, InvalidLabelsError, r"\(40, 41\).*\(40, 40\)"),
    ({"image": np.zeros((40, 40, 3), np.uint8), "axes": "YXC", "labels": np.zeros((40, 30), np.uint8)},
     InvalidLabelsError, r"\(40, 30\).*\(40, 40\)"),
    ({"labels": np.ones((40, 40), np.float32)}, InvalidLabelsError, "float"),
    ({"labels": np.full((40, 40), -1, np.int32)}, InvalidLabelsError, "negative"),
    ({"image": np.full((40, 40), np.nan, np.float32)}, InvalidImageError, "NaN"),
    ({"image": np.zeros((0, 40), np.uint16), "labels": np.zeros((0, 40), np.uint16)}, InvalidImageError, "empty"),
    ({"axes": "XYZ"}, InvalidImageError, "axes"),
    ({"reviewed": np.full((40, 40), 2, np.uint8)}, InvalidLabelsError, "0 .* 1"),
    ({"split": "holdout"}, TrainingFolderError, "split"),
    ({"sample_id": ".hidden"}, TrainingFolderError, "not valid"),
    ({"sample_id": "Grüße"}, TrainingFolderError, "not valid"),
    ({"crop": [[0, 10], [0, 40]]}, TrainingFolderError, "crop"),
])
def test_bad_input_raises_a_typed_error_and_writes_nothing(tmp_path, changes, error, match):
    tf = TrainingFolder.create(tmp_path / "f", classes=("background", "cell"), task="instance")
    kw = _good(**changes)
    with pytest.raises(error, match=match):
        tf.add_sample(kw.pop("image"), kw.pop("labels"), kw.pop("reviewed", None), **kw)
    assert tf.samples() == [] and _debris(tf) == []


def test_semantic_label_out_of_range_names_the_value(tmp_path):
    tf = TrainingFolder.create(tmp_path / "f", classes=SEMANTIC, task="semantic")
    labels = np.zeros((40, 40), np.uint8)
    labels[3, 3] = 5
    with pytest.raises(InvalidLabelsError, match=r"label value 5 .* 3 classes"):
        tf.add_sample(np.zeros((40, 40), np.uint8), labels, axes="YX", split="train")
    assert tf.samples() == []


def test_create_and_open_rules(tmp_path):
    afile = tmp_path / "a file.txt"
    afile.write_text("x")
    with pytest.raises(TrainingFolderError, match="is a file"):
        TrainingFolder.create(afile, classes=SEMANTIC, task="semantic")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("x")
    with pytest.raises(TrainingFolderError, match="not empty"):
        TrainingFolder.create(busy, classes=SEMANTIC, task="semantic")
    with pytest.raises(TrainingFolderError, match="task"):
        TrainingFolder.create(tmp_path / "t", classes=SEMANTIC, task="panoptic")
    with pytest.raises(TrainingFolderError, match="no such folder"):
        TrainingFolder.open(tmp_path / "missing")
    with pytest.raises(TrainingFolderError, match="not a segloop training folder"):
        TrainingFolder.open(busy)

    path = tmp_path / "f"
    TrainingFolder.create(path, classes=SEMANTIC, task="semantic")
    with pytest.raises(TrainingFolderError, match="already a training folder"):
        TrainingFolder.create(path, classes=SEMANTIC, task="semantic")
    again = TrainingFolder.create(path, classes=SEMANTIC, task="semantic", exist_ok=True)
    assert again.info.classes == SEMANTIC
    with pytest.raises(TrainingFolderError, match=r"classes \['background', 'tumour', 'stroma'\]"):
        TrainingFolder.create(path, classes=("background", "x"), task="semantic", exist_ok=True)
    with pytest.raises(TrainingFolderError, match="task 'semantic'"):
        TrainingFolder.create(path, classes=SEMANTIC, task="instance", exist_ok=True)
    assert TrainingFolder.open(path / "segloop-training.json").info.task == "semantic"


def test_newer_or_broken_folders_raise_on_open_and_are_reported_by_validate(tmp_path):
    path = tmp_path / "f"
    TrainingFolder.create(path, classes=SEMANTIC, task="semantic")
    info = json.loads((path / "segloop-training.json").read_text())
    (path / "segloop-training.json").write_text(json.dumps({**info, "format_version": 2}))
    with pytest.raises(FolderVersionError, match="newer segloop.*upgrade"):
        TrainingFolder.open(path)
    rep = validate_folder(path)
    assert not rep.ok and "newer" in rep.problems[0].message

    (path / "segloop-training.json").write_text('{"format": "segloop-training", "format_ver')
    with pytest.raises(TrainingFolderError, match="cannot be read"):
        TrainingFolder.open(path)
    assert not validate_folder(path).ok

    (path / "segloop-training.json").unlink()
    assert "not a segloop training folder" in validate_folder(path).problems[0].message
    (tmp_path / "file.tif").write_bytes(b"II*\x00")
    assert "is a file" in validate_folder(tmp_path / "file.tif").problems[0].message
    assert "no such folder" in validate_folder(tmp_path / "nowhere").problems[0].message


def test_a_tampered_sample_is_named_by_validate_and_refused_by_read(tmp_path):
    tf = TrainingFolder.create(tmp_path / "f", classes=("background", "cell"), task="instance")
    image = np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8)
    for i in range(2):
        tf.add_sample(image, _blobs((64, 64), 5, seed=i), axes="YX", split="train", sample_id=f"s{i}")
    assert tf.validate().ok and tf.read_sample("s1", verify=True)
    p = tf.samples_dir / "s1" / "labels.tif"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    rep = tf.validate()
    assert not rep.ok and {pr.sample_id for pr in rep.problems} == {"s1"}
    assert "labels.tif" in rep.problems[0].message and "sha256" in rep.problems[0].message
    with pytest.raises(TrainingFolderError, match=r"'s1'.*labels\.tif.*changed or truncated"):
        tf.read_sample("s1", verify=True)
    tf.read_sample("s0", verify=True)
    (tf.samples_dir / "s0" / "reviewed.tif").unlink()
    assert any(pr.sample_id == "s0" and "missing reviewed.tif" in pr.message for pr in tf.validate().problems)


# --------------------------------------------------------------------------- the sample index


def _three_samples(path: Path) -> TrainingFolder:
    tf = TrainingFolder.create(path, classes=("background", "cell"), task="instance")
    for i, (sid, split) in enumerate((("a", "train"), ("b", "train"), ("c", "val"))):
        tf.add_sample(np.full((48, 48), i, np.uint8), _blobs((48, 48), 4, seed=i), axes="YX", split=split,
                      sample_id=sid)
    return tf


def _make_old(tf: TrainingFolder) -> None:
    """Turn ``tf`` into a folder as segloop wrote it before the sample index: no index file, no
    ``sample_index`` in segloop-training.json."""
    (tf.path / "segloop-samples.json").unlink()
    info = json.loads((tf.path / "segloop-training.json").read_text())
    del info["sample_index"]
    (tf.path / "segloop-training.json").write_text(json.dumps(info))


def test_the_index_lists_each_sample_with_its_split_and_meta_hash(tmp_path):
    tf = _three_samples(tmp_path / "f")
    index = json.loads((tf.path / "segloop-samples.json").read_text())
    assert index["format"] == "segloop-sample-index" and index["format_version"] == 1
    assert {k: v["split"] for k, v in index["samples"].items()} == {"a": "train", "b": "train", "c": "val"}
    for sid, entry in index["samples"].items():
        meta = tf.samples_dir / sid / "meta.json"
        assert entry["meta_sha256"] == hashlib.sha256(meta.read_bytes()).hexdigest()
        assert entry["write_id"] == json.loads(meta.read_text())["write_id"]
    assert json.loads((tf.path / "segloop-training.json").read_text())["sample_index"] == "segloop-samples.json"
    assert TrainingFolder.open(tf.path).info.indexed and tf.validate().ok


def test_a_sample_deleted_or_copied_in_by_hand_or_an_edited_split_is_named_by_validate(tmp_path):
    import shutil

    tf = _three_samples(tmp_path / "f")
    shutil.rmtree(tf.samples_dir / "b")                         # deleted by hand
    rep = tf.validate()
    assert not rep.ok and [p.sample_id for p in rep.problems] == ["b"]
    assert "missing" in rep.problems[0].message and "--fix" in rep.problems[0].message
    assert rep.n_samples == 2

    other = TrainingFolder.create(tmp_path / "other", classes=("background", "cell"), task="instance")
    other.add_sample(np.zeros((48, 48), np.uint8), _blobs((48, 48), 2), axes="YX", split="train", sample_id="x")
    shutil.copytree(other.samples_dir / "x", tf.samples_dir / "x")       # copied in by hand: a valid sample
    meta_p = tf.samples_dir / "a" / "meta.json"
    meta_p.write_text(json.dumps({**json.loads(meta_p.read_text()), "split": "val"}))   # a split edited by hand
    rep = tf.validate()
    by_id = {p.sample_id: p.message for p in rep.problems}
    assert sorted(by_id) == ["a", "b", "x"], rep.summary()
    assert "not in the sample index" in by_id["x"]
    assert "split is 'val' in meta.json but 'train' in the sample index" in by_id["a"]

    changes = tf.rebuild_index()                                 # segloop validate --fix
    assert len(changes) == 3 and all(any(c.startswith(f"{sid}: ") for c in changes) for sid in "abx")
    rep = tf.validate()
    assert rep.ok and rep.split_counts == {"train": 1, "val": 2, "test": 0}, rep.summary()
    assert tf.rebuild_index() == [] and tf.validate().ok         # nothing left to fix


def test_a_folder_written_before_the_index_still_opens_validates_and_gets_one_on_its_first_write(tmp_path):
    tf = _three_samples(tmp_path / "f")
    _make_old(tf)
    old = TrainingFolder.open(tf.path)
    assert not old.info.indexed and [r.sample_id for r in old.samples()] == ["a", "b", "c"]
    rep = old.validate()
    assert rep.ok and any("no sample index" in n and "--fix" in n for n in rep.notes), rep.summary()
    res = old.add_sample(np.zeros((48, 48), np.uint8), _blobs((48, 48), 3), axes="YX", split="test", sample_id="d")
    assert res.notice is None                                    # a silent upgrade: nothing was lost
    assert sorted(json.loads((tf.path / "segloop-samples.json").read_text())["samples"]) == ["a", "b", "c", "d"]
    assert TrainingFolder.open(tf.path).info.indexed
    rep = old.validate()
    assert rep.ok and not any("no sample index" in n for n in rep.notes)
    (tf.samples_dir / "c" / "meta.json").unlink()
    (tf.samples_dir / "c").rename(tmp_path / "c-elsewhere")    # from now on a deletion is noticed
    assert [p.sample_id for p in old.validate().problems] == ["c"]

    _make_old(tf)                                                # or: segloop validate --fix writes it
    changes = TrainingFolder.open(tf.path).rebuild_index()
    assert len(changes) == 1 and "no sample index" in changes[0] and "3 samples" in changes[0]
    assert TrainingFolder.open(tf.path).info.indexed and tf.validate().ok


def test_a_lost_unreadable_or_newer_index_is_reported_and_never_silently_trusted(tmp_path):
    tf = _three_samples(tmp_path / "f")
    index = tf.path / "segloop-samples.json"
    good = index.read_bytes()
    index.unlink()                                               # the folder says it keeps one
    rep = tf.validate()
    assert [p.sample_id for p in rep.problems] == [None] and "index segloop-samples.json is missing" in rep.problems[0].message
    res = tf.add_sample(np.zeros((48, 48), np.uint8), _blobs((48, 48), 3), axes="YX", split="train", sample_id="d")
    assert "was missing, so it was rebuilt" in res.notice and tf.validate().ok

    index.write_text('{"format": "segloop-sample-index", "format_ver')    # truncated
    rep = tf.validate()
    assert not rep.ok and rep.problems[0].sample_id is None and "--fix" in rep.problems[0].message
    assert tf.rebuild_index()[0].startswith("the sample index segloop-samples.json could not be read")
    assert tf.validate().ok

    index.write_bytes(good.replace(b'"format_version": 1', b'"format_version": 2'))
    before = _snapshot(tf.path)
    with pytest.raises(FolderVersionError, match="newer segloop"):
        tf.add_sample(np.zeros((48, 48), np.uint8), _blobs((48, 48), 3), axes="YX", split="train", sample_id="e")
    with pytest.raises(FolderVersionError, match="newer segloop"):
        tf.rebuild_index()
    assert _snapshot(tf.path) == before and not tf.validate().ok


def test_an_add_cut_short_between_its_sample_and_the_index_is_recovered_not_reported(tmp_path):
    """The state a crash leaves after the new folder is renamed in and before the index is replaced:
    a committed journal, an index without the sample (made here by putting back the old index)."""
    tf = _three_samples(tmp_path / "f")
    index = tf.path / "segloop-samples.json"
    before = index.read_bytes()
    tf.add_sample(np.zeros((48, 48), np.uint8), _blobs((48, 48), 3), axes="YX", split="train", sample_id="d")
    meta = json.loads((tf.samples_dir / "d" / "meta.json").read_text())
    journal = tf.samples_dir / ".txn-0123456789abcdef0123456789abcdef.json"
    journal.write_text(json.dumps({"puts": [{"id": "d", "write_id": meta["write_id"]}], "asides": {},
                                   "created": meta["created"]}))
    index.write_bytes(before)
    (tf.path / ".segloop-samples.json.0123456789ab.tmp").write_bytes(before[:20])   # the index write, cut short
    rep = tf.validate()
    assert rep.ok and rep.n_samples == 4, rep.summary()
    assert any("interrupted" in n for n in rep.notes)
    assert tf.cleanup() == 2 and not journal.exists()
    assert not (tf.path / ".segloop-samples.json.0123456789ab.tmp").exists()
    assert "d" in json.loads(index.read_text())["samples"] and tf.validate().ok


def test_the_trainer_skips_what_validate_names_and_says_why(tmp_path):
    import shutil

    from segloop_train.folders import SkippedSampleWarning, load_folders

    tf = _three_samples(tmp_path / "f")
    shutil.rmtree(tf.samples_dir / "b")
    other = TrainingFolder.create(tmp_path / "other", classes=("background", "cell"), task="instance")
    other.add_sample(np.zeros((48, 48), np.uint8), _blobs((48, 48), 2), axes="YX", split="train", sample_id="x")
    shutil.copytree(other.samples_dir / "x", tf.samples_dir / "x")
    with pytest.warns(SkippedSampleWarning) as caught:
        loaded = load_folders(tf.path)
    said = " ".join(str(w.message) for w in caught)
    assert "'b' skipped" in said and "missing" in said and "'x' skipped" in said and "not in the sample index" in said
    assert sorted(s.split(":")[0] for s in loaded.folders[0].skipped) == ["b", "x"]
    assert [s.meta["sample_id"] for s in loaded.train] == ["a"] and len(loaded.val) == 1

    (tf.path / "segloop-samples.json").write_text("not json")    # folder-level: refused, as validate says
    with pytest.raises(TrainingFolderError, match="segloop-samples.json cannot be read"):
        load_folders(tf.path)


def test_validate_checks_labels_against_the_folder_classes(tmp_path):
    tf = TrainingFolder.create(tmp_path / "f", classes=SEMANTIC, task="semantic")
    labels = np.zeros((40, 40), np.uint8)
    labels[:5] = 2
    tf.add_sample(np.zeros((40, 40), np.uint8), labels, axes="YX", split="train", sample_id="a")
    assert tf.validate().ok
    info_path = tf.path / "segloop-training.json"
    info_path.write_text(json.dumps({**json.loads(info_path.read_text()), "classes": ["background", "tumour"]}))
    rep = validate_folder(tf.path)
    assert [(p.sample_id, "class 2" in p.message) for p in rep.problems] == [("a", True)]
    (tf.samples_dir / "a" / "meta.json").write_text("{not json")
    assert any("meta.json cannot be read" in p.message for p in validate_folder(tf.path).problems)


def test_existing_id_needs_replace_and_replace_swaps_the_sample(tmp_path):
    tf = TrainingFolder.create(tmp_path / "f", classes=("background", "cell"), task="instance")
    a = np.full((200, 160), 7, np.uint16)
    b = np.full((200, 160), 9, np.uint16)
    lab = _blobs((200, 160), 10)
    first = tf.add_sample(a, lab, axes="YX", source="one.tif", sample_id="x")   # < 3 sources: x + x-val
    assert [r.sample_id for r in first.records] == ["x", "x-val"]
    with pytest.raises(SampleExistsError, match="replace=True"):
        tf.add_sample(b, lab, axes="YX", split="train", sample_id="x")
    with pytest.raises(SampleExistsError, match="only in case"):
        tf.add_sample(b, lab, axes="YX", split="train", sample_id="X", replace=True)
    with pytest.raises(TrainingFolderError, match="replace that sample instead"):
        tf.add_sample(b, lab, axes="YX", split="val", sample_id="x-val", replace=True)
    assert np.array_equal(tf.read_sample("x").image, a)
    tf.add_sample(b, lab, axes="YX", split="test", sample_id="x", replace=True)
    assert [(r.sample_id, r.split) for r in tf.samples()] == [("x", "test")]   # its old held-out block went too
    assert np.array_equal(tf.read_sample("x").image, b) and _debris(tf) == [] and tf.validate().ok


# --------------------------------------------------------------------------- splits


def _draw(identity: str) -> float:
    return int(hashlib.sha256(identity.encode()).hexdigest()[:8], 16) / 2**32


def _fill(tf: TrainingFolder, sources, shape=(64, 64)):
    out = []
    for k, src in enumerate(sources):
        image = np.full(shape, k, np.uint8)
        out.append(tf.add_sample(image, _blobs(shape, 3, seed=k), axes="YX", source=src))
    return out


def test_fewer_than_three_sources_hold_out_a_separate_block(tmp_path):
    tf = TrainingFolder.create(tmp_path / "f", classes=("background", "cell"), task="instance")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (200, 300, 3)).astype(np.uint8)       # longest axis: X (columns)
    labels = _blobs((200, 300), 30)
    reviewed = np.ones((200, 300), bool)
    reviewed[:, :10] = False
    kept = reviewed.copy()
    res = tf.add_sample(image, labels, reviewed, axes="YXC", source="a.svs", crop=[[1000, 1200], [500, 800]])
    main, val = res.records
    assert (main.sample_id, main.split, val.sample_id, val.split) == ("a_0001", "train", "a_0001-val", "val")
    assert "fewer than 3 source images" in res.notice and "columns (x >= 225)" in res.notice
    assert np.array_equal(reviewed, kept)                                 # caller's mask untouched
    m, v = tf.read_sample(main), tf.read_sample(val)
    assert np.array_equal(v.image, image[:, 225:]) and np.array_equal(v.labels, labels[:, 225:])
    assert np.array_equal(v.reviewed, reviewed[:, 225:].astype(np.uint8))
    assert np.array_equal(m.image, image) and np.array_equal(m.labels, labels)
    assert not m.reviewed[:, 225 - 8:].any()                              # block + 8-pixel gap
    assert np.array_equal(m.reviewed[:, :217], reviewed[:, :217].astype(np.uint8))
    assert m.meta["holdout"]["partner"] == "a_0001-val" and v.meta["holdout"]["partner"] == "a_0001"
    assert m.meta["holdout"]["pair"] == v.meta["holdout"]["pair"]
    assert v.meta["crop"] == [[1000, 1200], [725, 800]]
    assert tf.validate().ok

    small = tf.add_sample(np.zeros((100, 100), np.uint8), _blobs((100, 100), 3), axes="YX", source="b.tif")
    assert [r.split for r in small.records] == ["train"] and "too small" in small.notice


def test_three_or_more_sources_put_a_whole_source_in_val_and_crops_follow_their_source(tmp_path):
    tf = TrainingFolder.create(tmp_path / "f", classes=("background", "cell"), task="instance")
    trains = [s for s in (f"train-{i}.tif" for i in range(100)) if _draw(s) >= 0.2][:4]
    vals = [s for s in (f"val-{i}.tif" for i in range(100)) if _draw(s) < 0.2][:1]
    _fill(tf, trains[:2], shape=(40, 40))                       # < 3 sources, too small to hold out
    third = _fill(tf, [trains[2]])[0]
    assert third.records[0].split == "val" and "none in validation" in third.notice  # forced: no val source yet
    assert _fill(tf, [trains[3]])[0].records[0].split == "train"                     # hash says train
    assert _fill(tf, [vals[0]])[0].records[0].split == "val"                         # hash says val
    for src, want in ((trains[2], "val"), (trains[0], "train"), (vals[0], "val")):   # more crops: same split
        assert {r.split for res in _fill(tf, [src, src, src]) for r in res.records} == {want}
    counts = tf.split_counts()
    assert counts == {"train": 6, "val": 8, "test": 0} and tf.validate().ok
    by_source: dict[str, set] = {}
    for r in tf.samples():
        by_source.setdefault(r.meta["source"], set()).add(r.split)
    assert all(len(s) == 1 for s in by_source.values())


def test_splits_are_deterministic_across_runs(tmp_path):
    sources = [f"img{i}.tif" for i in (3, 1, 4, 1, 5, 9, 2, 6, 5, 3)]
    runs = []
    for run in range(2):
        tf = TrainingFolder.create(tmp_path / f"run{run}", classes=("background", "cell"), task="instance")
        _fill(tf, sources, shape=(160, 160))
        runs.append([(r.sample_id, r.split, r.meta["files"]["labels.tif"]) for r in tf.samples()])
    assert runs[0] == runs[1]
    assert {s for _, s, _ in runs[0]} == {"train", "val"}


def test_a_later_crop_does_not_train_on_pixels_held_out_for_validation(tmp_path):
    tf = TrainingFolder.create(tmp_path / "f", classes=("background", "cell"), task="instance")
    tf.add_sample(np.zeros((256, 128), np.uint8), _blobs((256, 128), 4), axes="YX", source="s.tif",
                  crop=[[0, 256], [0, 128]])                      # holds out rows 192..256 of the source
    res = tf.add_sample(np.zeros((128, 128), np.uint8), _blobs((128, 128), 4), axes="YX", source="s.tif",
                        crop=[[160, 288], [0, 128]])             # overlaps that block
    main = tf.read_sample(res.records[0])
    assert res.records[0].split == "train"
    assert main.reviewed[:24].all()                               # source rows 160..184: trained on before
    assert not main.reviewed[24:104].any()                        # source rows 184..264: held-out block + gap
    assert main.meta["split_guard"]["overlapping"] == ["s_0001-val"] and "overlap" in res.notice
    assert tf.validate().ok


def test_fingerprint_tracks_the_samples(tmp_path):
    fps = []
    for run in range(2):
        tf = TrainingFolder.create(tmp_path / f"r{run}", classes=("background", "cell"), task="instance")
        _fill(tf, ["a.tif", "b.tif", "c.tif"])
        fps.append(tf.fingerprint())
    assert fps[0] == fps[1] and len(fps[0]) == 64
    tf.add_sample(np.ones((64, 64), np.uint8), _blobs((64, 64), 3), axes="YX", split="train",
                  sample_id="b_0001", replace=True)
    assert tf.fingerprint() != fps[0]


# --------------------------------------------------------------------------- locking and leftovers


def test_cleanup_removes_leftovers_of_killed_writers(tmp_path):
    tf = TrainingFolder.create(tmp_path / "f", classes=("background", "cell"), task="instance")
    tf.add_sample(np.zeros((40, 40), np.uint8), _blobs((40, 40), 2), axes="YX", split="train", sample_id="a")
    stale = tf.samples_dir / ".tmp-0123456789abcdef0123456789abcdef"
    stale.mkdir()
    (stale / "image.tif").write_bytes(b"II*\x00partial")
    assert [r.sample_id for r in tf.samples()] == ["a"]
    rep = tf.validate()
    assert rep.ok and any("interrupted" in n for n in rep.notes)
    assert tf.cleanup() == 1 and _debris(tf) == []
    assert not any("interrupted" in n for n in tf.validate().notes)


def test_a_held_lock_gives_folder_locked_error(tmp_path):
    from filelock import FileLock

    tf = TrainingFolder.create(tmp_path / "f", classes=("background", "cell"), task="instance")
    with FileLock(str(tf.path / ".segloop.lock")):
        t0 = time.perf_counter()
        with pytest.raises(FolderLockedError, match="another segloop writer"):
            tf.add_sample(np.zeros((40, 40), np.uint8), np.zeros((40, 40), np.uint16), axes="YX",
                          split="train", lock_timeout=0.2)
        assert time.perf_counter() - t0 >= 0.2
    assert tf.samples() == [] and _debris(tf) == []
    tf.add_sample(np.zeros((40, 40), np.uint8), np.zeros((40, 40), np.uint16), axes="YX", split="train")
    assert len(tf.samples()) == 1


def test_two_processes_writing_at_once_get_unique_ids_and_a_valid_folder(tmp_path):
    tf = TrainingFolder.create(tmp_path / "f", classes=("background", "cell"), task="instance")
    procs = [subprocess.Popen([sys.executable, str(CHILD), "writer", str(tf.path), name, "20"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name in ("alpha", "beta")]
    for p in procs:
        assert p.stdout.readline() == b"ready\n", p.stderr.read()
    for p in procs:                                       # start both at once
        p.stdin.write(b"go\n")
        p.stdin.flush()
    written = {}
    for name, p in zip(("alpha", "beta"), procs):
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
        written[name] = out.decode().split()
    ids = written["alpha"] + written["beta"]
    assert len(ids) == 40 and len(set(ids)) == 40
    samples = tf.samples()
    assert sorted(r.sample_id for r in samples) == sorted(ids)
    assert all(r.sample_id.startswith("scan_") for r in samples)      # one id sequence, shared by both
    order = [r.meta["extra"]["writer"] for r in sorted(samples, key=lambda r: r.meta["created"])]
    assert sum(a != b for a, b in zip(order, order[1:])) >= 2          # the writes really interleaved
    assert tf.validate().ok and tf.split_counts()["val"] >= 1


# --------------------------------------------------------------------------- crashes


@pytest.mark.slow
def test_sigkill_at_50_plus_moments_never_leaves_a_partial_sample(tmp_path):
    """Writer processes adding in a loop are SIGKILLed after seeded, stratified delays spread over
    1.25x the duration of their first add (measured first, the same way), counted from the writer's
    start, for each kind of write: so the kills fall at all phases of an add (checks, tif writes,
    journal, renames).
    The server is started with sys.executable; forking skips Python's start for each kill."""
    modes = ("new", "pair", "replace", "vol")
    folders = {}
    for mode in modes:
        folders[mode] = tf = TrainingFolder.create(tmp_path / f"{mode} ü", classes=child.CLASSES, task="instance")
        if mode == "replace":                                 # fixed, fixed-val and fixed2 exist
            for i in range(2):
                arrays, opts = child.make_sample(mode, i)
                tf.add_sample(arrays["image"], arrays["labels"], **opts)
    per_mode = 14

    def kill_loop(mode: str) -> tuple[int, int]:
        tf, rng = folders[mode], np.random.default_rng([20240521, modes.index(mode)])
        kills = mid_write = 0
        server = subprocess.Popen([sys.executable, str(CHILD), "serve", str(tf.path), mode],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def start(seed: int, n: int) -> int:
            server.stdin.write(f"{seed} {n}\n".encode())
            server.stdin.flush()
            ready = server.stdout.readline().split()
            assert ready[:1] == [b"ready"], (ready, server.stderr.read())
            return int(ready[1])

        try:
            assert server.stdout.readline() == b"serving\n", server.stderr.read()
            times = []
            for seed in (901, 902, 903):                       # one add, as the writers run it
                start(seed, 1)
                t0 = time.perf_counter()
                assert server.stdout.readline() == b"done\n"
                times.append(time.perf_counter() - t0)
                assert server.stdout.readline() == b"exit 0\n"
            duration = float(np.median(times))
            for j in range(per_mode):
                delay = (j + rng.random()) / per_mode * 1.25 * duration
                pid = start(j + 1, 0)
                time.sleep(delay)
                os.kill(pid, signal.SIGKILL)
                assert server.stdout.readline() == f"exit {-signal.SIGKILL}\n".encode(), "the writer was not killed"
                kills += 1
                mid_write += bool(_debris(tf))
                seen = _check_consistent(tf.path)             # readers see only complete samples ...
                tf.cleanup()
                assert _debris(tf) == []                      # ... and recovery keeps exactly those
                assert {r.sample_id: r.meta["write_id"] for r in tf.samples()} == seen
                if mode == "replace":
                    assert {"fixed", "fixed-val", "fixed2"} <= seen.keys()
                    main, val = tf.read_sample("fixed"), tf.read_sample("fixed-val")
                    a, b = main.meta["holdout"]["block"]
                    assert np.array_equal(main.image[a:b], val.image)    # the pair is from one export
        finally:
            server.stdin.close()
            server.wait(timeout=60)
        return kills, mid_write

    with ThreadPoolExecutor(len(modes)) as pool:              # the four folders are independent
        results = list(pool.map(kill_loop, modes))
    kills, mid_write = (sum(r[i] for r in results) for i in (0, 1))
    assert kills >= 50
    assert kills // 4 <= mid_write < kills, f"{mid_write} of {kills} kills hit a write in progress"


def _stored_index(path: Path) -> dict[str, str]:
    """The sample index file as stored: id -> write_id."""
    return {k: v["write_id"] for k, v in json.loads((path / "segloop-samples.json").read_text())["samples"].items()}


def test_a_replace_killed_at_every_rename_keeps_the_old_or_the_new_sample(tmp_path):
    """os.rename and os.replace are wrapped in the child to SIGKILL it right after the N-th rename
    of a replace of a sample with its held-out block: journal, 2 asides, 2 new folders, the index.
    Killed between the last folder and the index, or before the journal is gone, the folder still
    validates (the journal says what the index lacks) and recovery records the new samples."""
    new_image = np.random.default_rng(99).integers(0, 4096, (512, 512)).astype(np.uint16)
    for n in range(7):
        tf = TrainingFolder.create(tmp_path / f"n{n}", classes=child.CLASSES, task="instance")
        arrays, opts = child.make_sample("replace", 0)
        tf.add_sample(arrays["image"], arrays["labels"], **opts)
        old = _check_consistent(tf.path)
        assert sorted(old) == ["fixed", "fixed-val"] and _stored_index(tf.path) == old
        proc = _run_child("crashat", tf.path, n, 99)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
        assert _debris(tf)
        seen = _check_consistent(tf.path)               # validate: ok, no sample missing or unexpected
        assert seen.keys() == old.keys()
        if n < 5:
            assert seen == old
        else:
            assert all(seen[k] != old[k] for k in old)
        assert _stored_index(tf.path) == (seen if n == 6 else old)     # n = 5: the index is behind the disk
        tf.cleanup()
        assert _debris(tf) == [] and _check_consistent(tf.path) == seen
        assert _stored_index(tf.path) == seen                         # recovery rolled the index forward
        want = new_image if n >= 5 else arrays["image"]
        main, val = tf.read_sample("fixed"), tf.read_sample("fixed-val")
        assert np.array_equal(main.image, want) and np.array_equal(val.image, want[384:])


# --------------------------------------------------------------------------- full and read-only disks


def test_a_full_disk_gives_export_error_and_leaves_nothing(tmp_path):
    import resource

    tf = TrainingFolder.create(tmp_path / "f", classes=child.CLASSES, task="instance")
    before = _snapshot(tf.path)

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, 32 * 1024))

    proc = _run_child("write", tf.path, preexec_fn=small_files)
    out = proc.stdout.decode()
    assert proc.returncode == 3 and out.startswith("ERR ExportError|"), out + proc.stderr.decode()
    assert "size" in out and "Nothing partial" in out
    assert _snapshot(tf.path) == before and tf.samples() == [] and tf.validate().ok
    assert _run_child("write", tf.path).stdout.startswith(b"OK written_0001")   # without the limit it works


def _chmod_tree(root: Path, dirs: int, files: int) -> None:
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, dirs)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), files)


def _drop_root_powers() -> None:
    """preexec_fn: empty the capability bounding set, so the exec'd child runs as uid 0 with no
    capabilities and file permissions apply to it as to anyone (root ignores chmod otherwise)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(64):
        libc.prctl(24, cap, 0, 0, 0)                        # PR_CAPBSET_DROP; unknown caps just fail


def test_a_read_only_folder_gives_export_error_and_changes_nothing(tmp_path):
    as_root = os.geteuid() == 0
    tf = TrainingFolder.create(tmp_path / "read only ü", classes=child.CLASSES, task="instance")
    tf.add_sample(np.zeros((40, 40), np.uint8), np.zeros((40, 40), np.uint16), axes="YX", split="train")
    lock = tf.path / ".segloop.lock"
    try:
        for variant in ("lock file writable", "no lock file"):
            if variant == "no lock file":
                lock.unlink()
            _chmod_tree(tf.path, 0o555, 0o444)
            if variant == "lock file writable":
                os.chmod(lock, 0o666)
            before = _snapshot(tf.path)
            if as_root:
                proc = _run_child("write", tf.path, preexec_fn=_drop_root_powers)
                out = proc.stdout.decode()
                assert proc.returncode == 3, out + proc.stderr.decode()
            else:
                with pytest.raises(ExportError) as err:
                    tf.add_sample(np.zeros((40, 40), np.uint8), np.zeros((40, 40), np.uint16), axes="YX",
                                  split="train")
                out = f"ERR ExportError|{err.value}"
            assert out.startswith("ERR ExportError|") and "permission denied" in out, out
            assert "choose a folder you can write to" in out
            if variant == "no lock file":
                assert ".segloop.lock" in out
            assert _snapshot(tf.path) == before
            _chmod_tree(tf.path, 0o755, 0o644)
            assert tf.validate().ok and len(tf.samples()) == 1
    finally:
        _chmod_tree(tf.path, 0o755, 0o644)
