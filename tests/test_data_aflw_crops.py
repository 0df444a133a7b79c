"""3DDFA's cropped AFLW set (jax3dmmstn.data.aflw_crops).

Fixtures are written here with the genuine files' layout, dtypes and markers: ``AFLW_GT_crop/``
(120 x 120 JPEGs), ``AFLW_GT_crop.list``, ``AFLW_GT_pts21.npy`` float32 [N, 2, 21] (1-based
pixels of the 450 frame, invisible = (-1, 452)), ``AFLW_GT_crop_roi_box.npy`` uint16 [N, 4]
(one box clipped at the frame's bottom, as 224 genuine ones are) and ``AFLW_GT_crop_yaws.npy``
float32 [N]; one irregularity at a time. No dataset file is in the repository.
"""

import os
import re

import numpy as np
import pytest
from PIL import Image

from jax3dmmstn.data import DataError, DataErrorLog, aflw_crops, loaders, preprocess
from jax3dmmstn.data.batching import BatchIterator, DatasetSource

# Two AFLW2000-3D test names and four others, in the list file's (unsorted) order.
NAMES = [
    "image00002.jpg",
    "image00001.jpg",
    "image00004.jpg",
    "image00003.jpg",
    "image00005.jpg",
    "image00007.jpg",
]
BOXES = np.array(
    [
        [101, 51, 400, 350],  # square, side 300 frame pixels -> 0.4 crop pixels each
        [61, 41, 240, 220],
        [11, 21, 310, 320],
        [101, 171, 400, 450],  # clipped at ey = 450: the crop is still 300 x 300
        [151, 101, 330, 280],
        [51, 61, 230, 240],
    ],
    np.uint16,
)
YAWS = np.array([1.5, -40.0, 73.25, 12.0, -5.0, 88.0], np.float32)
INVISIBLE = (3, 12)  # points each fixture crop marks (-1, 452)


def _points(rng) -> np.ndarray:
    """float32 [N, 2, 21] 1-based frame pixels inside each box, a few (-1, 452)."""
    pts = np.zeros((len(BOXES), 2, 21), np.float32)
    for i, (sx, sy, ex, ey) in enumerate(BOXES.astype(float)):
        pts[i, 0] = rng.uniform(sx + 5, ex - 5, 21)
        pts[i, 1] = rng.uniform(sy + 5, ey - 5, 21)
        for j in INVISIBLE:
            pts[i, :, j] = (-1, 452)
    return pts


def _write(root, names=None, pts=None, boxes=None, yaws=None, seed=0, grey=()):
    """The folder; ``grey``: indices whose JPEG is stored as a grey (mode L) image."""
    rng = np.random.default_rng(seed)
    names = NAMES if names is None else names
    os.makedirs(os.path.join(root, aflw_crops.IMAGE_FOLDER), exist_ok=True)
    for i, name in enumerate(names):
        image = rng.integers(0, 256, (120, 120, 3), dtype=np.uint8)
        img = Image.fromarray(image).convert("L") if i in grey else Image.fromarray(image)
        img.save(os.path.join(root, aflw_crops.IMAGE_FOLDER, name), quality=95)
    with open(os.path.join(root, aflw_crops.LIST_FILE), "w") as handle:
        handle.write("\n".join(names) + "\n")
    np.save(os.path.join(root, aflw_crops.POINTS_FILE), _points(rng) if pts is None else pts)
    np.save(os.path.join(root, aflw_crops.BOXES_FILE), BOXES if boxes is None else boxes)
    np.save(os.path.join(root, aflw_crops.YAWS_FILE), YAWS if yaws is None else yaws)
    return str(root)


def _pts(root) -> np.ndarray:
    return np.load(os.path.join(root, aflw_crops.POINTS_FILE))


