"""Loaders on small files written here in the real formats (jax3dmmstn.data.loaders)."""

import os

import numpy as np
import pytest
import scipy.io
from PIL import Image

from jax3dmmstn.core import geometry
from jax3dmmstn.data import errors, loaders


def _image_frame_to_pixels(points, size):
    return np.asarray(geometry.image_frame_to_pixels(np.asarray(points, np.float32), size))


# ----------------------------------------------------------------------------- imdb.mat
def _write_imdb(path, images, labels, sets):
    """images [N, H, W, 3]; labels [N, L, 3] (x, y, vis); MATLAB layouts on disk."""
    data = np.moveaxis(images, 0, 3)  # H x W x 3 x N
    mat_labels = np.moveaxis(labels, [0, 1, 2], [2, 1, 0])[None]  # 1 x 3 x L x N
    scipy.io.savemat(
        path,
        {"images": {"data": data, "labels": mat_labels, "set": np.asarray(sets, np.float64)[None]}},
    )


def _random_labels(rng, n, num_landmarks, size=224):
    labels = np.zeros((n, num_landmarks, 3), np.float32)
    labels[..., :2] = rng.uniform(1, size - 1, (n, num_landmarks, 2))
    labels[..., 2] = rng.integers(0, 2, (n, num_landmarks))
    return labels


def test_imdb_mat_round_trip_with_splits_and_missing_landmarks(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (5, 24, 32, 3)).astype(np.float32)  # MatConvNet single
    labels = _random_labels(rng, 5, 21)
    labels[2, 4, :2] = 0.0  # (0, 0): missing even if flagged visible
    labels[2, 4, 2] = 1.0
    path = str(tmp_path / "imdb.mat")
    _write_imdb(path, images, labels, [1, 2, 1, 1, 2])
    train = loaders.load_imdb_mat(path, "train")
    val = loaders.load_imdb_mat(path, "val")
    assert len(train) == 3 and len(val) == 2
    ex = train[1]  # image 3 of the file (index 2)
    assert ex["image"].dtype == np.float32 and ex["image"].shape == (24, 32, 3)
    np.testing.assert_array_equal(ex["image"], images[2])
    np.testing.assert_allclose(ex["landmarks"], labels[2, :, :2])
    expected_vis = (labels[2, :, 2] > 0).astype(np.float32)
    expected_vis[4] = 0.0
    np.testing.assert_array_equal(ex["landmark_visible"], expected_vis)
    np.testing.assert_array_equal(val[1]["image"], images[4])
    assert "image 5" in val[1]["source"]
    assert len(loaders.load_imdb_mat(path, "all")) == 5


def test_imdb_mat_nan_landmarks_fail_or_skip(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (3, 8, 8, 3)).astype(np.uint8)
    labels = _random_labels(rng, 3, 21, 8)
    labels[1, 3, 0] = np.nan
    path = str(tmp_path / "imdb.mat")
    _write_imdb(path, images, labels, [1, 1, 1])
    with pytest.raises(errors.DataError, match=r"imdb.mat\[image 2\].*landmarks \[3\]"):
        loaders.load_imdb_mat(path, "train")
    log = errors.DataErrorLog()
    ds = loaders.load_imdb_mat(path, "train", on_error="skip", error_log=log)
    assert len(ds) == 2 and log.count == 1 and "image 2" in log.messages[0]
    np.testing.assert_array_equal(ds[1]["image"], images[2])
    assert ds[0]["image"].dtype == np.uint8


def test_mat_files_with_wrong_contents_name_the_problem(tmp_path):
    path = str(tmp_path / "bad.mat")
    scipy.io.savemat(path, {"something": np.zeros(3)})
    with pytest.raises(errors.DataError, match="no variable 'images'"):
        loaders.load_imdb_mat(path)
    with pytest.raises(errors.DataError, match="no variable 'Images'"):
        loaders.load_demo_mat(path)
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(errors.DataError, match="junk.mat"):
        loaders.load_imdb_mat(str(junk))
    with pytest.raises(FileNotFoundError, match="nothere.mat"):
        loaders.load_imdb_mat(str(tmp_path / "nothere.mat"))
    with pytest.raises(ValueError, match="on_error"):
        loaders.load_imdb_mat(path, on_error="ignore")


def test_demo_mat_layout(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (224, 224, 3, 2)).astype(np.float64)  # 0..255 doubles
    labels = rng.uniform(1, 224, (1, 2, 21, 2))
    labels[0, :, 7, 1] = 0.0  # landmark 8 of image 2 missing
    path = str(tmp_path / "demo.mat")
    scipy.io.savemat(path, {"Images": images, "Labels": labels})
    ds = loaders.load_demo_mat(path)
    assert len(ds) == 2
    ex = ds[1]
    np.testing.assert_array_equal(ex["image"], images[..., 1].astype(np.float32))
    np.testing.assert_allclose(ex["landmarks"], labels[0, :, :, 1].T, rtol=1e-6)
    assert ex["landmark_visible"][7] == 0 and ex["landmark_visible"].sum() == 20
    # The demo layout is 224 x 224: other sizes are reported with the file name.
    scipy.io.savemat(path, {"Images": images[:100], "Labels": labels})
    with pytest.raises(errors.DataError, match=r"demo.mat\[image 1\]: image is 100x224"):
        loaders.load_demo_mat(path)


