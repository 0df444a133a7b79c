"""Fitting theta to 2D landmarks: the original's demo as a fast, batched optimiser.

The problem per image is a small non-linear least squares over p = theta
(r[3], t[2], logs[1], alpha[D]):

    cost(p) = sum_l w_l |P(p)_l - y_l|^2 + prior_weight * |alpha|^2

where ``P`` is the STN's own geometric chain (``geometry.project_theta``) on the
landmark vertices only, y the landmarks in the image frame (x from the left, y
from the bottom) and w the visibility weights.

``fit_landmarks`` solves it in two stages, both jitted and batched:

1. A closed-form scaled-orthographic pose from the mean shape's landmark
   vertices: weighted affine least squares ``y = A X + b`` on centred points,
   the nearest rotation of ``A``'s rows by SVD, scale = mean singular value,
   translation from the centroids. It does not depend on a random start, and
   missing landmarks simply get weight 0.
2. Levenberg-Marquardt on the residual vector (``jax.jacfwd`` Jacobian, damped
   normal equations with Marquardt's diagonal scaling, step accepted only when
   the cost drops), in a ``lax.while_loop`` that stops per image when the
   relative cost decrease falls below ``tolerance`` or after ``max_iterations``.

``fit_landmarks_original`` is the original demo.m algorithm on our functions,
kept for the benchmark: plain gradient descent on the summed landmark loss
(no prior), step 1e-6, alpha's gradient times 101, start r = 0, t = 112,
logs = 1, alpha ~ N(0, 1), stop when the batch loss changes by less than 1.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jax3dmmstn.core import geometry, pose
from jax3dmmstn.core import theta as theta_lib

# Minimum number of visible landmarks per image: the affine pose has 8 unknowns
# (4 per image axis), so fewer than 4 points leave it undetermined.
MIN_VISIBLE_LANDMARKS = 4
# Ridge on the centred 3D scatter matrix of the affine solve (relative to its
# trace): keeps the solve finite for nearly coplanar landmark sets.
_AFFINE_RIDGE = 1e-6


class FitResult(NamedTuple):
    """Result of a batched fit (B images, D shape components).

    Attributes:
      theta: ``[B, 6 + D]`` fitted (r, t, logs, alpha).
      yaw_pitch_roll: ``[B, 3]`` degrees, the datasets' convention (``pose.matrix_to_pose``).
      landmark_rmse: ``[B]`` root mean squared landmark distance over visible
        landmarks, pixels.
      iterations: ``[B]`` int32 optimiser iterations used.
      cost: ``[B]`` final least-squares cost (landmark sum + prior).
    """

    theta: jax.Array
    yaw_pitch_roll: jax.Array
    landmark_rmse: jax.Array
    iterations: jax.Array
    cost: jax.Array


def landmark_shape_model(mean, basis, landmark_indices):
    """The model restricted to its landmark vertices.

    Args:
      mean: ``[N, 3]``.
      basis: ``[N, 3, D]``.
      landmark_indices: ``[L]`` 0-based vertex indices.
    Returns:
      ``(mean_l [L, 3], basis_l [L, 3, D])`` as float32 jax arrays.
    """
    mean = np.asarray(mean, np.float32)
    basis = np.asarray(basis, np.float32)
    idx = np.asarray(landmark_indices)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"landmark_indices must be a non-empty 1-D array, got {idx.shape}")
    if idx.min() < 0 or idx.max() >= mean.shape[0]:
        raise ValueError(
            f"landmark_indices must lie in [0, {mean.shape[0]}), got [{idx.min()}, {idx.max()}]"
        )
    return jnp.asarray(mean[idx]), jnp.asarray(basis[idx])


def project_landmarks(theta, mean_l, basis_l, parametrisation="matconvnet"):
    """Image-frame landmarks of theta: ``[B, 6 + D]`` -> ``[B, L, 2]``."""
    return geometry.project_theta(theta, mean_l, basis_l, parametrisation).points2d


def landmark_rmse(predicted, target, visibility):
    """RMS distance over visible landmarks, per image.

    Args:
      predicted, target: ``[B, L, 2]``.
      visibility: ``[B, L]`` weights.
    Returns:
      ``[B]`` pixels (0 where no landmark is visible).
    """
    target = jnp.where(visibility[..., None] > 0, target, predicted)
    squared = jnp.sum((predicted - target) ** 2, -1)
    count = jnp.maximum(jnp.sum(visibility, -1), 1.0)
    return jnp.sqrt(jnp.sum(visibility * squared, -1) / count)


def check_landmark_inputs(landmarks, visibility, n_landmarks):
    """Numpy validation at the public boundary; returns cleaned float32 arrays."""
    landmarks = np.asarray(landmarks, np.float32)
    if landmarks.ndim != 3 or landmarks.shape[2] != 2:
        raise ValueError(f"landmarks must be [B, L, 2], got {landmarks.shape}")
    if landmarks.shape[1] != n_landmarks:
        raise ValueError(
            f"landmarks have {landmarks.shape[1]} points but the model has "
            f"{n_landmarks} landmark vertices"
        )
    if visibility is None:
        visibility = np.ones(landmarks.shape[:2], np.float32)
    visibility = np.asarray(visibility, np.float32)
    if visibility.shape != landmarks.shape[:2]:
        raise ValueError(
            f"visibility must be [B, L] = {landmarks.shape[:2]}, got {visibility.shape}"
        )
    if not np.all(np.isfinite(visibility)) or np.any(visibility < 0):
        raise ValueError("visibility weights must be finite and >= 0")
    bad = (visibility > 0) & ~np.all(np.isfinite(landmarks), -1)
    if np.any(bad):
        b, l = np.argwhere(bad)[0]
        raise ValueError(
            f"landmark {l} of image {b} is visible but not finite: {landmarks[b, l]} "
            "(give missing landmarks visibility 0)"
        )
    counts = np.sum(visibility > 0, -1)
    few = np.flatnonzero(counts < MIN_VISIBLE_LANDMARKS)
    if few.size:
        raise ValueError(
            f"images {few.tolist()} have fewer than {MIN_VISIBLE_LANDMARKS} visible "
            f"landmarks ({counts[few].tolist()}): the pose is undetermined"
        )
    landmarks = np.where(visibility[..., None] > 0, landmarks, 0.0).astype(np.float32)
    return landmarks, visibility


def _initial_pose_single(points3d, points2d, weights, parametrisation):
    """Closed-form scaled-orthographic pose of one image.

    Args:
      points3d: ``[L, 3]`` model landmarks (mean shape).
      points2d: ``[L, 2]`` image-frame landmarks.
      weights: ``[L]``.
    Returns:
      (r ``[3]``, t ``[2]``, logs ``[]``).
    """
    w = weights / jnp.sum(weights)
    centre3 = w @ points3d
    centre2 = w @ points2d
    x = points3d - centre3
    y = points2d - centre2
    scatter = (x * w[:, None]).T @ x  # [3, 3]
    ridge = _AFFINE_RIDGE * jnp.trace(scatter) * jnp.eye(3)
    cross = (y * w[:, None]).T @ x  # [2, 3]
    affine = jnp.linalg.solve(scatter + ridge, cross.T).T  # [2, 3], y ~ A x
    u, sing, vt = jnp.linalg.svd(affine, full_matrices=False)
    rows = u @ vt  # nearest orthonormal rows
    third = jnp.cross(rows[0], rows[1])
    rotation = jnp.stack([rows[0], rows[1], third])
    scale = jnp.mean(sing)
    translation = centre2 - scale * rows @ centre3
    r = geometry.matrix_to_axis_angle(rotation)
    logs = geometry.scale_to_log_scale(scale, parametrisation)
    return r, translation, logs


def initial_theta(landmarks, visibility, mean_l, basis_l, parametrisation="matconvnet"):
    """Closed-form start: scaled-orthographic pose of the mean shape, alpha = 0.

    Args:
      landmarks: ``[B, L, 2]`` image frame.
      visibility: ``[B, L]``.
      mean_l: ``[L, 3]``; basis_l: ``[L, 3, D]``.
    Returns:
      ``[B, 6 + D]``.
    """
    r, t, logs = jax.vmap(_initial_pose_single, in_axes=(None, 0, 0, None))(
        mean_l, landmarks, visibility, parametrisation
    )
    alpha = jnp.zeros((landmarks.shape[0], basis_l.shape[2]), r.dtype)
    return theta_lib.merge(r, t, logs, alpha)


def _residuals(params, target, weights, mean_l, basis_l, prior_weight, parametrisation):
    """Residual vector ``[2L + D]`` of one image: sqrt(w) (P - y) and sqrt(prior) alpha."""
    predicted = project_landmarks(params[None], mean_l, basis_l, parametrisation)[0]
    landmark_part = (jnp.sqrt(weights)[:, None] * (predicted - target)).reshape(-1)
    return jnp.concatenate(
        [landmark_part, jnp.sqrt(prior_weight) * theta_lib.shape_weights(params)]
    )


def _levenberg_marquardt_single(
    params0,
    target,
    weights,
    mean_l,
    basis_l,
    prior_weight,
    max_iterations,
    tolerance,
    parametrisation,
):
    """LM on one image. Returns (params [P], cost, iterations)."""

    def residual_fn(p):
        return _residuals(p, target, weights, mean_l, basis_l, prior_weight, parametrisation)

    def cost_of(p):
        r = residual_fn(p)
        return r @ r

    n_params = params0.shape[0]

    def body(state):
        params, cost, damping, iteration, _ = state
        residual = residual_fn(params)
        jacobian = jax.jacfwd(residual_fn)(params)  # [M, P]
        hessian = jacobian.T @ jacobian
        gradient = jacobian.T @ residual
        diag = jnp.diag(hessian)
        # Marquardt scaling: damping relative to each parameter's curvature, with a
        # floor so a parameter the landmarks do not see still gets a finite step.
        scaled = hessian + damping * jnp.diag(jnp.maximum(diag, 1e-6 * jnp.max(diag)))
        step = -jnp.linalg.solve(scaled + 1e-12 * jnp.eye(n_params), gradient)
        candidate = params + step
        new_cost = cost_of(candidate)
        accept = jnp.isfinite(new_cost) & (new_cost < cost)
        relative_drop = (cost - new_cost) / jnp.maximum(cost, 1e-12)
        converged = accept & (relative_drop < tolerance)
        # Also stop when damping has grown so large that no step can help.
        stuck = damping > 1e10
        params = jnp.where(accept, candidate, params)
        cost = jnp.where(accept, new_cost, cost)
        damping = jnp.where(accept, damping / 3.0, damping * 4.0)
        return params, cost, damping, iteration + 1, converged | stuck

    def cond(state):
        return (state[3] < max_iterations) & ~state[4]

    init = (
        params0,
        cost_of(params0),
        jnp.asarray(1e-3, params0.dtype),
        jnp.asarray(0, jnp.int32),
        jnp.asarray(False),
    )
    params, cost, _, iterations, _ = jax.lax.while_loop(cond, body, init)
    return params, cost, iterations


def _fit_impl(
    landmarks, visibility, mean_l, basis_l, prior_weight, max_iterations, tolerance, parametrisation
):
    theta0 = initial_theta(landmarks, visibility, mean_l, basis_l, parametrisation)
    solve = jax.vmap(
        _levenberg_marquardt_single, in_axes=(0, 0, 0, None, None, None, None, None, None)
    )
    theta, cost, iterations = solve(
        theta0,
        landmarks,
        visibility,
        mean_l,
        basis_l,
        prior_weight,
        max_iterations,
        tolerance,
        parametrisation,
    )
    _, rmse, ypr = describe_fit(theta, landmarks, visibility, mean_l, basis_l, parametrisation)
    return FitResult(theta, ypr, rmse, iterations, cost)


@functools.partial(jax.jit, static_argnames=("parametrisation",))
def describe_fit(theta, landmarks, visibility, mean_l, basis_l, parametrisation="matconvnet"):
    """What a fit's theta ``[B, 6 + D]`` gives: its landmarks ``[B, L, 2]``, their RMSE to
    ``landmarks`` ``[B]`` (visible ones) and its pose ``[B, 3]`` (yaw, pitch, roll degrees).

    One compiled call (op by op, each operation of the chain would be compiled on its own).
    """
    projection = geometry.project_theta(theta, mean_l, basis_l, parametrisation)
    rmse = landmark_rmse(projection.points2d, landmarks, visibility)
    return projection.points2d, rmse, pose.matrix_to_pose(projection.rotation)


_fit_jit = jax.jit(_fit_impl, static_argnames=("max_iterations", "parametrisation"))


def fit_landmarks(
    landmarks,
    visibility,
    mean_l,
    basis_l,
    prior_weight: float = 0.1,
    max_iterations: int = 50,
    tolerance: float = 1e-7,
    parametrisation: str = "matconvnet",
) -> FitResult:
    """Fits theta to 2D landmarks, batched and jitted (closed-form pose + LM).

    Args:
      landmarks: ``[B, L, 2]`` image-frame landmarks (x from the left, y from the
        bottom, pixels). Missing ones may hold anything (0, 0 or NaN) when their
        visibility is 0.
      visibility: ``[B, L]`` weights (1 visible, 0 missing) or None for all ones.
      mean_l: ``[L, 3]`` landmark vertices of the mean shape; basis_l
        ``[L, 3, D]`` (see ``landmark_shape_model``).
      prior_weight: weight of ``|alpha|^2`` against the summed squared pixel error.
      max_iterations: LM iteration cap.
      tolerance: stop when an accepted step lowers the cost by less than this
        fraction.
      parametrisation: scale parametrisation of logs (``geometry.log_scale_to_scale``).
    Returns:
      A ``FitResult``.
    """
    mean_l = jnp.asarray(mean_l, jnp.float32)
    basis_l = jnp.asarray(basis_l, jnp.float32)
    if mean_l.ndim != 2 or mean_l.shape[1] != 3:
        raise ValueError(f"mean_l must be [L, 3], got {mean_l.shape}")
    if basis_l.ndim != 3 or basis_l.shape[:2] != mean_l.shape:
        raise ValueError(
            f"basis_l must be [L, 3, D] with L = {mean_l.shape[0]}, got {basis_l.shape}"
        )
    if prior_weight < 0 or not np.isfinite(prior_weight):
        raise ValueError(f"prior_weight must be finite and >= 0, got {prior_weight}")
    if max_iterations < 0:
        raise ValueError(f"max_iterations must be >= 0, got {max_iterations}")
    landmarks, visibility = check_landmark_inputs(landmarks, visibility, mean_l.shape[0])
    return _fit_jit(
        jnp.asarray(landmarks),
        jnp.asarray(visibility),
        mean_l,
        basis_l,
        jnp.float32(prior_weight),
        int(max_iterations),
        jnp.float32(tolerance),
        parametrisation,
    )


def fit_model_landmarks(
    model, landmarks, visibility=None, landmark_set: str = "aflw21", **kwargs
) -> FitResult:
    """``fit_landmarks`` with a ``MorphableModel`` and one of its landmark sets."""
    if landmark_set not in model.landmarks:
        raise ValueError(
            f"the model has no landmark set {landmark_set!r} (it has "
            f"{sorted(model.landmarks)}); pass landmark indices with --landmarks"
        )
    mean_l, basis_l = landmark_shape_model(model.mean, model.basis, model.landmarks[landmark_set])
    return fit_landmarks(landmarks, visibility, mean_l, basis_l, **kwargs)


# ------------------------------------------------------------------------------
# The original demo's gradient descent (for the benchmark).
# ------------------------------------------------------------------------------
class OriginalFitResult(NamedTuple):
    """Result of ``fit_landmarks_original``: theta ``[B, 6+D]``, rmse ``[B]``,
    iterations (scalar: the batch runs in lock step, like the demo), loss (batch sum)."""

    theta: jax.Array
    landmark_rmse: jax.Array
    iterations: jax.Array
    loss: jax.Array


def original_initial_theta(key, batch: int, n_components: int, image_size: int = 224) -> jax.Array:
    """demo.m's start: r = 0, t = image_size / 2, logs = 1, alpha ~ N(0, 1). ``[B, 6+D]``."""
    alpha = jax.random.normal(key, (batch, n_components), jnp.float32)
    return theta_lib.merge(
        jnp.zeros((batch, 3)), jnp.full((batch, 2), image_size / 2.0), jnp.ones(batch), alpha
    )


