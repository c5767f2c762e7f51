"""Volume reading with geometry (NIfTI, MRC, TIFF stacks) and label writers (NIfTI, .seg.nrrd)."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
import tifffile

nib = pytest.importorskip("nibabel")
mrcfile = pytest.importorskip("mrcfile")
nrrd = pytest.importorskip("nrrd")

from nibabel.orientations import (  # noqa: E402
    aff2axcodes,
    apply_orientation,
    axcodes2ornt,
    io_orientation,
    ornt_transform,
)

from segloop.core.formats.io import (  # noqa: E402
    load_liver_ct,
    read_volume,
    write_nifti_labels,
    write_seg_nrrd,
)
from segloop.core.formats.io.samples import liver_ct_paths  # noqa: E402
from segloop.core.formats.io.volume import looks_like_dicom_dir  # noqa: E402
from segloop.errors import Cancelled, ImageReadError, InvalidLabelsError, VolumeReadError  # noqa: E402


def _rot_z(deg: float) -> np.ndarray:
    t = np.radians(deg)
    r = np.eye(4)
    r[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return r


AFFINES = {
    "RAS": np.diag([0.7, 0.8, 2.5, 1.0]),
    "LAS": np.diag([-0.7, 0.8, 2.5, 1.0]),
    "LPI": np.diag([-0.7, -0.8, -2.5, 1.0]),
    # voxel axes (i, j, k) along (R, I, A): a coronal acquisition
    "coronal": np.array([[0.7, 0, 0, 0], [0, 0, 2.5, 0], [0, -0.8, 0, 0], [0, 0, 0, 1.0]]),
    # voxel axes along (A, S, L): a sagittal acquisition
    "sagittal": np.array([[0, 0, -2.5, 0], [0.7, 0, 0, 0], [0, 0.8, 0, 0], [0, 0, 0, 1.0]]),
    "oblique": _rot_z(20) @ np.diag([0.7, 0.8, 2.5, 1.0]),
}


#: (dz, dy, dx) expected after reorientation: the voxel sizes along (S, P, L)
SPACING_SPL = {"RAS": (2.5, 0.8, 0.7), "LAS": (2.5, 0.8, 0.7), "LPI": (2.5, 0.8, 0.7),
               "coronal": (0.8, 2.5, 0.7), "sagittal": (0.8, 0.7, 2.5)}


def _nifti(tmp_path, name, affine, *, shape=(5, 6, 7), dtype=np.int16, seed=0, gz=True, **hdr):
    aff = np.array(affine, float)
    aff[:3, 3] = [10.0, -20.0, 30.0]
    data = np.random.default_rng(seed).integers(0, 1000, shape).astype(dtype)
    img = nib.Nifti1Image(data, aff)
    for k, v in hdr.items():
        img.header[k] = v
    path = tmp_path / f"{name}.nii{'.gz' if gz else ''}"
    nib.save(img, path)
    return path, data, nib.load(path).affine


@pytest.mark.parametrize("name", list(AFFINES))
def test_nifti_is_reoriented_to_lps_and_keeps_world_coordinates(tmp_path, name):
    path, src, file_affine = _nifti(tmp_path, name, AFFINES[name])
    vol, info = read_volume(path)
    assert info.format == "nifti" and vol.shape == info.shape
    # the same voxels as nibabel's own reorientation to (S, P, L) axis order
    ref = apply_orientation(src, ornt_transform(io_orientation(file_affine), axcodes2ornt(("S", "P", "L"))))
    np.testing.assert_array_equal(vol, ref)
    np.testing.assert_array_equal(info.to_source.from_display(vol), src)
    np.testing.assert_array_equal(info.source_affine, file_affine)
    # every voxel is at the same world point through info.affine (display) and the file's affine (source)
    rng = np.random.default_rng(1)
    m = info.to_source.index_matrix(vol.shape)
    for d in zip(*(rng.integers(0, n, 8) for n in vol.shape)):
        s = (m @ [*d, 1])[:3].round().astype(int)
        assert vol[d] == src[tuple(s)]
        np.testing.assert_allclose(info.affine @ [*d, 1], file_affine @ [*s, 1], atol=1e-5)
    np.testing.assert_allclose(info.spacing, np.linalg.norm(info.affine[:3, :3], axis=0), rtol=1e-6)
    if name == "oblique":
        assert info.oblique and any("oblique" in w for w in info.warnings)
    else:
        assert aff2axcodes(info.affine) == ("S", "P", "L") and not info.oblique
        assert info.spacing == pytest.approx(SPACING_SPL[name], rel=1e-6)


def test_nifti_4d_is_refused_but_a_single_volume_is_squeezed(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 3), np.int16), np.eye(4)), tmp_path / "t3.nii.gz")
    with pytest.raises(VolumeReadError, match=r"4D.*\(3,\)"):
        read_volume(tmp_path / "t3.nii.gz")
    data = np.arange(120, dtype=np.int16).reshape(4, 5, 6, 1)
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, -1, 1, 1])), tmp_path / "t1.nii")
    vol, info = read_volume(tmp_path / "t1.nii")
    assert vol.shape == (6, 5, 4) == info.shape
    np.testing.assert_array_equal(info.to_source.from_display(vol), data[..., 0])


def test_nifti_scaling_is_applied_and_int16_kept_without_it(tmp_path):
    raw = np.random.default_rng(0).integers(0, 2000, (4, 5, 6)).astype(np.int16)
    img = nib.Nifti1Image(raw, np.diag([-1.0, -1, 1, 1]))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, tmp_path / "scaled.nii.gz")
    vol, info = read_volume(tmp_path / "scaled.nii.gz")
    assert vol.dtype == np.float32
    np.testing.assert_allclose(info.to_source.from_display(vol), raw * 2.0 - 1024.0)
    assert info.extra.get("likely_ct") is True and info.units == ""       # a guess, not units

    hu = (raw - 1024).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, np.diag([-1.0, -1, 1, 1])), tmp_path / "hu.nii.gz")
    vol, info = read_volume(tmp_path / "hu.nii.gz")
    assert vol.dtype == np.int16 and info.extra.get("likely_ct") is True
    nib.save(nib.Nifti1Image(raw.astype(np.uint8), np.eye(4)), tmp_path / "mr.nii.gz")
    assert "likely_ct" not in read_volume(tmp_path / "mr.nii.gz")[1].extra


def test_uncompressed_nifti_is_memory_mapped_and_gzip_can_be_lazy(tmp_path):
    path, src, _ = _nifti(tmp_path, "plain", AFFINES["LAS"], gz=False)
    vol, info = read_volume(path)
    assert isinstance(vol, np.memmap) and info.extra["lazy"]
    assert not isinstance(read_volume(path, lazy=False)[0], np.memmap)

    da = pytest.importorskip("dask.array")
    path, src, _ = _nifti(tmp_path, "big", AFFINES["coronal"], shape=(6, 7, 8))
    lazy, info = read_volume(path, lazy=True)
    assert isinstance(lazy, da.Array) and any("gzip" in w for w in info.warnings)
    np.testing.assert_array_equal(lazy.compute(), read_volume(path, lazy=False)[0])


def test_nifti_window_from_cal_min_max(tmp_path):
    path, _, _ = _nifti(tmp_path, "win", AFFINES["RAS"], cal_min=-100.0, cal_max=300.0)
    assert read_volume(path)[1].window == (100.0, 400.0)


def test_progress_and_cancel(tmp_path):
    path, _, _ = _nifti(tmp_path, "p", AFFINES["RAS"])
    calls = []
    read_volume(path, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, 1) and calls[-1] == (1, 1)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        read_volume(path, cancel=stop)


def test_missing_truncated_and_unknown_files(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_volume(tmp_path / "nope.nii.gz")
    path, _, _ = _nifti(tmp_path, "cut", AFFINES["RAS"], shape=(20, 20, 20), gz=False)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ImageReadError, match="truncated"):
        np.asarray(read_volume(path, lazy=False)[0])
    (tmp_path / "x.xyz").write_bytes(b"hello")
    with pytest.raises(VolumeReadError, match="not a volume format"):
        read_volume(tmp_path / "x.xyz")


# -- MRC -----------------------------------------------------------------------------------------

def test_mrc_liver_ct_reads_as_stored_with_warnings():
    img, _ = liver_ct_paths()
    vol, info = read_volume(img)
    assert isinstance(vol, np.memmap) and vol.shape == (128, 128, 128) and vol.dtype == np.float32
    assert info.format == "mrc" and info.spacing == (1.0, 1.0, 1.0) and info.to_source.is_identity
    assert float(vol.min()) == pytest.approx(-1063.25) and float(vol.max()) == pytest.approx(1877.25)
    text = " ".join(info.warnings)
    assert "voxel size 0" in text and "no patient orientation" in text


def test_mrc_voxel_size_in_angstrom_becomes_mm(tmp_path):
    p = tmp_path / "tomo.mrc"
    with mrcfile.new(p) as m:
        m.set_data(np.zeros((3, 4, 5), np.int16))
        m.voxel_size = (10.0, 20.0, 40.0)           # x, y, z in Å
    vol, info = read_volume(p)
    assert vol.shape == (3, 4, 5)
    assert info.spacing == pytest.approx((40e-7, 20e-7, 10e-7))
    assert not any("voxel size 0" in w for w in info.warnings)


def test_load_liver_ct_is_axial_lps_with_anatomy_where_expected():
    hu, labels, info = load_liver_ct()
    assert hu.shape == labels.shape == info.shape == (128, 128, 128)
    assert hu.dtype == np.float32 and labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1, 2}
    assert info.modality == "CT" and info.units == "HU" and info.spacing == (1.0, 1.0, 1.0)
    assert any("spacing unknown" in w and "resampled" in w for w in info.warnings)
    raw = mrcfile.open(liver_ct_paths()[0], permissive=True).data
    np.testing.assert_array_equal(info.to_source.from_display(hu), raw)
    liver = np.argwhere(labels == 1).mean(0)
    bone = np.argwhere(hu > 300).mean(0)
    assert liver[2] < 64                 # patient right (liver) on the screen's left: X runs to the Left
    assert bone[1] > liver[1] + 15       # spine behind the liver: Y runs to Posterior
    per_z = (labels > 0).reshape(128, -1).sum(1)
    assert per_z[96:].sum() > 3 * per_z[:32].sum()    # liver dome high in Z: Z runs to Superior


# -- TIFF stacks ---------------------------------------------------------------------------------

def test_tiff_stack_spacing_from_imagej_metadata(tmp_path):
    stack = np.random.default_rng(0).integers(0, 4000, (4, 16, 20)).astype(np.uint16)
    p = tmp_path / "stack.tif"
    tifffile.imwrite(p, stack, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"spacing": 2.5, "unit": "um", "axes": "ZYX", "min": 100.0, "max": 900.0})
    vol, info = read_volume(p)
    np.testing.assert_array_equal(vol, stack)
    assert info.format == "tiff" and info.spacing == pytest.approx((2.5e-3, 0.5e-3, 0.5e-3))
    assert info.window == (500.0, 800.0)
    np.testing.assert_allclose(info.affine[:3, :3], [[0, 0, -0.5e-3], [0, -0.5e-3, 0], [2.5e-3, 0, 0]])


def test_tiff_stack_spacing_from_ome_physical_size(tmp_path):
    stack = np.zeros((3, 8, 9), np.uint8)
    p = tmp_path / "stack.ome.tif"
    tifffile.imwrite(p, stack, metadata={"axes": "ZYX", "PhysicalSizeX": 250.0, "PhysicalSizeXUnit": "nm",
                                         "PhysicalSizeY": 300.0, "PhysicalSizeYUnit": "nm",
                                         "PhysicalSizeZ": 1.5, "PhysicalSizeZUnit": "µm"})
    vol, info = read_volume(p)
    assert vol.shape == (3, 8, 9)
    assert info.spacing == pytest.approx((1.5e-3, 300e-6, 250e-6))


def test_rgb_tiff_stack_is_refused_and_a_plane_is_one_slice(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((3, 8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(VolumeReadError, match="read_image"):
        read_volume(tmp_path / "rgb.tif")
    tifffile.imwrite(tmp_path / "plane.tif", np.ones((8, 9), np.uint16))
    vol, info = read_volume(tmp_path / "plane.tif")
    assert vol.shape == info.shape == (1, 8, 9)
    assert any("pixel size unknown" in w for w in info.warnings)


# -- writers -------------------------------------------------------------------------------------

def _blob(shape, centre, r=1):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= r * r


@pytest.mark.parametrize("name", ["RAS", "LPI", "coronal", "sagittal", "oblique"])
def test_nifti_labels_round_trip_into_the_source_space(tmp_path, name):
    path, src, file_affine = _nifti(tmp_path, name, AFFINES[name], shape=(9, 10, 11))
    vol, info = read_volume(path)
    world = file_affine @ [2, 3, 4, 1]                     # a known world point: source voxel (2, 3, 4)
    d = np.linalg.solve(info.affine, world)[:3].round().astype(int)
    labels = np.zeros(vol.shape, np.int32)
    labels[_blob(vol.shape, d)] = 7
    out = write_nifti_labels(tmp_path / "labels.nii.gz", labels, info)
    back = nib.load(out)
    assert back.shape == src.shape and back.get_data_dtype() == np.uint8
    np.testing.assert_allclose(back.affine, file_affine, atol=1e-6)
    assert int(back.header["sform_code"]) > 0 and int(back.header["qform_code"]) > 0
    data = np.asarray(back.dataobj)
    assert data[2, 3, 4] == 7
    np.testing.assert_array_equal(data, info.to_source.from_display(labels))
    big = labels.copy()
    big[0, 0, 0] = 300
    assert nib.load(write_nifti_labels(tmp_path / "big.nii", big, info)).get_data_dtype() == np.uint16


def test_nifti_labels_from_a_non_nifti_volume_keep_world_positions(tmp_path):
    hu, labels, info = load_liver_ct()
    out = write_nifti_labels(tmp_path / "liver.nii.gz", labels, info)
    back = nib.load(out)
    data = np.asarray(back.dataobj)
    for d in [(10, 20, 30), (100, 64, 5), (127, 0, 127)]:
        ijk = (d[2], d[1], d[0])                           # written as (X, Y, Z)
        assert data[ijk] == labels[d]
        np.testing.assert_allclose(back.affine @ [*ijk, 1], info.affine @ [*d, 1])


def test_seg_nrrd_geometry_and_segments_match_slicer_layout(tmp_path):
    path, src, file_affine = _nifti(tmp_path, "las", AFFINES["LAS"], shape=(9, 10, 11))
    vol, info = read_volume(path)
    labels = np.zeros(vol.shape, np.uint8)
    labels[_blob(vol.shape, (3, 4, 5))] = 1
    labels[_blob(vol.shape, (7, 6, 2))] = 2
    out = write_seg_nrrd(tmp_path / "s.seg.nrrd", labels, info, names={1: "liver", 2: "tumour", 5: "vessel"},
                         colors={1: (255, 0, 0), 2: (0.0, 0.5, 1.0, 1.0)})
    data, hdr = nrrd.read(str(out), index_order="F")
    assert hdr["space"] == "left-posterior-superior" and data.shape == src.shape
    dirs, origin = np.asarray(hdr["space directions"], float), np.asarray(hdr["space origin"], float)
    m = info.to_source.index_matrix(vol.shape)
    rng = np.random.default_rng(2)
    for d in zip(*(rng.integers(0, n, 6) for n in vol.shape)):
        ijk = (m @ [*d, 1])[:3].round().astype(int)
        lps = origin + dirs.T @ ijk
        ras = lps * [-1, -1, 1]
        np.testing.assert_allclose(ras, (info.affine @ [*d, 1])[:3], atol=1e-5)
        assert data[tuple(ijk)] == labels[d]
    assert hdr["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert hdr["Segmentation_ContainedRepresentationNames"] == "Binary labelmap|"
    assert hdr["Segmentation_ReferenceImageExtentOffset"] == "0 0 0"
    segs = {hdr[f"Segment{i}_LabelValue"]: i for i in range(3)}
    assert set(segs) == {"1", "2", "5"}
    s1, s2, s5 = segs["1"], segs["2"], segs["5"]
    assert hdr[f"Segment{s1}_Name"] == "liver" and hdr[f"Segment{s2}_Name"] == "tumour"
    assert hdr[f"Segment{s1}_Color"] == "1 0 0" and hdr[f"Segment{s2}_Color"] == "0 0.5 1"
    assert hdr[f"Segment{s5}_Extent"] == "0 -1 0 -1 0 -1" and hdr[f"Segment{s1}_Layer"] == "0"
    ii, jj, kk = np.nonzero(data == 1)
    assert hdr[f"Segment{s1}_Extent"] == f"{ii.min()} {ii.max()} {jj.min()} {jj.max()} {kk.min()} {kk.max()}"


def test_label_writers_refuse_bad_labels(tmp_path):
    path, _, _ = _nifti(tmp_path, "b", AFFINES["RAS"])
    vol, info = read_volume(path)
    with pytest.raises(InvalidLabelsError, match="do not match"):
        write_nifti_labels(tmp_path / "x.nii.gz", np.zeros((2, 2, 2), np.uint8), info)
    with pytest.raises(InvalidLabelsError, match="65535"):
        write_seg_nrrd(tmp_path / "x.seg.nrrd", np.full(vol.shape, 70000, np.int32), info)
    with pytest.raises(InvalidLabelsError, match="negative"):
        write_nifti_labels(tmp_path / "x.nii.gz", np.full(vol.shape, -1, np.int16), info)
    assert not list(tmp_path.glob("x.*"))


# -- DICOM dispatch ------------------------------------------------------------------------------

def test_dicom_files_and_folders_go_to_the_dicom_reader(tmp_path):
    pydicom_data = pytest.importorskip("pydicom.data")
    ct = pydicom_data.get_testdata_file("CT_small.dcm")
    series = tmp_path / "study" / "series"
    series.mkdir(parents=True)
    shutil.copy(ct, series / "IM0001")                    # no suffix: found by its preamble
    assert looks_like_dicom_dir(tmp_path)
    (tmp_path / "plain").mkdir()
    tifffile.imwrite(tmp_path / "plain" / "a.tif", np.zeros((4, 4), np.uint8))
    assert not looks_like_dicom_dir(tmp_path / "plain")
    vol, info = read_volume(series / "IM0001")
    assert info.format == "dicom" and vol.shape == info.shape and vol.shape[0] == 1


def test_label_writers_report_an_unwritable_target(tmp_path):
    from segloop.errors import ExportError

    path, _, _ = _nifti(tmp_path, "w", AFFINES["RAS"])
    vol, info = read_volume(path)
    labels = np.zeros(vol.shape, np.uint8)
    with pytest.raises(ExportError, match="writable"):
        write_nifti_labels(tmp_path / "missing" / "x.nii.gz", labels, info)
    with pytest.raises(ExportError, match="writable"):
        write_seg_nrrd(tmp_path / "missing" / "x.seg.nrrd", labels, info)
    with pytest.raises(ExportError, match=r"\.nii"):
        write_nifti_labels(tmp_path / "x.tif", labels, info)