# ------------------------------------------------------------------ the shipped test names
def test_shipped_aflw2000_names_file():
    path = os.path.join(os.path.dirname(aflw_crops.__file__), "aflw2000_3d_names.txt")
    with open(path) as handle:
        lines = handle.read().splitlines()
    assert len(lines) == 2000 and len(set(lines)) == 2000 and lines == sorted(lines)
    assert all(re.fullmatch(r"image\d{5}", line) for line in lines)
    names = aflw_crops.aflw2000_test_names()
    assert isinstance(names, frozenset) and names == set(lines)
    assert "image00002" in names and "image00001" not in names
    with open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml")) as handle:
        assert '"jax3dmmstn.data" = ["aflw2000_3d_names.txt"]' in handle.read()


# ------------------------------------------------------------------ geometry by hand
def test_frame_to_crop_by_hand():
    """Box (101, 51, 400, 350): 1-based pixels 101..400 (0-based 100..399, edges 99.5 and
    399.5) -> crop edges -0.5 and 119.5, 0.4 crop pixels a frame pixel."""
    box = np.array([101, 51, 400, 350], np.float64)
    frame = np.array([[99.5, 49.5], [399.5, 349.5], [100.0, 50.0], [399.0, 349.0], [249.5, 199.5]])
    expected = [[-0.5, -0.5], [119.5, 119.5], [-0.3, -0.3], [119.3, 119.3], [59.5, 59.5]]
    np.testing.assert_allclose(aflw_crops.frame_to_crop(frame, box), expected, atol=1e-12)
    np.testing.assert_allclose(aflw_crops.crop_to_frame(np.array(expected), box), frame)


def test_clipped_boxes_are_square_crops():
    """A box clipped at ey = 450 keeps the x side for y; one starting at sx = 1 while shorter
    than tall ends at ex (its start was clipped)."""
    bottom = np.array([101, 171, 400, 450], np.float64)  # 300 wide, 280 tall
    start, side = aflw_crops.crop_squares(bottom)
    np.testing.assert_array_equal(start, [100, 170])
    assert side == 300
    np.testing.assert_allclose(
        aflw_crops.frame_to_crop(np.array([[99.5, 169.5], [399.5, 469.5]]), bottom),
        [[-0.5, -0.5], [119.5, 119.5]],
    )
    left = np.array([1, 51, 290, 350], np.float64)  # 290 wide (clipped), 300 tall
    start, side = aflw_crops.crop_squares(left)
    np.testing.assert_array_equal(start, [-10, 50])
    assert side == 300
    np.testing.assert_allclose(
        aflw_crops.frame_to_crop(np.array([[289.5, 349.5]]), left), [[119.5, 119.5]]
    )


def test_frame_and_crop_maps_are_inverses():
    rng = np.random.default_rng(1)
    for _ in range(50):
        shape = tuple(rng.integers(1, 4, rng.integers(0, 3)))
        sx, sy = rng.integers(1, 200, (2,) + shape)
        w, h = rng.integers(1, 250, (2,) + shape)
        h = np.where(rng.random(shape) < 0.5, w, h)  # square or not
        boxes = np.stack([sx, sy, sx + w, sy + h], -1).astype(np.uint16)  # genuine dtype
        crop_size = int(rng.choice([120, 64, 7]))
        points = rng.uniform(-100, 550, shape + (21, 2))
        crop = aflw_crops.frame_to_crop(points, boxes, crop_size)
        assert crop.shape == points.shape and crop.dtype == np.float64
        np.testing.assert_allclose(
            aflw_crops.crop_to_frame(crop, boxes, crop_size), points, atol=1e-9
        )
        back = aflw_crops.frame_to_crop(
            aflw_crops.crop_to_frame(points, boxes, crop_size), boxes, crop_size
        )
        np.testing.assert_allclose(back, points, atol=1e-9)


