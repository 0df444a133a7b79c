"""Raw AFLW2000-3D / 300W-LP folders (jax3dmmstn.data.raw_folders, face3d_labels).

Fixtures are written here: small random images and .mat files with the genuine files' keys,
dtypes and shapes (AFLW2000-3D: pt2d float64 [2, 21], Pose_Para float32 [1, 7], pt3d_68
float32 [3, 68], Shape_Para / Tex_Para float64 [199, 1], Exp_Para float64 [29, 1], roi int16
[1, 4], Illum_Para, Color_Para; 300W-LP: the same without pt3d_68, pt2d [2, 68], and
landmarks/<subset>/<name>_pts.mat with pts_2d, pts_3d [68, 2]), one irregularity at a time.
No dataset file is in the repository.
"""

import os

import numpy as np
import pytest
import scipy.io
from PIL import Image

from jax3dmmstn.core import pose as pose_lib
from jax3dmmstn.data import (
    DataError,
    DataErrorLog,
    face3d_labels,
    load_300w_lp,
    load_aflw2000_3d,
    loaders,
    raw_folders,
)

H, W = 40, 48  # tiny, and not square: readers must not assume 450 x 450
POSE = np.array([[0.1, -0.4, 0.2, 24.0, 20.0, -30.0, 1.3e-3]], np.float32)


def _label(rng, aflw=True, **overrides) -> dict:
    """A label dict with the genuine files' keys, dtypes and shapes (overrides replace keys;
    a value of None deletes the key)."""
    mat = {
        "pt2d": np.stack(
            [rng.uniform(2, W - 2, 21 if aflw else 68), rng.uniform(2, H - 2, 21 if aflw else 68)]
        ),
        "Illum_Para": rng.normal(size=(1, 10)),
        "Color_Para": rng.normal(size=(1, 7)).astype(np.float32),
        "Tex_Para": rng.normal(size=(199, 1)),
        "Shape_Para": rng.normal(size=(199, 1)),
        "Exp_Para": rng.normal(size=(29, 1)),
        "Pose_Para": POSE.copy(),
        "roi": np.array([[3, -5, 40, 38]], np.int16),
    }
    if aflw:
        mat["pt2d"][:, 3] = (-1, 452)  # AFLW's invisible-point marker
        mat["pt3d_68"] = np.stack(
            [rng.uniform(1, W, 68), rng.uniform(1, H, 68), rng.normal(size=68)]
        ).astype(np.float32)
    for key, value in overrides.items():
        if value is None:
            mat.pop(key)
        else:
            mat[key] = value
    return mat


def _image(path, rng, size=(H, W)):
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, quality=95)


