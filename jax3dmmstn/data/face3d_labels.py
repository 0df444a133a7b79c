"""3DDFA-style labels: the ``.mat`` files of AFLW2000-3D and 300W-LP, normalised.

One label file (``imageNNNNN.mat`` beside ``imageNNNNN.jpg``) holds

* ``pt3d_68`` [3, 68]: x, y, z of the fitted 3DMM's 68 iBUG landmarks, all 68 even when
  self-occluded (AFLW2000-3D only; 300W-LP keeps them in ``landmarks/<subset>/<name>_pts.mat``
  as ``pts_3d`` [68, 2], read by ``read_landmarks``);
* ``pt2d`` [2, K]: AFLW2000-3D the 21 AFLW manual points (invisible = (-1, 452)),
  300W-LP the 68 original 300-W points;
* ``Pose_Para`` [1, 7] = [pitch, yaw, roll (radians), tx, ty, tz, f];
* ``Shape_Para`` [199, 1], ``Exp_Para`` [29, 1], ``roi`` [1, 4].

Pixels are 1-based MATLAB coordinates: x = column, y = row counted downwards.

The genuine files are irregular, and every reader here accepts what they hold: ``Exp_Para``
stored as uint8 zeros, ``pt2d`` as int16 / uint16 or [2, 23] (two stray columns, dropped),
float64 where float32 is usual, a negative f (kept: it is the label), angles far outside
+-180 degrees (kept, not wrapped: the benchmarks filter on them). Anything else wrong (a
missing key, a wrong shape, NaN) raises ``DataError`` naming the file and the key.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from jax3dmmstn.core.pose import pose_from_label
from jax3dmmstn.data.errors import DataError
from jax3dmmstn.data.loaders import pts_to_image_frame, read_mat

Label = dict[str, object]
# pt2d column counts the datasets use (AFLW's 21 points, 300-W's 68); extra columns are stray.
PT2D_COUNTS = (68, 21)


def load_mat(path: str) -> dict:
    """The variables of a label file (any MATLAB version), raising ``DataError`` naming it."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: label file is missing")
    return read_mat(path)


def _get(mat: dict, key: str, path: str) -> np.ndarray:
    if key not in mat:
        raise DataError(f"{path}: no {key!r} (variables: {sorted(mat)})")
    value = np.asarray(mat[key])
    if not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
        raise DataError(f"{path}: {key!r} is not numeric (dtype {value.dtype})")
    return value


def _finite(value: np.ndarray, key: str, path: str) -> np.ndarray:
    if not np.all(np.isfinite(value)):
        raise DataError(f"{path}: {key!r} has NaN or infinite values")
    return value


def _vector(mat: dict, key: str, size: int, path: str, dtype) -> np.ndarray:
    """A [size], [1, size] or [size, 1] variable as a flat ``[size]`` array of ``dtype``."""
    value = _get(mat, key, path)
    if value.size != size or max(value.shape, default=0) != size:
        raise DataError(f"{path}: {key!r} must have {size} entries, got shape {value.shape}")
    return _finite(value.reshape(size).astype(dtype), key, path)


def _exp_para(mat: dict, path: str) -> np.ndarray:
    """``[29]`` float32. Some files store "no expression" as uint8 zeros (of any size)."""
    value = _get(mat, "Exp_Para", path)
    if value.dtype == np.uint8 and not np.any(value):
        return np.zeros(29, np.float32)
    return _vector(mat, "Exp_Para", 29, path, np.float32)


def _pt2d(mat: dict, path: str) -> np.ndarray:
    """``[2, K]`` float32, K = 68 or 21; stray columns beyond K dropped, ints converted."""
    value = _get(mat, "pt2d", path)
    if value.ndim != 2 or value.shape[0] != 2:
        raise DataError(f"{path}: 'pt2d' must be [2, K], got shape {value.shape}")
    count = next((k for k in PT2D_COUNTS if value.shape[1] >= k), None)
    if count is None:
        raise DataError(f"{path}: 'pt2d' has {value.shape[1]} points, fewer than 21")
    return _finite(value[:, :count].astype(np.float32), "pt2d", path)


def _pt3d(mat: dict, path: str) -> np.ndarray:
    value = _get(mat, "pt3d_68", path)
    if value.shape != (3, 68):
        raise DataError(f"{path}: 'pt3d_68' must be [3, 68], got shape {value.shape}")
    return _finite(value.astype(np.float32), "pt3d_68", path)


