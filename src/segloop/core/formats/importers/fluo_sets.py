"""Hand-annotated fluorescence nuclei datasets, imported from a copy the user already has.

``segloop import bbbc039|s-bsst265|aitslab-bioimaging1 --from PATH --folder F`` converts each
dataset's own label format to training folder v1 instance samples (classes ``background,
nucleus``, modality ``fluorescence``, one channel; 16-bit images stay 16-bit):

=======================  ===========================================  ======================================
name                     what is read (``--from`` = the repository    labels -> ids; split
                         or the dataset folder inside it)
=======================  ===========================================  ======================================
``bbbc039``              ``cell nuclei/images/*.tif`` (uint16) +      RGBA PNG whose channel 0 colours
                         ``cell nuclei/masks/*.png``                  touching nuclei differently: each
                                                                      8-connected region of one colour is a
                                                                      nucleus; fixed train / val / test
                                                                      lists (below), **minus the fields
                                                                      that are also DSB2018 images**
``s-bsst265``            ``rawimages/*.tif`` + ``groundtruth/*.tif``  uint16 id maps; an id used for
                         + ``image_description.csv``                  separate nuclei becomes one object per
                                                                      8-connected part, specks under 5 px
                                                                      dropped; the csv's test set; val drawn
                                                                      from its training set by hash
``aitslab-bioimaging1``  ``normalized_nuclei/*.png`` +                HoVer-Net ``.mat`` (``inst_map``, read
                         ``annotation_nuclei/*.mat``                  with :func:`scipy.io.loadmat`, no
                                                                      pickle); the authors' 30 / 10 / 10
=======================  ===========================================  ======================================

Grey images stored as RGB (seven S-BSST265 images, all Aitslab images) give their first channel;
a colour image is an error.  No dataset states its pixel size, so ``spacing`` stays unknown
unless ``--pixel-size`` is given.  Nothing is downloaded: where each copy comes from is
:attr:`~segloop.core.formats.importers.nuclei_sets.NucleiDataset.how_to_get`.  Reading, checks and
writing (all or nothing, a typed error naming the file) are
:func:`~segloop.core.formats.importers.nuclei_sets.import_nuclei_dataset`'s; this module adds
the three datasets with :func:`~segloop.core.formats.importers.nuclei_sets.register` when it is
imported.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from segloop.core.formats.importers.nuclei_sets import (
    NucleiDataset,
    SourceItem,
    find_dataset_folder,
    register,
)
from segloop.errors import ImageReadError, ImportLayoutError, ImportSourceError

__all__ = ["FLUO_DATASETS", "BBBC039_DSB2018_FIELDS", "BBBC039_SPLIT", "AITSLAB_SPLIT", "read_bbbc039_mask",
           "read_hovernet_inst_map", "read_id_map", "separate_objects"]

_CLONE = "git clone https://github.com/{repo} {dir} && git -C {dir} checkout {commit}"

#: Objects smaller than this (pixels) are specks, not nuclei (two in S-BSST265's Ganglioneuroblastoma_8).
MIN_OBJECT_PX = 5

FLUO_DATASETS: dict[str, NucleiDataset] = {
    "bbbc039": NucleiDataset(
        name="bbbc039", title="BBBC039 U2OS nuclei, Hoechst, 20x, 200 fields 520x696 16-bit, hand-drawn; the "
                              "43 fields that are also DSB2018 images are never imported",
        dataset="BBBC039v1, nuclei of U2OS cells in a chemical screen (Broad Bioimage Benchmark Collection), as "
                "copied in DeepTrackAI/cell_counting_dataset",
        repository="DeepTrackAI/cell_counting_dataset", commit="d460149beb419c92785edcdef0628c5bf66f3325",
        how_to_get=_CLONE.format(repo="DeepTrackAI/cell_counting_dataset", dir="cell_counting_dataset",
                                 commit="d460149beb419c92785edcdef0628c5bf66f3325")
        + "; --from cell_counting_dataset",
        licence="CC0 1.0 (BBBC039v1, Broad Bioimage Benchmark Collection; restated in the copy's README)",
        labels_origin="drawn by hand (BBBC039: about 23,000 manually annotated nuclei); the masks colour touching "
                      "nuclei differently and are split into objects by colour and 8-connectivity",
        citation="Caicedo et al., Evaluation of deep learning strategies for nucleus segmentation in fluorescence "
                 "images, Cytometry Part A 95:952 (2019); Ljosa et al., Nature Methods 9:637 (2012)",
        may_ship_weights=True,
        split="train / val / test as listed in kreshuklab/CRank-Consistency_based_ranking @ a62a1114 "
              "data/BBBC039 (100 / 50 / 48 fields; the two fields with empty masks are in none and not imported), "
              "less the 43 fields that are also DSB2018 images (reserved for evaluation): 82 / 33 / 40",
        pixel_size="not stated in the copy: unknown, used at native resolution",
        modality="fluorescence"),
    "s-bsst265": NucleiDataset(
        name="s-bsst265", title="S-BSST265 (Kromp et al. 2020), 79 DAPI images of tissue sections, cytospins and "
                                "cell lines, 10x to 63x, expert-drawn nuclei",
        dataset="An annotated fluorescence image dataset for training nuclear segmentation methods (BioStudies "
                "S-BSST265), as copied in madziejm/cell-nuclei-segmentation",
        repository="madziejm/cell-nuclei-segmentation", commit="afec7dfd03376cac113d1b3234bebe968b96207a",
        how_to_get=_CLONE.format(repo="madziejm/cell-nuclei-segmentation", dir="cell-nuclei-segmentation",
                                 commit="afec7dfd03376cac113d1b3234bebe968b96207a")
        + "; --from cell-nuclei-segmentation (or the S-BSST265 folder from BioStudies)",
        licence="CC0 1.0 (the data set's readme.txt: 'open data license (CC0)', and its cc0.html); the copy's "
                "repository is MIT-licensed, which does not cover the data",
        labels_origin="drawn by experts (outlines as SVG, rasterized by the authors); an id the masks use for "
                      "separate nuclei is split into one object per part, specks under 5 px dropped",
        citation="Kromp et al., An annotated fluorescence image dataset for training nuclear segmentation "
                 "methods, Scientific Data 7:262 (2020)",
        may_ship_weights=True,
        split="test = the 37 images image_description.csv puts in its test set; val = whole images of its "
              "42-image training set by a hash of the name (--val-fraction)",
        pixel_size="not stated (image_description.csv gives only the objective, 10x to 63x, on several "
                   "microscopes): unknown, used at native resolution",
        modality="fluorescence"),
    "aitslab-bioimaging1": NucleiDataset(
        name="aitslab-bioimaging1", title="Aitslab-bioimaging1, 50 U2OS Hoechst images 1104x1104, 20x, "
                                          "normalized 8-bit, hand-drawn nuclei and micronuclei",
        dataset="Aitslab-bioimaging1 (Arvidsson, Kazemi Rashed and Aits 2022), the HoVer-Net copy in "
                "Aitslab/imageanalysis",
        repository="Aitslab/imageanalysis", commit="166479185baec4a72cb4f0eff286ef31ab6e90c5",
        how_to_get=_CLONE.format(repo="Aitslab/imageanalysis", dir="imageanalysis",
                                 commit="166479185baec4a72cb4f0eff286ef31ab6e90c5") + "; --from imageanalysis",
        licence="CC BY 4.0 (the published data set, Zenodo 10.5281/zenodo.6657260): attribution required, cite "
                "Arvidsson et al. 2022. The GitHub copy read here carries no licence file; it is the same "
                "authors' working copy of that data set",
        labels_origin="drawn by hand (polygons in CVAT) by one annotator and reviewed by a biomedical expert; "
                      "nuclei, nuclear fragments and micronuclei",
        citation="Arvidsson, Kazemi Rashed and Aits, An annotated high-content fluorescence microscopy dataset "
                 "with Hoechst 33342-stained nuclei and manually labelled outlines, Data in Brief 46:108769 "
                 "(2022), doi:10.1016/j.dib.2022.108769; data: doi:10.5281/zenodo.6657260",
        may_ship_weights=True,
        split="train = the 30 images of the authors' 4_filelists/1-2_training.txt, val = the 10 of "
              "relabel_VALIDATION.txt, test = the other 10 (the published 30 / 10 / 10)",
        pixel_size="not stated in the copy: unknown, used at native resolution (images are the authors' "
                   "percentile-normalized 8-bit versions)",
        modality="fluorescence"),
}


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


#: BBBC039 fields that are also DSB2018 (BBBC038) stage1_train images: both come from the
#: BBBC022 screen.  The fluorescence images of DSB2018 are RESERVED FOR EVALUATION (never trained
#: or tuned on; docs/data.md), so these fields are never imported, whatever the split lists say.
#: Found by correlating 8x-downsampled log images of the 200 BBBC039 fields with the 520x696
#: DSB2018 stage1_train images: 43 one-to-one matches at r >= 0.958, the next best 0.48.
BBBC039_DSB2018_FIELDS = _names("""
    IXMtest_A18_s1_w1BFDF1C94-9C1F-4F5F-BBC1-05196333B1BF IXMtest_B21_s4_w1521471E0-9BD7-492A-8739-9C782C2585B0
    IXMtest_B21_s7_w1276972A2-1794-4A98-8E76-876A597C346B IXMtest_C23_s2_w10533E965-3DC3-4556-9C26-EA8DD4F8DE61
    IXMtest_D06_s5_w13C67AAA9-6E81-42DB-AC5F-7126602F3607 IXMtest_D10_s2_w1BB72A093-72AB-476C-9513-2FF43BFB2134
    IXMtest_E19_s4_w129545707-4CD3-4498-AC27-E4AE24D0253C IXMtest_F08_s1_w144C3056F-C4DD-4D39-A40F-4F4576A6DBD8
    IXMtest_F08_s7_w117D78658-1BA7-495D-9EAA-E4FA155861AC IXMtest_F22_s6_w1D6C33377-3947-4DAC-B62D-531C2565F150
    IXMtest_G10_s3_w1C1257E17-1DBA-4619-B06E-D6DBB8A53088 IXMtest_G16_s3_w1B4690283-D75E-4DFB-92B0-29419E8292C6
    IXMtest_G16_s6_w1C3F175E2-0AF5-401C-AC5C-8E128A237B22 IXMtest_H08_s8_w1418B93F8-515E-49A7-A9AE-CAF7A1589A38
    IXMtest_H17_s1_w10A751E6C-5D06-4147-AB73-7FFAE0B57CC5 IXMtest_I04_s9_w16A5CC270-8B92-42EE-AA4A-855776F7D46B
    IXMtest_I11_s6_w1B2DC04C7-2D7D-45C6-9DC2-66D8605FBE63 IXMtest_I15_s5_w11265571E-AA95-4E58-82CF-A75E3F240956
    IXMtest_J02_s5_w1F53DDD35-C0B2-4E39-BA3B-9F66D289AB02 IXMtest_J02_s8_w1D9C198F9-ECF0-4EF7-848D-AC7782CD3C28
    IXMtest_J15_s9_w1857B395F-AE7A-4319-BC26-3A041C0E31E9 IXMtest_J16_s8_w1AD7BC3EB-6A29-4A53-AA59-E39653839B0D
    IXMtest_J17_s1_w19E7BCD2F-6D7E-4B39-9154-F93E4D539183 IXMtest_J20_s1_w1EEE65E52-7AD8-47C7-A286-6E84C5D77953
    IXMtest_K05_s7_w1816D5E2A-B9D8-48DA-9FE6-CBC35FE38C8D IXMtest_K06_s9_w1787DFDA5-E2CE-40DB-9430-CC3766599BCC
    IXMtest_K12_s7_w12A7857A5-3C92-4A08-8E81-2CA8A99F67AE IXMtest_K18_s8_w11FC8D3EA-E30D-46B8-A45E-0399327AA8AC
    IXMtest_L01_s3_w1E7E0D198-5FB4-4E10-A27C-C46463DA9E06 IXMtest_L03_s6_w1BE79472D-5E2C-422F-A16E-7AC0691C0FD8
    IXMtest_L21_s5_w122478CD2-80DC-4B4E-9BC8-A6F6239F4103 IXMtest_M04_s3_w1A599DF67-1E7F-4A09-84FD-0080767A735C
    IXMtest_M20_s3_w15C73A7C7-F81B-4583-AB8F-0A64336AF070 IXMtest_N07_s5_w1D30ED7AB-503E-479D-B5BC-B66472568DE2
    IXMtest_N08_s2_w159DEEDD5-2882-4F9E-9048-F5BD2B918651 IXMtest_N12_s9_w1C98EC3CC-2F8E-4761-A21A-EBF14469AD40
    IXMtest_N21_s1_w14F264B20-62D6-47EC-9BCD-B9416AB302D9 IXMtest_O10_s8_w18F4DB020-BFB7-4F13-B99C-C39F8E54F85D
    IXMtest_O16_s3_w129E61E12-E398-496E-9408-092D2D70E74B IXMtest_O18_s7_w19C30A212-58D3-4030-AA4F-B0C4482F1F8A
    IXMtest_P10_s7_w1F78192AF-7D11-4D41-80F3-8CD6DB05AB57 IXMtest_P13_s6_w1270AEE06-D31F-421C-8147-13644F4C5B94
    IXMtest_P23_s7_w13B627CB9-6C57-4049-AAD7-6468A051DD24
