"""CT and MR volumes in the Segment widget (real napari viewer, Xvfb): the scan's voxel spacing reaches
the model, and a CT model refuses an MR volume (and the reverse) with a notification, nothing added."""

from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from segloop._napari.segment_widget import SegmentWidget  # noqa: E402
from segloop.core.formats.io.geometry import VolumeInfo, lps_affine  # noqa: E402
from segloop.core.formats.normalization import CTWindow  # noqa: E402
from segloop.core.formats.package import save_package  # noqa: E402

from .conftest import tiny_spec, tiny_state  # noqa: E402
from .test_segment_widget import labels_layers, make, use_package, wait  # noqa: E402

SPACING = (3.0, 0.8, 0.8)


@pytest.fixture
def ct_package(tmp_path):
    """A tiny 2.5D CT model (HU window) trained at 2 x 1 x 1 mm."""
    spec = tiny_spec(name="ct-tiny-25d", task="semantic", classes=("background", "lung", "tumour"),
                     postprocess={}, in_channels=3, context_slices=3, normalization=CTWindow(-300.0, 1400.0).to_dict(),
                     tile={"size": 32, "overlap": 0.25}, spacing=(2.0, 1.0, 1.0), modality="CT")
    dest = tmp_path / "ct-tiny-25d"
    save_package(dest, spec, tiny_state(spec, seed=1))
    return dest


def _volume(kind: str):
    rng = np.random.default_rng(0)
    if kind == "CT":                                   # air around a soft-tissue body, in HU
        vol = np.full((6, 40, 40), -1000, np.int16)
        vol[:, 8:32, 8:32] = rng.integers(-50, 80, (6, 24, 24))
    else:                                              # MR: arbitrary positive intensities
        vol = rng.integers(0, 900, (6, 40, 40)).astype(np.int16)
    info = VolumeInfo(path=Path(f"{kind.lower()}.dcm"), format="dicom", shape=vol.shape, spacing=SPACING,
                      affine=lps_affine(SPACING), modality=kind, units="HU" if kind == "CT" else "")
    return vol, info


def test_a_ct_volume_runs_at_its_own_spacing_resampled_to_the_models(make_napari_viewer, qtbot, ct_package):
    vol, info = _volume("CT")
    viewer, w = make(make_napari_viewer, vol, name="ct", scale=SPACING, metadata={"segloop_volume": info})
    use_package(w, ct_package)
    req = w.request()
    assert req.spacing == SPACING and req.pixel_size is None      # the file's spacing, not the µm field
    w.run()
    wait(qtbot, w)
    (lab,) = labels_layers(viewer)
    assert lab.data.shape == vol.shape and tuple(lab.scale) == SPACING
    sp = lab.metadata["segloop"]["spacing"]
    assert sp["resampled"] is True and sp["image"] == list(SPACING) and sp["model"] == [2.0, 1.0, 1.0]


def test_a_ct_model_on_an_mr_volume_is_a_notification_and_adds_nothing(make_napari_viewer, qtbot, ct_package,
                                                                       notes):
    vol, info = _volume("MR")
    viewer, w = make(make_napari_viewer, vol, name="mr", scale=SPACING, metadata={"segloop_volume": info})
    use_package(w, ct_package)
    w.run()
    wait(qtbot, w)
    assert not labels_layers(viewer)
    assert any("reads CT in Hounsfield units, but the file says MR" in n for n in notes)
    assert "Hounsfield" in w.status.value and w.run_button.enabled


def test_live_mode_on_an_mr_volume_with_a_ct_model_says_so_once(make_napari_viewer, qtbot, ct_package, notes):
    vol, info = _volume("MR")
    viewer, w = make(make_napari_viewer, vol, name="mr", scale=SPACING, metadata={"segloop_volume": info})
    use_package(w, ct_package)
    viewer.dims.set_current_step(0, 2)
    w.live.value = True
    qtbot.waitUntil(lambda: any("Hounsfield" in n for n in notes), timeout=60_000)
    assert not labels_layers(viewer)


@pytest.fixture
def two_sequence_package(tmp_path):
    """A tiny 2.5D MR model reading two sequences (FLAIR, T1c) x 3 slices."""
    spec = tiny_spec(name="mr-two-seq", task="semantic", classes=("background", "lesion"), postprocess={},
                     in_channels=6, context_slices=3, tile={"size": 32, "overlap": 0.25}, modality="MR")
    dest = tmp_path / "mr-two-seq"
    save_package(dest, spec, tiny_state(spec, seed=2))
    return dest


def _mr_info(shape):
    return VolumeInfo(path=Path("flair.nii.gz"), format="nifti", shape=shape, spacing=(1.0, 1.0, 1.0),
                      affine=lps_affine((1.0, 1.0, 1.0)), modality="MR")


def test_a_two_sequence_model_gets_the_second_sequence_from_another_layer(make_napari_viewer, qtbot,
                                                                          two_sequence_package, notes):
    rng = np.random.default_rng(0)
    flair, t1c = rng.random((5, 40, 36)).astype(np.float32), rng.random((5, 40, 36)).astype(np.float32)
    viewer = make_napari_viewer()
    viewer.add_image(flair, name="flair", metadata={"segloop_volume": _mr_info(flair.shape)})
    viewer.add_image(t1c, name="t1c")
    viewer.add_image(rng.random((5, 20, 20)).astype(np.float32), name="other grid")
    w = SegmentWidget(viewer)                                          # the image first, the model after
    viewer.window.add_dock_widget(w)
    w.image.value = viewer.layers["flair"]
    use_package(w, two_sequence_package)
    assert not w.channels.container.native.isHidden() and w.channels.needed == 1
    assert w.channels.combos[0].value is viewer.layers["t1c"]           # pre-filled: same shape, next layer
    w.channels.combos[0].value = viewer.layers["flair"]                # the image itself is not a second sequence:
    w.image.value = viewer.layers["t1c"]                               # re-picked when the image changes
    w.image.value = viewer.layers["flair"]
    assert w.channels.combos[0].value is viewer.layers["t1c"]
    w.run()
    wait(qtbot, w)
    (lab,) = labels_layers(viewer)
    assert lab.data.shape == flair.shape

    w.channels.combos[0].value = viewer.layers["other grid"]           # another grid: refused, nothing added
    w.run()
    wait(qtbot, w)
    assert len(labels_layers(viewer)) == 1 and any("one voxel grid" in n for n in notes)
    w.channels.combos[0].value = None                                  # none chosen: says which to choose
    w.run()
    wait(qtbot, w)
    assert len(labels_layers(viewer)) == 1 and any("choose 'channel 2'" in n for n in notes)

    w.channels.combos[0].value = viewer.layers["t1c"]                  # live mode stacks the volume once
    viewer.dims.set_current_step(0, 2)
    w.live.value = True
    live = w._live
    qtbot.waitUntil(lambda: 2 in live.done, timeout=60_000)
    assert any(ly.name.endswith("(live)") for ly in labels_layers(viewer))
    w.live.value = False


def test_a_one_sequence_model_shows_no_channel_choice(make_napari_viewer, ct_package):
    vol, info = _volume("CT")
    viewer, w = make(make_napari_viewer, vol, name="ct", metadata={"segloop_volume": info})
    use_package(w, ct_package)
    assert w.channels.container.native.isHidden() and w.channels.needed == 0
