"""The Segment widget picks a model by modality and says which, in a real napari viewer under Xvfb."""

import pytest

napari = pytest.importorskip("napari")

from .test_model_pick import stained_tile, without_new_models, zoo  # noqa: E402, F401 (fixtures)
from .test_segment_widget import labels_layers, make, wait  # noqa: E402


@pytest.mark.usefixtures("zoo")
def test_rgb_gets_the_h_and_e_model_and_grey_the_fluorescence_one(make_napari_viewer, nuclei_image):
    viewer, w = make(make_napari_viewer, stained_tile(eosin=0.06), name="he", rgb=True)
    assert w.modality.value == "auto"
    assert w.model.value == "he-nuclei-unet"
    assert w.picked.value == "Picked he-nuclei-unet for an H&E image"
    viewer.add_image(nuclei_image, name="grey")
    w.image.value = viewer.layers["grey"]
    assert w.model.value == "fluo-nuclei-unet"
    assert w.picked.value == "Picked fluo-nuclei-unet for a fluorescence image"


@pytest.mark.usefixtures("zoo")
def test_a_hand_choice_stays_until_the_image_or_the_modality_changes(make_napari_viewer, nuclei_image):
    viewer, w = make(make_napari_viewer, stained_tile(eosin=0.06), name="he", rgb=True)
    w.model.value = "nuclei-segunet"
    assert w.picked.value == "nuclei-segunet: your choice (auto picks he-nuclei-unet for this image)"
    viewer.add_image(nuclei_image, name="grey")                   # a new layer; the image stays "he"
    assert w.image.value is viewer.layers["he"] and w.model.value == "nuclei-segunet"
    w.modality.value = "ihc"                                      # the modality changed: picked again
    assert w.model.value == "he-nuclei-unet"
    assert w.picked.value == ("Picked he-nuclei-unet for an IHC image; IHC routing is not measured: "
                              "no labelled IHC data")
    w.model.value = "nuclei-segunet"
    w.image.value = viewer.layers["grey"]                         # the image changed: picked again
    assert w.model.value == "he-nuclei-unet"                      # the modality says IHC, whatever the pixels
    w.modality.value = "auto"
    assert w.model.value == "fluo-nuclei-unet"


@pytest.mark.usefixtures("zoo")
def test_a_model_from_use_this_model_stays_across_images_until_a_modality_is_chosen(make_napari_viewer,
                                                                                   nuclei_image):
    viewer, w = make(make_napari_viewer, stained_tile(eosin=0.06), name="he", rgb=True)
    w.add_model_choice("nuclei-segunet")              # what the Fine-tune widget's "Use this model" calls
    viewer.add_image(nuclei_image, name="grey")
    w.image.value = viewer.layers["grey"]
    assert w.model.value == "nuclei-segunet"
    assert w.picked.value == "nuclei-segunet: your choice (auto picks fluo-nuclei-unet for this image)"
    w.modality.value = "he"                           # asking for a modality asks for its model
    assert w.model.value == "he-nuclei-unet"
    w.image.value = viewer.layers["he"]
    assert w.model.value == "he-nuclei-unet"


@pytest.mark.usefixtures("without_new_models")
def test_without_the_new_models_rgb_runs_through_hematoxylin(make_napari_viewer, qtbot, ihc_image):
    viewer, w = make(make_napari_viewer)
    w.stain.value = "none"
    viewer.add_image(ihc_image[:128, :128], name="ihc", rgb=True)
    assert w.model.value == "nuclei-unet" and w.stain.value == "auto"
    assert w.picked.value == ("Picked nuclei-unet for an IHC image, on its hematoxylin channel, as he-nuclei-unet "
                              "is not installed; IHC routing is not measured: no labelled IHC data")
    w.run()
    wait(qtbot, w)
    (lab,) = labels_layers(viewer)
    assert lab.metadata["segloop"]["parameters"]["normalization"]["kind"] == "hematoxylin"