def _aflw_folder(root, n=3, seed=0, **overrides):
    """n pairs image00000..; ``overrides`` apply to the label of image00001."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        stem = os.path.join(root, f"image{i:05d}")
        _image(stem + ".jpg", rng)
        scipy.io.savemat(stem + ".mat", _label(rng, **(overrides if i == 1 else {})))
    return str(root)


def _read_one(root, **overrides):
    folder = _aflw_folder(root, **overrides)
    label = scipy.io.loadmat(os.path.join(folder, "image00001.mat"))
    return load_aflw2000_3d(folder)[1], label


# ------------------------------------------------------------------ a regular AFLW2000-3D file
def test_aflw2000_example_format(tmp_path):
    ex, label = _read_one(tmp_path)
    assert ex["image"].shape == (H, W, 3) and ex["image"].dtype == np.uint8
    assert ex["landmarks"].shape == (68, 2) and ex["landmarks"].dtype == np.float32
    np.testing.assert_array_equal(ex["landmarks"], ex["landmarks_ibug68"])
    np.testing.assert_array_equal(ex["landmark_visible"], np.ones(68))
    np.testing.assert_array_equal(ex["landmark_visible_ibug68"], np.ones(68))
    assert ex["landmarks_aflw21"].shape == (21, 2) and ex["landmark_visible_aflw21"].shape == (21,)
    expected = pose_lib.pose_from_label(label["Pose_Para"][0])
    np.testing.assert_allclose(ex["pose"], expected, rtol=1e-6)
    assert ex["pose"].dtype == np.float32 and ex["pose"].shape == (3,)
    np.testing.assert_allclose(ex["label_scale"], 1.3e-3, rtol=1e-6)
    np.testing.assert_allclose(ex["label_translation"], [24.0, 20.0, -30.0])
    assert ex["name"] == "image00001" and ex["source"].endswith("image00001.mat")
    pix = ex["landmarks"] * [(W - 1) / W, -(H - 1) / H] + [1.0, H * (H - 1) / H + 1.0]
    np.testing.assert_allclose(pix, label["pt3d_68"][:2].T, atol=1e-3)  # back to 1-based


def test_landmark_conversion_by_hand(tmp_path):
    """1-based pixel (x, y down) -> image frame: 0-based (x - 1, y - 1) scaled so that pixel
    centres 0 .. W-1 span 0 .. W (x) and rows 0 .. H-1 span H .. 0 (y, from the bottom)."""
    pt3d = np.zeros((3, 68), np.float32)
    pt3d[:2, :3] = [[1.0, W, 24.5], [1.0, H, 10.0]]  # top-left, bottom-right, a middle point
    pt3d[:2, 3:] = 5.0
    ex, _ = _read_one(tmp_path, pt3d_68=pt3d)
    expected = [[0.0, H], [W, 0.0], [23.5 * W / (W - 1), H - 9.0 * H / (H - 1)]]
    np.testing.assert_allclose(ex["landmarks"][:3], expected, atol=1e-4)


def test_aflw21_landmark_set_and_invisible_points(tmp_path):
    folder = _aflw_folder(tmp_path)
    ex = load_aflw2000_3d(folder, landmarks="aflw21")[1]
    label = scipy.io.loadmat(os.path.join(folder, "image00001.mat"))
    visible = np.ones(21)
    visible[3] = 0  # (-1, 452)
    np.testing.assert_array_equal(ex["landmark_visible"], visible)
    np.testing.assert_array_equal(ex["landmarks"], ex["landmarks_aflw21"])
    expected = loaders.pts_to_image_frame(label["pt2d"].T.astype(np.float32), (H, W))
    np.testing.assert_allclose(ex["landmarks"], expected, atol=1e-5)
    with pytest.raises(ValueError, match="landmarks must be one of"):
        load_aflw2000_3d(folder, landmarks="bogus")


def test_points_outside_the_image_are_invisible():
    pt2d = np.array([[1.0, W, 0.0, W + 1, 10, -1], [1.0, H, 10, 10, 452, 452]])
    np.testing.assert_array_equal(face3d_labels.pt2d_visible(pt2d, (H, W)), [1, 1, 0, 0, 0, 0])


# ------------------------------------------------------------------ one test per irregularity
def test_exp_para_stored_as_uint8_zeros(tmp_path):
    ex, _ = _read_one(tmp_path, Exp_Para=np.zeros((29, 1), np.uint8))
    label = face3d_labels.read_label(ex["source"])
    assert label["exp_para"].dtype == np.float32
    np.testing.assert_array_equal(label["exp_para"], np.zeros(29))


@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
def test_pt2d_stored_as_integers(tmp_path, dtype):
    pt2d = np.stack([np.arange(2, 23), np.full(21, 7)]).astype(np.float64)
    # MATLAB saturates -1 to 0 in uint16: the marker then reads (0, 452), still off-image.
    pt2d[:, 3] = (-1 if dtype == np.int16 else 0, 452)
    ex, _ = _read_one(tmp_path, pt2d=pt2d.astype(dtype))
    label = face3d_labels.read_label(ex["source"])
    assert label["pt2d"].dtype == np.float32
    np.testing.assert_array_equal(label["pt2d"], pt2d)
    assert ex["landmark_visible_aflw21"][3] == 0 and ex["landmark_visible_aflw21"].sum() == 20


def test_pt2d_with_two_stray_columns(tmp_path):
    rng = np.random.default_rng(3)
    pt2d = np.concatenate([_label(rng)["pt2d"], [[5.0, 6.0], [7.0, 8.0]]], axis=1)
    assert pt2d.shape == (2, 23)
    ex, _ = _read_one(tmp_path, pt2d=pt2d)
    assert face3d_labels.read_label(ex["source"])["pt2d"].shape == (2, 21)
    assert ex["landmarks_aflw21"].shape == (21, 2)


def test_float64_pt3d_and_pose_para(tmp_path):
    rng = np.random.default_rng(4)
    pt3d = _label(rng)["pt3d_68"].astype(np.float64)
    ex, _ = _read_one(tmp_path, pt3d_68=pt3d, Pose_Para=POSE.astype(np.float64))
    label = face3d_labels.read_label(ex["source"])
    assert label["pt3d_68"].dtype == np.float32 and label["pose_para"].dtype == np.float64
    np.testing.assert_allclose(ex["landmarks"], face3d_labels.pt3d_to_image_frame(pt3d, (H, W)))
    np.testing.assert_allclose(ex["pose"], pose_lib.pose_from_label(POSE[0]), rtol=1e-6)


def test_negative_f_is_kept(tmp_path):
    para = POSE.copy()
    para[0, 6] = -1.1e-3
    ex, _ = _read_one(tmp_path, Pose_Para=para)
    np.testing.assert_allclose(ex["label_scale"], -1.1e-3, rtol=1e-6)


def test_angles_beyond_180_are_not_wrapped(tmp_path):
    para = POSE.astype(np.float64)
    para[0, :3] = np.deg2rad([120.0, -972.0, 250.0])  # pitch, yaw, roll
    ex, _ = _read_one(tmp_path, Pose_Para=para)
    np.testing.assert_allclose(ex["pose"], [-972.0, 120.0, 250.0], rtol=1e-5)


# ------------------------------------------------------------------ bad files: fail and skip
def _break_missing_mat(folder):
    os.remove(os.path.join(folder, "image00001.mat"))
    return "image00001.mat"


def _break_missing_image(folder):
    os.remove(os.path.join(folder, "image00001.jpg"))
    return "image00001.jpg"


def _break_corrupt_mat(folder):
    with open(os.path.join(folder, "image00001.mat"), "w") as handle:
        handle.write("this is not a MATLAB file\n" * 20)
    return "image00001.mat"


def _break_corrupt_image(folder):
    with open(os.path.join(folder, "image00001.jpg"), "wb") as handle:
        handle.write(b"not a jpeg at all" * 10)
    return "image00001.jpg"


def _break_truncated_image(folder):  # header fine, pixels cut off: fails when decoded
    path = os.path.join(folder, "image00001.jpg")
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 3])
    return "image00001.jpg"


BREAKS = [
    _break_missing_mat,
    _break_missing_image,
    _break_corrupt_mat,
    _break_corrupt_image,
    _break_truncated_image,
]


@pytest.mark.parametrize("breaker", BREAKS, ids=lambda f: f.__name__[7:])
def test_bad_files_fail_naming_the_file_or_are_skipped_and_counted(tmp_path, breaker):
    folder = _aflw_folder(tmp_path / "aflw")
    bad = breaker(folder)
    with pytest.raises(DataError, match=bad):
        dataset = load_aflw2000_3d(folder)
        [dataset[i] for i in range(len(dataset))]
    log = DataErrorLog()
    dataset = load_aflw2000_3d(folder, on_error="skip", error_log=log)
    names = [dataset[i]["name"] for i in range(len(dataset))]
    assert "image00001" not in names and "image00002" in names
    assert log.count == 1 and bad in log.summary()
    assert "1 examples skipped" in log.summary()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("Pose_Para", None, "no 'Pose_Para'"),
        ("pt3d_68", None, "no 'pt3d_68'"),
        ("pt3d_68", np.zeros((2, 68), np.float32), r"'pt3d_68' must be \[3, 68\]"),
        ("Pose_Para", np.full((1, 7), np.nan, np.float32), "'Pose_Para' has NaN"),
        ("Shape_Para", np.zeros((99, 1)), "'Shape_Para' must have 199 entries"),
        ("pt2d", np.zeros((2, 12)), "'pt2d' has 12 points"),
    ],
)
def test_bad_labels_name_the_file_and_the_key(tmp_path, key, value, message):
    folder = _aflw_folder(tmp_path, **{key: value})
    with pytest.raises(DataError, match=f"image00001.mat: {message}"):
        load_aflw2000_3d(folder)


def test_archive_parent_folder_and_sorted_order(tmp_path):
    _aflw_folder(tmp_path / "AFLW2000", n=3)
    dataset = load_aflw2000_3d(str(tmp_path))
    assert [dataset[i]["name"] for i in range(3)] == ["image00000", "image00001", "image00002"]


# ------------------------------------------------------------------ 300W-LP
def _w300lp_folder(root, subsets=("AFW", "HELEN"), n=2, seed=0):
    """``<subset>/``, ``<subset>_Flip/`` (the mirrored images, yaw and roll negated) and
    ``landmarks/<subset>/<name>_pts.mat`` (unflipped only, as in the archive)."""
    rng = np.random.default_rng(seed)
    for subset in subsets:
        for folder in (subset, subset + "_Flip", os.path.join("landmarks", subset)):
            os.makedirs(os.path.join(root, folder), exist_ok=True)
        for i in range(n):
            stem = f"{subset}_{1000 + i}_1_{i}"
            image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            Image.fromarray(image).save(os.path.join(root, subset, stem + ".jpg"), quality=95)
            flipped = Image.fromarray(np.ascontiguousarray(image[:, ::-1]))
            flipped.save(os.path.join(root, subset + "_Flip", stem + ".jpg"), quality=95)
            label = _label(rng, aflw=False)
            scipy.io.savemat(os.path.join(root, subset, stem + ".mat"), label)
            label_flip = dict(label, Pose_Para=label["Pose_Para"] * [[1, -1, -1, 1, 1, 1, 1]])
            scipy.io.savemat(os.path.join(root, subset + "_Flip", stem + ".mat"), label_flip)
            points = {
                "pts_2d": np.stack([rng.uniform(1, W, 68), rng.uniform(1, H, 68)], -1),
                "pts_3d": np.stack([rng.uniform(1, W, 68), rng.uniform(1, H, 68)], -1),
            }
            scipy.io.savemat(os.path.join(root, "landmarks", subset, stem + "_pts.mat"), points)
    return str(root)


def test_300w_lp_examples_from_pts_3d(tmp_path):
    root = _w300lp_folder(tmp_path)
    dataset = load_300w_lp(root, subsets=("AFW", "HELEN"))
    assert len(dataset) == 8
    names = [dataset[i]["source"][len(root) + 1 :] for i in range(len(dataset))]
    assert names[:2] == [os.path.join("AFW", "AFW_1000_1_0.mat")] + [
        os.path.join("AFW", "AFW_1001_1_1.mat")
    ]
    ex = dataset[0]
    points = scipy.io.loadmat(os.path.join(root, "landmarks", "AFW", "AFW_1000_1_0_pts.mat"))
    expected = loaders.pts_to_image_frame(points["pts_3d"].astype(np.float32), (H, W))
    np.testing.assert_allclose(ex["landmarks"], expected, atol=1e-5)
    np.testing.assert_array_equal(ex["landmarks_ibug68"], ex["landmarks"])
    assert ex["name"] == "AFW_1000_1_0" and ex["landmark_visible"].sum() == 68
    np.testing.assert_allclose(ex["pose"], pose_lib.pose_from_label(POSE[0]), rtol=1e-6)
    assert "landmarks_aflw21" not in ex
    assert len(load_300w_lp(root, subsets=("HELEN",), flipped=False)) == 2


def test_300w_lp_flipped_images_get_their_twins_points_mirrored(tmp_path):
    from jax3dmmstn.data import preprocess

    root = _w300lp_folder(tmp_path, subsets=("AFW",))
    dataset = load_300w_lp(root, subsets=("AFW",))
    sources = [dataset[i]["source"] for i in range(len(dataset))]
    plain, flip = (
        dataset[0],
        dataset[sources.index(os.path.join(root, "AFW_Flip", "AFW_1000_1_0.mat"))],
    )
    mirrored = preprocess.flip_horizontal(
        {k: plain[k] for k in ("image", "landmarks", "landmark_visible", "pose")}
    )
    np.testing.assert_allclose(flip["landmarks"], mirrored["landmarks"], atol=1e-4)
    np.testing.assert_allclose(flip["pose"], mirrored["pose"], rtol=1e-6)
    # The mirrored image's pixels agree with the unflipped one's, up to JPEG noise.
    assert np.abs(flip["image"].astype(float) - mirrored["image"]).mean() < 20


def test_300w_lp_missing_landmark_file_and_bad_subset(tmp_path):
    root = _w300lp_folder(tmp_path, subsets=("AFW",))
    os.remove(os.path.join(root, "landmarks", "AFW", "AFW_1001_1_1_pts.mat"))
    with pytest.raises(DataError, match="AFW_1001_1_1_pts.mat: landmark file is missing"):
        load_300w_lp(root, subsets=("AFW",))
    log = DataErrorLog()
    dataset = load_300w_lp(root, subsets=("AFW",), on_error="skip", error_log=log)
    assert len(dataset) == 2 and log.count == 2 and "AFW_1001_1_1_pts.mat" in log.summary()
    with pytest.raises(ValueError, match="unknown 300W-LP subsets"):
        load_300w_lp(root, subsets=("XM2VTS",))
    with pytest.raises(FileNotFoundError, match="HELEN"):
        load_300w_lp(root, subsets=("HELEN",), flipped=False)


def test_300w_lp_corrupt_label_is_skipped_when_loaded(tmp_path):
    root = _w300lp_folder(tmp_path, subsets=("AFW",))
    with open(os.path.join(root, "AFW", "AFW_1000_1_0.mat"), "w") as handle:
        handle.write("garbage")
    with pytest.raises(DataError, match="AFW_1000_1_0.mat: not a readable MATLAB"):
        load_300w_lp(root, subsets=("AFW",))[0]
    log = DataErrorLog()
    dataset = load_300w_lp(root, subsets=("AFW",), on_error="skip", error_log=log)
    assert dataset[0]["name"] == "AFW_1001_1_1" and log.count == 1
    assert "AFW_1000_1_0.mat" in log.summary()


# ------------------------------------------------------------------ same example as TFDS
def _tfds_record_aflw2k3d(image_file, label_file):
    """What tfds's aflw2k3d builder (_generate_examples) stores for one file."""
    mat = scipy.io.loadmat(label_file)
    xyz = mat["pt3d_68"].T.astype(np.float32)
    return {
        "image": np.asarray(Image.open(image_file).convert("RGB")),
        "landmarks_68_3d_xy_normalized": xyz[..., 0:2] / 450.0,
        "landmarks_68_3d_z": xyz[..., 2:],
    }


