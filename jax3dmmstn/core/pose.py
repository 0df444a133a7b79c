"""Head pose as the field reports it: (yaw, pitch, roll) in degrees, AFLW2000-3D / 300W-LP style.

The datasets' labels (``Pose_Para`` = [pitch, yaw, roll (radians), tx, ty, tz, f]) come
from 3DDFA's fitting code, which projects a model-frame point X (x right, y up, z
towards the viewer) as ``[x, y_up, z] = f R X + [tx, ty, tz]`` with

    R = Rx(pitch) @ Ry(yaw) @ Rz(roll)
    Rx = [[1, 0, 0], [0, c, s], [0, -s, c]]
    Ry = [[c, 0, -s], [0, 1, 0], [s, 0, c]]
    Rz = [[c, s, 0], [-s, c, 0], [0, 0, 1]]

(3DDFA's ``RotationMatrix.m``; note the signs: each factor is the transpose of the
textbook rotation). ``y_up`` counts pixels up from the bottom of the image, exactly
theta's image frame, so the STN's rotation ``R(r)`` (Rodrigues of theta's r) *is* this R:
``matrix_to_pose(axis_angle_to_matrix(r))`` gives the angles a head-pose benchmark compares
with the labels (Hopenet, FSA-Net, 6DRepNet read yaw, pitch, roll = degrees(Pose_Para[1],
Pose_Para[0], Pose_Para[2])).

What a positive angle looks like in the image (viewer on +z, image y up):

* yaw > 0: the nose (0, 0, 1) goes to (-sin yaw, 0, cos yaw): the face turns towards the
  image's left, showing more of its left cheek (the subject turns to their right);
* pitch > 0: the nose goes to (0, sin pitch, cos pitch): the face looks up;
* roll > 0: the face's x axis (1, 0, 0) goes to (cos roll, -sin roll, 0): the head tilts
  clockwise as the viewer sees the image.

A horizontal flip of the image negates yaw and roll and keeps pitch (``flip_pose``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _check_pose_shape(name: str, x, size: int) -> None:
    if np.shape(x)[-1:] != (size,):
        raise ValueError(f"{name} must have shape [..., {size}], got {np.shape(x)}")


def _label_axis_rotation(angle: jax.Array, axis: int) -> jax.Array:
    """``[..., 3, 3]``: 3DDFA's Rx, Ry or Rz of ``angle`` radians (transposed textbook signs)."""
    c, s = jnp.cos(angle), jnp.sin(angle)
    one, zero = jnp.ones_like(c), jnp.zeros_like(c)
    if axis == 0:
        rows = [[one, zero, zero], [zero, c, s], [zero, -s, c]]
    elif axis == 1:
        rows = [[c, zero, -s], [zero, one, zero], [s, zero, c]]
    else:
        rows = [[c, s, zero], [-s, c, zero], [zero, zero, one]]
    return jnp.stack([jnp.stack(row, -1) for row in rows], -2)


def pose_to_matrix(yaw_pitch_roll: jax.Array) -> jax.Array:
    """``R = Rx(pitch) Ry(yaw) Rz(roll)`` (the labels' matrices) from degrees.

    Args:
      yaw_pitch_roll: ``[..., 3]`` (yaw, pitch, roll) in degrees.
    Returns:
      ``[..., 3, 3]`` rotation of model-frame points into the image frame.
    """
    _check_pose_shape("yaw_pitch_roll", yaw_pitch_roll, 3)
    angles = jnp.deg2rad(jnp.asarray(yaw_pitch_roll))
    yaw, pitch, roll = angles[..., 0], angles[..., 1], angles[..., 2]
    return (
        _label_axis_rotation(pitch, 0)
        @ _label_axis_rotation(yaw, 1)
        @ _label_axis_rotation(roll, 2)
    )


def matrix_to_pose(rotation: jax.Array) -> jax.Array:
    """Inverse of ``pose_to_matrix``: ``[..., 3, 3]`` -> (yaw, pitch, roll) ``[..., 3]`` degrees.

    Yaw is in [-90, 90], pitch and roll in (-180, 180]. At yaw = +-90 (gimbal lock) pitch
    is reported as 0 and the rest of the rotation as roll.
    """
    rotation = jnp.asarray(rotation)
    if rotation.ndim < 2 or rotation.shape[-2:] != (3, 3):
        raise ValueError(f"rotation must have shape [..., 3, 3], got {rotation.shape}")
    # R = Rx Ry Rz with the labels' signs is the transpose of the textbook Rz(roll) Ry(yaw)
    # Rx(pitch), so its first row holds yaw and roll and its last column yaw and pitch:
    # R[0] = cos(yaw) (cos roll, sin roll, -tan yaw), R[:, 2] = (-sin yaw, ..) with
    # R[1, 2] = sin(pitch) cos(yaw), R[2, 2] = cos(pitch) cos(yaw).
    sin_yaw = -rotation[..., 0, 2]
    cos_yaw = jnp.hypot(rotation[..., 0, 0], rotation[..., 0, 1])
    yaw = jnp.arctan2(sin_yaw, cos_yaw)
    locked = cos_yaw < 1e-6
    pitch = jnp.where(locked, 0.0, jnp.arctan2(rotation[..., 1, 2], rotation[..., 2, 2]))
    roll = jnp.where(
        locked,
        jnp.arctan2(-rotation[..., 1, 0], rotation[..., 1, 1]),
        jnp.arctan2(rotation[..., 0, 1], rotation[..., 0, 0]),
    )
    return jnp.rad2deg(jnp.stack([yaw, pitch, roll], -1))


def flip_pose(yaw_pitch_roll):
    """The pose of the horizontally mirrored image: (-yaw, pitch, -roll). ``[..., 3]``."""
    _check_pose_shape("yaw_pitch_roll", yaw_pitch_roll, 3)
    sign = np.array([-1.0, 1.0, -1.0], np.float32)
    if isinstance(yaw_pitch_roll, jax.Array):
        return yaw_pitch_roll * jnp.asarray(sign, yaw_pitch_roll.dtype)
    yaw_pitch_roll = np.asarray(yaw_pitch_roll)
    return (yaw_pitch_roll * sign).astype(yaw_pitch_roll.dtype)


def pose_from_label(pose_para) -> np.ndarray:
    """(yaw, pitch, roll) degrees ``[..., 3]`` from a label's ``Pose_Para`` ``[..., >= 3]``.

    ``Pose_Para`` starts with (pitch, yaw, roll) in radians; the angles are returned as
    stored, not wrapped (a few labels lie far outside +-180 degrees; the benchmarks keep
    only images whose three angles are within +-99).
    """
    para = np.asarray(pose_para, np.float64)
    if para.shape[-1] < 3:
        raise ValueError(f"Pose_Para must have at least 3 entries, got shape {para.shape}")
    return np.degrees(np.stack([para[..., 1], para[..., 0], para[..., 2]], -1))
