"""Readers for the raw dataset folders users download: AFLW2000-3D and 300W-LP.

* AFLW2000-3D.zip: ``AFLW2000/imageNNNNN.jpg`` + ``imageNNNNN.mat`` (``pt3d_68``, ``pt2d``
  [2, 21] AFLW points, ``Pose_Para``, ...).
* 300W_LP.zip: ``AFW/ HELEN/ IBUG/ LFPW/`` (+ ``<subset>_Flip/``, the mirrored images) with
  ``<name>.jpg`` + ``<name>.mat`` (``pt2d`` [2, 68], ``Pose_Para``, ..., no ``pt3d_68``) and
  ``landmarks/<subset>/<name>_pts.mat`` (``pts_3d`` [68, 2], the 3DMM's 68 landmarks; only
  for the unflipped images: a ``_Flip`` image gets its unflipped twin's points mirrored).

Examples are in the format of ``jax3dmmstn.data`` plus: ``landmarks_ibug68`` /
``landmark_visible_ibug68`` (always), ``landmarks_aflw21`` / ``landmark_visible_aflw21``
(AFLW2000-3D), ``pose`` (yaw, pitch, roll) degrees from ``Pose_Para`` (not wrapped),
``label_scale`` (f), ``label_translation`` (tx, ty, tz), ``name`` (file stem) and
``source`` (the label file). ``name`` and ``source`` are strings: keep them out of what
goes to the device (``source`` is dropped by ``batching.collate``, ``name`` is not).

Missing or unreadable files follow ``on_error``: "fail" raises ``DataError`` naming the
file, "skip" drops the example and counts it in ``error_log`` (``summary()`` names it).
Files are listed at construction (a missing twin is found then); AFLW2000-3D's 2,000
labels are also read then, 300W-LP's 122k only when an example is loaded (a bad one is
then replaced by the next good one, see ``loaders.SequenceDataset``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from jax3dmmstn.data import errors, face3d_labels, preprocess
from jax3dmmstn.data.errors import DataError, DataErrorLog
from jax3dmmstn.data.loaders import Example, SequenceDataset, read_image

IMAGE_EXTENSION = ".jpg"
W300LP_SUBSETS = ("AFW", "HELEN", "IBUG", "LFPW")
LANDMARK_SETS = ("ibug68", "aflw21")


def list_pairs(folder: str) -> list[tuple[str, str, str]]:
    """(stem, image path, label path) of every ``<stem>.jpg`` or ``<stem>.mat`` in ``folder``,
    sorted by stem; a file whose twin is missing is listed too (the reader reports it)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no such folder")
    stems = sorted(
        {
            os.path.splitext(f)[0]
            for f in os.listdir(folder)
            if f.lower().endswith((IMAGE_EXTENSION, ".mat")) and not f.startswith(".")
        }
    )
    return [
        (s, os.path.join(folder, s + IMAGE_EXTENSION), os.path.join(folder, s + ".mat"))
        for s in stems
    ]


def image_size_of(path: str) -> tuple[int, int]:
    """(H, W) from the image's header, raising ``DataError`` naming a missing/unreadable file."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: image file is missing")
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: cannot read image: {error}") from error
    return height, width


def _load_image(path: str) -> np.ndarray:
    image_size_of(path)  # a clear message for a missing file
    return read_image(path)


def _pose_fields(label) -> dict[str, np.ndarray]:
    return {
        "pose": face3d_labels.yaw_pitch_roll(label),
        "label_scale": face3d_labels.label_scale(label),
        "label_translation": face3d_labels.label_translation(label),
    }


def _with_landmark_sets(image, sets: dict[str, tuple], main: str, label, name, source) -> Example:
    """An example whose ``landmarks`` are set ``main`` of ``sets`` ({set: (points, visible)})."""
    example = {"image": image}
    example["landmarks"] = np.asarray(sets[main][0], np.float32)
    example["landmark_visible"] = np.asarray(sets[main][1], np.float32)
    for key, (points, visible) in sets.items():
        example[f"landmarks_{key}"] = np.asarray(points, np.float32)
        example[f"landmark_visible_{key}"] = np.asarray(visible, np.float32)
    example.update(_pose_fields(label))
    example["name"] = name
    example["source"] = source
    return example


def aflw2000_example(image_path: str, label_path: str, landmarks: str = "ibug68") -> Example:
    """One AFLW2000-3D example: [H, W, 3] uint8 image, 68 landmarks from ``pt3d_68`` (all
    visible), the 21 AFLW points of ``pt2d`` with their visibility, pose, f, t."""
    label = face3d_labels.read_label(label_path)
    image = _load_image(image_path)
    size = image.shape[:2]
    pt2d = label["pt2d"]
    if pt2d.shape[1] != 21:
        raise DataError(f"{label_path}: 'pt2d' must hold the 21 AFLW points, got {pt2d.shape}")
    sets = {
        "ibug68": (face3d_labels.pt3d_to_image_frame(label["pt3d_68"], size), np.ones(68)),
        "aflw21": (
            face3d_labels.pt2d_to_image_frame(pt2d, size),
            face3d_labels.pt2d_visible(pt2d, size),
        ),
    }
    name = os.path.splitext(os.path.basename(label_path))[0]
    return _with_landmark_sets(image, sets, landmarks, label, name, label_path)


def _check_landmark_set(landmarks: str) -> str:
    if landmarks not in LANDMARK_SETS:
        raise ValueError(f"landmarks must be one of {LANDMARK_SETS}, got {landmarks!r}")
    return landmarks


def _aflw2000_folder(root: str) -> str:
    """``root`` or, for the unzipped archive's parent, its ``AFLW2000/`` folder."""
    inner = os.path.join(root, "AFLW2000")
    has_labels = os.path.isdir(root) and any(f.endswith(".mat") for f in os.listdir(root))
    return inner if not has_labels and os.path.isdir(inner) else root