def _original_impl(
    theta0,
    landmarks,
    visibility,
    mean,
    basis,
    landmark_indices,
    step_size,
    alpha_gradient_factor,
    loss_change,
    max_iterations,
):

    def loss_fn(theta):
        # The demo projects the whole mesh and then selects the landmarks.
        points = geometry.project_theta(theta, mean, basis).points2d
        predicted = points[:, landmark_indices]
        residual = visibility[..., None] * (predicted - landmarks)
        return jnp.sum(residual * (predicted - landmarks))

    value_and_grad = jax.value_and_grad(loss_fn)
    parts = theta_lib.part_names(theta_lib.n_components(theta0))
    factor = jnp.asarray(
        [alpha_gradient_factor if part == "alpha" else 1.0 for part in parts], theta0.dtype
    )

    def cond(state):
        _, _, change, iteration = state
        return (change >= loss_change) & (iteration < max_iterations)

    def body(state):
        theta, previous, _, iteration = state
        loss, grad = value_and_grad(theta)
        # demo.m: diffloss = |loss - preloss| with preloss = Inf at the start.
        change = jnp.abs(loss - previous)
        theta = theta - step_size * grad * factor
        return theta, loss, jnp.where(jnp.isfinite(change), change, jnp.inf), iteration + 1

    init = (
        theta0,
        jnp.asarray(jnp.inf, theta0.dtype),
        jnp.asarray(jnp.inf, theta0.dtype),
        jnp.asarray(0, jnp.int32),
    )
    theta, loss, _, iterations = jax.lax.while_loop(cond, body, init)
    return theta, loss, iterations