def read_label(path: str, require_pt3d: bool = True) -> Label:
    """One 3DDFA-style label file, normalised.

    Args:
      path: the ``.mat`` file.
      require_pt3d: False for 300W-LP, whose label files carry no ``pt3d_68`` (the 68
        landmarks are in ``landmarks/<subset>/<name>_pts.mat``); then ``pt3d_68`` is
        in the result only when the file has it.
    Returns:
      dict: ``pt3d_68`` float32 [3, 68], ``pt2d`` float32 [2, K] (K = 21 or 68),
      ``pose_para`` float64 [7], ``shape_para`` float32 [199], ``exp_para`` float32 [29],
      ``roi`` float32 [4] (if present), ``path``.
    Raises:
      DataError: missing or unreadable file, missing key, wrong shape, non-finite value.
    """
    mat = load_mat(path)
    label: Label = {"path": path}
    if require_pt3d or "pt3d_68" in mat:
        label["pt3d_68"] = _pt3d(mat, path)
    label["pt2d"] = _pt2d(mat, path)
    label["pose_para"] = _vector(mat, "Pose_Para", 7, path, np.float64)
    label["shape_para"] = _vector(mat, "Shape_Para", 199, path, np.float32)
    label["exp_para"] = _exp_para(mat, path)
    if "roi" in mat:
        label["roi"] = _vector(mat, "roi", 4, path, np.float32)
    return label


def read_landmarks(path: str) -> dict[str, np.ndarray]:
    """300W-LP's ``landmarks/<subset>/<name>_pts.mat``: ``pts_2d``, ``pts_3d`` float32 [68, 2]
    (1-based pixels, y down; ``pts_3d`` are the fitted 3DMM's landmarks, ``pts_2d`` the
    2D-style ones, whose contour follows the visible face boundary)."""
    mat = load_mat(path)
    out = {}
    for key in ("pts_2d", "pts_3d"):
        value = _get(mat, key, path)
        if value.shape == (2, 68):  # tolerate the transposed layout of pt2d / pt3d_68
            value = value.T
        if value.shape != (68, 2):
            raise DataError(f"{path}: {key!r} must be [68, 2], got shape {value.shape}")
        out[key] = _finite(value.astype(np.float32), key, path)
    return out


def yaw_pitch_roll(label: Label) -> np.ndarray:
    """(yaw, pitch, roll) float32 [3] degrees, as stored (not wrapped)."""
    return pose_from_label(label["pose_para"]).astype(np.float32)


def label_scale(label: Label) -> np.float32:
    """The label's f (``Pose_Para[6]``; one genuine file has f < 0, kept as is)."""
    return np.float32(label["pose_para"][6])


def label_translation(label: Label) -> np.ndarray:
    """The label's (tx, ty, tz) float32 [3] (``Pose_Para[3:6]``; ty counts from the bottom)."""
    return np.asarray(label["pose_para"][3:6], np.float32)


def points_to_image_frame(points_xy: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
    """``[L, 2]`` 1-based (x, y down) pixels -> ``[L, 2]`` float32 image frame."""
    return pts_to_image_frame(np.asarray(points_xy, np.float32), image_size)


def pt3d_to_image_frame(pt3d_68: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
    """``pt3d_68`` [3, 68] -> the 68 landmarks [68, 2] in the image frame of an (H, W) image."""
    return points_to_image_frame(np.asarray(pt3d_68)[:2].T, image_size)


def pt2d_to_image_frame(pt2d: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
    """``pt2d`` [2, K] -> [K, 2] image frame (invisible points converted too: mask them)."""
    return points_to_image_frame(np.asarray(pt2d)[:2].T, image_size)


def pt2d_visible(pt2d: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
    """``[K]`` float32 visibility of AFLW points: 0 for the (-1, 452) marker (or, once a
    uint16 file saturated -1 to 0, (0, 452)) and any point outside the image's pixels
    (1-based centres 1..W, so [0.5, W + 0.5])."""
    height, width = image_size[:2]
    x, y = np.asarray(pt2d, np.float64)[:2]
    inside = (x >= 0.5) & (x <= width + 0.5) & (y >= 0.5) & (y <= height + 0.5)
    return (inside & (x != -1)).astype(np.float32)