def _keep_good(items: list, check, on_error: str, log: DataErrorLog) -> list:
    """The items whose ``check`` passes; the others go through the error policy."""
    kept = []
    for item in items:
        try:
            check(item)
        except DataError as error:
            errors.handle(error, on_error, log)
            continue
        kept.append(item)
    return kept


def _dataset(items: list, load, name: str, on_error: str, log: DataErrorLog) -> SequenceDataset:
    if not items:
        raise DataError(f"{name}: no usable image with its label ({log.summary()})")
    dataset = SequenceDataset(len(items), lambda i: load(items[i]), name, on_error, log)
    dataset.items = items
    return dataset


def load_aflw2000_3d(
    root: str,
    landmarks: str = "ibug68",
    on_error: str = "fail",
    error_log: DataErrorLog | None = None,
) -> SequenceDataset:
    """The AFLW2000-3D folder (``imageNNNNN.jpg`` + ``.mat``, or its parent) as a dataset.

    Args:
      root: the folder.
      landmarks: which set is ``landmarks``: "ibug68" (``pt3d_68``, all visible) or
        "aflw21" (``pt2d``'s 21 AFLW points, (-1, 452) or off-image = invisible).
      on_error: "fail" or "skip" (missing twin, unreadable label or image header).
    Returns:
      ``SequenceDataset`` of examples in sorted file order.
    """
    errors.check_policy(on_error)
    _check_landmark_set(landmarks)
    log = error_log if error_log is not None else DataErrorLog()
    folder = _aflw2000_folder(root)

    def check(pair) -> None:  # labels are small: read all 2,000 now, decode pixels later
        _, image_path, label_path = pair
        face3d_labels.read_label(label_path)
        image_size_of(image_path)

    pairs = _keep_good(list_pairs(folder), check, on_error, log)
    return _dataset(pairs, lambda p: aflw2000_example(p[1], p[2], landmarks), folder, on_error, log)


def w300lp_example(image_path: str, label_path: str, landmark_path: str, flipped: bool) -> Example:
    """One 300W-LP example: 68 landmarks from ``pts_3d`` (mirrored and re-ordered for a
    ``_Flip`` image, whose ``landmark_path`` is its unflipped twin's), pose, f, t."""
    label = face3d_labels.read_label(label_path, require_pt3d=False)
    points = face3d_labels.read_landmarks(landmark_path)["pts_3d"]
    image = _load_image(image_path)
    size = image.shape[:2]
    points = face3d_labels.points_to_image_frame(points, size)
    visible = np.ones(68, np.float32)
    if flipped:
        permutation = preprocess.flip_permutation("ibug68")
        points, visible = preprocess.flip_landmarks(points, visible, size[1], permutation)
    name = os.path.splitext(os.path.basename(label_path))[0]
    sets = {"ibug68": (points, visible)}
    return _with_landmark_sets(image, sets, "ibug68", label, name, label_path)


def _w300lp_items(root: str, subsets: Sequence[str], flipped: bool) -> list[tuple]:
    """(image, label, landmark file, flipped) of every file of the subsets, sorted."""
    items = []
    for subset in subsets:
        for folder, is_flip in [(subset, False)] + ([(subset + "_Flip", True)] if flipped else []):
            path = os.path.join(root, folder)
            if is_flip and not os.path.isdir(path):
                raise FileNotFoundError(f"{path}: no such folder (pass flipped=False without it)")
            for stem, image_path, label_path in list_pairs(path):
                landmark = os.path.join(root, "landmarks", subset, stem + "_pts.mat")
                items.append((image_path, label_path, landmark, is_flip))
    return items


def load_300w_lp(
    root: str,
    subsets: Sequence[str] = W300LP_SUBSETS,
    flipped: bool = True,
    on_error: str = "fail",
    error_log: DataErrorLog | None = None,
) -> SequenceDataset:
    """The 300W_LP folder as a dataset (68 iBUG landmarks from ``landmarks/``'s ``pts_3d``).

    Args:
      root: the ``300W_LP`` folder.
      subsets: among "AFW", "HELEN", "IBUG", "LFPW".
      flipped: also the ``<subset>_Flip`` folders.
      on_error: "fail" or "skip". Missing files are found at construction; a corrupt
        label, landmark file or image when its example is loaded.
    """
    errors.check_policy(on_error)
    unknown = [s for s in subsets if s not in W300LP_SUBSETS]
    if unknown:
        raise ValueError(f"unknown 300W-LP subsets {unknown}; known: {W300LP_SUBSETS}")
    log = error_log if error_log is not None else DataErrorLog()

    def check(item) -> None:  # existence only: reading 122k labels up front is too slow
        for path, what in zip(item[:3], ("image", "label", "landmark")):
            if not os.path.isfile(path):
                raise DataError(f"{path}: {what} file is missing")

    items = _keep_good(_w300lp_items(root, subsets, flipped), check, on_error, log)
    return _dataset(items, lambda it: w300lp_example(*it), root, on_error, log)