# ------------------------------------------------------------------ index and examples
def test_read_index(tmp_path):
    root = _write(tmp_path)
    index = aflw_crops.read_index(root)
    pts = _pts(root)
    assert index.names == NAMES
    assert index.points.shape == (6, 21, 2) and index.points.dtype == np.float64
    np.testing.assert_array_equal(index.points, np.swapaxes(pts, 1, 2).astype(np.float64) - 1)
    assert index.visible.dtype == np.float32 and index.visible.shape == (6, 21)
    assert index.visible.sum() == 6 * 19 and not index.visible[:, list(INVISIBLE)].any()
    assert index.boxes.dtype == np.float64 and index.boxes.shape == (6, 4)
    np.testing.assert_array_equal(index.boxes, BOXES)
    assert index.yaws.dtype == np.float32 and index.yaws.shape == (6,)
    np.testing.assert_array_equal(index.yaws, YAWS)


def test_example_landmarks_by_hand(tmp_path):
    """Crop 0's box (101, 51, 400, 350): 1-based (x, y) -> crop pixel ((x - 1) - 99.5) 0.4
    - 0.5, then the image frame of a 120 x 120 image (x 120/119, y from the bottom)."""
    pts = _points(np.random.default_rng(0))
    pts[0, :, 0] = (100.5, 50.5)  # the box's top-left edge -> crop (-0.5, -0.5)
    pts[0, :, 1] = (251.0, 201.0)  # 0-based (250, 200) -> crop (59.7, 59.7)
    pts[0, :, 2] = (400.0, 350.0)  # the box's last pixel -> crop (119.3, 119.3)
    root = _write(tmp_path, pts=pts)
    ex = aflw_crops.load_aflw_crops(root, split="all")[0]
    pixels = np.array([[-0.5, -0.5], [59.7, 59.7], [119.3, 119.3]])
    np.testing.assert_allclose(
        preprocess.landmarks_to_pixels(ex["landmarks"][:3], (120, 120)), pixels, atol=1e-4
    )
    expected = [
        [-0.5 * 120 / 119, 120 + 0.5 * 120 / 119],
        [59.7 * 120 / 119, 120 - 59.7 * 120 / 119],
    ]
    np.testing.assert_allclose(ex["landmarks"][:2], expected, atol=1e-4)


def test_example_format(tmp_path):
    root = _write(tmp_path)
    dataset = aflw_crops.load_aflw_crops(root, split="all")
    assert len(dataset) == 6
    index = aflw_crops.read_index(root)
    for i in range(6):
        ex = dataset[i]
        assert ex["image"].shape == (120, 120, 3) and ex["image"].dtype == np.uint8
        assert ex["landmarks"].shape == (21, 2) and ex["landmarks"].dtype == np.float32
        crop = aflw_crops.frame_to_crop(index.points[i], index.boxes[i])
        np.testing.assert_allclose(
            ex["landmarks"], preprocess.pixels_to_landmarks(crop, (120, 120))
        )
        expected_visible = np.ones(21, np.float32)
        expected_visible[list(INVISIBLE)] = 0
        np.testing.assert_array_equal(ex["landmark_visible"], expected_visible)
        assert ex["landmark_visible"].dtype == np.float32
        assert ex["name"] == NAMES[i][:-4] and ex["source"].endswith(NAMES[i])
        assert ex["roi_box"].dtype == np.float32 and ex["yaw"].dtype == np.float32
        np.testing.assert_array_equal(ex["roi_box"], BOXES[i])
        assert ex["yaw"] == YAWS[i]
        loaders.validate_example(ex, ex["source"], (120, 120), 21)
    # The clipped box (index 3) keeps one scale for x and y: visible points stay in the crop.
    assert np.all(
        preprocess.landmarks_to_pixels(dataset[3]["landmarks"], (120, 120))[[0, 1, 2]] > 0
    )


