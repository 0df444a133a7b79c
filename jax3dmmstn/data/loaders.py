"""Loaders for real face data, all into the example format of ``jax3dmmstn.data``.

* ``load_imdb_mat``: the original's training ``imdb.mat`` (``images.data`` H x W x 3 x N,
  ``images.labels`` 1 x 3 x L x N with rows x, y, visibility, ``images.set`` 1 = train,
  2 = val). Landmarks are already in the image frame (y from the bottom).
* ``load_demo_mat``: the demo's layout (``Images`` 224 x 224 x 3 x N in 0..255,
  ``Labels`` 1 x 2 x L x N, image frame, no visibility row).
  In both .mat layouts a landmark at exactly (0, 0) is missing (visible = 0).
* ``ImageFolderDataset``: a folder tree of images, each with an iBUG ``.pts`` file of the
  same name (68 points, 1-based pixel coordinates, y down).
* ``TFDSDataset`` / ``load_tfds``: tensorflow-datasets ``aflw2k3d`` and ``the300w_lp``
  through ``tfds.data_source`` (no TensorFlow needed; optional extra ``[tfds]``). Both
  store landmarks divided by 450 (the image side) in 3DDFA's 1-based pixel coordinates
  with y down; 300W-LP's ``pose_params`` starts with pitch, yaw, roll in radians.

Conversions to the image frame go through ``jax3dmmstn.core.geometry.pixels_to_image_frame``
(0-based pixel centres, y down -> x from the left, y from the bottom), so a landmark
lands on the pixel the STN's sampler reads.

Every dataset here is a sequence: ``len(ds)``, ``ds[i]`` -> example dict (plus a
``source`` string naming the file, which ``batching.collate`` leaves out). Bad
input follows ``on_error`` (see ``jax3dmmstn.data.errors``).
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from jax3dmmstn import matfile
from PIL import Image

from jax3dmmstn.core.pose import pose_from_label
from jax3dmmstn.data import errors
from jax3dmmstn.data.errors import DataError, DataErrorLog
from jax3dmmstn.data.preprocess import pixels_to_landmarks

Example = Dict[str, object]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
TFDS_IMAGE_SIDE = 450.0  # aflw2k3d / the300w_lp divide landmarks by this


# ------------------------------------------------------------------------------
# Validation shared by every loader.
# ------------------------------------------------------------------------------
def validate_example(
    example: Example,
    source: str,
    expected_size: Optional[Sequence[int]] = None,
    num_landmarks: Optional[int] = None,
) -> Example:
    """Checks one example in numpy and raises ``DataError`` naming ``source``.

    Checks: image [H, W, 3] uint8 or float (finite), optionally of ``expected_size``
    (H, W); landmarks [L, 2] finite (NaN is an error, not "missing": missing
    landmarks have visibility 0); visibility [L]; optionally L == num_landmarks.
    """
    image = np.asarray(example["image"])
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"{source}: image must be [H, W, 3], got shape {image.shape}")
    if expected_size is not None and tuple(image.shape[:2]) != tuple(expected_size):
        raise DataError(
            f"{source}: image is {image.shape[0]}x{image.shape[1]}, expected "
            f"{expected_size[0]}x{expected_size[1]}"
        )
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.floating):
            raise DataError(f"{source}: image dtype must be uint8 or float, got {image.dtype}")
        if not np.all(np.isfinite(image)):
            raise DataError(f"{source}: image has non-finite pixel values")
    landmarks = np.asarray(example["landmarks"])
    if landmarks.ndim != 2 or landmarks.shape[1] != 2:
        raise DataError(f"{source}: landmarks must be [L, 2], got {landmarks.shape}")
    if num_landmarks is not None and landmarks.shape[0] != num_landmarks:
        raise DataError(f"{source}: expected {num_landmarks} landmarks, got {landmarks.shape[0]}")
    if not np.all(np.isfinite(landmarks)):
        bad = np.flatnonzero(~np.all(np.isfinite(landmarks), axis=1))
        raise DataError(
            f"{source}: landmarks {bad.tolist()} are NaN or infinite (mark missing "
            f"landmarks with visibility 0 instead)"
        )
    visible = np.asarray(example["landmark_visible"])
    if visible.shape != landmarks.shape[:1]:
        raise DataError(
            f"{source}: landmark_visible must be [{landmarks.shape[0]}], got {visible.shape}"
        )
    return example


def make_example(
    image,
    landmarks,
    visible,
    source: str,
    identity: Optional[int] = None,
    pose: Optional[np.ndarray] = None,
) -> Example:
    """Builds an example dict with the format's dtypes."""
    example = {
        "image": image,
        "landmarks": np.asarray(landmarks, np.float32),
        "landmark_visible": np.asarray(visible, np.float32),
        "source": source,
    }
    if identity is not None:
        example["identity"] = np.int32(identity)
    if pose is not None:
        example["pose"] = np.asarray(pose, np.float32)
    return example


