"""3DDFA's cropped AFLW set (``AFLW_GT_crop``): 21,080 faces of 120 x 120 pixels.

The folder as 3DDFA ships it::

  AFLW_GT_crop/image00002.jpg ...   120 x 120 RGB (a few grey) JPEG crops
  AFLW_GT_crop.list                 file order: one file name a line
  AFLW_GT_pts21.npy                 float32 [N, 2, 21]: row 0 = x, row 1 = y, 1-based pixels of
                                    the 450 x 450 frame; an invisible point is (-1, 452)
  AFLW_GT_crop_roi_box.npy          uint16 [N, 4] = (sx, sy, ex, ey) of each crop in that frame
  AFLW_GT_crop_yaws.npy             float32 [N], degrees

Points are AFLW's 21 in its standard order (brows L/C/R x2, eyes L/C/R x2, left ear, nose
L/C/R, right ear, mouth L/C/R, chin), as AFLW2000-3D's ``pt2d`` and the package's "aflw21"
set; 2,000 of the crops are the AFLW2000-3D test images (same names, ``pt2d`` = these rows),
listed in the shipped ``aflw2000_3d_names.txt`` (``aflw2000_test_names``).

Geometry (measured on the genuine files by fitting each crop's pixels to its AFLW2000-3D
image): a box holds the 1-based pixels sx..ex, sy..ey *inclusive* and the crop resamples the
square of side ``max(ex - sx, ey - sy) + 1`` frame pixels to 120 with pixel areas (the box
edge goes to the crop edge, 0-based -0.5 and 119.5). Boxes that crossed the frame's border
were clipped to it (224 end at ey = 450, one starts at sx = 1), which is why they are not
always square; the crop itself is square (its y scale equals its x scale), starting at
(sx, sy) unless that start sits on the frame's first pixel while the other side is longer
(then the square ends at ex / ey). ``frame_to_crop`` / ``crop_to_frame`` map with this;
3DDFA's ``benchmark_aflw.py`` maps with ``(ex - sx) / 120`` and ``(ey - sy) / 120`` from sx,
sy, which is a fraction of a pixel off for most crops and up to ~9 crop pixels on the clipped
ones.

Examples (``load_aflw_crops``) are in the format of ``jax3dmmstn.data`` plus ``name`` (file
stem), ``roi_box`` float32 [4] (as stored), ``yaw`` float32 (as stored) and ``source`` (the
image path). ``roi_box`` and ``yaw`` describe the crop as stored: ``preprocess.flip_horizontal``
does not mirror them. Labels are checked at construction (visible points far outside the
crop, fewer than 4 visible points), pixels are decoded when an example is loaded; bad examples
follow ``on_error`` (see ``jax3dmmstn.data.errors``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jax3dmmstn.data import errors, preprocess
from jax3dmmstn.data.errors import DataError, DataErrorLog
from jax3dmmstn.data.loaders import Example, SequenceDataset, read_image

CROP_SIZE = 120
FRAME_SIZE = 450
NUM_POINTS = 21
IMAGE_FOLDER = "AFLW_GT_crop"
LIST_FILE = "AFLW_GT_crop.list"
POINTS_FILE = "AFLW_GT_pts21.npy"
BOXES_FILE = "AFLW_GT_crop_roi_box.npy"
YAWS_FILE = "AFLW_GT_crop_yaws.npy"
INVISIBLE_MARKER = (-1.0, 452.0)  # 1-based (x, y) of a point AFLW marks invisible
MIN_VISIBLE = 4
# Crop pixels a visible point may lie outside the crop. Genuine labels: 16 crops miss the face
# altogether (points 50-340 px out), image00450 holds a quarter of a face turned 90 degrees
# (45 px); the next are profiles whose chin or nose tip is up to 36 px past the edge.
MAX_OUTSIDE = CROP_SIZE / 3
SPLITS = ("train", "test", "all")
_NAMES_FILE = Path(__file__).with_name("aflw2000_3d_names.txt")


class CropIndex(NamedTuple):
    """The label files, validated. N = number of crops, in the list file's order."""

    names: list  # [N] str, the list file's names, e.g. 'image00002.jpg'
    points: np.ndarray  # float64 [N, 21, 2] 0-based (col, row) pixels of the 450 frame
    visible: np.ndarray  # float32 [N, 21]; invisible points keep their marker's value
    boxes: np.ndarray  # float64 [N, 4] sx, sy, ex, ey (1-based, inclusive, as stored)
    yaws: np.ndarray  # float32 [N] degrees


