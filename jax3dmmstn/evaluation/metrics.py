"""Metrics of a face alignment: landmark NME, pose errors, 3D shape error.

All are numpy functions of host arrays (they run once per evaluation, outside jit).

* Landmark NME (the 3DDFA / AFLW2000-3D protocol): per image, the mean over visible landmarks
  of the L2 error, divided by sqrt(w * h) of the bounding box of the visible ground-truth
  landmarks.
* Pose error: mean absolute difference of yaw, pitch and roll (degrees; the AFLW2000-3D
  protocol) and the geodesic angle of R_pred R_true^T (degrees).
* 3D shape error: mean per-vertex Euclidean distance between predicted and true shapes in the
  model frame (before pose; model units, mm).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jax3dmmstn.core import pose


def landmark_box_size(landmarks: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """sqrt(w * h) of the box around each image's visible landmarks.

    landmarks [B, L, 2], visible [B, L] -> [B]. Raises if an image has no visible landmark or a
    degenerate (zero-area) box, since its NME would be undefined.
    """
    landmarks = np.asarray(landmarks, np.float64)
    visible = np.asarray(visible) > 0
    if landmarks.ndim != 3 or landmarks.shape[-1] != 2:
        raise ValueError(f"landmarks must be [B, L, 2], got {landmarks.shape}")
    if visible.shape != landmarks.shape[:2]:
        raise ValueError(f"visible must be {landmarks.shape[:2]}, got {visible.shape}")
    if not np.all(visible.any(axis=1)):
        raise ValueError(
            f"images {np.flatnonzero(~visible.any(axis=1)).tolist()} have no "
            f"visible landmark: NME undefined"
        )
    big = np.where(visible[..., None], landmarks, np.inf)
    small = np.where(visible[..., None], landmarks, -np.inf)
    extent = small.max(axis=1) - big.min(axis=1)  # [B, 2]
    size = np.sqrt(extent[:, 0] * extent[:, 1])
    if np.any(size <= 0):
        raise ValueError(
            f"images {np.flatnonzero(size <= 0).tolist()} have a zero-area "
            f"landmark box: NME undefined"
        )
    return size


def landmark_nme(predicted: np.ndarray, target: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Per-image NME: mean L2 error over visible landmarks / sqrt(w h) of the GT box.

    predicted, target [B, L, 2] (same frame, pixels), visible [B, L] -> [B] (a fraction; x100
    for percent).
    """
    predicted = np.asarray(predicted, np.float64)
    target = np.asarray(target, np.float64)
    if predicted.shape != target.shape:
        raise ValueError(f"predicted {predicted.shape} and target {target.shape} differ")
    visible = np.asarray(visible) > 0
    return mean_visible_error(predicted, target, visible) / landmark_box_size(target, visible)


def mean_visible_error(predicted: np.ndarray, target: np.ndarray, visible: np.ndarray):
    """Per-image mean L2 distance over the visible landmarks: [B, L, 2] x2, [B, L] -> [B]."""
    visible = np.asarray(visible) > 0
    error = np.linalg.norm(np.asarray(predicted, np.float64) - target, axis=-1)
    return (error * visible).sum(axis=1) / visible.sum(axis=1)


def rotation_to_yaw_pitch_roll(rotation: np.ndarray) -> np.ndarray:
    """[B, 3, 3] -> [B, 3] (yaw, pitch, roll) in degrees, the datasets' convention.

    R = Rx(pitch) Ry(yaw) Rz(roll) with AFLW2000-3D / 300W-LP's matrices; yaw in [-90, 90]
    (see :mod:`jax3dmmstn.core.pose`).
    """
    return np.asarray(pose.matrix_to_pose(np.asarray(rotation, np.float64)))


def pose_errors(predicted_rotation: np.ndarray, true_rotation: np.ndarray) -> dict:
    """Per-image pose errors in degrees.

    predicted_rotation, true_rotation [B, 3, 3] -> dict(yaw, pitch, roll: [B] absolute errors,
    mae: [B] their mean, geodesic: [B] angle of R_pred R_true^T).
    """
    predicted_rotation = np.asarray(predicted_rotation, np.float64)
    true_rotation = np.asarray(true_rotation, np.float64)
    if predicted_rotation.shape != true_rotation.shape or predicted_rotation.shape[-2:] != (3, 3):
        raise ValueError(
            f"rotations must both be [B, 3, 3], got {predicted_rotation.shape} and "
            f"{true_rotation.shape}"
        )
    diff = np.abs(
        rotation_to_yaw_pitch_roll(predicted_rotation) - rotation_to_yaw_pitch_roll(true_rotation)
    )
    diff = np.minimum(diff, 360.0 - diff)  # angles wrap around
    relative = np.einsum("bij,bkj->bik", predicted_rotation, true_rotation)
    cos = np.clip((np.trace(relative, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    return dict(
        yaw=diff[:, 0],
        pitch=diff[:, 1],
        roll=diff[:, 2],
        mae=diff.mean(axis=1),
        geodesic=np.degrees(np.arccos(cos)),
    )


def shape_error(predicted_vertices: np.ndarray, true_vertices: np.ndarray) -> np.ndarray:
    """Mean per-vertex L2 distance [B] between [B, N, 3] shapes (model frame, model units)."""
    predicted_vertices = np.asarray(predicted_vertices, np.float64)
    true_vertices = np.asarray(true_vertices, np.float64)
    if predicted_vertices.shape != true_vertices.shape:
        raise ValueError(f"shapes differ: {predicted_vertices.shape} vs {true_vertices.shape}")
    return np.linalg.norm(predicted_vertices - true_vertices, axis=-1).mean(axis=1)


def summarise(per_image: Mapping[str, np.ndarray]) -> dict:
    """Mean of each per-image metric as a plain float."""
    return {name: float(np.mean(values)) for name, values in per_image.items()}