def test_train_test_split(tmp_path):
    root = _write(tmp_path)
    names = {}
    for split in aflw_crops.SPLITS:
        dataset = aflw_crops.load_aflw_crops(root, split=split)
        names[split] = [dataset[i]["name"] for i in range(len(dataset))]
    assert names["test"] == ["image00002", "image00004"]
    assert names["train"] == ["image00001", "image00003", "image00005", "image00007"]
    assert names["all"] == [n[:-4] for n in NAMES]
    with pytest.raises(ValueError, match="split must be one of"):
        aflw_crops.load_aflw_crops(root, split="val")
    with pytest.raises(ValueError, match="on_error must be one of"):
        aflw_crops.load_aflw_crops(root, on_error="ignore")


def test_grey_jpeg_becomes_rgb(tmp_path):
    root = _write(tmp_path, grey=(1,))
    with Image.open(os.path.join(root, aflw_crops.IMAGE_FOLDER, NAMES[1])) as img:
        assert img.mode == "L"
    ex = aflw_crops.load_aflw_crops(root, split="all")[1]
    assert ex["image"].shape == (120, 120, 3) and ex["image"].dtype == np.uint8
    np.testing.assert_array_equal(ex["image"][..., 0], ex["image"][..., 2])


# ------------------------------------------------------------------ bad label files
def _shape(root):
    np.save(os.path.join(root, aflw_crops.POINTS_FILE), np.zeros((6, 21, 2), np.float32))
    return aflw_crops.POINTS_FILE, r"must be \[N, 2, 21\], got shape \(6, 21, 2\)"


def _text(root):
    np.save(os.path.join(root, aflw_crops.YAWS_FILE), np.array(["a"] * 6))
    return aflw_crops.YAWS_FILE, "not numeric"


def _nan(root):
    yaws = YAWS.copy()
    yaws[4] = np.nan
    np.save(os.path.join(root, aflw_crops.YAWS_FILE), yaws)
    return aflw_crops.YAWS_FILE, r"NaN or infinite values \(row 4\)"


def _inf(root):
    pts = _pts(root)
    pts[2, 1, 7] = np.inf
    np.save(os.path.join(root, aflw_crops.POINTS_FILE), pts)
    return aflw_crops.POINTS_FILE, r"NaN or infinite values \(row 2\)"


def _short_list(root):
    with open(os.path.join(root, aflw_crops.LIST_FILE), "w") as handle:
        handle.write("\n".join(NAMES[:5]) + "\n")
    return aflw_crops.POINTS_FILE, f"6 rows, but .*{aflw_crops.LIST_FILE} lists 5 names"


def _short_boxes(root):
    np.save(os.path.join(root, aflw_crops.BOXES_FILE), BOXES[:4])
    return aflw_crops.BOXES_FILE, "4 rows, but .* lists 6 names"


def _empty_box(root):  # uint16: ex < sx must not wrap round to a huge width
    boxes = BOXES.copy()
    boxes[3, 2] = boxes[3, 0] - 1
    np.save(os.path.join(root, aflw_crops.BOXES_FILE), boxes)
    return aflw_crops.BOXES_FILE, r"row 3 \(image00003.jpg\) box .* has ex <= sx or ey <= sy"


def _flat_box(root):
    boxes = BOXES.copy()
    boxes[5, 3] = boxes[5, 1]
    np.save(os.path.join(root, aflw_crops.BOXES_FILE), boxes)
    return aflw_crops.BOXES_FILE, r"row 5 \(image00007.jpg\)"


def _duplicate(root):
    with open(os.path.join(root, aflw_crops.LIST_FILE), "w") as handle:
        handle.write("\n".join(NAMES[:4] + [NAMES[1], NAMES[5]]) + "\n")
    return aflw_crops.LIST_FILE, r"'image00001.jpg' is listed twice \(rows 1 and 4\)"


def _missing_points(root):
    os.remove(os.path.join(root, aflw_crops.POINTS_FILE))
    return aflw_crops.POINTS_FILE, "file is missing"


def _missing_list(root):
    os.remove(os.path.join(root, aflw_crops.LIST_FILE))
    return aflw_crops.LIST_FILE, "list file is missing"


