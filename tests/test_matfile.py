"""MATLAB v7.3 (HDF5) .mat files read like v5 ones (jax3dmmstn.matfile), written here the way
MATLAB writes them: a 512-byte text header, then HDF5 with every array transposed."""

import h5py
import numpy as np
import pytest
import scipy.io

from jax3dmmstn import matfile
from jax3dmmstn.data import loaders

_CLASSES = {
    np.dtype(np.float64): "double",
    np.dtype(np.float32): "single",
    np.dtype(np.uint8): "uint8",
    np.dtype(np.int16): "int16",
}


def _write_h5(group, name, value):
    if isinstance(value, dict):  # a struct
        child = group.create_group(name)
        child.attrs["MATLAB_class"] = np.bytes_("struct")
        for field, item in value.items():
            _write_h5(child, field, item)
        return
    if isinstance(value, str):
        data = np.array([[ord(c)] for c in value], np.uint16)
        dataset = group.create_dataset(name, data=data)
        dataset.attrs["MATLAB_class"] = np.bytes_("char")
        return
    array = np.atleast_2d(np.asarray(value))
    dataset = group.create_dataset(name, data=array.T)  # MATLAB is column-major
    dataset.attrs["MATLAB_class"] = np.bytes_(_CLASSES[array.dtype])


def write_v73(path, variables: dict) -> None:
    """A .mat file laid out as MATLAB's save(..., '-v7.3') lays it out."""
    with h5py.File(path, "w", userblock_size=512) as handle:
        for name, value in variables.items():
            _write_h5(handle, name, value)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: jax3dmmstn tests HDF5 schema"
    with open(path, "r+b") as handle:
        handle.write(header.ljust(116) + b"\x00" * 8 + b"\x00\x02IM")


def test_v73_reads_like_v5(tmp_path):
    rng = np.random.default_rng(0)
    variables = {
        "shapeMU": rng.normal(size=(12, 1)),
        "faces": rng.integers(1, 5, (3, 3)).astype(np.float64),
        "images": rng.integers(0, 255, (4, 5, 3, 2)).astype(np.uint8),
        "pt2d": rng.integers(-1, 400, (2, 21)).astype(np.int16),
        "Pose_Para": rng.normal(size=(1, 7)).astype(np.float32),
    }
    v5, v73 = tmp_path / "v5.mat", tmp_path / "v73.mat"
    scipy.io.savemat(v5, variables)
    write_v73(v73, variables)
    assert matfile.is_v73(str(v73)) and not matfile.is_v73(str(v5))
    old, new = matfile.load_mat(str(v5)), matfile.load_mat(str(v73))
    assert sorted(old) == sorted(new) == sorted(variables)
    for name in variables:
        assert new[name].dtype == old[name].dtype, name
        np.testing.assert_array_equal(new[name], old[name], err_msg=name)


def test_v73_structs_and_text(tmp_path):
    path = tmp_path / "s.mat"
    write_v73(path, {"meta": {"format": "jax3dmmstn", "size": np.array([[2.0, 3.0]])}})
    meta = matfile.load_mat(str(path))["meta"]
    assert meta.shape == (1, 1) and set(meta.dtype.names) == {"format", "size"}
    assert meta["format"][0, 0][0] == "jax3dmmstn"
    np.testing.assert_array_equal(meta["size"][0, 0], [[2.0, 3.0]])


def test_an_imdb_mat_saved_as_v73_loads_like_the_v5_one(tmp_path):
    rng = np.random.default_rng(1)
    n, size = 3, 16
    labels = rng.uniform(1, size, (1, 3, 21, n))
    variables = {
        "images": {
            "data": rng.integers(0, 255, (size, size, 3, n)).astype(np.uint8),
            "labels": labels,
            "set": np.array([[1.0, 1.0, 2.0]]),
        }
    }
    v5, v73 = tmp_path / "imdb5.mat", tmp_path / "imdb73.mat"
    scipy.io.savemat(v5, variables)
    write_v73(v73, variables)
    for split in ("train", "val"):
        old = loaders.load_imdb_mat(str(v5), split=split)
        new = loaders.load_imdb_mat(str(v73), split=split)
        assert len(old) == len(new) > 0
        for i in range(len(old)):
            for key in ("image", "landmarks", "landmark_visible"):
                np.testing.assert_array_equal(new[i][key], old[i][key])


def test_unreadable_files_are_named(tmp_path):
    text = tmp_path / "notes.mat"
    text.write_text("this is not a MATLAB file")
    with pytest.raises(matfile.MatFileError, match=r"notes\.mat: not a readable MATLAB"):
        matfile.load_mat(str(text))
    broken = tmp_path / "broken.mat"
    broken.write_bytes(b"MATLAB 7.3 MAT-file".ljust(600, b"\x00"))
    with pytest.raises(matfile.MatFileError, match=r"broken\.mat: not a readable MATLAB v7.3"):
        matfile.load_mat(str(broken))
    with pytest.raises(FileNotFoundError, match="missing.mat"):
        matfile.load_mat(str(tmp_path / "missing.mat"))


def test_a_model_mat_and_a_dataset_label_saved_as_v73(tmp_path):
    from jax3dmmstn.data import face3d_labels
    from jax3dmmstn.facemodel.morphable_model import grid_faces, load_matconvnet_model

    res, d = 5, 2
    rng = np.random.default_rng(2)
    model = {
        "shapeMU": rng.normal(size=(3 * res * res, 1)),
        "shapePC": rng.normal(size=(3 * res * res, d)),
        "faces": (grid_faces(res) + 1).astype(np.float64),
    }
    scipy.io.savemat(tmp_path / "model5.mat", model)
    write_v73(tmp_path / "model73.mat", model)
    old = load_matconvnet_model(tmp_path / "model5.mat")
    new = load_matconvnet_model(tmp_path / "model73.mat")
    for name in ("mean", "basis", "faces"):
        np.testing.assert_array_equal(getattr(new, name), getattr(old, name))
    label = {
        "pt3d_68": rng.uniform(1, 450, (3, 68)).astype(np.float32),
        "pt2d": rng.uniform(1, 450, (2, 21)),
        "Pose_Para": rng.normal(size=(1, 7)).astype(np.float32),
        "Shape_Para": rng.normal(size=(199, 1)),
        "Exp_Para": np.zeros((29, 1), np.uint8),
        "roi": np.array([[1, 2, 300, 400]], np.int16),
    }
    write_v73(tmp_path / "image00001.mat", label)
    read = face3d_labels.read_label(str(tmp_path / "image00001.mat"))
    np.testing.assert_array_equal(read["pt3d_68"], label["pt3d_68"])
    np.testing.assert_array_equal(read["pose_para"], label["Pose_Para"].ravel())


def test_variable_names_without_loading(tmp_path):
    write_v73(tmp_path / "a.mat", {"Images": np.zeros((2, 2)), "Labels": np.ones((1, 3))})
    scipy.io.savemat(tmp_path / "b.mat", {"images": np.zeros((2, 2))})
    assert matfile.variable_names(str(tmp_path / "a.mat")) == ["Images", "Labels"]
    assert matfile.variable_names(str(tmp_path / "b.mat")) == ["images"]
    (tmp_path / "c.mat").write_text("hello")
    with pytest.raises(matfile.MatFileError, match=r"c\.mat: not a readable MATLAB"):
        matfile.variable_names(str(tmp_path / "c.mat"))