""")

#: BBBC039 split as listed in kreshuklab/CRank-Consistency_based_ranking @ a62a1114b9a77bc5d48ee29bc2d7bac1beb30002,
#: data/BBBC039/{train,val,test}.txt (file names without ``.tif``).  The two fields with empty
#: masks (IXMtest_F13_s7, IXMtest_L01_s2) are in none; the DSB2018 fields above are dropped on import.
BBBC039_SPLIT: dict[str, tuple[str, ...]] = {
    "train": _names("""
    IXMtest_A02_s1_w1051DAA7C-7042-435F-99F0-1E847D9B42CB IXMtest_A09_s1_w1CE70AD49-290D-4312-82E6-CDC717F32637
    IXMtest_A12_s7_w1EAEEA614-51ED-43B3-A4FF-088730911E4C IXMtest_A16_s2_w15AF20A10-82AE-48FA-AC50-7AE8AC3AA544
    IXMtest_A22_s8_w1E2AFE190-831D-4D9C-961E-3AA2ECB3599D IXMtest_B02_s9_w124B5080D-EBE1-47D2-B147-C0F342039EDF
    IXMtest_B04_s2_w17C6C7F8D-98F7-422B-92CD-EA61EE813325 IXMtest_B04_s4_w1F6AEFA0F-AF87-4B3B-A334-698647CFE043
    IXMtest_B05_s5_w10296BEF4-0F48-4EC8-BC24-6C604871398B IXMtest_B12_s2_w19F7E0279-D087-4B5E-9899-61971C29CB78
    IXMtest_B17_s7_w1215A0A98-4A76-4846-B54A-F7C1EAF84E02 IXMtest_B19_s7_w1E43B84DB-39E2-4BFB-8CB4-554B32098C75
    IXMtest_B24_s9_w18C4FE0DD-12CA-4711-9722-3E3105D1E691 IXMtest_C07_s5_w12C9F2926-A017-4962-8660-72C9C20C86E4
    IXMtest_C14_s8_w1612E3D43-FA7E-4FFB-BE53-F34A3A0CAFCD IXMtest_C18_s1_w11C16FC59-2E29-496A-803A-89581FDF538A
    IXMtest_C23_s2_w10533E965-3DC3-4556-9C26-EA8DD4F8DE61 IXMtest_D01_s1_w181AE787C-B5EE-4150-A90E-2FE43165C32E
    IXMtest_D02_s8_w1AC6783DF-ED35-4818-8091-E6D02AF4BFBD IXMtest_D06_s8_w1BE84C8EF-4CD0-4B56-8267-4E662F57AC25
    IXMtest_D07_s4_w16CF58D03-0B05-41FE-AE73-7298887DEBB1 IXMtest_D08_s7_w1F476A544-A07C-4E9B-A6CB-BAEF4CD6F64E
    IXMtest_D10_s2_w1BB72A093-72AB-476C-9513-2FF43BFB2134 IXMtest_D19_s6_w1EB1F11AE-4FB6-481F-94D9-40246870F0CB
    IXMtest_D20_s3_w19D371AF3-0189-48A3-AF3B-D108DE6A017F IXMtest_E06_s3_w1701573EB-CE9A-4D76-8668-0416996E1DCD
    IXMtest_E07_s1_w1641C6847-142B-463F-8B08-5B3296615572 IXMtest_E12_s9_w1A811DEC0-ADD9-411A-B5D5-A654C70F253D
    IXMtest_F03_s5_w1FE22EC7D-720A-4848-888A-6AFE1E1C85B0 IXMtest_F04_s5_w1D94DA1A2-873C-44B3-80EB-36DC2A97E9A3
    IXMtest_F08_s1_w144C3056F-C4DD-4D39-A40F-4F4576A6DBD8 IXMtest_F08_s7_w117D78658-1BA7-495D-9EAA-E4FA155861AC
    IXMtest_F12_s5_w17F3E9DFC-6705-40A9-B5FE-C60261D73052 IXMtest_F12_s8_w1DBD80811-5297-4415-ACD1-EC9286BE76A4
    IXMtest_F14_s7_w1E67F2A8A-EEC1-4F01-A1E2-0ECFC639637F IXMtest_F22_s6_w1F4C7ADE4-B68D-4D30-A063-722B87AA2DA1
    IXMtest_G01_s2_w1FBE52723-8BDF-4346-89BB-216A4A69ED1C IXMtest_G06_s7_w19444140C-EF22-42DE-863A-514D836BE850
    IXMtest_G10_s3_w1C1257E17-1DBA-4619-B06E-D6DBB8A53088 IXMtest_G12_s6_w16850371E-A405-4D73-9816-F5F68F885D38
    IXMtest_G13_s9_w19606195E-12B4-46FF-9B83-1F7FE11B3AFB IXMtest_G18_s9_w17F495AF2-03D2-4683-BD37-56887F4A3A84
    IXMtest_G22_s3_w157F2847B-C953-410E-8F60-956A6023AED4 IXMtest_G22_s5_w1CE8AEFCD-7739-4D60-B112-9D2D73EE05E5
    IXMtest_H11_s6_w19DF4E879-8DE4-45D6-840B-305BDDB27076 IXMtest_I01_s4_w1218CC565-C87E-4390-936A-4D3E51BC10DB
    IXMtest_I03_s4_w1C724E24D-7AD5-4166-A810-DC75A825495D IXMtest_I04_s9_w16A5CC270-8B92-42EE-AA4A-855776F7D46B
    IXMtest_I07_s4_w1F156255A-3842-46FB-ABF2-9D041E523F86 IXMtest_I08_s2_w11996D679-5D76-4FB8-A681-2014A8999EC8
    IXMtest_I11_s6_w1B2DC04C7-2D7D-45C6-9DC2-66D8605FBE63 IXMtest_I12_s1_w18A06F07F-CD8F-4056-B041-3967BE48AD78
    IXMtest_I16_s9_w1582FD22A-5270-4FDC-868F-5F75808E2321 IXMtest_I17_s6_w1EB7CA00F-DF95-466C-BF8C-6304B6A4974E
    IXMtest_I17_s7_w1BB3D534E-DF08-4F21-BAC6-6B105BB40AF9 IXMtest_I18_s3_w1544C8B7A-E092-4F9D-B8D3-C489638D770F
    IXMtest_I23_s5_w1E3053D6B-8CEF-48E3-A6A5-2F0D7C1AA177 IXMtest_J02_s8_w1D9C198F9-ECF0-4EF7-848D-AC7782CD3C28
    IXMtest_J08_s2_w1C146DB1C-05B3-49EF-9C62-1185FD9897AC IXMtest_J16_s8_w1AD7BC3EB-6A29-4A53-AA59-E39653839B0D
    IXMtest_J17_s1_w19E7BCD2F-6D7E-4B39-9154-F93E4D539183 IXMtest_J20_s1_w1EEE65E52-7AD8-47C7-A286-6E84C5D77953
    IXMtest_K01_s3_w1054711D8-52CF-4672-B3A0-EC9EC2E681C4 IXMtest_K01_s5_w1A3DE001A-72D6-4321-8B25-4300AB0207AC
    IXMtest_K03_s5_w1DC4CE558-042C-482E-8CAE-FCCB57AA9A55 IXMtest_K05_s9_w1647AEF60-D7B0-4D83-AFA5-2B05E968468F
    IXMtest_K12_s1_w193D6C057-1AA9-4E2F-86EA-2E71961BE68B IXMtest_K12_s7_w12A7857A5-3C92-4A08-8E81-2CA8A99F67AE
    IXMtest_K17_s5_w1BB3AD9D7-3A85-458C-AB1C-07A816C2C203 IXMtest_L03_s2_w1AC4550E2-F824-4A58-9CC5-952AD9ECE76A
    IXMtest_L05_s2_w1B9C6FAC9-9D48-4184-8D9B-ABFC3BEC1125 IXMtest_L06_s5_w1610AE208-D6E8-4DC4-AC19-D26284AA8556
    IXMtest_L10_s6_w12D12D64C-2639-4CA8-9BB4-99F92C9B7068 IXMtest_L11_s4_w13C057BB5-9CFB-471F-84B5-72F80654CF81
    IXMtest_L14_s5_w14B42C89E-7650-44AC-9D7B-50BE61EA307E IXMtest_M12_s7_w193E9BA0F-274A-4EE8-A0F0-6A58471A333A
    IXMtest_M20_s3_w15C73A7C7-F81B-4583-AB8F-0A64336AF070 IXMtest_M23_s8_w118BC311D-A998-4161-8256-22839B2421F2
    IXMtest_N07_s5_w1D30ED7AB-503E-479D-B5BC-B66472568DE2 IXMtest_N08_s2_w159DEEDD5-2882-4F9E-9048-F5BD2B918651
    IXMtest_N11_s4_w142A84EA3-47C3-4B49-B6CA-BBC6685BBE1E IXMtest_N12_s7_w166EF3FAB-EA33-4B28-91E3-034A1654BAAE
    IXMtest_N12_s9_w1C98EC3CC-2F8E-4761-A21A-EBF14469AD40 IXMtest_N18_s2_w1CC5ED51D-86C5-437D-8EDD-E56E4C949B3B
    IXMtest_N21_s1_w14F264B20-62D6-47EC-9BCD-B9416AB302D9 IXMtest_O01_s6_w11A23978B-BAAD-4287-B1F6-FFBCF45C5E2F
    IXMtest_O02_s4_w1814603DA-DD56-44EF-98C5-AFF3B636F986 IXMtest_O04_s2_w19A18B0D8-8E8B-4572-A5C0-5C678F3AD54C
    IXMtest_O09_s2_w133C7EDCE-1C7C-41A6-9E52-7AD499E7CDC8 IXMtest_O10_s8_w18F4DB020-BFB7-4F13-B99C-C39F8E54F85D
    IXMtest_O13_s3_w12D9C1C9C-C582-4080-B9BE-4807FA3E0843 IXMtest_O16_s2_w1F6F6A3A1-99E4-4029-B734-022806CF6D42
    IXMtest_P01_s3_w1A7DC2612-9C11-4656-B100-102AF8FE8B43 IXMtest_P07_s8_w144364F25-950A-472C-A529-1A9AD0433B6C
    IXMtest_P07_s8_w19D682C29-5685-4A33-8CAA-F0797DD7F021 IXMtest_P15_s3_w10F5E9699-743C-4177-93CE-27CFD65A925E
    IXMtest_P15_s8_w1D26A5BC7-CF59-4027-B785-85AD33773609 IXMtest_P19_s6_w10EBAD15B-2822-48B9-B9C8-4DF5D80AB940
    IXMtest_P21_s4_w19B7DC88B-10BB-4B51-9A10-9E30285688C1 IXMtest_P21_s5_w1ACEBEE91-BAFA-49E6-9D97-D07197400A15
