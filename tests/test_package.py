"""Model package v1: round trip, integrity, and refusal of unsafe or malformed files."""

import json
import zipfile

import numpy as np
import pytest
import torch

import segloop
from segloop.core._runtime import sha256_bytes
from segloop.core.formats.package import (
    ModelSpec,
    add_onnx,
    load_package,
    save_package,
)
from segloop.core.inference.model import build_network, verify_package
from segloop.errors import (
    ArchitectureArgumentsError,
    FormatVersionError,
    IntegrityError,
    ModelNotFoundError,
    ModelPackageError,
    UnknownArchitectureError,
    UnsafeModelFileError,
)

from .conftest import tiny_spec, tiny_state


def test_round_trip_dir_and_zip_give_identical_networks(tmp_path):
    spec = tiny_spec()
    state = tiny_state(spec)
    written = save_package(tmp_path / "p", spec, state)
    save_package(tmp_path / "p.zip", spec, state)
    assert len(written.sha256) == 64
    for path in (tmp_path / "p", tmp_path / "p.zip"):
        pkg = load_package(path)
        assert pkg.spec.to_dict() == written.to_dict()
        net = build_network(pkg)
        for k, v in state.items():
            assert torch.equal(net.state_dict()[k], v)
    raw = json.loads((tmp_path / "p" / "segloop-model.json").read_text())
    assert raw["format"] == "segloop-model" and raw["format_version"] == 1
    for key in ("name", "version", "architecture", "architecture_kwargs", "dims", "in_channels", "classes",
                "task", "normalization", "tile", "pixel_size", "spacing", "parent", "training", "sha256"):
        assert key in raw


def test_fp16_weights_halve_the_file_and_load_as_fp32(tmp_path):
    spec = tiny_spec(architecture_kwargs={"depth": 2, "base_width": 16})
    state = tiny_state(spec)
    save_package(tmp_path / "a", spec, state)
    save_package(tmp_path / "b", spec, state, weights_dtype="float16")
    a, b = (tmp_path / "a/model.safetensors").stat().st_size, (tmp_path / "b/model.safetensors").stat().st_size
    assert b < 0.6 * a
    pkg = load_package(tmp_path / "b")
    assert all(v.dtype == torch.float32 for v in pkg.state_dict.values() if v.is_floating_point())


def test_never_overwrites_an_existing_package(tiny_package):
    spec = load_package(tiny_package).spec
    with pytest.raises(ModelPackageError, match="already exists"):
        save_package(tiny_package, spec, tiny_state(spec))


def test_changed_weights_are_detected(tiny_package):
    w = tiny_package / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        load_package(tiny_package)


def test_truncated_weights_are_detected_even_without_hash_check(tiny_package):
    w = tiny_package / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(IntegrityError):
        load_package(tiny_package)
    with pytest.raises(ModelPackageError, match="safetensors"):
        load_package(tiny_package, verify=False)


def test_missing_files_and_bad_json(tiny_package, tmp_path):
    with pytest.raises(ModelNotFoundError):
        load_package(tmp_path / "nope")
    (tiny_package / "segloop-model.json").write_text('{"format": "segloop-model", ')
    with pytest.raises(ModelPackageError, match="not valid JSON"):
        load_package(tiny_package)
    (tiny_package / "segloop-model.json").unlink()
    with pytest.raises(ModelPackageError, match="segloop-model.json is missing"):
        load_package(tiny_package)


def _edit_spec(path, **changes):
    p = path / "segloop-model.json"
    d = json.loads(p.read_text())
    d.update(changes)
    p.write_text(json.dumps(d))


def test_unknown_architecture_and_newer_format(tiny_package):
    _edit_spec(tiny_package, format_version=2)
    with pytest.raises(FormatVersionError, match="format_version 2"):
        load_package(tiny_package)
    _edit_spec(tiny_package, format_version=1, architecture="transunet")
    with pytest.raises(UnknownArchitectureError, match="transunet"):
        verify_package(tiny_package)          # refused when the network is built (formats do not know networks)
    with pytest.raises(UnknownArchitectureError, match="transunet"):
        segloop.register_model(tiny_package, name="not-here")    # and when registered, not at first use
    assert "not-here" not in segloop.list_models()