class SequenceDataset:
    """A dataset defined by ``len`` and a per-index loader, with the error policy.

    ``load(i)`` builds example i (and may raise ``DataError``). Under
    ``on_error="skip"`` a failing example is replaced by the next one that loads
    (deterministically), and the failure is counted in ``self.error_log``.
    """

    def __init__(
        self,
        length: int,
        load: Callable[[int], Example],
        name: str,
        on_error: str = "fail",
        error_log: Optional[DataErrorLog] = None,
        expected_size: Optional[Sequence[int]] = None,
        num_landmarks: Optional[int] = None,
    ):
        self._length = int(length)
        self._load = load
        self.name = name
        self.on_error = errors.check_policy(on_error)
        self.error_log = error_log if error_log is not None else DataErrorLog()
        self.expected_size = expected_size
        self.num_landmarks = num_landmarks
        # Indices that failed at load time under "skip": known bad, not retried.
        self._bad = set()

    def __len__(self) -> int:
        return self._length

    def _checked(self, i: int) -> Example:
        example = self._load(i)
        return validate_example(
            example,
            str(example.get("source", f"{self.name}[{i}]")),
            self.expected_size,
            self.num_landmarks,
        )

    def __getitem__(self, i: int) -> Example:
        if not 0 <= i < self._length:
            raise IndexError(f"{self.name}: index {i} out of range [0, {self._length})")
        for k in range(self._length):
            j = (i + k) % self._length
            if j in self._bad:
                continue
            try:
                return self._checked(j)
            except DataError as error:
                errors.handle(error, self.on_error, self.error_log)
                self._bad.add(j)
        raise DataError(
            f"{self.name}: every one of its {self._length} examples is bad; "
            f"{self.error_log.summary()}"
        )


def _filter_valid(
    candidates: List[int], check: Callable[[int], None], on_error: str, log: DataErrorLog
) -> List[int]:
    """Keeps the indices whose ``check`` passes (policy applied to the others)."""
    kept = []
    for i in candidates:
        try:
            check(i)
        except DataError as error:
            errors.handle(error, on_error, log)
            continue
        kept.append(i)
    return kept


# ------------------------------------------------------------------------------
# The original's .mat files.
# ------------------------------------------------------------------------------
def read_mat(path: str) -> dict:
    """The variables of a .mat file of any version (v7.3 through h5py), raising DataError."""
    try:
        return matfile.load_mat(path)
    except matfile.MatFileError as error:
        raise DataError(str(error)) from None


def _struct_field(struct, field: str, path: str, where: str) -> np.ndarray:
    names = struct.dtype.names or ()
    if field not in names:
        raise DataError(f"{path}: {where} has no field {field!r} (fields: {list(names)})")
    return np.asarray(struct[field][0, 0] if struct.shape else struct[field])


def _mat_images(data: np.ndarray, path: str, name: str) -> np.ndarray:
    """MATLAB H x W x 3 x N -> [N, H, W, 3] (uint8 kept, anything else float32)."""
    if data.ndim == 3:  # a single image: MATLAB drops the trailing singleton
        data = data[..., None]
    if data.ndim != 4 or data.shape[2] != 3:
        raise DataError(f"{path}: {name} must be H x W x 3 x N, got {data.shape}")
    images = np.moveaxis(data, 3, 0)
    if images.dtype != np.uint8:
        images = images.astype(np.float32)
    return np.ascontiguousarray(images)


def _mat_labels(labels: np.ndarray, rows: int, n: int, path: str, name: str) -> np.ndarray:
    """MATLAB 1 x rows x L x N (or rows x L x N) -> [N, L, rows] float32."""
    labels = np.asarray(labels, np.float64)
    if labels.ndim == 4 and labels.shape[0] == 1:
        labels = labels[0]
    if labels.ndim == 2 and n == 1:
        labels = labels[..., None]
    if labels.ndim != 3 or labels.shape[0] != rows or labels.shape[2] != n:
        raise DataError(
            f"{path}: {name} must be 1 x {rows} x L x N with N = {n}, got {labels.shape}"
        )
    return np.moveaxis(labels, [2, 1, 0], [0, 1, 2]).astype(np.float32)