def _tfds_record_300w_lp(image_file, label_file, landmark_file):
    """What tfds's the300w_lp builder stores for one file (the keys this project reads)."""
    mat = scipy.io.loadmat(label_file)
    ldm = scipy.io.loadmat(landmark_file)
    return {
        "image": np.asarray(Image.open(image_file).convert("RGB")),
        "landmarks_origin": (mat["pt2d"].T / 450.0).astype(np.float32),
        "landmarks_2d": (ldm["pts_2d"] / 450.0).astype(np.float32),
        "landmarks_3d": (ldm["pts_3d"] / 450.0).astype(np.float32),
        "pose_params": mat["Pose_Para"].reshape([-1]).astype(np.float32),
    }


def test_tfds_records_give_the_same_examples(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    aflw = _aflw_folder(tmp_path / "aflw", n=2)
    pairs = raw_folders.list_pairs(aflw)
    records = [_tfds_record_aflw2k3d(p[1], p[2]) for p in pairs]
    root = _w300lp_folder(tmp_path / "lp", subsets=("AFW",))
    lp = load_300w_lp(root, subsets=("AFW",), flipped=False)
    lp_records = [_tfds_record_300w_lp(*item[:3]) for item in lp.items]
    with tfds.testing.mock_data(as_data_source_fn=lambda *a, **k: records):
        via_tfds = loaders.load_tfds("aflw2k3d")
        raw = load_aflw2000_3d(aflw)
        for i in range(2):
            np.testing.assert_allclose(via_tfds[i]["landmarks"], raw[i]["landmarks"], atol=1e-3)
            np.testing.assert_array_equal(via_tfds[i]["image"], raw[i]["image"])
    with tfds.testing.mock_data(as_data_source_fn=lambda *a, **k: lp_records):
        via_tfds = loaders.load_tfds("the300w_lp")
        for i in range(2):
            np.testing.assert_allclose(via_tfds[i]["landmarks"], lp[i]["landmarks"], atol=1e-3)
            np.testing.assert_allclose(via_tfds[i]["pose"], lp[i]["pose"], rtol=1e-5)
    # An aflw2k3d record that carries Pose_Para (TFDS's does not) gets the same pose.
    record = dict(records[1], pose_params=POSE[0])
    example = loaders.tfds_record_to_example("aflw2k3d", record, "r")
    np.testing.assert_allclose(example["pose"], raw[1]["pose"], rtol=1e-6)


# ------------------------------------------------------------------ training on raw folders
def test_w300lp_config_trains_two_steps_on_fixture_folders(tmp_path):
    from jax3dmmstn import training
    from jax3dmmstn.configs import load_config

    config = load_config("w300lp")
    assert config.data.kind == "300w_lp" and config.model.landmarks == "ibug68"
    config.data.root = _w300lp_folder(tmp_path / "300W_LP", subsets=("AFW",))
    config.data.eval_root = _aflw_folder(tmp_path / "AFLW2000", n=3)
    config.data.subsets = ("AFW",)
    config.data.image_size = (32, 32)
    config.data.eval_batch_size = 2
    config.data.prefetch = 0
    synthetic = load_config("synthetic")
    config.morphable_model = synthetic.morphable_model
    config.morphable_model.resolution = 16
    config.model.localiser = "small_cnn"
    config.model.vggface_path = ""
    config.model.localiser_input_size = (16, 16)
    config.model.localiser_kwargs = {"widths": (4, 8), "convs_per_stage": 1, "hidden": 16}
    config.batch_size = 2
    config.total_steps = 2
    config.optim.warmup_steps = 1
    config.checkpoint_every = 2
    config.eval_every = 0
    config.snapshots = False
    config.progress_bar = False
    config.parallel = "jit"
    summary = training.train_and_evaluate(config, str(tmp_path / "work"))
    assert summary["step"] == 2 and np.isfinite(summary["nme"])  # evaluated on AFLW2000-3D
    config.data.root = ""
    with pytest.raises(ValueError, match="data.root"):
        training.build_heldout(config, None)
