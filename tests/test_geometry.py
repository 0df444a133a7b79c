"""Geometry: Rodrigues and its inverse, Euler angles, projection chain, grid."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.test_util import check_grads

from jax3dmmstn.core import geometry as G

pytestmark = pytest.mark.usefixtures("float64")


def _expm(r):
    return scipy.linalg.expm(np.asarray(G.skew(jnp.asarray(r))))


def test_identity_at_zero_exactly():
    rot = G.axis_angle_to_matrix(jnp.zeros((2, 3)))
    assert np.array_equal(np.asarray(rot), np.broadcast_to(np.eye(3), (2, 3, 3)))


def test_derivative_at_zero_is_generator():
    jac = jax.jacfwd(G.axis_angle_to_matrix)(jnp.zeros(3))  # [3, 3, 3 (r_i)]
    for i in range(3):
        e = np.eye(3)[i]
        np.testing.assert_array_equal(jac[..., i], np.asarray(G.skew(jnp.asarray(e))))
    jac_rev = jax.jacrev(G.axis_angle_to_matrix)(jnp.zeros(3))
    np.testing.assert_array_equal(jac_rev, jac)


@pytest.mark.parametrize(
    "angle", [1e-12, 1e-9, 1e-6, 1e-4, 1e-3, 0.05, 0.0999, 0.1, 0.1001, 1.0, 3.0, np.pi, 6.0]
)
def test_matches_matrix_exponential(angle):
    rng = np.random.default_rng(0)
    axis = rng.normal(size=3)
    r = axis / np.linalg.norm(axis) * angle
    np.testing.assert_allclose(G.axis_angle_to_matrix(jnp.asarray(r)), _expm(r), rtol=0, atol=5e-15)


def test_tiny_angle_relative_precision():
    # The off-diagonal entries are ~angle: compare them relatively.
    for angle in [1e-12, 1e-8, 1e-5]:
        r = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8]) * angle
        got = np.asarray(G.axis_angle_to_matrix(jnp.asarray(r)))
        want = _expm(r)
        np.testing.assert_allclose(got - np.eye(3), want - np.eye(3), rtol=1e-12)


def test_is_rotation_and_float32():
    r = jnp.asarray(np.random.default_rng(1).normal(size=(64, 3)), jnp.float32)
    rot = G.axis_angle_to_matrix(r)
    assert rot.dtype == jnp.float32
    np.testing.assert_allclose(
        rot @ jnp.swapaxes(rot, -1, -2), np.broadcast_to(np.eye(3), (64, 3, 3)), atol=2e-6
    )
    np.testing.assert_allclose(jnp.linalg.det(rot), 1, atol=2e-6)


@pytest.mark.parametrize(
    "angle", [0.0, 1e-9, 0.1, 1.0, np.pi - 1e-7, np.pi, 2 * np.pi - 1e-7, 2 * np.pi, 7.0]
)
def test_no_nan_in_derivatives(angle):
    r = jnp.asarray(np.array([1.0, 2.0, -2.0]) / 3.0 * angle)
    f = lambda x: jnp.sum(G.axis_angle_to_matrix(x) * jnp.arange(9.0).reshape(3, 3))
    grad = jax.grad(f)(r)
    hess = jax.hessian(f)(r)
    _, tangent = jax.jvp(G.axis_angle_to_matrix, (r,), (jnp.ones(3),))
    batched = jax.vmap(jax.grad(f))(jnp.stack([r, jnp.zeros(3)]))
    for x in (grad, hess, tangent, batched):
        assert np.all(np.isfinite(x))


@pytest.mark.parametrize("angle", [1e-3, 0.3, 2.0, 3.1, 5.0])
def test_gradients_finite_differences(angle):
    r = jnp.asarray(np.array([0.2, -0.7, 0.4]) / np.linalg.norm([0.2, -0.7, 0.4]) * angle)
    check_grads(G.axis_angle_to_matrix, (r,), order=2, modes=("fwd", "rev"))


def test_matrix_to_axis_angle_round_trip():
    rng = np.random.default_rng(2)
    axes = rng.normal(size=(200, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.concatenate(
        [rng.uniform(0, np.pi, 194), [0, 1e-10, 1e-5, np.pi - 1e-6, np.pi, 0.5]]
    )
    r = axes * angles[:, None]
    back = np.asarray(G.matrix_to_axis_angle(G.axis_angle_to_matrix(jnp.asarray(r))))
    # At exactly pi, r and -r are the same rotation.
    same = np.linalg.norm(back - r, axis=1)
    flipped = np.linalg.norm(back + r, axis=1)
    assert np.all(np.minimum(same, np.where(angles > np.pi - 1e-5, flipped, 1)) < 1e-7)


def test_projection_chain_closed_form():
    rng = np.random.default_rng(4)
    n, d = 16, 4
    mean = rng.normal(size=(n, 3))
    basis = rng.normal(size=(n, 3, d))
    theta = np.concatenate(
        [
            rng.normal(size=(2, 3)),
            [[100.0, 120.0], [90, 80]],
            [[2.0], [-3.0]],
            rng.normal(size=(2, d)),
        ],
        axis=1,
    )
    out = G.project_theta(jnp.asarray(theta), mean, basis)
    for b in range(2):
        verts = mean + basis @ theta[b, 6:]
        rot = _expm(theta[b, :3])
        scale = 0.99 ** theta[b, 5]
        want = (verts @ rot.T)[:, :2] * scale + theta[b, 3:5]
        np.testing.assert_allclose(out.points2d[b], want, rtol=1e-12)
    exp_scale = G.log_scale_to_scale(jnp.array([0.5]), "exp")
    np.testing.assert_allclose(exp_scale, np.exp(0.5))
    np.testing.assert_allclose(
        G.scale_to_log_scale(G.log_scale_to_scale(jnp.array([3.0])), "matconvnet"), [3.0]
    )


def test_points_to_grid_layout_and_values():
    res = 3
    points = np.zeros((1, res * res, 2))
    points[0, :, 0] = np.arange(9) * 10.0  # x
    points[0, :, 1] = 224 - np.arange(9) * 5.0  # y from the bottom
    grid = np.asarray(G.points_to_grid(jnp.asarray(points), (224, 224)))
    assert grid.shape == (1, 3, 3, 2)
    for k in range(9):
        row, col = k // res, k % res
        np.testing.assert_allclose(grid[0, row, col, 0], (points[0, k, 0] - 112) / 112)
        np.testing.assert_allclose(grid[0, row, col, 1], -(points[0, k, 1] - 112) / 112)
    # Non-square image: x uses W/2, y uses H/2.
    grid = G.points_to_grid(jnp.array([[[0.0, 0.0]]]), (100, 300))
    np.testing.assert_allclose(grid[0, 0, 0], [-1.0, 1.0])


def test_image_frame_pixel_conversion():
    pts = jnp.array([[0.0, 224.0], [224.0, 0.0], [112.0, 112.0]])
    pix = G.image_frame_to_pixels(pts, (224, 224))
    np.testing.assert_allclose(pix, [[0, 0], [223, 223], [111.5, 111.5]])
    np.testing.assert_allclose(G.pixels_to_image_frame(pix, (224, 224)), pts)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        G.axis_angle_to_matrix(jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        G.project_theta(jnp.full((1, 8), jnp.nan), np.zeros((4, 3)), np.zeros((4, 3, 2)))
    with pytest.raises(ValueError, match=r"\[B, 6 \+ D\]"):
        G.project_theta(jnp.zeros((3,)), np.zeros((4, 3)), np.zeros((4, 3, 2)))
    with pytest.raises(ValueError, match="alpha must be"):
        G.morphable_shape(np.zeros((4, 3)), np.zeros((4, 3, 2)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="perfect square"):
        G.points_to_grid(jnp.zeros((1, 10, 2)), (224, 224))
    with pytest.raises(ValueError, match="landmark indices"):
        G.select_landmarks(jnp.zeros((1, 5, 2)), np.array([0, 5]))
    with pytest.raises(ValueError, match="parametrisation"):
        G.log_scale_to_scale(jnp.zeros(1), "log")
    with pytest.raises(AssertionError):
        G.rotate(jnp.zeros((2, 5, 3)), jnp.zeros((3, 3, 3)))