def _missing(landmarks: np.ndarray) -> np.ndarray:
    """The original marks a missing landmark with (0, 0)."""
    return np.all(landmarks == 0, axis=-1)


class InMemoryDataset(SequenceDataset):
    """Examples held as stacked arrays (the .mat loaders)."""

    def __init__(
        self,
        images: np.ndarray,
        landmarks: np.ndarray,
        visible: np.ndarray,
        sources: Sequence[str],
        name: str,
        on_error: str = "fail",
        error_log: Optional[DataErrorLog] = None,
        identity: Optional[np.ndarray] = None,
        expected_size: Optional[Sequence[int]] = None,
    ):
        log = error_log if error_log is not None else DataErrorLog()

        def example_at(i: int) -> Example:
            return make_example(
                images[i],
                landmarks[i],
                visible[i],
                sources[i],
                None if identity is None else int(identity[i]),
            )

        def check(i: int) -> None:
            validate_example(example_at(i), sources[i], expected_size)

        # Scan once (cheap: arrays are in memory) so bad entries leave the index.
        keep = np.asarray(_filter_valid(list(range(len(images))), check, on_error, log), np.int64)
        self.indices = keep
        self.identities = None if identity is None else np.asarray(identity)[keep]
        super().__init__(
            len(keep), lambda i: example_at(int(keep[i])), name, on_error, log, expected_size
        )


def load_imdb_mat(
    path: str,
    split: str = "train",
    on_error: str = "fail",
    error_log: Optional[DataErrorLog] = None,
    expected_size: Optional[Sequence[int]] = None,
) -> InMemoryDataset:
    """The original's ``imdb.mat`` as a dataset.

    Args:
      path: the .mat file (MATLAB v5/v7, a struct ``images`` with ``data``,
        ``labels``, ``set``).
      split: "train" (set == 1), "val" (set == 2) or "all".
      on_error: "fail" or "skip" (NaN landmarks, non-finite pixels).
    Returns:
      Examples with landmarks in the image frame; visible = visibility row > 0 and
      not (0, 0).
    """
    errors.check_policy(on_error)
    splits = {"train": (1,), "val": (2,), "all": None}
    if split not in splits:
        raise ValueError(f"split must be one of {list(splits)}, got {split!r}")
    mat = read_mat(path)
    if "images" not in mat:
        raise DataError(
            f"{path}: no variable 'images' (variables: "
            f"{[k for k in mat if not k.startswith('__')]})"
        )
    struct = mat["images"]
    images = _mat_images(_struct_field(struct, "data", path, "images"), path, "images.data")
    n = images.shape[0]
    labels = _mat_labels(
        _struct_field(struct, "labels", path, "images"), 3, n, path, "images.labels"
    )
    sets = _struct_field(struct, "set", path, "images").reshape(-1)
    if sets.size != n:
        raise DataError(f"{path}: images.set has {sets.size} entries for {n} images")
    landmarks = labels[..., :2]
    visible = (labels[..., 2] > 0) & ~_missing(landmarks)
    chosen = np.arange(n) if splits[split] is None else np.flatnonzero(np.isin(sets, splits[split]))
    sources = [f"{path}[image {i + 1}]" for i in chosen]
    return InMemoryDataset(
        images[chosen],
        landmarks[chosen],
        visible[chosen],
        sources,
        f"{path}:{split}",
        on_error,
        error_log,
        expected_size=expected_size,
    )


def load_demo_mat(
    path: str,
    on_error: str = "fail",
    error_log: Optional[DataErrorLog] = None,
    expected_size: Optional[Sequence[int]] = (224, 224),
) -> InMemoryDataset:
    """The demo's .mat layout: ``Images`` 224 x 224 x 3 x N (0..255), ``Labels`` 1 x 2 x L x N."""
    errors.check_policy(on_error)
    mat = read_mat(path)
    for key in ("Images", "Labels"):
        if key not in mat:
            raise DataError(
                f"{path}: no variable {key!r} (variables: "
                f"{[k for k in mat if not k.startswith('__')]})"
            )
    images = _mat_images(np.asarray(mat["Images"]), path, "Images")
    n = images.shape[0]
    landmarks = _mat_labels(mat["Labels"], 2, n, path, "Labels")
    visible = ~_missing(landmarks)
    sources = [f"{path}[image {i + 1}]" for i in range(n)]
    return InMemoryDataset(
        images, landmarks, visible, sources, path, on_error, error_log, expected_size=expected_size
    )