# ----------------------------------------------------------------------------- .pts folders
def _write_face(folder, name, size, points_1based, fmt="png"):
    os.makedirs(folder, exist_ok=True)
    image = np.zeros(size + (3,), np.uint8)
    image[..., 1] = 80
    path = os.path.join(folder, f"{name}.{fmt}")
    Image.fromarray(image).save(path)
    loaders.write_pts(os.path.join(folder, f"{name}.pts"), points_1based)
    return path


def test_read_pts_and_frame_conversion(tmp_path):
    rng = np.random.default_rng(3)
    pts = rng.uniform(1, 60, (68, 2))
    path = str(tmp_path / "a.pts")
    loaders.write_pts(path, pts)
    np.testing.assert_allclose(loaders.read_pts(path), pts, atol=1e-5)
    # 1-based (x, y down) pixel (1, 1) is the top-left pixel centre: image frame
    # (0, H); the bottom-right centre (W, H) is (W, 0).
    frame = loaders.pts_to_image_frame(np.array([[1.0, 1.0], [80.0, 50.0]]), (50, 80))
    np.testing.assert_allclose(frame, [[0.0, 50.0], [80.0, 0.0]], atol=1e-4)


@pytest.mark.parametrize(
    "content,message",
    [
        ("version: 1\nn_points: 68\n{\n1 2\n}\n", "n_points is 68 but 1 points"),
        ("version: 1\n{\n1 2\n}\n", "no n_points"),
        ("version: 1\nn_points: 1\n{\n1 nan\n}\n", "NaN"),
        ("version: 1\nn_points: 1\n{\n1 abc\n}\n", "non-numeric"),
        ("version: 1\nn_points: 1\n1 2\n", "malformed .pts header"),
        ("version: 1\nn_points: 1\n{\n1 2\n", "between"),
        ("version: 1\nn_points: 1\n{\n1 2 3\n}\n", "two coordinates"),
    ],
)
def test_malformed_pts_files_are_reported(tmp_path, content, message):
    path = tmp_path / "bad.pts"
    path.write_text(content)
    with pytest.raises(errors.DataError, match=message) as info:
        loaders.read_pts(str(path))
    assert "bad.pts" in str(info.value)


def test_image_folder_dataset_fail_and_skip(tmp_path):
    rng = np.random.default_rng(4)
    root = str(tmp_path / "faces")
    pts = rng.uniform(1, 40, (68, 2))
    _write_face(os.path.join(root, "alice"), "a1", (40, 50), pts)
    _write_face(os.path.join(root, "alice"), "a2", (40, 50), pts + 1, fmt="jpg")
    _write_face(os.path.join(root, "bob"), "b1", (30, 60), pts)
    good = loaders.ImageFolderDataset(root, identity_from_folder=True)
    assert len(good) == 3
    ex = good[0]
    assert ex["image"].shape == (40, 50, 3) and ex["image"].dtype == np.uint8
    np.testing.assert_allclose(
        _image_frame_to_pixels(ex["landmarks"], (40, 50)), pts - 1, atol=1e-3
    )
    np.testing.assert_array_equal(good.identities, [0, 0, 1])
    assert int(good[2]["identity"]) == 1
    # Now break things: a missing .pts, a malformed .pts, an unreadable image.
    _write_face(os.path.join(root, "bob"), "b2", (30, 60), pts)
    os.remove(os.path.join(root, "bob", "b2.pts"))
    _write_face(os.path.join(root, "bob"), "b3", (30, 60), pts)
    with open(os.path.join(root, "bob", "b3.pts"), "w") as handle:
        handle.write("version: 1\nn_points: 68\n{\n}\n")
    with open(os.path.join(root, "bob", "b4.png"), "wb") as handle:
        handle.write(b"\x89PNG garbage")
    loaders.write_pts(os.path.join(root, "bob", "b4.pts"), pts)
    with pytest.raises(errors.DataError, match="b2.pts: landmark file is missing"):
        loaders.ImageFolderDataset(root)
    log = errors.DataErrorLog()
    skipping = loaders.ImageFolderDataset(root, on_error="skip", error_log=log)
    assert len(skipping) == 3 and log.count == 3
    assert any("b3.pts" in m for m in log.messages)
    assert any("b4.png: cannot read image" in m for m in log.messages)
    # Wrong size (when a size is required) names the file.
    with pytest.raises(errors.DataError, match=r"b1.png: image is 30x60, expected 40x50"):
        loaders.ImageFolderDataset(
            str(tmp_path / "faces"), expected_size=(40, 50), on_error="fail"
        ).__len__()