def _corrupt_npy(root):
    with open(os.path.join(root, aflw_crops.BOXES_FILE), "wb") as handle:
        handle.write(b"not a numpy file" * 4)
    return aflw_crops.BOXES_FILE, "cannot read .npy file"


INDEX_BREAKS = [
    _shape,
    _text,
    _nan,
    _inf,
    _short_list,
    _short_boxes,
    _empty_box,
    _flat_box,
    _duplicate,
    _missing_points,
    _missing_list,
    _corrupt_npy,
]


@pytest.mark.parametrize("breaker", INDEX_BREAKS, ids=lambda f: f.__name__[1:])
def test_bad_label_files_name_the_file_and_the_problem(tmp_path, breaker):
    root = _write(tmp_path)
    name, message = breaker(root)
    with pytest.raises(DataError, match=f"{re.escape(name)}: {message}") as info:
        aflw_crops.read_index(root)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match=re.escape(name)):  # not skippable: the files are one
        aflw_crops.load_aflw_crops(root, on_error="skip")


# ------------------------------------------------------------------ bad examples: fail and skip
def _far_outside(root):
    pts = _pts(root)
    pts[1, :, 8] = (299.75, 100.0)  # box (61, 41, 240, 220): side 180, 2/3 crop px a pixel
    np.save(os.path.join(root, aflw_crops.POINTS_FILE), pts)
    return r"image00001.jpg: visible landmark 8 \(row 1 of AFLW_GT_pts21.npy\) is 39.5 px outside"


def _too_few_visible(root):
    pts = _pts(root)
    pts[3, :, 3:] = np.array([-1, 452], np.float32)[:, None]  # 3 visible points left
    np.save(os.path.join(root, aflw_crops.POINTS_FILE), pts)
    return r"image00003.jpg: only 3 visible landmarks \(row 3 of AFLW_GT_pts21.npy\)"


def _missing_image(root):
    os.remove(os.path.join(root, aflw_crops.IMAGE_FOLDER, "image00005.jpg"))
    return "image00005.jpg: image file is missing"


def _wrong_size(root):  # found when decoded
    path = os.path.join(root, aflw_crops.IMAGE_FOLDER, "image00005.jpg")
    Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(path)
    return "image00005.jpg: image is 100x120, expected 120x120"


def _corrupt_image(root):  # found when decoded
    with open(os.path.join(root, aflw_crops.IMAGE_FOLDER, "image00003.jpg"), "wb") as handle:
        handle.write(b"not a jpeg" * 20)
    return "image00003.jpg: cannot read image"


EXAMPLE_BREAKS = [_far_outside, _too_few_visible, _missing_image, _wrong_size, _corrupt_image]


@pytest.mark.parametrize("breaker", EXAMPLE_BREAKS, ids=lambda f: f.__name__[1:])
def test_bad_examples_fail_naming_the_image_or_are_skipped_and_counted(tmp_path, breaker):
    root = _write(tmp_path)
    message = breaker(root)
    bad = re.search(r"image\d{5}", message).group(0)
    with pytest.raises(DataError, match=message) as info:
        dataset = aflw_crops.load_aflw_crops(root, split="all", max_outside=39.0)
        [dataset[i] for i in range(len(dataset))]
    assert "\n" not in str(info.value)
    log = DataErrorLog()
    dataset = aflw_crops.load_aflw_crops(
        root, split="train", on_error="skip", error_log=log, max_outside=39.0
    )
    names = [dataset[i]["name"] for i in range(len(dataset))]
    assert bad not in names and "image00007" in names
    assert log.count == 1 and bad in log.summary() and "1 examples skipped" in log.summary()