# ------------------------------------------------------------------------------
# Image folders with iBUG .pts files.
# ------------------------------------------------------------------------------
def read_pts(path: str) -> np.ndarray:
    """Reads an iBUG .pts file: ``[n_points, 2]`` (x, y) 1-based pixels, y down.

    Raises:
      DataError: missing file or any deviation from the format (header, count,
        braces, non-numeric or non-finite coordinates).
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: landmark file is missing")
    try:
        with open(path, "r", encoding="utf-8") as handle:
            lines = [line.strip() for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read landmark file: {error}") from error
    header = {}
    k = 0
    while k < len(lines) and lines[k] != "{":
        key, sep, value = lines[k].partition(":")
        if not sep:
            raise DataError(f"{path}: malformed .pts header line {lines[k]!r}")
        header[key.strip()] = value.strip()
        k += 1
    if "n_points" not in header:
        raise DataError(f"{path}: .pts header has no n_points")
    try:
        n_points = int(header["n_points"])
    except ValueError:
        raise DataError(f"{path}: n_points is not an integer: {header['n_points']!r}") from None
    if k == len(lines) or "}" not in lines:
        raise DataError(f"{path}: .pts file must have the points between '{{' and '}}'")
    end = lines.index("}")
    body = lines[k + 1 : end]
    if len(body) != n_points:
        raise DataError(f"{path}: n_points is {n_points} but {len(body)} points are listed")
    try:
        points = np.array([[float(v) for v in line.split()] for line in body], np.float64)
    except ValueError as error:
        raise DataError(f"{path}: non-numeric landmark coordinate ({error})") from None
    if points.shape != (n_points, 2):
        raise DataError(f"{path}: each point needs two coordinates, got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise DataError(f"{path}: landmarks contain NaN or infinite values")
    return points.astype(np.float32)


def write_pts(path: str, points: np.ndarray) -> None:
    """Writes ``[n, 2]`` 1-based (x, y down) points as an iBUG .pts file."""
    points = np.asarray(points)
    lines = ["version: 1", f"n_points: {points.shape[0]}", "{"]
    lines += [f"{x:.6f} {y:.6f}" for x, y in points]
    lines.append("}")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def pts_to_image_frame(points: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
    """1-based (x, y down) pixel coordinates -> image frame (y from the bottom)."""
    return pixels_to_landmarks(np.asarray(points, np.float32) - 1.0, image_size)


def read_image(path: str) -> np.ndarray:
    """Decodes an image file to [H, W, 3] uint8 RGB, raising DataError naming it."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: cannot read image: {error}") from error