def test_truncated_image_is_replaced_deterministically_under_skip(tmp_path):
    rng = np.random.default_rng(5)
    root = str(tmp_path / "faces")
    pts = rng.uniform(1, 20, (68, 2))
    paths = [_write_face(root, f"f{i}", (24, 24), pts) for i in range(3)]
    noise = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    Image.fromarray(noise).save(paths[1])
    # Keep the PNG header (so the scan passes) but cut the pixel data.
    data = open(paths[1], "rb").read()
    with open(paths[1], "wb") as handle:
        handle.write(data[:200])
    failing = loaders.ImageFolderDataset(root)
    assert len(failing) == 3
    with pytest.raises(errors.DataError, match="f1.png: cannot read image"):
        failing[1]
    log = errors.DataErrorLog()
    skipping = loaders.ImageFolderDataset(root, on_error="skip", error_log=log)
    assert skipping[1]["source"] == paths[2] and log.count == 1
    assert skipping[1]["source"] == paths[2] and log.count == 1  # not retried


def test_folder_with_wrong_landmark_count(tmp_path):
    root = str(tmp_path / "faces")
    _write_face(root, "f", (20, 20), np.ones((5, 2)) * 3)
    ds = loaders.ImageFolderDataset(root)
    with pytest.raises(errors.DataError, match="f.png: expected 68 landmarks, got 5"):
        ds[0]


# ----------------------------------------------------------------------------- TFDS
tfds = pytest.importorskip("tensorflow_datasets")


def test_tfds_mock_data_real_feature_shapes():
    with tfds.testing.mock_data(num_examples=2):
        for name in ("aflw2k3d", "the300w_lp"):
            ds = loaders.load_tfds(name)
            assert len(ds) == 2
            ex = ds[1]
            assert ex["image"].shape == (450, 450, 3) and ex["image"].dtype == np.uint8
            assert ex["landmarks"].shape == (68, 2)
            assert ex["landmarks"].dtype == np.float32
            assert ("pose" in ex) == (name == "the300w_lp")


def _record_aflw(points_1based):
    return {
        "image": np.zeros((450, 450, 3), np.uint8),
        "landmarks_68_3d_xy_normalized": (points_1based / 450.0).astype(np.float32),
        "landmarks_68_3d_z": np.zeros((68, 1), np.float32),
    }


def test_tfds_aflw2k3d_landmarks_are_denormalised_to_the_image_frame():
    rng = np.random.default_rng(6)
    points = rng.uniform(1, 450, (68, 2))
    bad = points.copy()
    bad[10] = np.nan
    records = [_record_aflw(points), _record_aflw(bad), _record_aflw(points + 2)]
    with tfds.testing.mock_data(as_data_source_fn=lambda *a, **k: records):
        ds = loaders.load_tfds("aflw2k3d")
        np.testing.assert_allclose(
            _image_frame_to_pixels(ds[0]["landmarks"], (450, 450)), points - 1, atol=2e-3
        )
        with pytest.raises(errors.DataError, match=r"tfds:aflw2k3d/train\[1\].*NaN"):
            ds[1]
        skipping = loaders.load_tfds("aflw2k3d", on_error="skip")
        np.testing.assert_allclose(skipping[1]["landmarks"], ds[2]["landmarks"])
        assert skipping.error_log.count == 1


def test_tfds_300w_lp_pose_is_converted_to_yaw_pitch_roll_degrees():
    rng = np.random.default_rng(7)
    points = {k: rng.uniform(1, 450, (68, 2)) for k in ("2d", "3d", "origin")}
    record = {
        "image": np.zeros((450, 450, 3), np.uint8),
        "pose_params": np.array([0.1, -0.5, 0.25, 1, 2, 3, 4e-4], np.float32),
    }
    for kind, pts in points.items():
        key = "landmarks_origin" if kind == "origin" else f"landmarks_{kind}"
        record[key] = (pts / 450.0).astype(np.float32)
    with tfds.testing.mock_data(as_data_source_fn=lambda *a, **k: [record]):
        for kind, pts in points.items():
            ex = loaders.load_tfds("the300w_lp", landmark_kind=kind)[0]
            np.testing.assert_allclose(
                _image_frame_to_pixels(ex["landmarks"], (450, 450)), pts - 1, atol=2e-3
            )
        np.testing.assert_allclose(ex["pose"], np.rad2deg([-0.5, 0.1, 0.25]), rtol=1e-6)
    with pytest.raises(ValueError, match="unsupported TFDS dataset"):
        loaders.load_tfds("mnist")