"""),
    "val": _names("""
    IXMtest_A06_s6_w1B9577918-4973-4A87-BA73-A168AA755527 IXMtest_A16_s3_w1032BE329-E21B-4E1B-B4B8-58700685EE0C
    IXMtest_A18_s1_w1BFDF1C94-9C1F-4F5F-BBC1-05196333B1BF IXMtest_A20_s4_w153DE191F-B112-471B-AC0A-FAD27990714B
    IXMtest_A24_s9_w152CD6793-DA45-4975-869A-CBD49D645E37 IXMtest_B21_s4_w1521471E0-9BD7-492A-8739-9C782C2585B0
    IXMtest_B21_s7_w1276972A2-1794-4A98-8E76-876A597C346B IXMtest_B22_s6_w19397283D-2426-4942-8A0F-EB75E1D48C2D
    IXMtest_B23_s1_w152C21D3B-75A9-4FF9-839A-23E6CE19AEEC IXMtest_C02_s4_w1661FF37C-AB9B-4038-BDF3-D21DFD2811BE
    IXMtest_C21_s9_w1289444BE-8623-4867-86E7-01E155C6538D IXMtest_D04_s2_w1E05C134E-BAFE-4FD7-8116-2D05E0839879
    IXMtest_D04_s9_w17B6268DB-8215-4DC6-943C-CC009A8A5732 IXMtest_E05_s2_w15CCE97F8-3F02-412E-8BF2-FC92972DDA1A
    IXMtest_E15_s5_w1419F04CC-50C3-41FB-A87A-FB17647A2E33 IXMtest_E19_s2_w1752F162C-2C91-4A67-BF4F-D073C3D88291
    IXMtest_E19_s4_w129545707-4CD3-4498-AC27-E4AE24D0253C IXMtest_F01_s2_w189F7DC13-4572-43C9-8C23-CD9AEB41B24A
    IXMtest_F07_s5_w15678F19D-6F23-4FB4-8851-5B57CF8CCCF8 IXMtest_F12_s9_w1CD127D58-4641-41D3-88CC-E12B7FE77D78
    IXMtest_F21_s1_w1E2770CF6-417B-4804-9B45-6EE7D783D8CA IXMtest_F22_s6_w1D6C33377-3947-4DAC-B62D-531C2565F150
    IXMtest_G23_s4_w126F855D5-89CE-432B-9592-684B6E5EEF24 IXMtest_G23_s8_w12910C37A-C52C-45B2-A796-7C60A2247C32
    IXMtest_H01_s8_w13C7E7AAD-FC32-42F8-88C5-DDEA4BD8832C IXMtest_H06_s6_w1C3C98946-0210-4D6A-831E-5681452CCD1D
    IXMtest_H17_s1_w10A751E6C-5D06-4147-AB73-7FFAE0B57CC5 IXMtest_I15_s5_w11265571E-AA95-4E58-82CF-A75E3F240956
    IXMtest_I15_s8_w196F01FA4-CE06-44AE-AAA5-ADEC35BAE513 IXMtest_J02_s5_w1F53DDD35-C0B2-4E39-BA3B-9F66D289AB02
    IXMtest_J07_s9_w16921AB3C-1E9C-41C5-ADDA-7DE5CBF9CCBB IXMtest_K05_s7_w1816D5E2A-B9D8-48DA-9FE6-CBC35FE38C8D
    IXMtest_K18_s8_w11FC8D3EA-E30D-46B8-A45E-0399327AA8AC IXMtest_L01_s3_w1E7E0D198-5FB4-4E10-A27C-C46463DA9E06
    IXMtest_L06_s4_w14DD3575A-627B-4A71-91F0-3396DE0B33C4 IXMtest_L21_s5_w122478CD2-80DC-4B4E-9BC8-A6F6239F4103
    IXMtest_M04_s3_w1A599DF67-1E7F-4A09-84FD-0080767A735C IXMtest_M15_s8_w113217199-6161-475C-A786-265D0444C84B
    IXMtest_N15_s3_w148785C31-5B78-47BA-8802-FB8F2CEA6BE2 IXMtest_N18_s5_w1A2FA7E05-3145-461D-9111-FAB41A7F6D6F
    IXMtest_N23_s2_w16380EDDA-E5B8-4168-8BE7-F83AD9810680 IXMtest_O07_s2_w148B3D2F0-D4D6-4F1A-88D3-F18574F52153
    IXMtest_O18_s1_w1C2EE9CCF-5055-4E56-BB3A-212A63545A90 IXMtest_O18_s7_w19C30A212-58D3-4030-AA4F-B0C4482F1F8A
    IXMtest_P05_s5_w18FC141F8-8BCA-4851-9000-31D080922BDD IXMtest_P09_s4_w11E382363-8C26-4A73-9D8A-8193D66E5785
    IXMtest_P10_s2_w130B9EBAE-801C-4AAC-A3CE-1C96EE2E6FF9 IXMtest_P10_s7_w1F78192AF-7D11-4D41-80F3-8CD6DB05AB57
    IXMtest_P13_s6_w1270AEE06-D31F-421C-8147-13644F4C5B94 IXMtest_P23_s7_w13B627CB9-6C57-4049-AAD7-6468A051DD24
