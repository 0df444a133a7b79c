"""Flip testing (evaluation.flip_test) and the evaluation paths that use it."""

import jax
import jax.numpy as jnp
import numpy as np

from jax3dmmstn.core import pose
from jax3dmmstn.evaluation import flip_test, heldout
from jax3dmmstn.facemodel.morphable_model import AFLW21_FLIP
from jax3dmmstn.facemodel.synthetic import synthetic_face_model
from jax3dmmstn.network import model as model_lib


def test_unmirror_points_maps_x_and_swaps_left_and_right():
    points = jnp.array([[[2.0, 5.0], [7.5, 1.0], [4.0, 3.0]]])
    back = flip_test.unmirror_points(points, 10.0, np.array([1, 0, 2]))
    np.testing.assert_allclose(back, [[[2.5, 1.0], [8.0, 5.0], [6.0, 3.0]]])


def test_unmirrored_rotation_is_the_flipped_pose():
    ypr = np.array([[30.0, -12.0, 8.0], [-70.0, 25.0, -40.0]])
    mirrored = pose.pose_to_matrix(pose.flip_pose(ypr))
    np.testing.assert_allclose(
        flip_test.unmirror_rotation(mirrored), pose.pose_to_matrix(ypr), atol=1e-6
    )


def test_chordal_mean_halves_the_angle_between_rotations():
    a = pose.pose_to_matrix(np.array([[10.0, 0.0, 0.0], [0.0, -20.0, 5.0]]))
    b = pose.pose_to_matrix(np.array([[30.0, 0.0, 0.0], [0.0, -20.0, 5.0]]))
    mean = flip_test.chordal_mean(a, b)
    np.testing.assert_allclose(mean[0], pose.pose_to_matrix(np.array([20.0, 0.0, 0.0])), atol=1e-6)
    np.testing.assert_allclose(mean[1], b[1], atol=1e-6)  # equal rotations: themselves
    np.testing.assert_allclose(jnp.linalg.det(mean), 1.0, atol=1e-6)


def test_flip_tested_prediction_of_a_symmetric_image_is_symmetric():
    face_model = synthetic_face_model(resolution=16)
    stn = model_lib.build_stn(
        face_model, image_size=(64, 64), localiser_input_size=(32, 32), with_texture=False
    )
    rng = np.random.default_rng(0)
    half = rng.uniform(0, 255, (2, 64, 32, 3)).astype(np.float32)
    images = jnp.asarray(np.concatenate([half, half[:, :, ::-1]], axis=2))  # mirror-symmetric
    params = stn.init(jax.random.PRNGKey(0), images)["params"]
    # A head that is far from the mean pose, so the plain pass is not symmetric by itself.
    head = params["theta_head"]["dense"]
    bias = head["bias"].at[:3].set(jnp.array([0.2, 0.4, 0.3]))
    params = {**params, "theta_head": {"dense": {**head, "bias": bias}}}
    plain = heldout.make_eval_fn(stn)(params, images)
    tested = heldout.make_eval_fn(stn, AFLW21_FLIP)(params, images)
    # The plain pass is lopsided; the flip-tested one is its own mirror image.
    lopsided = flip_test.unmirror_points(plain["landmarks"], 64.0, AFLW21_FLIP)
    assert np.abs(lopsided - plain["landmarks"]).max() > 1.0
    mirrored = flip_test.unmirror_points(tested["landmarks"], 64.0, AFLW21_FLIP)
    np.testing.assert_allclose(mirrored, tested["landmarks"], atol=1e-3)
    np.testing.assert_allclose(flip_test.unmirror_rotation(tested["R"]), tested["R"], atol=1e-5)
    np.testing.assert_allclose(tested["theta"], plain["theta"])  # the rest: the plain pass's