_original_jit = jax.jit(_original_impl, static_argnames=("max_iterations",))


def fit_landmarks_original(
    landmarks,
    visibility,
    mean,
    basis,
    landmark_indices,
    key: Optional[jax.Array] = None,
    step_size: float = 1e-6,
    alpha_gradient_factor: float = 101.0,
    loss_change: float = 1.0,
    max_iterations: int = 200_000,
    image_size: int = 224,
) -> OriginalFitResult:
    """The original demo.m gradient descent, re-implemented on our functions.

    Note the demo's theta after an update is evaluated once more before the stop
    test (its loop computes the loss of the updated theta at the next pass); here
    the returned theta is the one after the last update, as in the demo.

    Args:
      landmarks: ``[B, L, 2]`` image frame; visibility ``[B, L]`` or None.
      mean: ``[N, 3]``; basis ``[N, 3, D]``; landmark_indices ``[L]``.
      key: PRNG key for alpha's N(0, 1) start (``PRNGKey(0)`` if None).
      max_iterations: safety cap (the demo has none).
    Returns:
      An ``OriginalFitResult``.
    """
    mean = jnp.asarray(mean, jnp.float32)
    basis = jnp.asarray(basis, jnp.float32)
    idx = np.asarray(landmark_indices, np.int32)
    landmarks, visibility = check_landmark_inputs(landmarks, visibility, idx.size)
    key = jax.random.PRNGKey(0) if key is None else key
    theta0 = original_initial_theta(key, landmarks.shape[0], basis.shape[2], image_size)
    theta, loss, iterations = _original_jit(
        theta0,
        jnp.asarray(landmarks),
        jnp.asarray(visibility),
        mean,
        basis,
        jnp.asarray(idx),
        jnp.float32(step_size),
        jnp.float32(alpha_gradient_factor),
        jnp.float32(loss_change),
        int(max_iterations),
    )
    predicted = geometry.project_theta(theta, mean[idx], basis[idx]).points2d
    rmse = landmark_rmse(predicted, jnp.asarray(landmarks), jnp.asarray(visibility))
    return OriginalFitResult(theta, rmse, iterations, loss)


def rotation_angle_error(rotation_a, rotation_b):
    """Angle (degrees) of ``R_a^T R_b``: ``[..., 3, 3]`` x2 -> ``[...]``."""
    relative = jnp.swapaxes(rotation_a, -1, -2) @ rotation_b
    cos = (jnp.trace(relative, axis1=-2, axis2=-1) - 1.0) / 2.0
    return jnp.rad2deg(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))
