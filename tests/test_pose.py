"""Head pose in the datasets' convention (jax3dmmstn.core.pose)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax3dmmstn.core import geometry, pose


def _label_matrices(pitch, yaw, roll):
    """3DDFA's RotationMatrix.m, written out: R = Rx(pitch) Ry(yaw) Rz(roll) (radians)."""
    cx, sx, cy, sy, cz, sz = (f(a) for a in (pitch, yaw, roll) for f in (np.cos, np.sin))
    rx = np.array([[1, 0, 0], [0, cx, sx], [0, -sx, cx]])
    ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
    rz = np.array([[cz, sz, 0], [-sz, cz, 0], [0, 0, 1]])
    return rx @ ry @ rz


def test_pose_to_matrix_is_the_labels_rotation():
    rng = np.random.default_rng(0)
    for yaw, pitch, roll in rng.uniform(-120, 120, (20, 3)):
        want = _label_matrices(*np.radians([pitch, yaw, roll]))
        got = np.asarray(pose.pose_to_matrix(np.array([yaw, pitch, roll])))
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_what_a_positive_angle_looks_like():
    nose, right = np.array([0, 0, 1.0]), np.array([1.0, 0, 0])
    # yaw > 0: the nose turns to the image's left (-x).
    np.testing.assert_allclose(
        pose.pose_to_matrix(np.array([90.0, 0, 0])) @ nose, [-1, 0, 0], atol=1e-6
    )
    # pitch > 0: the face looks up (+y, the image frame's y is up).
    np.testing.assert_allclose(
        pose.pose_to_matrix(np.array([0, 90.0, 0])) @ nose, [0, 1, 0], atol=1e-6
    )
    # roll > 0: clockwise as seen by the viewer: the face's x axis turns down.
    np.testing.assert_allclose(
        pose.pose_to_matrix(np.array([0, 0, 90.0])) @ right, [0, -1, 0], atol=1e-6
    )


def test_matrix_to_pose_round_trip_and_gimbal_lock(float64):
    rng = np.random.default_rng(1)
    angles = rng.uniform([-89, -179, -179], [89, 179, 179], (200, 3))
    back = np.asarray(pose.matrix_to_pose(pose.pose_to_matrix(jnp.asarray(angles))))
    np.testing.assert_allclose(back, angles, atol=1e-9)
    # yaw = 90: pitch and roll are one degree of freedom; the matrix is still reproduced.
    locked = np.array([[90.0, 30.0, -20.0], [-90.0, 10.0, 5.0]])
    rot = pose.pose_to_matrix(jnp.asarray(locked))
    angles = pose.matrix_to_pose(rot)
    assert np.all(np.isfinite(np.asarray(angles)))
    np.testing.assert_allclose(pose.pose_to_matrix(angles), rot, atol=1e-9)
    np.testing.assert_allclose(np.asarray(angles)[:, 1], 0.0)


def test_the_stn_chain_projects_like_the_labels():
    """The dataset's projection (f R X + t, y counted up from the bottom) is theta's chain
    with r = axis-angle(pose_to_matrix(label)), s = f, t = (tx, ty): no sign flips."""
    rng = np.random.default_rng(2)
    points = rng.normal(0, 50, (68, 3))  # any model-frame points
    para = np.array([0.3, -0.7, 0.2, 220.0, 210.0, 10.0, 0.0012])  # pitch, yaw, roll, t, f
    label = _label_matrices(*para[:3])
    want = para[6] * (label @ points.T).T[:, :2] + para[3:5]
    angles = pose.pose_from_label(para)
    np.testing.assert_allclose(angles, np.degrees([para[1], para[0], para[2]]))
    r = geometry.matrix_to_axis_angle(pose.pose_to_matrix(angles))
    theta = jnp.concatenate([r, jnp.asarray(para[3:5]), jnp.log(para[6:7]), jnp.zeros(1)])
    chain = geometry.project_theta(
        theta[None].astype(jnp.float32), points, np.zeros((68, 3, 1)), parametrisation="exp"
    )
    np.testing.assert_allclose(np.asarray(chain.points2d)[0], want, rtol=1e-4, atol=1e-3)
    # The same chain reads its pose back as the label's angles.
    np.testing.assert_allclose(pose.matrix_to_pose(chain.rotation)[0], angles, atol=1e-3)


def test_flip_pose_is_the_mirror_image():
    angles = np.array([[30.0, -10.0, 5.0]], np.float32)
    mirrored = pose.flip_pose(angles)
    np.testing.assert_array_equal(mirrored, [[-30.0, -10.0, -5.0]])
    assert mirrored.dtype == np.float32
    # Mirroring x: M R M gives the rotation of the mirrored face.
    m = np.diag([-1.0, 1.0, 1.0])
    rot = np.asarray(pose.pose_to_matrix(angles[0]))
    np.testing.assert_allclose(pose.matrix_to_pose(m @ rot @ m), mirrored[0], atol=1e-4)
    assert isinstance(pose.flip_pose(jnp.asarray(angles)), jax.Array)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"yaw_pitch_roll must have shape \[\.\.\., 3\]"):
        pose.pose_to_matrix(np.zeros(2))
    with pytest.raises(ValueError, match=r"rotation must have shape"):
        pose.matrix_to_pose(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="Pose_Para"):
        pose.pose_from_label(np.zeros(2))
