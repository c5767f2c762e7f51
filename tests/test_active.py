"""Active learning: region grids, scores, strategies, ranking across images, and the saved state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest

from segloop.core.formats.package import ModelPackage
from segloop.core.inference.model import Model
from segloop.core.inference.uncertainty import estimate_uncertainty
from segloop.core.learning.features import region_features
from segloop.core.learning.pipeline import rank_images, rank_regions
from segloop.core.learning.regions import REGION_KINDS, Region, region_grid, score_regions
from segloop.core.learning.state import ActiveLearningState
from segloop.core.learning.strategies import (
    STRATEGIES,
    DiversityStrategy,
    RandomStrategy,
    Strategy,
    UncertaintyStrategy,
    get_strategy,
)
from segloop.errors import ActiveLearningError, ActiveLearningStateError, ExportError

from .conftest import tiny_spec, tiny_state


@pytest.fixture(scope="module")
def tiny():
    spec = tiny_spec()
    state = tiny_state(spec)
    state["head.weight"] = state["head.weight"] * 30       # an untrained head is ~constant; make it respond
    return Model(ModelPackage(spec, state), device="cpu", precision="fp32")


def _coverage(shape, boxes):
    count = np.zeros(shape, np.int32)
    for b in boxes:
        count[tuple(slice(a, z) for a, z in b)] += 1
    return count


# --------------------------------------------------------------------------- grids


@pytest.mark.parametrize("shape,size,kind", [((100, 130), 32, "tile"), ((64, 64), 32, "tile"), ((20, 300), 64, "tile"),
                                             ((10, 10), 32, "tile"), ((100, 130), 32, "slice"),
                                             ((5, 70, 40), 32, "tile"), ((5, 70, 40), 32, "slice"),
                                             ((40, 70, 50), 16, "subvolume")])
def test_region_grid_covers_every_pixel_exactly_once_without_slivers(shape, size, kind):
    boxes = region_grid(shape, size, kind=kind)
    assert (_coverage(shape, boxes) == 1).all()
    assert len({Region("i", b).key for b in boxes}) == len(boxes)
    for b in boxes:
        assert len(b) == len(shape)
        for (a, z), n in zip(b[-2:], shape[-2:]):
            if kind != "slice":
                assert min(n, size / 2) <= z - a < 1.5 * size        # no slivers, no huge edge tiles
    if len(shape) == 3 and kind in ("tile", "slice"):
        assert all(b[0][1] - b[0][0] == 1 for b in boxes)            # one plane each
        assert len(boxes) == shape[0] * len(region_grid(shape[1:], size, kind=kind))


def test_region_grid_merges_a_short_remainder_and_keeps_a_long_one():
    assert [b[1] for b in region_grid((10, 100), 32)] == [(0, 32), (32, 64), (64, 100)]   # 4 px joins
    assert [b[1] for b in region_grid((10, 120), 32)] == [(0, 32), (32, 64), (64, 96), (96, 120)]
    with pytest.raises(ActiveLearningError, match="region kind"):
        region_grid((10, 10), 4, kind="blob")
    with pytest.raises(ActiveLearningError, match="positive integer"):
        region_grid((10, 10), 0)
    assert REGION_KINDS == ("tile", "slice", "subvolume")


# --------------------------------------------------------------------------- scores


def test_score_regions_mean_boundary_and_object_counts():
    labels = np.zeros((64, 64), np.uint16)
    labels[8:24, 8:24] = 1
    labels[8:24, 26:30] = 2                # touches no other object; both in the first tile
    labels[40:50, 28:40] = 3               # crosses the tile border at x = 32
    sem = (labels > 0).astype(np.uint8)    # semantic: 1 and 2 merge? no - a 2 px gap keeps them apart
    unc = np.full(labels.shape, 0.1, np.float32)
    from skimage.segmentation import find_boundaries

    unc[find_boundaries(labels, mode="thick")] = 0.9
    boxes = region_grid(labels.shape, 32)
    regions = score_regions(unc, labels, boxes, image="img")
    by_box = {r.box: r for r in regions}
    top_left, bottom_left = by_box[((0, 32), (0, 32))], by_box[((32, 64), (0, 32))]
    empty = by_box[((0, 32), (32, 64))]
    assert top_left.n_objects == 2 and bottom_left.n_objects == 1 and by_box[((32, 64), (32, 64))].n_objects == 1
    assert empty.n_objects == 0 and empty.boundary_uncertainty == 0 and empty.mean_uncertainty == pytest.approx(0.1)
    assert top_left.boundary_uncertainty == pytest.approx(0.9)
    assert top_left.mean_uncertainty == pytest.approx(float(unc[:32, :32].mean()), rel=1e-6)
    assert all(r.score == r.mean_uncertainty for r in regions) and top_left.image == "img"
    assert score_regions(unc, sem, boxes)[0].n_objects == 2          # connected parts of a class
    # The object's border on the tile edge (x = 32) counts for the tile beside it.
    right = score_regions(unc, labels, [((32, 64), (32, 64))], score="boundary")[0]
    assert right.score == right.boundary_uncertainty == pytest.approx(0.9)
    with pytest.raises(ActiveLearningError, match="unknown score"):
        score_regions(unc, labels, boxes, score="max")


def test_the_uncertainty_strategy_ranks_an_injected_hotspot_first():
    rng = np.random.default_rng(0)
    unc = rng.random((96, 96)).astype(np.float32) * 0.3
    unc[40:56, 70:80] = 1.0                                      # inside tile (32-64, 64-96)
    labels = np.zeros(unc.shape, np.uint8)
    regions = score_regions(unc, labels, region_grid(unc.shape, 32), image="a")
    picked = UncertaintyStrategy().select(regions, 3)
    assert picked[0].box == ((32, 64), (64, 96))
    assert [r.score for r in picked] == sorted((r.score for r in regions), reverse=True)[:3]
    # Excluded keys are never proposed, whatever their score.
    again = UncertaintyStrategy().select(regions, 3, exclude={picked[0].key})
    assert picked[0] not in again and again[0] == picked[1]


# --------------------------------------------------------------------------- strategies


def _regions(n=40):
    rng = np.random.default_rng(1)
    return [Region("img", ((0, 8), (8 * i, 8 * i + 8)), score=float(s)) for i, s in enumerate(rng.random(n))]


def test_random_is_seed_reproducible_and_respects_exclude_and_k():
    regions = _regions()
    a = RandomStrategy().select(regions, 10, seed=3)
    assert a == RandomStrategy().select(regions, 10, seed=3)
    assert a != RandomStrategy().select(regions, 10, seed=4)
    assert len(set(r.key for r in a)) == 10
    ex = {r.key for r in regions[:35]}
    rest = RandomStrategy().select(regions, 10, exclude=ex, seed=3)
    assert sorted(r.key for r in rest) == sorted(r.key for r in regions[35:])   # only 5 are open
    assert RandomStrategy().select(regions, 0) == []
    with pytest.raises(ActiveLearningError, match="non-negative"):
        RandomStrategy().select(regions, -1)


def test_k_center_picks_one_region_per_feature_cluster():
    # 12 regions in three tight feature clusters; cluster A holds the 4 highest scores.
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    cluster = np.repeat([0, 1, 2], 4)
    feats = centres[cluster] + np.random.default_rng(0).normal(0, 0.1, (12, 2))
    scores = np.where(cluster == 0, 0.9, np.where(cluster == 1, 0.5, 0.4)) + np.arange(12) * 1e-3
    regions = [Region("img", ((0, 8), (8 * i, 8 * i + 8)), score=float(s)) for i, s in enumerate(scores)]
    top = UncertaintyStrategy().select(regions, 3, features=feats)
    assert {cluster[regions.index(r)] for r in top} == {0}           # uncertainty alone: all from A
    div = DiversityStrategy(pool_factor=4).select(regions, 3, features=feats)
    assert [cluster[regions.index(r)] for r in div][0] == 0           # the best score first
    assert {cluster[regions.index(r)] for r in div} == {0, 1, 2}
    # Reviewed regions count as covered: with one of A reviewed, the first pick is from another cluster.
    div2 = DiversityStrategy().select(regions, 2, features=feats, exclude={regions[3].key})
    assert {cluster[regions.index(r)] for r in div2} == {1, 2}
    # pool_factor=1 is pure uncertainty.
    assert DiversityStrategy(pool_factor=1).select(regions, 3, features=feats) == top


def test_diversity_without_features_spreads_in_space_and_warns():
    regions = [Region("img", ((0, 8), (8 * i, 8 * i + 8)), score=1.0 - i * 1e-3) for i in range(40)]
    with pytest.warns(UserWarning, match="without region features"):
        picked = DiversityStrategy().select(regions, 2)
    # The pool is the 2 * 4 best (x = 0 .. 56): the best one, then the farthest from it - not its neighbour.
    assert [r.box[1][0] for r in picked] == [0, 56]


def test_get_strategy_and_the_protocol():
    assert set(STRATEGIES) == {"random", "uncertainty", "diversity"}
    for name in STRATEGIES:
        s = get_strategy(name)
        assert isinstance(s, Strategy) and s.name == name
    assert get_strategy("diversity", pool_factor=2).pool_factor == 2
    with pytest.raises(ActiveLearningError, match="random, uncertainty, diversity"):
        get_strategy("entropy-max")


# --------------------------------------------------------------------------- features and several images


def test_region_features_are_pooled_bottleneck_activations(tiny, nuclei_image):
    img = np.ascontiguousarray(nuclei_image[:128, :128])
    img[:64, :64] = img[64:, 64:]                     # two regions with the same pixels
    boxes = region_grid(img.shape, 64)
    f = region_features(tiny, img, boxes)
    width = 4 * 2 ** 2                                # base_width * 2**depth
    assert f.shape == (4, width) and f.dtype == np.float32
    scale = np.abs(f).max()
    assert scale > 0
    np.testing.assert_allclose(f[0], f[3], atol=1e-4 * scale)
    assert np.abs(f[0] - f[1]).max() > 0.05 * scale
    # A region larger than the tile is cut into tiles; identical halves give the half's feature.
    wide = np.concatenate([img[:64, :64]] * 4, axis=1)      # 64 x 256, tile 64
    g = region_features(tiny, wide, [((0, 64), (0, 256)), ((0, 64), (0, 64))])
    np.testing.assert_allclose(g[0], g[1], atol=1e-4 * scale)


def test_region_features_report_progress_and_can_be_cancelled(tiny, nuclei_image):
    import threading

    from segloop.errors import Cancelled

    img = np.ascontiguousarray(nuclei_image[:128, :128])
    boxes = region_grid(img.shape, 64)
    seen = []
    region_features(tiny, img, boxes, progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 4) and seen[-1] == (4, 4)
    stop = threading.Event()
    seen.clear()

    def progress(done, total):
        seen.append(done)
        if done == 2:
            stop.set()

    with pytest.raises(Cancelled):
        region_features(tiny, img, boxes, progress=progress, cancel=stop)
    assert seen == [0, 1, 2]


def test_rank_images_pools_regions_of_a_folder_and_selects_jointly(tiny, nuclei_image, tmp_path):
    import tifffile

    a, b = nuclei_image[:96, :96], nuclei_image[200:264, 250:378]
    folder = tmp_path / "imgs"
    folder.mkdir()
    tifffile.imwrite(folder / "alpha.tif", a)
    tifffile.imwrite(folder / "beta.tif", b)
    (folder / "notes.txt").write_text("not an image")
    seen = []
    picked = rank_images(tiny, folder, size=32, k=6, progress=lambda d, t: seen.append((d, t)))
    # The same as scoring each image by hand and selecting from the pooled regions.
    pooled = []
    for name, img in (("alpha", a), ("beta", b)):
        res = estimate_uncertainty(tiny, img)
        pooled += score_regions(res.combined(), res.labels, region_grid(img.shape, 32), image=name)
    assert picked == UncertaintyStrategy().select(pooled, 6)
    assert seen[-1] == (2000, 2000)
    excluded = rank_images(tiny, {"alpha": a, "beta": b}, size=32, k=6, exclude={picked[0].key})
    assert picked[0] not in excluded and excluded[0] == picked[1]
    rnd = rank_images(tiny, [folder / "alpha.tif", folder / "beta.tif"], size=32, k=6, strategy="random", seed=5)
    assert rnd == RandomStrategy().select(pooled, 6, seed=5)
    div = rank_images(tiny, {"alpha": a, "beta": b}, size=32, k=4, strategy="diversity", pool_factor=2)
    assert len({r.key for r in div}) == 4 and {r.key for r in div} <= {r.key for r in pooled}


def test_rank_regions_pool_scope_leaves_out_done_regions_and_keeps_the_maps(tiny, nuclei_image):
    """What the widget runs: done regions dropped first, features for the diversity pool only."""
    img = nuclei_image[:96, :128]
    res = estimate_uncertainty(tiny, img)
    regions = score_regions(res.combined(), res.labels, region_grid(img.shape, 32), image="x")
    seen = []
    ranking = rank_regions(tiny, {"x": img}, size=32, k=3, strategy="diversity", pool_factor=2,
                           exclude={regions[5].key, "elsewhere:0-1,0-1"}, exclude_where=lambda r: r.box[0] == (0, 32),
                           feature_scope="pool", keep_labels=True, keep_uncertainty=True,
                           progress=lambda *a: seen.append(a))
    left_out = {regions[5].key} | {r.key for r in regions if r.box[0] == (0, 32)}
    assert ranking.candidates == regions and ranking.excluded == left_out
    pool = sorted((r for r in regions if r.key not in left_out), key=lambda r: -r.score)[:6]
    feats = region_features(tiny, img, [r.box for r in pool])
    assert ranking.selected == DiversityStrategy(pool_factor=2).select(pool, 3, features=feats)
    np.testing.assert_array_equal(ranking.images["x"].uncertainty, res.combined())
    np.testing.assert_array_equal(ranking.images["x"].labels, res.labels)
    assert {s for s, _, _ in seen} == {"uncertainty", "scoring regions", "region features"}


def test_rank_images_on_a_stack_with_z_range_gives_full_coordinates(tiny, nuclei_image):
    plane = nuclei_image[:64, :64]
    stack = np.stack([plane] * 4)
    stack[3] = plane[::-1]
    picked = rank_images(tiny, {"s": stack}, size=32, kind="slice", z_range=(2, 4), k=5)
    assert len(picked) == 2 and {r.box[0] for r in picked} == {(2, 3), (3, 4)}
    assert all(r.box[1:] == ((0, 64), (0, 64)) for r in picked)


# --------------------------------------------------------------------------- state


def _state(n=5):
    queue = [Region("img", ((0, 32), (32 * i, 32 * i + 32)), score=1.0 - i / 10, mean_uncertainty=0.5,
                    boundary_uncertainty=0.25, n_objects=i) for i in range(n)]
    return ActiveLearningState.from_ranking(queue, strategy="uncertainty", region_size=32, region_kind="tile",
                                            budget=n, model={"name": "tiny", "version": "0.0.1", "sha256": "ab"})


def test_navigation_skip_review_and_progress():
    st = _state()
    keys = [r.key for r in st.queue]
    assert st.current() == st.queue[0] and st.progress_text() == "0 of 5 regions reviewed"
    st.mark_reviewed(keys[0])
    assert st.next() == st.queue[1] and st.n_reviewed == 1
    assert st.skip() == st.queue[2] and st.skipped == [keys[1]]
    st.mark_reviewed(keys[3])                          # reviewed out of order
    assert st.next() == st.queue[4]                    # region 3 is done: jumped over
    assert st.previous() == st.queue[3] and st.previous() == st.queue[2]
    st.mark_reviewed(keys[1])                          # a skipped region reviewed after all
    assert keys[1] not in st.skipped and st.progress_text() == "3 of 5 regions reviewed"
    assert [r.key for r in st.remaining()] == [keys[2], keys[4]]
    st.cursor = 4
    assert st.next() is None and st.current() is None and st.previous() == st.queue[4]
    assert _state(1).progress_text() == "0 of 1 region reviewed"


def test_state_round_trip_and_the_training_folder_stays_valid(tmp_path):
    from segloop.core.formats.trainfolder import TrainingFolder, validate_folder

    tf = TrainingFolder.create(tmp_path / "tf", classes=("background", "nucleus"), task="instance")
    assert ActiveLearningState.load(tf.path) is None
    st = _state()
    st.mark_reviewed(st.queue[0].key)
    st.next()
    st.skip()
    path = st.save(tf.path)
    assert path == tf.path / "segloop-active-learning.json" and st.created and st.updated
    data = json.loads(path.read_text())
    assert data["format"] == "segloop-active-learning" and data["format_version"] == 1
    back = ActiveLearningState.load(tf.path)
    assert back == st and back.cursor == 2 and back.queue[3].n_objects == 3
    assert [p.name for p in tf.path.iterdir() if p.name.endswith(".tmp")] == []
    assert validate_folder(tf.path).ok
    TrainingFolder.open(tf.path)


def test_a_state_saved_before_the_first_export_does_not_block_the_training_folder(tmp_path):
    """A script may find regions and save its progress before anything was exported there."""
    from segloop.core.formats.trainfolder import TrainingFolder, validate_folder
    from segloop.errors import TrainingFolderError

    folder = tmp_path / "tf"
    folder.mkdir()
    st = _state()
    st.mark_reviewed(st.queue[0].key)
    st.save(folder)
    tf = TrainingFolder.create(folder, classes=("background", "nucleus"), task="instance")
    assert ActiveLearningState.load(tf.path) == st and validate_folder(tf.path).ok
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(TrainingFolderError, match="not empty"):
        TrainingFolder.create(tmp_path / "other", classes=("background", "nucleus"), task="instance")


@pytest.mark.parametrize("content,match", [
    (b'{"format": "segloop-active-learning", "format_version": 1, "queue": [', "not valid JSON"),
    (b"\xff\xfe garbage", "not valid JSON"),
    (b'{"format": "something-else", "format_version": 1}', "not a segloop active-learning state"),
    (b'{"format": "segloop-active-learning", "format_version": 7}', "newer segloop"),
    (b'{"format": "segloop-active-learning", "format_version": 1, "strategy": "random"}', "malformed"),
])
def test_a_corrupt_or_newer_state_file_is_a_typed_error(tmp_path, content, match):
    (tmp_path / ActiveLearningState.FILE).write_bytes(content)
    with pytest.raises(ActiveLearningStateError, match=match):
        ActiveLearningState.load(tmp_path)


def test_a_failed_save_keeps_the_old_file(tmp_path):
    import resource

    old = _state(2)
    old.save(tmp_path)
    before = (tmp_path / ActiveLearningState.FILE).read_bytes()
    big = _state(400)                                   # its JSON is far larger than the limit below
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 100, hard))
    try:
        with pytest.raises(ExportError, match="previous segloop-active-learning.json"):
            big.save(tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert (tmp_path / ActiveLearningState.FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [ActiveLearningState.FILE]   # no temporary left
    assert not big.updated                              # a failed save does not pretend it saved
    with pytest.raises(ExportError, match="not a folder"):
        old.save(tmp_path / "missing")


_SAVE_IN_CHILD = """
import sys
from segloop.core.learning.state import ActiveLearningState
from segloop.core.learning.regions import Region
from segloop.errors import ExportError
st = ActiveLearningState("random", 32, "tile", 1, [Region("x", ((0, 1), (0, 1)))])
try:
    st.save(sys.argv[1])