class ImageFolderDataset(SequenceDataset):
    """Images under ``root`` (recursively), each with ``<same name>.pts``.

    Construction scans every file: a missing or malformed .pts file or an image
    whose header cannot be read is an error (``on_error``) naming the file. Pixels
    are decoded in ``__getitem__`` (a file truncated after its header fails there).

    Args:
      root: folder.
      on_error: "fail" or "skip".
      identity_from_folder: identity = index of the image's parent folder (sorted),
        for same-identity pairs.
      expected_size: (H, W) that every image must have, or None for any.
      num_landmarks: required number of points (68 for iBUG), or None.
    """

    def __init__(
        self,
        root: str,
        on_error: str = "fail",
        error_log: Optional[DataErrorLog] = None,
        identity_from_folder: bool = False,
        expected_size: Optional[Sequence[int]] = None,
        num_landmarks: Optional[int] = 68,
    ):
        errors.check_policy(on_error)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{root}: no such folder")
        log = error_log if error_log is not None else DataErrorLog()
        paths = sorted(
            os.path.join(d, f)
            for d, _, files in os.walk(root)
            for f in files
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        self.root = root

        def check(i: int) -> None:
            read_pts(os.path.splitext(paths[i])[0] + ".pts")
            try:
                with Image.open(paths[i]) as img:
                    size = img.size
            except (OSError, ValueError) as error:
                raise DataError(f"{paths[i]}: cannot read image: {error}") from error
            if expected_size is not None and (size[1], size[0]) != tuple(expected_size):
                raise DataError(
                    f"{paths[i]}: image is {size[1]}x{size[0]}, expected "
                    f"{expected_size[0]}x{expected_size[1]}"
                )

        kept = _filter_valid(list(range(len(paths))), check, on_error, log)
        self.paths = [paths[i] for i in kept]
        if not self.paths:
            raise DataError(f"{root}: no usable image with a .pts file ({log.summary()})")
        folders = sorted({os.path.dirname(p) for p in self.paths})
        folder_id = {f: k for k, f in enumerate(folders)}
        self.identities = (
            np.array([folder_id[os.path.dirname(p)] for p in self.paths])
            if identity_from_folder
            else None
        )

        def load(i: int) -> Example:
            path = self.paths[i]
            image = read_image(path)
            points = read_pts(os.path.splitext(path)[0] + ".pts")
            landmarks = pts_to_image_frame(points, image.shape[:2])
            identity = None if self.identities is None else int(self.identities[i])
            return make_example(image, landmarks, np.ones(len(points), np.float32), path, identity)

        super().__init__(len(self.paths), load, root, on_error, log, expected_size, num_landmarks)


# ------------------------------------------------------------------------------
# tensorflow-datasets: aflw2k3d and the300w_lp.
# ------------------------------------------------------------------------------
def tfds_record_to_example(
    name: str, record: dict, source: str, landmark_kind: str = "3d"
) -> Example:
    """Converts one aflw2k3d / the300w_lp record to an example.

    Landmarks: ``value * 450`` are 3DDFA's 1-based pixel coordinates (y down), which
    go to the image frame of the record's image. All 68 points are marked visible
    (neither dataset says which are occluded). 300W-LP: ``pose`` = (yaw, pitch, roll)
    in degrees from ``pose_params[:3]`` = (pitch, yaw, roll) radians, with 300W-LP's
    (3DDFA's) signs; ``landmark_kind`` picks "3d" (``landmarks_3d``, the 3D points
    projected; what a vertex-based model predicts), "2d" (``landmarks_2d``) or
    "origin" (``landmarks_origin``, the original 300W annotation).
    """
    image = np.asarray(record["image"])
    if name == "aflw2k3d":
        normalized = record["landmarks_68_3d_xy_normalized"]
    elif name == "the300w_lp":
        keys = {"3d": "landmarks_3d", "2d": "landmarks_2d", "origin": "landmarks_origin"}
        if landmark_kind not in keys:
            raise ValueError(f"landmark_kind must be one of {list(keys)}, got {landmark_kind!r}")
        normalized = record[keys[landmark_kind]]
    else:
        raise ValueError(f"unsupported TFDS dataset {name!r} (aflw2k3d, the300w_lp)")
    points = np.asarray(normalized, np.float32) * TFDS_IMAGE_SIDE
    if not np.all(np.isfinite(points)):
        raise DataError(f"{source}: landmarks contain NaN or infinite values")
    landmarks = pts_to_image_frame(points, image.shape[:2])
    # TFDS's aflw2k3d has no pose_params (its builder drops Pose_Para); a record that
    # carries them gets the pose too, as the raw-folder reader gives it.
    pose = None
    if "pose_params" in record:
        pose = pose_from_label(np.asarray(record["pose_params"], np.float64)[:3])
    return make_example(image, landmarks, np.ones(len(points), np.float32), source, pose=pose)


def load_tfds(
    name: str,
    split: str = "train",
    data_dir: Optional[str] = None,
    on_error: str = "fail",
    error_log: Optional[DataErrorLog] = None,
    landmark_kind: str = "3d",
) -> SequenceDataset:
    """``aflw2k3d`` or ``the300w_lp`` through ``tfds.data_source`` (random access, no TF).

    The data must have been prepared under ``data_dir`` beforehand (tfds
    build/download; this function never downloads).
    """
    if name not in ("aflw2k3d", "the300w_lp"):
        raise ValueError(f"unsupported TFDS dataset {name!r} (aflw2k3d, the300w_lp)")
    try:
        import tensorflow_datasets as tfds  # optional extra
    except ImportError as error:
        raise ImportError(
            "loading TFDS datasets needs tensorflow-datasets: pip install 'jax3dmmstn[tfds]'"
        ) from error
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)

    def load(i: int) -> Example:
        return tfds_record_to_example(name, source[i], f"tfds:{name}/{split}[{i}]", landmark_kind)

    return SequenceDataset(
        len(source), load, f"tfds:{name}/{split}", on_error, error_log, num_landmarks=68
    )