# ------------------------------------------------------------------------------
# Geometry.
# ------------------------------------------------------------------------------
def crop_squares(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The square each box was cropped from.

    Args:
      boxes: ``[..., 4]`` (sx, sy, ex, ey), 1-based inclusive pixels of the frame.
    Returns:
      (start ``[..., 2]``: 0-based (col, row) of the square's first pixel, side ``[...]``:
      frame pixels it spans). A box shorter on one axis was clipped at the frame's border:
      at its end, unless it starts on the frame's first pixel (then at its start).
    """
    boxes = np.asarray(boxes, np.float64)
    low, high = boxes[..., 0:2], boxes[..., 2:4]
    extent = high - low
    side = np.max(extent, axis=-1) + 1.0
    start_clipped = (extent < side[..., None] - 1.0) & (low <= 1.0)
    start = np.where(start_clipped, high - side[..., None] + 1.0, low) - 1.0
    return start, side


def frame_to_crop(points: np.ndarray, boxes: np.ndarray, crop_size: int = CROP_SIZE) -> np.ndarray:
    """Frame pixels -> crop pixels.

    Args:
      points: ``[..., L, 2]`` 0-based (col, row) pixels of the 450 x 450 frame.
      boxes: ``[..., 4]`` (sx, sy, ex, ey) as stored.
      crop_size: the crop's side.
    Returns:
      ``[..., L, 2]`` float64 0-based (col, row) pixels of the crop: the box's outer edges
      (0-based sx - 1.5, ex - 0.5) go to the crop's (-0.5, crop_size - 0.5).
    """
    start, side = crop_squares(boxes)
    scale = crop_size / side[..., None, None]
    return (np.asarray(points, np.float64) - start[..., None, :] + 0.5) * scale - 0.5


def crop_to_frame(points: np.ndarray, boxes: np.ndarray, crop_size: int = CROP_SIZE) -> np.ndarray:
    """Crop pixels ``[..., L, 2]`` -> 0-based frame pixels ``[..., L, 2]`` (``frame_to_crop``'s
    inverse)."""
    start, side = crop_squares(boxes)
    # The square's first pixel (0-based) is also where its outer edge lies in the edge units
    # of crop_to_box / uncrop_pixels.
    return preprocess.uncrop_pixels(points, start, side, crop_size)


def outside_distance(points: np.ndarray, crop_size: int = CROP_SIZE) -> np.ndarray:
    """``[..., L]`` how far (crop pixels, per coordinate) each 0-based crop point ``[..., L, 2]``
    lies outside the crop's area [-0.5, crop_size - 0.5]; 0 inside."""
    points = np.asarray(points, np.float64)
    beyond = np.maximum(-0.5 - points, points - (crop_size - 0.5))
    return np.maximum(beyond, 0.0).max(axis=-1)


# ------------------------------------------------------------------------------
# Label files.
# ------------------------------------------------------------------------------
def read_names(path: str) -> list[str]:
    """The list file's names (blank lines ignored), raising ``DataError`` naming it."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: list file is missing")
    try:
        with open(path, "r", encoding="utf-8") as handle:
            names = [line.strip() for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read list file: {error}") from error
    first = {}
    for row, name in enumerate(names):
        if name in first:
            raise DataError(f"{path}: {name!r} is listed twice (rows {first[name]} and {row})")
        first[name] = row
    return names


def _load_array(path: str, shape: tuple) -> np.ndarray:
    """A ``.npy`` array of ``shape`` (None = any length), numeric and finite."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file is missing")
    try:
        value = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"{path}: cannot read .npy file: {error}") from error
    if value.ndim != len(shape) or any(s not in (None, v) for s, v in zip(shape, value.shape)):
        want = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
        raise DataError(f"{path}: must be {want}, got shape {value.shape}")
    if not np.issubdtype(value.dtype, np.number) or np.issubdtype(value.dtype, np.complexfloating):
        raise DataError(f"{path}: not numeric (dtype {value.dtype})")
    finite = np.isfinite(value).reshape(value.shape[0], -1).all(axis=1)
    if not finite.all():
        raise DataError(f"{path}: NaN or infinite values (row {int(np.argmin(finite))})")
    return value