"""),
    "test": _names("""
    IXMtest_A15_s5_w1825174D4-ED30-490C-9635-6196417D6C9D IXMtest_A21_s1_w1D8BF2790-C628-4109-94AF-DF6D8A3480B6
    IXMtest_B12_s9_w1ABE4C6B8-6110-4D7D-B782-94C43FDC2E1F IXMtest_B20_s2_w159B9FE71-035A-4DED-B0CA-C76916C968BC
    IXMtest_B21_s3_w141E785B1-44FE-4ED0-9CCE-6FF076EFE9FE IXMtest_B22_s8_w10754C18F-B059-47B4-A423-FF429B984D80
    IXMtest_C05_s7_w1F71963FB-8F29-41CB-A5F5-07CB9584BBC5 IXMtest_C09_s7_w1768A3B0D-47FE-4D77-B1C6-46018E29486F
    IXMtest_C19_s4_w1AD3DC23E-B9B5-46E9-9716-26096C672A13 IXMtest_D06_s5_w13C67AAA9-6E81-42DB-AC5F-7126602F3607
    IXMtest_D20_s9_w1588B4C42-5A0D-4B93-9A80-A6527CC1C411 IXMtest_E04_s4_w1F5ABC12B-FABD-4E33-AB99-82271209853E
    IXMtest_E08_s2_w1588EDEBA-1BBA-4E49-810F-2EF2064C8846 IXMtest_E23_s8_w10F1F106B-057A-482C-93BB-C9A0B044C054
    IXMtest_G05_s6_w1AA0013DE-ED7A-428E-A17A-09959E7DC1A2 IXMtest_G06_s3_w19ABE30DE-4BFC-4CD5-AD16-6C8BD6E69F9D
    IXMtest_G08_s6_w1823194BE-DE9A-4638-BACD-CABE5FA4C89C IXMtest_G16_s3_w1B4690283-D75E-4DFB-92B0-29419E8292C6
    IXMtest_G16_s6_w1C3F175E2-0AF5-401C-AC5C-8E128A237B22 IXMtest_H01_s9_w1237AA324-894F-4C97-99F3-FEF47F52A550
    IXMtest_H06_s4_w16261E805-AF5F-4785-BB65-C77B61FF39F7 IXMtest_H07_s2_w1D8F30687-16A2-4A0D-BDD5-377257089055
    IXMtest_H08_s8_w1418B93F8-515E-49A7-A9AE-CAF7A1589A38 IXMtest_H11_s5_w1612B789B-6279-41E1-B4C6-009BF5772334
    IXMtest_H16_s4_w16207B133-B3F5-4C39-87A6-D71359B27581 IXMtest_H18_s7_w1D78A9181-AF11-4219-9C1E-2DB2684E948E
    IXMtest_H24_s6_w15034AA9F-051A-4BF0-A62F-ABAE599C4867 IXMtest_J03_s4_w1472990BF-A442-497B-8A43-8EE065002EEB
    IXMtest_J11_s2_w1177A125B-DEBE-4CB7-8F26-53A871785BA5 IXMtest_J15_s9_w1857B395F-AE7A-4319-BC26-3A041C0E31E9
    IXMtest_J20_s5_w15709AA91-01B9-4959-963A-9D1D574D12E4 IXMtest_K02_s3_w1FE99F6CA-8D35-4496-8F52-DBE55EFAB7E6
    IXMtest_K06_s9_w1787DFDA5-E2CE-40DB-9430-CC3766599BCC IXMtest_K11_s4_w139A2D71E-EC27-49CC-BDA0-1118747BDC76
    IXMtest_K12_s6_w160D86D6B-648B-433E-9776-8A42DF40E5FB IXMtest_L03_s6_w1BE79472D-5E2C-422F-A16E-7AC0691C0FD8
    IXMtest_L13_s5_w14B7DEC0F-735B-428F-B8B4-F4FF32B6ED4A IXMtest_L17_s1_w1DDC627E5-ADF1-441C-A437-D1D91CC0D498
    IXMtest_M12_s5_w16D817EFA-C3C9-45DB-AC15-61BB143DEC62 IXMtest_N02_s8_w1B14E70A6-CACF-425C-A958-1285482357F3
    IXMtest_N15_s8_w16DBEFA45-FE5A-4233-A1B9-89CA8CF81FB8 IXMtest_N24_s7_w1AC0733FE-E0FD-45B2-930B-FEEAB052DB36
    IXMtest_O07_s6_w17884A281-85EA-4DD8-9D5A-42427988AE36 IXMtest_O15_s6_w1A4844AB3-6D66-4B9A-8212-758E061C349F
    IXMtest_O16_s3_w129E61E12-E398-496E-9408-092D2D70E74B IXMtest_O24_s5_w175443699-7C4C-4E5F-9C5F-57A342CC87DE
    IXMtest_P23_s9_w1CA355675-EEC7-40B6-82C8-DC7E52A7A825 IXMtest_P24_s9_w13AC6C03C-E8D7-4A23-B649-514BB4052F52