def test_outside_limit_and_invisible_points(tmp_path):
    """39.5 crop px out: kept under the default (40), dropped under 39; invisible points (the
    (-1, 452) marker, far outside every crop) never count; inside a crop is 0."""
    root = _write(tmp_path)
    _far_outside(root)
    assert len(aflw_crops.load_aflw_crops(root, split="all")) == 6
    log = DataErrorLog()
    assert (
        len(
            aflw_crops.load_aflw_crops(
                root, split="all", on_error="skip", error_log=log, max_outside=39
            )
        )
        == 5
    )
    assert "image00001.jpg" in log.summary() and "landmark 8" in log.summary()
    pts = _pts(root)
    pts[1, :, 8] = (449.0, 2.0)  # far off: only max_outside=inf (evaluation) keeps it
    np.save(os.path.join(root, aflw_crops.POINTS_FILE), pts)
    with pytest.raises(DataError, match="image00001.jpg: visible landmark 8"):
        aflw_crops.load_aflw_crops(root, split="all")
    assert len(aflw_crops.load_aflw_crops(root, split="all", max_outside=np.inf)) == 6
    np.testing.assert_allclose(
        aflw_crops.outside_distance(
            np.array([[0.0, 119.0], [-0.5, 119.5], [-3.0, 50], [10, 130.5]])
        ),
        [0.0, 0.0, 2.5, 11.0],
    )


def test_every_example_bad_or_none_in_split(tmp_path):
    root = _write(tmp_path, names=NAMES[:2] + ["image00006.jpg", "image00004.jpg"] + NAMES[4:])
    pts = _pts(root)
    pts[:, :, :] = np.array([-1, 452], np.float32)[:, None]
    np.save(os.path.join(root, aflw_crops.POINTS_FILE), pts)
    log = DataErrorLog()
    with pytest.raises(DataError, match="no usable crop in split 'test'"):
        aflw_crops.load_aflw_crops(root, split="test", on_error="skip", error_log=log)
    assert log.count == 3


# ------------------------------------------------------------------ batches with mirrors
def test_batches_with_mirrors(tmp_path):
    root = _write(tmp_path)
    dataset = aflw_crops.load_aflw_crops(root, split="all")
    permutation = preprocess.flip_permutation("aflw21")
    source = DatasetSource(dataset)
    batch = source.load_batch(np.array([0, 3, 5]), np.arange(3))
    assert batch["image"].shape == (3, 120, 120, 3) and batch["landmarks"].shape == (3, 21, 2)
    assert "source" not in batch and list(batch["name"]) == [
        "image00002",
        "image00003",
        "image00007",
    ]
    iterator = BatchIterator(
        dataset,
        4,
        seed=0,
        mirror=True,
        flip_permutation=permutation,
        process_index=0,
        process_count=1,
        num_local_devices=1,
        prefetch=0,
    )
    batch = next(iterator)
    assert batch["image"].shape == (8, 120, 120, 3) and batch["landmark_visible"].shape == (8, 21)
    for k in range(0, 8, 2):
        flipped = preprocess.flip_horizontal(
            {key: batch[key][k] for key in ("image", "landmarks", "landmark_visible")}, permutation
        )
        np.testing.assert_array_equal(batch["image"][k + 1], flipped["image"])
        np.testing.assert_allclose(batch["landmarks"][k + 1], flipped["landmarks"])
        np.testing.assert_array_equal(batch["landmark_visible"][k + 1], flipped["landmark_visible"])
        # Ear 12 is hidden in the fixtures; after the flip the hidden one is 16 (its partner).
        assert (
            batch["landmark_visible"][k + 1][16] == 0 and batch["landmark_visible"][k + 1][12] == 1
        )
    # flip_horizontal of one example: x -> 120 - x, left and right swapped, centre kept.
    ex = dataset[0]
    mirrored = preprocess.flip_horizontal(ex, permutation)
    np.testing.assert_allclose(mirrored["landmarks"][5, 0], 120 - ex["landmarks"][0, 0], rtol=1e-6)
    np.testing.assert_allclose(
        mirrored["landmarks"][20], [120 - ex["landmarks"][20, 0], ex["landmarks"][20, 1]], rtol=1e-6
    )