def read_index(root: str) -> CropIndex:
    """The list and the three ``.npy`` files of the folder, validated.

    Args:
      root: the folder holding ``AFLW_GT_crop.list`` and the ``.npy`` files.
    Returns:
      ``CropIndex`` (see there).
    Raises:
      DataError: naming the file and the problem (and the row / name for one row): a missing
        or unreadable file, a wrong shape, a non-numeric dtype, NaN or inf, a list whose length
        is not the arrays', a box with ex <= sx or ey <= sy, a name listed twice.
    """
    list_path = os.path.join(root, LIST_FILE)
    names = read_names(list_path)
    points_path, boxes_path = os.path.join(root, POINTS_FILE), os.path.join(root, BOXES_FILE)
    yaws_path = os.path.join(root, YAWS_FILE)
    pts = _load_array(points_path, (None, 2, NUM_POINTS))
    boxes = _load_array(boxes_path, (None, 4)).astype(np.float64)  # uint16 wraps on subtraction
    yaws = _load_array(yaws_path, (None,)).astype(np.float32)
    for path, value in ((points_path, pts), (boxes_path, boxes), (yaws_path, yaws)):
        if len(value) != len(names):
            raise DataError(f"{path}: {len(value)} rows, but {list_path} lists {len(names)} names")
    bad = np.flatnonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
    if bad.size:
        row = int(bad[0])
        raise DataError(
            f"{boxes_path}: row {row} ({names[row]}) box {boxes[row].tolist()} has ex <= sx "
            f"or ey <= sy"
        )
    xy = np.swapaxes(np.asarray(pts, np.float64), 1, 2)  # [N, 21, 2] 1-based
    invisible = (xy[..., 0] == INVISIBLE_MARKER[0]) & (xy[..., 1] == INVISIBLE_MARKER[1])
    return CropIndex(names, xy - 1.0, (~invisible).astype(np.float32), boxes, yaws)


@functools.cache
def aflw2000_test_names() -> frozenset:
    """The stems (e.g. 'image00002') of the 2,000 AFLW2000-3D test images."""
    with open(_NAMES_FILE, "r", encoding="utf-8") as handle:
        return frozenset(line.strip() for line in handle if line.strip())


def stem(name: str) -> str:
    """'image00002.jpg' -> 'image00002'."""
    return os.path.splitext(os.path.basename(name))[0]