"""),
}

#: Aitslab-bioimaging1 split, from Aitslab/imageanalysis @ 16647918,
#: Malou_dir/README_Folder/Nuclei_Segmentation_Project/2_Final_Models/data/4_filelists/: train =
#: ``1-2_training.txt``, val = ``relabel_VALIDATION.txt`` (its ``relabel_`` prefix dropped), test =
#: the 10 images in neither list (the paper's 30 / 10 / 10 training / development / test sets).
AITSLAB_SPLIT: dict[str, tuple[str, ...]] = {
    "train": _names("""
    MFGTMPcx7_170702000001_B14f07d0 MFGTMPcx7_170702000001_D13f04d0 MFGTMPcx7_170702000001_F24f14d0
    MFGTMPcx7_170702000001_G07f02d0 MFGTMPcx7_170702090001_A02f07d0 MFGTMPcx7_170702090001_A08f12d0
    MFGTMPcx7_170702090001_A10f11d0 MFGTMPcx7_170702090001_A12f00d0 MFGTMPcx7_170702090001_B08f09d0
    MFGTMPcx7_170702090001_C09f01d0 MFGTMPcx7_170702090001_C16f04d0 MFGTMPcx7_170702090001_F20f14d0
    MFGTMPcx7_170702090001_H03f10d0 MFGTMPcx7_170702090001_K22f04d0 MFGTMPcx7_170702090001_L21f03d0
    MFGTMPcx7_170702090001_N06f14d0 MFGTMPcx7_170702090001_O02f15d0 MFGTMPcx7_170702090001_P08f09d0
    MFGTMPcx7_170731090001_B05f10d0 MFGTMPcx7_170731090001_B14f13d0 MFGTMPcx7_170731090001_G15f00d0
    MFGTMPcx7_170731090001_G15f03d0 MFGTMPcx7_170731090001_I12f02d0 MFGTMPcx7_170731090001_I12f07d0
    MFGTMPcx7_170731090001_K05f07d0 MFGTMPcx7_170731090001_K24f09d0 MFGTMPcx7_170731090001_K24f10d0
    MFGTMPcx7_170801050001_A01f03d0 MFGTMPcx7_170802000001_I12f01d0 MFGTMPcx7_170803210001_P17f28d0