def test_architecture_kwargs_of_the_wrong_kind_are_a_typed_error_on_the_command_line(tiny_package, capsys):
    from segloop.cli import main

    _edit_spec(tiny_package, architecture_kwargs={"depth": "four", "base_width": 4})
    with pytest.raises(ArchitectureArgumentsError, match="depth='four'"):
        verify_package(tiny_package)
    assert main(["predict", str(tiny_package), "--model", str(tiny_package), "--out", str(tiny_package / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segloop: error:") and "depth='four'" in err and err.count("\n") == 1


def test_weights_that_do_not_fit_the_architecture(tiny_package):
    _edit_spec(tiny_package, architecture_kwargs={"depth": 3, "base_width": 4})
    with pytest.raises(ModelPackageError, match="do not fit"):
        verify_package(tiny_package)


def test_pickle_checkpoints_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    pt = tmp_path / "model.pt"
    torch.save({"x": Evil()}, pt)          # a real malicious PyTorch checkpoint
    with pytest.raises(UnsafeModelFileError, match="never unpickles"):
        load_package(pt)
    renamed = tmp_path / "model.zip"       # same file, innocent name
    renamed.write_bytes(pt.read_bytes())
    with pytest.raises(UnsafeModelFileError):
        load_package(renamed)
    assert not marker.exists()


def test_zip_members_escaping_the_package_are_refused(tiny_package, tmp_path):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in tiny_package.iterdir():
            zf.write(f, f.name)
        zf.writestr("../outside.txt", "x")
    with pytest.raises(UnsafeModelFileError, match="outside"):
        load_package(z)


def test_onnx_with_external_data_outside_the_folder_is_refused(tiny_package, tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    init = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    init.ClearField("float_data")
    init.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../../etc/passwd"), ("offset", "0"), ("length", "4")):
        e = init.external_data.add()
        e.key, e.value = k, v
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [init])
    data = helper.make_model(graph).SerializeToString()
    (tiny_package / "model.onnx").write_bytes(data)
    _edit_spec(tiny_package, onnx_sha256=sha256_bytes(data))     # a crafted package records the hash
    with pytest.raises(UnsafeModelFileError, match="outside the package"):
        load_package(tiny_package)
    assert onnx  # imported for the helper


def test_spec_validation_rejects_nonsense():
    with pytest.raises(ModelPackageError):
        tiny_spec(task="panoptic").validate()
    with pytest.raises(ModelPackageError):
        tiny_spec(classes=("background", "x")).validate()     # instance needs 3
    with pytest.raises(ModelPackageError):
        ModelSpec.from_dict({"format": "other"})
    assert np.isscalar(tiny_spec().n_classes)


def test_unhashed_or_junk_onnx_files(tiny_package):
    (tiny_package / "model.onnx").write_bytes(b"not an onnx model")
    with pytest.warns(UserWarning, match="no sha256"):
        assert load_package(tiny_package).onnx_bytes is None      # ignored, never run
    _edit_spec(tiny_package, onnx_sha256=sha256_bytes(b"not an onnx model"))
    with pytest.raises(ModelPackageError, match="not a valid ONNX"):
        load_package(tiny_package)


def test_add_onnx_keeps_other_files_and_permissions(tiny_package):
    from segloop.core.inference.engines import export_onnx

    (tiny_package / "notes.md").write_text("my notes")
    net = build_network(load_package(tiny_package))
    add_onnx(tiny_package, export_onnx(net, in_channels=1, tile=64))
    assert (tiny_package / "notes.md").read_text() == "my notes"
    assert load_package(tiny_package).onnx_bytes is not None
    assert tiny_package.stat().st_mode & 0o055                 # group/other can read the folder


def test_zips_from_finder_with_a_folder_and_macosx_metadata_load(tiny_package, tmp_path):
    z = tmp_path / "finder.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in tiny_package.iterdir():
            zf.write(f, f"tiny-pkg/{f.name}")
        zf.writestr("__MACOSX/tiny-pkg/._model.safetensors", "resource fork")
    assert load_package(z).spec.name == "tiny"


def test_read_spec_reads_only_the_json(tiny_package):
    from segloop.core.formats.package import read_spec

    (tiny_package / "model.safetensors").write_bytes(b"garbage")     # weights are not touched
    assert read_spec(tiny_package).name == "tiny"
    with pytest.raises(IntegrityError):
        load_package(tiny_package)                                  # running still verifies them
