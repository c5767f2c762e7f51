"""The Fine-tune dock widget in a real viewer under Xvfb: a real training subprocess, progress, cancel,
a finished run, "Use this model" in Segment, and Compare."""

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from segloop._napari.finetune_widget import FinetuneWidget  # noqa: E402
from segloop._napari.segment_widget import SegmentWidget  # noqa: E402


@pytest.fixture
def folder_and_parent(tmp_path, tiny_package, nuclei_image):
    from skimage.measure import label

    import segloop
    from segloop.core.formats.trainfolder import TrainingFolder

    tf = TrainingFolder.create(tmp_path / "corrections", classes=["background", "nucleus"], task="instance",
                               modality="fluorescence")
    for i, split in enumerate(["train", "train", "val"]):
        img = np.ascontiguousarray(np.rot90(nuclei_image, i))[:192, :192]
        lab = label(img > np.percentile(img, 75)).astype(np.uint16)
        tf.add_sample(img, lab, axes="YX", source=f"crop{i}.tif", split=split)
    segloop.register_model(tiny_package, name="tiny")
    return tf.path


def make(make_napari_viewer, folder, steps):
    viewer = make_napari_viewer()
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg)
    w = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.folder.value = str(folder)
    w.parent_model.value = "tiny"
    w.steps.value = steps
    w.patch.value = 64
    w.batch.value = 2
    w.device.value = "cpu"
    return viewer, seg, w


def test_progress_cancel_restart_finish_use_and_compare(make_napari_viewer, qtbot, folder_and_parent, tmp_path):
    viewer, seg, w = make(make_napari_viewer, folder_and_parent, steps=5000)
    w.out.value = str(tmp_path / "cancelled-model")
    assert w.start()
    qtbot.waitUntil(lambda: any(e.get("event") == "step" for e in w.events_seen), timeout=120_000)
    assert w.progress.value > 0 and w.plot.loss and "step" in w.status.value
    w.cancel()
    assert not w.cancel_button.enabled          # a second SIGTERM would abort writing the best weights
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    kinds = [e.get("event") for e in w.events_seen]
    assert "cancelled" in kinds and "done" not in kinds
    assert "cancelled" in w.result.value

    w.steps.value = 30
    w.out.value = str(tmp_path / "new-model")
    assert w.start()
    qtbot.waitUntil(lambda: not w.running, timeout=300_000)
    assert any(e.get("event") == "done" for e in w.events_seen), (w.status.value, w.events_seen[-3:])
    assert w.package is not None and (w.package / "segloop-model.json").is_file()
    assert "held-out" in w.result.value and "→" in w.result.value
    name = w.use_model()
    assert name.startswith("tiny v") and seg.model.value == name
    assert name in w.parent_model.choices                 # the next run can start from it
    viewer.add_image(np.ascontiguousarray(np.rot90(np.eye(8)))[:8, :8].repeat(16, 0).repeat(16, 1), name="x")
    seg.image.value = viewer.layers["x"]
    seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=120_000)
    assert any(layer.name.endswith(name.split(" ")[1]) for layer in viewer.layers if layer._type_string == "labels"), \
        (seg.status.value, [layer.name for layer in viewer.layers])
    w.compare()
    qtbot.waitUntil(lambda: w._compare_worker is None, timeout=120_000)
    names = [layer.name for layer in viewer.layers]
    assert any("· parent" in n for n in names) and any("· new" in n for n in names)


def test_a_folder_that_is_not_a_training_folder_is_refused(make_napari_viewer, tmp_path, folder_and_parent):
    viewer, seg, w = make(make_napari_viewer, tmp_path, steps=10)
    assert not w.start() and "not a training folder" in w.status.value


def test_a_failing_run_is_a_notification_not_a_crash(make_napari_viewer, qtbot, folder_and_parent, tmp_path, notes):
    viewer, seg, w = make(make_napari_viewer, folder_and_parent, steps=10)
    blocker = tmp_path / "a file"
    blocker.write_text("x")
    w.out.value = str(blocker / "model")              # cannot be written: the trainer says so and exits
    assert w.start()
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    assert "failed" in w.status.value and any("fine-tuning failed" in n for n in notes)
    assert w.package is None and not w.use_button.enabled


def test_without_held_out_samples_the_widget_says_it_cannot_compare(make_napari_viewer, qtbot, tmp_path,
                                                                   tiny_package, nuclei_image):
    from skimage.measure import label

    import segloop
    from segloop.core.formats.trainfolder import TrainingFolder

    tf = TrainingFolder.create(tmp_path / "only-train", classes=["background", "nucleus"], task="instance")
    img = nuclei_image[:192, :192]
    tf.add_sample(img, label(img > np.percentile(img, 75)).astype(np.uint16), axes="YX", source="a.tif",
                  split="train")
    segloop.register_model(tiny_package, name="tiny")
    viewer, seg, w = make(make_napari_viewer, tf.path, steps=10)
    w.out.value = str(tmp_path / "m")
    assert w.start()
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    assert "no held-out" in w.result.value, (w.result.value, w.events_seen[-2:])