def split_rows(names: list, split: str) -> np.ndarray:
    """``[K]`` rows of ``names`` in ``split``: "train" (not an AFLW2000-3D test image), "test"
    (only those) or "all"."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    test = aflw2000_test_names()
    in_test = np.array([stem(n) in test for n in names], bool)
    keep = {"train": ~in_test, "test": in_test, "all": np.ones(len(names), bool)}[split]
    return np.flatnonzero(keep)


# ------------------------------------------------------------------------------
# Examples.
# ------------------------------------------------------------------------------
def check_labels(
    index: CropIndex, row: int, image_path: str, max_outside: float = MAX_OUTSIDE
) -> None:
    """Raises ``DataError`` naming the image for fewer than 4 visible points or a visible point
    more than ``max_outside`` crop pixels outside the crop."""
    visible = index.visible[row] > 0
    if visible.sum() < MIN_VISIBLE:
        raise DataError(
            f"{image_path}: only {int(visible.sum())} visible landmarks (row {row} of "
            f"{POINTS_FILE}), at least {MIN_VISIBLE} needed"
        )
    crop = frame_to_crop(index.points[row], index.boxes[row])
    distance = np.where(visible, outside_distance(crop), 0.0)
    worst = int(np.argmax(distance))
    if distance[worst] > max_outside:
        raise DataError(
            f"{image_path}: visible landmark {worst} (row {row} of {POINTS_FILE}) is "
            f"{distance[worst]:.1f} px outside the {CROP_SIZE} x {CROP_SIZE} crop "
            f"(limit {max_outside:g})"
        )


def crop_example(image_path: str, index: CropIndex, row: int) -> Example:
    """One example: ``image`` uint8 [120, 120, 3], ``landmarks`` float32 [21, 2] (image
    frame), ``landmark_visible`` float32 [21], ``name``, ``roi_box`` float32 [4], ``yaw``
    float32, ``source``."""
    if not os.path.isfile(image_path):
        raise DataError(f"{image_path}: image file is missing")
    image = read_image(image_path)
    if image.shape[:2] != (CROP_SIZE, CROP_SIZE):
        raise DataError(
            f"{image_path}: image is {image.shape[0]}x{image.shape[1]}, expected "
            f"{CROP_SIZE}x{CROP_SIZE}"
        )
    pixels = frame_to_crop(index.points[row], index.boxes[row])
    return {
        "image": image,
        "landmarks": preprocess.pixels_to_landmarks(pixels, (CROP_SIZE, CROP_SIZE)),
        "landmark_visible": np.asarray(index.visible[row], np.float32),
        "name": stem(index.names[row]),
        "roi_box": np.asarray(index.boxes[row], np.float32),
        "yaw": np.float32(index.yaws[row]),
        "source": image_path,
    }


def load_aflw_crops(
    root: str,
    split: str = "train",
    on_error: str = "fail",
    error_log: DataErrorLog | None = None,
    max_outside: float = MAX_OUTSIDE,
) -> SequenceDataset:
    """3DDFA's ``AFLW_GT_crop`` folder as a dataset of 120 x 120 crops with 21 AFLW points.

    Args:
      root: the folder holding ``AFLW_GT_crop/`` and the list / ``.npy`` files.
      split: "train" (every crop that is not an AFLW2000-3D test image), "test" (only those)
        or "all".
      on_error: "fail" or "skip". Checked at construction: a missing image file, fewer than 4
        visible points, a visible point more than ``max_outside`` crop pixels outside the
        crop; when an example is loaded: an unreadable image or one not 120 x 120. The label
        files themselves must be sound (``read_index`` raises otherwise).
      error_log: counts and names the skipped examples.
      max_outside: crop pixels; ``np.inf`` skips the check (evaluation on AFLW2000-3D, whose
        labels come from the .mat files: 3 of its crops, e.g. image00450, fail the default).
    Returns:
      ``SequenceDataset`` in the list file's order (``dataset.rows``: the index rows).
    """
    errors.check_policy(on_error)
    log = error_log if error_log is not None else DataErrorLog()
    index = read_index(root)
    folder = os.path.join(root, IMAGE_FOLDER)
    rows = []
    for row in split_rows(index.names, split):
        image_path = os.path.join(folder, index.names[row])
        try:
            if not os.path.isfile(image_path):
                raise DataError(f"{image_path}: image file is missing")
            check_labels(index, int(row), image_path, max_outside)
        except DataError as error:
            errors.handle(error, on_error, log)
            continue
        rows.append(int(row))
    if not rows:
        raise DataError(f"{root}: no usable crop in split {split!r} ({log.summary()})")

    def load(i: int) -> Example:
        return crop_example(os.path.join(folder, index.names[rows[i]]), index, rows[i])

    dataset = SequenceDataset(
        len(rows), load, f"{root}:{split}", on_error, log, (CROP_SIZE, CROP_SIZE), NUM_POINTS
    )
    dataset.index = index
    dataset.rows = np.asarray(rows, np.int64)
    return dataset