except ExportError as e:
    print("ERR", e)
    sys.exit(3)
print("OK")
"""


def _drop_root_powers() -> None:
    """preexec_fn: no capabilities, so file permissions apply to a root child too."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(64):
        libc.prctl(24, cap, 0, 0, 0)                    # PR_CAPBSET_DROP


def test_a_read_only_folder_gives_export_error_and_keeps_the_old_file(tmp_path):
    _state(2).save(tmp_path)
    before = (tmp_path / ActiveLearningState.FILE).read_bytes()
    os.chmod(tmp_path, 0o555)
    try:
        proc = subprocess.run([sys.executable, "-c", _SAVE_IN_CHILD, str(tmp_path)], capture_output=True,
                              preexec_fn=_drop_root_powers if os.geteuid() == 0 else None, timeout=60)
    finally:
        os.chmod(tmp_path, 0o755)
    out = proc.stdout.decode()
    assert proc.returncode == 3 and out.startswith("ERR") and "permission denied" in out, out + proc.stderr.decode()
    assert (tmp_path / ActiveLearningState.FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [ActiveLearningState.FILE]


def test_region_dict_round_trip_and_key():
    r = Region("img 1", ((0, 1), (0, 256), (256, 512)), score=0.5, n_objects=3)
    assert r.key == "img 1:0-1,0-256,256-512" and r.area == 256 * 256
    assert Region.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    with pytest.raises(ActiveLearningError):
        Region("img", ((5, 2), (0, 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert r.slices == (slice(0, 1), slice(0, 256), slice(256, 512))


def test_images_with_the_same_file_name_in_several_folders_keep_distinct_ids(tmp_path):
    from segloop.core.learning.pipeline import _image_sources

    paths = []
    for d in ("d1", "d2", "d3"):
        (tmp_path / d).mkdir()
        paths.append(tmp_path / d / "x.tif")
    names = [n for n, _ in _image_sources(paths)]
    assert len(set(names)) == 3 and names[0] == "x"