"""),
    "val": _names("""
    MFGTMPcx7_170702000001_B23f07d0 MFGTMPcx7_170702000001_F11f10d0 MFGTMPcx7_170702090001_A08f09d0
    MFGTMPcx7_170702090001_A20f02d0 MFGTMPcx7_170702090001_G03f02d0 MFGTMPcx7_170702090001_K22f14d0
    MFGTMPcx7_170702090001_P01f02d0 MFGTMPcx7_170731090001_A01f04d0 MFGTMPcx7_170731090001_B05f12d0
    MFGTMPcx7_170802000001_I10f05d0
"""),
    "test": _names("""
    MFGTMPcx7_170702000001_G14f03d0 MFGTMPcx7_170702090001_B22f15d0 MFGTMPcx7_170702090001_C08f14d0
    MFGTMPcx7_170702090001_H04f01d0 MFGTMPcx7_170702090001_P07f14d0 MFGTMPcx7_170731090001_B14f09d0
    MFGTMPcx7_170731090001_D11f13d0 MFGTMPcx7_170731090001_I12f05d0 MFGTMPcx7_170801050001_G02f01d0
    MFGTMPcx7_170803210001_J12f29d0
"""),
}


# --------------------------------------------------------------------------- label readers


def _imread(path: Path, what: str) -> np.ndarray:
    import imageio.v3 as iio

    try:
        return np.asarray(iio.imread(path))
    except Exception as e:    # noqa: BLE001 - imageio raises many types for a damaged file
        raise ImageReadError(f"{path}: cannot read the {what} ({type(e).__name__}: {e})") from None


def _as_ids(a: np.ndarray) -> np.ndarray:
    return a.astype(np.uint32 if a.size and a.max() >= 65535 else np.uint16)


def read_bbbc039_mask(path: Path) -> np.ndarray:
    """A BBBC039 mask PNG as a ``(H, W)`` id map.

    Channel 0 holds a colouring (1, 2, 3 ...; 0 = background) in which touching nuclei differ, so
    each 8-connected region of one colour is one nucleus.

    Raises
    ------
    ImageReadError
        The file cannot be read.
    ImportLayoutError
        Not a 2D (or channels-last) integer image.
    """
    from skimage.measure import label

    a = _imread(path, "mask")
    if a.ndim == 3:
        a = a[..., 0]
    if a.ndim != 2 or a.dtype.kind not in "iu":
        raise ImportLayoutError(f"{path}: expected a colour-coded mask PNG, got {a.dtype} {a.shape}")
    return _as_ids(label(a, background=0, connectivity=2))


def read_id_map(path: Path) -> np.ndarray:
    """A 2D instance id image (TIFF or PNG, 0 = background) as uint16 / uint32."""
    a = _imread(path, "mask")
    if a.ndim != 2 or a.dtype.kind not in "iu":
        raise ImportLayoutError(f"{path}: expected a 2D integer instance mask, got {a.dtype} {a.shape}")
    if a.size and a.min() < 0:
        raise ImportLayoutError(f"{path}: negative instance ids")
    return _as_ids(a)


def read_hovernet_inst_map(path: Path) -> np.ndarray:
    """The ``inst_map`` of a HoVer-Net ``.mat`` file as a ``(H, W)`` id map.

    Read with :func:`scipy.io.loadmat` (MATLAB v5 data, no pickle), only that variable; it must
    be 2D and integer-valued (MATLAB stores it as double).

    Raises
    ------
    ImageReadError
        Not a readable MATLAB v5 file.
    ImportLayoutError
        No ``inst_map``, or one that is not a 2D array of non-negative integers.
    """
    from scipy.io import loadmat

    try:
        mat = loadmat(path, variable_names=["inst_map"])
    except Exception as e:    # noqa: BLE001 - scipy raises many types for a damaged or non-v5 file
        raise ImageReadError(f"{path}: cannot read the MATLAB file ({type(e).__name__}: {e})") from None
    if "inst_map" not in mat:
        raise ImportLayoutError(f"{path}: no 'inst_map' (the HoVer-Net instance map) in the file")
    a = np.asarray(mat["inst_map"])
    if a.ndim != 2 or a.dtype.kind not in "iuf" or a.size == 0:
        raise ImportLayoutError(f"{path}: 'inst_map' must be a 2D numeric array, got {a.dtype} {a.shape}")
    if a.dtype.kind == "f" and not (np.isfinite(a).all() and (a == np.round(a)).all()):
        raise ImportLayoutError(f"{path}: 'inst_map' holds values that are not integer ids")
    if a.min() < 0 or a.max() >= 2**32:
        raise ImportLayoutError(f"{path}: 'inst_map' ids must be 0 .. 2^32-1")
    return _as_ids(a)


def separate_objects(ids: np.ndarray, *, min_size: int = MIN_OBJECT_PX) -> tuple[np.ndarray, int, int]:
    """One object per 8-connected part of each id; parts under ``min_size`` pixels dropped.

    Parameters
    ----------
    ids : (H, W) ndarray of int
        Instance ids, 0 = background.
    min_size : int
        Smaller parts are specks and become background.

    Returns
    -------
    labels : (H, W) ndarray of uint16 or uint32
        Ids 1..N.
    reused : int
        Ids that covered more than one object (after specks are dropped).
    specks : int
        Parts dropped.
    """
    from skimage.measure import label
    from skimage.segmentation import relabel_sequential

    parts = label(ids, background=0, connectivity=2)
    sizes = np.bincount(parts.ravel())
    small = sizes < min_size
    small[0] = False
    parts[small[parts]] = 0
    out = relabel_sequential(parts)[0]
    first = np.unique(out.ravel(), return_index=True)[1][1:]       # one pixel of each object
    per_id = np.unique(ids.ravel()[first], return_counts=True)[1]
    return _as_ids(out), int((per_id > 1).sum()), int(small.sum())


# --------------------------------------------------------------------------- the datasets


def _split_notices(name: str, unlisted: list[str], missing: int, listed: int, notices: list[str]) -> None:
    if unlisted:
        notices.append(f"{name}: {len(unlisted)} image(s) in none of the recorded splits, not imported: "
                       + ", ".join(unlisted[:4]) + (" ..." if len(unlisted) > 4 else ""))
    if missing:
        notices.append(f"{name}: {missing} of the {listed} images of the recorded splits are not in this copy")


def _bbbc039_items(root: Path, ds: NucleiDataset, notices: list[str]) -> list[SourceItem]:
    what = "cell nuclei/images/*.tif + cell nuclei/masks/*.png"
    try:
        base = find_dataset_folder(root, "cell nuclei/masks", what, ds) / "cell nuclei"
    except ImportSourceError:
        if not ((root / "images").is_dir() and (root / "masks").is_dir()):
            raise
        base = root                                      # --from the "cell nuclei" folder itself
    split_of = {n: s for s, names in BBBC039_SPLIT.items() for n in names}
    reserved = set(BBBC039_DSB2018_FIELDS)
    items, excluded, unlisted = [], [], []
    for img in sorted((base / "images").glob("*.tif")):
        if img.stem in reserved:
            excluded.append(img.stem)
            continue
        if img.stem not in split_of:
            unlisted.append(img.name)
            continue
        mask = base / "masks" / (img.stem + ".png")
        if not mask.is_file():
            raise ImportLayoutError(f"{img}: no mask {mask}")
        items.append(SourceItem(img.name, img.stem, img, split_of[img.stem],
                                (lambda shape, m=mask: read_bbbc039_mask(m)), (mask,), None))
    notices.append(f"bbbc039: {len(excluded)} field(s) of this copy not imported: they are also DSB2018 images, "
                   f"which are reserved for evaluation ({len(reserved)} such fields are listed)")
    listed = set(split_of) - reserved
    _split_notices("bbbc039", unlisted, len(listed - {it.name for it in items}), len(listed), notices)
    return items


def _kromp_splits(table: Path) -> dict[str, str]:
    """``{image name: "train" | "test"}`` from S-BSST265's ``image_description.csv``."""
    if not table.is_file():
        raise ImportLayoutError(f"{table}: missing; S-BSST265's image_description.csv gives the train / test "
                                "split of every image")
    try:
        with open(table, encoding="latin-1", newline="") as f:
            rows = list(csv.reader(f, delimiter=";"))
    except OSError as e:
        raise ImageReadError(f"{table}: cannot read the table ({e.strerror or e})") from None
    head = [h.strip() for h in rows[0]] if rows else []
    if "Image_Name" not in head or "Train-/Testset split" not in head:
        raise ImportLayoutError(f"{table}: no 'Image_Name' and 'Train-/Testset split' columns (';'-separated)")
    i, j = head.index("Image_Name"), head.index("Train-/Testset split")
    out = {}
    for n, row in enumerate(rows[1:], 2):
        if not any(c.strip() for c in row):
            continue
        split = row[j].strip().lower() if len(row) > max(i, j) else ""
        if split not in ("train", "test"):
            raise ImportLayoutError(f"{table}:{n}: split must be 'train' or 'test', got {split!r}")
        out[row[i].strip()] = split
    return out


