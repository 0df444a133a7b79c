"""Landmark fitting: closed-form pose start + Levenberg-Marquardt, and the original's descent."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax3dmmstn import fitting
from jax3dmmstn.core import geometry
from jax3dmmstn.core import pose
from jax3dmmstn.facemodel.synthetic import synthetic_face_model


@pytest.fixture(scope="module")
def model():
    return synthetic_face_model(resolution=32)


def _random_theta(rng, model, batch, max_yaw=60.0):
    ypr = np.stack(
        [
            rng.uniform(-max_yaw, max_yaw, batch),
            rng.uniform(-25, 25, batch),
            rng.uniform(-25, 25, batch),
        ],
        1,
    )
    rotation = np.array(pose.pose_to_matrix(ypr))
    r = np.array(geometry.matrix_to_axis_angle(rotation))
    t = 112 + rng.uniform(-15, 15, (batch, 2))
    logs = np.asarray(geometry.scale_to_log_scale(jnp.asarray(rng.uniform(0.6, 1.0, batch))))
    alpha = rng.standard_normal((batch, model.n_components))
    theta = np.concatenate([r, t, logs[:, None], alpha], 1).astype(np.float32)
    return theta, rotation


@pytest.mark.parametrize("landmark_set", ["aflw21", "ibug68"])
def test_fit_recovers_landmarks_and_pose(model, landmark_set):
    rng = np.random.default_rng(1)
    theta, rotation = _random_theta(rng, model, 12)
    # Include the extreme yaws explicitly.
    for b, yaw in enumerate([60.0, -60.0]):
        rotation[b] = np.asarray(pose.pose_to_matrix(np.array([yaw, 10.0, -5.0])))
        theta[b, :3] = np.asarray(geometry.matrix_to_axis_angle(rotation[b]))
    mean_l, basis_l = fitting.landmark_shape_model(
        model.mean, model.basis, model.landmarks[landmark_set]
    )
    target = np.array(fitting.project_landmarks(jnp.asarray(theta), mean_l, basis_l))
    visibility = np.ones(target.shape[:2], np.float32)
    visibility[3, :3] = 0  # some missing landmarks
    target[3, :3] = 0.0  # stored as (0, 0), the original's "missing"
    # Noise-free data: a light prior so that its bias on the pose stays small.
    result = fitting.fit_landmarks(target, visibility, mean_l, basis_l, prior_weight=0.01)
    fitted_rotation = geometry.axis_angle_to_matrix(result.theta[:, :3])
    pose_error = np.asarray(fitting.rotation_angle_error(fitted_rotation, jnp.asarray(rotation)))
    assert np.all(np.asarray(result.landmark_rmse) < 0.5), result.landmark_rmse
    assert np.all(pose_error < 1.0), pose_error
    assert np.all(np.asarray(result.iterations) <= 50)
    true_ypr = np.asarray(pose.matrix_to_pose(jnp.asarray(rotation)))
    np.testing.assert_allclose(np.asarray(result.yaw_pitch_roll), true_ypr, atol=1.5)


def test_default_prior_still_fits_landmarks(model):
    rng = np.random.default_rng(2)
    theta, _ = _random_theta(rng, model, 6)
    result = fitting.fit_model_landmarks(
        model,
        np.asarray(
            fitting.project_landmarks(
                jnp.asarray(theta),
                *fitting.landmark_shape_model(model.mean, model.basis, model.landmarks["aflw21"]),
            )
        ),
    )
    assert np.all(np.asarray(result.landmark_rmse) < 0.5)


def test_initial_pose_is_exact_for_the_mean_shape(model):
    # With alpha = 0 the scaled-orthographic closed form is the exact answer.
    rng = np.random.default_rng(3)
    theta, rotation = _random_theta(rng, model, 4)
    theta[:, 6:] = 0.0
    mean_l, basis_l = fitting.landmark_shape_model(
        model.mean, model.basis, model.landmarks["aflw21"]
    )
    target = fitting.project_landmarks(jnp.asarray(theta), mean_l, basis_l)
    start = fitting.initial_theta(target, jnp.ones(target.shape[:2]), mean_l, basis_l)
    np.testing.assert_allclose(
        np.asarray(geometry.axis_angle_to_matrix(start[:, :3])), rotation, atol=2e-4
    )
    np.testing.assert_allclose(np.asarray(start[:, 3:6]), theta[:, 3:6], rtol=1e-3, atol=1e-2)


def test_bad_inputs_raise_clear_errors(model):
    mean_l, basis_l = fitting.landmark_shape_model(
        model.mean, model.basis, model.landmarks["aflw21"]
    )
    good = np.full((1, 21, 2), 100.0, np.float32)
    with pytest.raises(ValueError, match="model has 21 landmark"):
        fitting.fit_landmarks(good[:, :20], None, mean_l, basis_l)
    few = np.zeros((1, 21), np.float32)
    few[0, :3] = 1
    with pytest.raises(ValueError, match="fewer than 4 visible"):
        fitting.fit_landmarks(good, few, mean_l, basis_l)
    nan = good.copy()
    nan[0, 5] = np.nan
    with pytest.raises(ValueError, match="landmark 5 of image 0"):
        fitting.fit_landmarks(nan, None, mean_l, basis_l)
    with pytest.raises(ValueError, match="landmark set 'nope'"):
        fitting.fit_model_landmarks(model, good, landmark_set="nope")


def test_original_descent_lowers_the_loss_and_stops(model):
    rng = np.random.default_rng(4)
    theta, _ = _random_theta(rng, model, 2, max_yaw=20.0)
    idx = model.landmarks["aflw21"]
    mean_l, basis_l = fitting.landmark_shape_model(model.mean, model.basis, idx)
    target = np.asarray(fitting.project_landmarks(jnp.asarray(theta), mean_l, basis_l))
    start = fitting.original_initial_theta(jax.random.PRNGKey(0), 2, model.n_components)
    start_rmse = fitting.landmark_rmse(
        fitting.project_landmarks(start, mean_l, basis_l), jnp.asarray(target), jnp.ones((2, 21))
    )
    result = fitting.fit_landmarks_original(
        target, None, model.mean, model.basis, idx, max_iterations=3000
    )
    # demo.m's plain descent (step 1e-6) is a weak optimiser: it stops when the loss changes
    # by less than 1, well before the optimum; it must still have made clear progress.
    assert 1 < int(result.iterations) < 3000
    assert np.all(np.asarray(result.landmark_rmse) < 0.75 * np.asarray(start_rmse))


def test_fit_cli_end_to_end_on_a_demo_layout_mat(model, tmp_path):
    import json
    import scipy.io
    from jax3dmmstn import cli

    model_path = tmp_path / "model.npz"
    model.save(model_path)
    theta, _ = _random_theta(np.random.default_rng(5), model, 2, max_yaw=40.0)
    points = np.asarray(
        geometry.project_theta(jnp.asarray(theta), model.mean, model.basis).points2d
    )
    landmarks = points[:, model.landmarks["aflw21"]]
    images = np.random.default_rng(6).uniform(0, 255, (224, 224, 3, 2)).astype(np.float32)
    labels = np.transpose(landmarks, (2, 1, 0))[None].copy()  # 1 x 2 x 21 x N
    labels[0, :, 12, 1] = 0  # a missing landmark
    scipy.io.savemat(tmp_path / "demo.mat", {"Images": images, "Labels": labels})
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                "fit",
                "--model",
                str(model_path),
                "--data",
                str(tmp_path / "demo.mat"),
                "--out",
                str(out),
                "--prior-weight",
                "0.01",
                "--average",
            ]
        )
        == 0
    )
    report = json.loads((out / "fit.json").read_text())["images"]
    assert len(report) == 2
    for entry, true_theta in zip(report, theta):
        assert entry["landmark_rmse_px"] < 0.5
        assert len(entry["theta"]) == 6 + model.n_components
        true_ypr = np.asarray(
            pose.matrix_to_pose(geometry.axis_angle_to_matrix(jnp.asarray(true_theta[:3])))
        )
        np.testing.assert_allclose(entry["yaw_pitch_roll_degrees"], true_ypr, atol=1.5)
    for suffix in (
        "_overlay.png",
        "_texture.png",
        "_mask.png",
        "_masked_texture.png",
        ".obj",
        ".mtl",
    ):
        assert (out / f"image0001{suffix}").is_file()
    assert (out / "average_texture.png").is_file()
    assert (
        cli.main(
            ["fit", "--model", "nonsense", "--data", str(tmp_path / "demo.mat"), "--out", str(out)]
        )
        == 2
    )