def _kromp_items(root: Path, ds: NucleiDataset, notices: list[str]) -> list[SourceItem]:
    base = find_dataset_folder(root, "rawimages", "rawimages/*.tif + groundtruth/*.tif + image_description.csv",
                               ds)
    images = sorted((base / "rawimages").glob("*.tif"))
    if not images:
        return []
    table = base / "image_description.csv"
    split_of = _kromp_splits(table)
    reported: set[str] = set()        # the driver reads labels twice (check, then write): one notice each

    def labels(shape, gt: Path) -> np.ndarray:
        out, reused, specks = separate_objects(read_id_map(gt))
        if (reused or specks) and gt.name not in reported:
            reported.add(gt.name)
            done = ([f"{reused} id(s) used for separate nuclei split into one object per part"] if reused else []) \
                + ([f"{specks} speck(s) under {MIN_OBJECT_PX} px dropped"] if specks else [])
            notices.append(f"s-bsst265: {gt.name}: " + "; ".join(done))
        return out

    items = []
    for img in images:
        gt = base / "groundtruth" / img.name
        if not gt.is_file():
            raise ImportLayoutError(f"{img}: no ground-truth mask {gt}")
        if img.stem not in split_of:
            raise ImportLayoutError(f"{img}: not listed in {table}")
        items.append(SourceItem(img.name, img.stem, img, "test" if split_of[img.stem] == "test" else None,
                                (lambda shape, gt=gt: labels(shape, gt)), (gt,), None))
    return items


def _aitslab_items(root: Path, ds: NucleiDataset, notices: list[str]) -> list[SourceItem]:
    base = find_dataset_folder(root, "annotation_nuclei", "normalized_nuclei/*.png + annotation_nuclei/*.mat",
                               ds)
    split_of = {n: s for s, names in AITSLAB_SPLIT.items() for n in names}
    items, unlisted = [], []
    for img in sorted((base / "normalized_nuclei").glob("*.png")):
        if img.stem not in split_of:
            unlisted.append(img.name)
            continue
        mat = base / "annotation_nuclei" / (img.stem + ".mat")
        if not mat.is_file():
            raise ImportLayoutError(f"{img}: no instance map {mat}")
        items.append(SourceItem(img.name, img.stem, img, split_of[img.stem],
                                (lambda shape, m=mat: read_hovernet_inst_map(m)), (mat,), None))
    if items:
        _split_notices("aitslab-bioimaging1", unlisted, len(set(split_of) - {it.name for it in items}),
                       len(split_of), notices)
    return items


register(FLUO_DATASETS["bbbc039"], _bbbc039_items)
register(FLUO_DATASETS["s-bsst265"], _kromp_items)
register(FLUO_DATASETS["aitslab-bioimaging1"], _aitslab_items)
