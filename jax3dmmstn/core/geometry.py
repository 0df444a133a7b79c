"""Pure geometry of the 3DMM-STN: morphable shape, rotations, projection, grid.

Every function is a pure ``jax.numpy`` function, batch-first, safe under ``jit``,
``vmap`` and ``grad``.

Frames
------
*Model frame*: x to the right of the face, y up, z towards the viewer (the Basel
Face Model's frame, in mm).

*Image frame* (the original's): pixel units, x from the LEFT edge and y from the
BOTTOM edge of the image. The original's grid layer maps x = 0 and x = W onto the
centres of the first and last column (``(x - W/2) / (W/2)`` then the sampler's
align-corners mapping), and the demo plots a landmark at ``(x, H + 1 - y)`` in
MATLAB's 1-based pixel coordinates. Landmarks given to the losses live in this
frame. ``image_frame_to_pixels`` / ``pixels_to_image_frame`` convert to and from
0-based pixel coordinates with y down (row, column of the sampled pixel centre).

Rotations
---------
``axis_angle_to_matrix`` is Rodrigues' formula ``R = I + sin(t) K + (1 - cos t) K^2``
written as ``I + a(t^2) [r]x + b(t^2) [r]x^2`` with ``a = sin t / t`` and
``b = (1 - cos t) / t^2`` evaluated by a Taylor series for small t, so the value is
exact at r = 0, precise for tiny angles, and every derivative (grad, jvp, hessian)
is finite everywhere.

Head pose as (yaw, pitch, roll) degrees, in the datasets' convention, is
:mod:`jax3dmmstn.core.pose`.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jax3dmmstn.core import theta as theta_lib

# Below this angle (radians) sin(t)/t and (1-cos t)/t^2 come from their Taylor
# series through t^8; the truncation error there is < t^10/4e7 < 3e-17, below
# float64 precision, and above it the closed forms are accurate to the last bit
# (the (1 - cos) term is computed as 2 sin^2(t/2) so it does not cancel).
_SMALL_ANGLE = 0.1

# s = 0.99 ** logs, the original's vl_nnlogScale2Scale.
MATCONVNET_SCALE_BASE = 0.99


class Projection(NamedTuple):
    """Everything the geometric chain computes from theta (batch B, N vertices).

    Attributes:
      rotation: ``[B, 3, 3]`` rotation matrices.
      scale: ``[B]`` scale factors.
      translation: ``[B, 2]`` translations (image frame, pixels).
      vertices: ``[B, N, 3]`` morphable-model vertices (model frame).
      rotated: ``[B, N, 3]`` rotated vertices (input of the visibility mask).
      points2d: ``[B, N, 2]`` projected, scaled and translated vertices (image frame).
    """

    rotation: jax.Array
    scale: jax.Array
    translation: jax.Array
    vertices: jax.Array
    rotated: jax.Array
    points2d: jax.Array


def _check_finite(name: str, x) -> None:
    """Raises ValueError when a concrete array holds NaN or inf (no-op under jit)."""
    if isinstance(x, jax.core.Tracer):
        return
    arr = np.asarray(x)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))
        raise ValueError(
            f"{name} has {len(bad)} non-finite entries (first at index "
            f"{tuple(int(i) for i in bad[0])}): {arr[tuple(bad[0])]}"
        )


def _check_last_dim(name: str, x, size: int) -> None:
    if x.ndim < 1 or x.shape[-1] != size:
        raise ValueError(f"{name} must have shape [..., {size}], got {x.shape}")


def skew(v: jax.Array) -> jax.Array:
    """Cross-product matrix: ``skew(v) @ w == cross(v, w)``.

    Args:
      v: ``[..., 3]``.
    Returns:
      ``[..., 3, 3]``.
    """
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    zero = jnp.zeros_like(x)
    return jnp.stack(
        [
            jnp.stack([zero, -z, y], -1),
            jnp.stack([z, zero, -x], -1),
            jnp.stack([-y, x, zero], -1),
        ],
        -2,
    )


def _rodrigues_coefficients(theta_sq: jax.Array):
    """Returns (sin t / t, (1 - cos t) / t^2) as smooth functions of t^2."""
    small = theta_sq < _SMALL_ANGLE**2
    # Double-where: the branch that is not taken must still have finite
    # derivatives, so feed it a harmless argument.
    t2_small = jnp.where(small, theta_sq, 0.0)
    t2_large = jnp.where(small, 1.0, theta_sq)
    t_large = jnp.sqrt(t2_large)
    a_large = jnp.sin(t_large) / t_large
    half_sinc = jnp.sin(0.5 * t_large) / t_large
    b_large = 2.0 * half_sinc * half_sinc
    x = t2_small
    a_small = 1.0 - x / 6.0 * (1.0 - x / 20.0 * (1.0 - x / 42.0 * (1.0 - x / 72.0)))
    b_small = 0.5 - x / 24.0 * (1.0 - x / 30.0 * (1.0 - x / 56.0 * (1.0 - x / 90.0)))
    return jnp.where(small, a_small, a_large), jnp.where(small, b_small, b_large)


def axis_angle_to_matrix(r: jax.Array) -> jax.Array:
    """Rodrigues' formula: axis-angle vector to rotation matrix.

    The rotation is by ``|r|`` radians about ``r / |r|`` (right-handed). Exactly the
    identity at r = 0, where the derivative is ``dR/dr_i = [e_i]x`` (what the
    original's vl_nnr2R backward returns).

    Args:
      r: ``[..., 3]`` axis-angle vectors.
    Returns:
      ``[..., 3, 3]`` rotation matrices.
    """
    r = jnp.asarray(r)
    _check_last_dim("r", r, 3)
    if not jnp.issubdtype(r.dtype, jnp.floating):
        r = r.astype(jnp.float32)
    theta_sq = jnp.sum(r * r, axis=-1)
    a, b = _rodrigues_coefficients(theta_sq)
    k = skew(r)
    k2 = k @ k
    eye = jnp.eye(3, dtype=r.dtype)
    return eye + a[..., None, None] * k + b[..., None, None] * k2


def _matrix_to_quaternion(rot: jax.Array) -> jax.Array:
    """Rotation matrix ``[..., 3, 3]`` to unit quaternion ``[..., 4]`` (w, x, y, z), w >= 0.

    Shepperd's method: take the square root of the largest of the four candidate
    4 q_i^2 values so no division by a small number happens.
    """
    m = rot
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    trace = m00 + m11 + m22
    cands = jnp.stack([trace, m00, m11, m22], -1)
    choice = jnp.argmax(cands, axis=-1)
    # 4 q_i^2 for the chosen component, 1 + 2 m_ii - trace (or 1 + trace).
    q_w = jnp.stack(
        [
            1.0 + trace,
            m[..., 2, 1] - m[..., 1, 2],
            m[..., 0, 2] - m[..., 2, 0],
            m[..., 1, 0] - m[..., 0, 1],
        ],
        -1,
    )
    q_x = jnp.stack(
        [
            m[..., 2, 1] - m[..., 1, 2],
            1.0 + 2 * m00 - trace,
            m[..., 0, 1] + m[..., 1, 0],
            m[..., 0, 2] + m[..., 2, 0],
        ],
        -1,
    )
    q_y = jnp.stack(
        [
            m[..., 0, 2] - m[..., 2, 0],
            m[..., 0, 1] + m[..., 1, 0],
            1.0 + 2 * m11 - trace,
            m[..., 1, 2] + m[..., 2, 1],
        ],
        -1,
    )
    q_z = jnp.stack(
        [
            m[..., 1, 0] - m[..., 0, 1],
            m[..., 0, 2] + m[..., 2, 0],
            m[..., 1, 2] + m[..., 2, 1],
            1.0 + 2 * m22 - trace,
        ],
        -1,
    )
    all_q = jnp.stack([q_w, q_x, q_y, q_z], -2)  # [..., 4 (choice), 4]
    q = jnp.take_along_axis(all_q, choice[..., None, None], axis=-2)[..., 0, :]
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    return q * jnp.where(q[..., :1] < 0, -1.0, 1.0)


def matrix_to_axis_angle(rot: jax.Array) -> jax.Array:
    """Inverse of ``axis_angle_to_matrix`` with the angle in [0, pi].

    Args:
      rot: ``[..., 3, 3]`` rotation matrices.
    Returns:
      ``[..., 3]`` axis-angle vectors with ``|r| <= pi``.
    """
    rot = jnp.asarray(rot)
    if rot.ndim < 2 or rot.shape[-2:] != (3, 3):
        raise ValueError(f"rot must have shape [..., 3, 3], got {rot.shape}")
    q = _matrix_to_quaternion(rot)
    w, v = q[..., 0], q[..., 1:]
    sin_half_sq = jnp.sum(v * v, axis=-1)
    small = sin_half_sq < 1e-12
    sin_half = jnp.sqrt(jnp.where(small, 1.0, sin_half_sq))
    angle = 2.0 * jnp.arctan2(sin_half, w)
    # For tiny angles, angle / sin(angle/2) -> 2 / w.
    factor = jnp.where(small, 2.0 / w, angle / sin_half)
    return v * factor[..., None]


def morphable_shape(mean: jax.Array, basis: jax.Array, alpha: jax.Array) -> jax.Array:
    """3DMM shape: ``vertices = mean + basis @ alpha``.

    Args:
      mean: ``[N, 3]`` mean shape.
      basis: ``[N, 3, D]`` components (``basis.reshape(3N, D)`` is the original's
        x,y,z-interleaved shapePC).
      alpha: ``[B, D]`` weights.
    Returns:
      ``[B, N, 3]``.
    """
    mean, basis, alpha = jnp.asarray(mean), jnp.asarray(basis), jnp.asarray(alpha)
    if mean.ndim != 2 or mean.shape[1] != 3:
        raise ValueError(f"mean must be [N, 3], got {mean.shape}")
    if basis.ndim != 3 or basis.shape[:2] != mean.shape:
        raise ValueError(f"basis must be [N, 3, D] with N, 3 = {mean.shape}, got {basis.shape}")
    if alpha.ndim != 2 or alpha.shape[1] != basis.shape[2]:
        raise ValueError(f"alpha must be [B, D] with D = {basis.shape[2]}, got {alpha.shape}")
    # One [B, D] x [D, 3N] matrix product with the output already in [B, N, 3] order
    # (an einsum to "bnk" computes [N, 3, B] and then transposes it).
    n_vertices, _, n_components = basis.shape
    offsets = jnp.dot(alpha, basis.reshape(3 * n_vertices, n_components).T)
    return mean[None] + offsets.reshape(alpha.shape[0], n_vertices, 3)


def rotate(points: jax.Array, rot: jax.Array) -> jax.Array:
    """Rotates each batch element's points: ``X' = R X``.

    Args:
      points: ``[B, N, 3]``.
      rot: ``[B, 3, 3]``.
    Returns:
      ``[B, N, 3]``.
    """
    chex.assert_rank(points, 3)
    chex.assert_shape(rot, (points.shape[0], 3, 3))
    chex.assert_axis_dimension(points, 2, 3)
    # Nine multiply-adds per point, written out: XLA fuses them with the neighbouring
    # elementwise work, where a batched 3 x 3 matrix product is a separate, slow loop.
    rot = rot.astype(points.dtype)
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    rows = [
        rot[:, i, 0, None] * x + rot[:, i, 1, None] * y + rot[:, i, 2, None] * z for i in range(3)
    ]
    return jnp.stack(rows, -1)


def project_orthographic(points: jax.Array) -> jax.Array:
    """Orthographic projection along z: keeps (x, y).

    Args:
      points: ``[B, N, 3]``.
    Returns:
      ``[B, N, 2]``.
    """
    chex.assert_axis_dimension(points, -1, 3)
    return points[..., :2]


def log_scale_to_scale(logs: jax.Array, parametrisation: str = "matconvnet") -> jax.Array:
    """Scale from the network's log-scale output.

    Args:
      logs: ``[B]``.
      parametrisation: ``"matconvnet"`` for the original's ``s = 0.99 ** logs`` (so
        logs = 0 gives one model unit per pixel and increasing logs shrinks the face),
        or ``"exp"`` for ``s = exp(logs)``.
    Returns:
      ``[B]``.
    """
    if parametrisation == "matconvnet":
        return jnp.power(jnp.asarray(MATCONVNET_SCALE_BASE, logs.dtype), logs)
    if parametrisation == "exp":
        return jnp.exp(logs)
    raise ValueError(f"parametrisation must be 'matconvnet' or 'exp', got {parametrisation!r}")


def scale_to_log_scale(scale: jax.Array, parametrisation: str = "matconvnet") -> jax.Array:
    """Inverse of ``log_scale_to_scale``. ``scale``: ``[B]`` positive."""
    if parametrisation == "matconvnet":
        return jnp.log(scale) / jnp.log(MATCONVNET_SCALE_BASE)
    if parametrisation == "exp":
        return jnp.log(scale)
    raise ValueError(f"parametrisation must be 'matconvnet' or 'exp', got {parametrisation!r}")


def scale_points(points: jax.Array, scale: jax.Array) -> jax.Array:
    """``[B, N, K]`` points times ``[B]`` scales."""
    chex.assert_rank(points, 3)
    chex.assert_shape(scale, (points.shape[0],))
    return points * scale[:, None, None]


def translate_points(points: jax.Array, translation: jax.Array) -> jax.Array:
    """``[B, N, 2]`` points plus ``[B, 2]`` translations."""
    chex.assert_rank(points, 3)
    chex.assert_shape(translation, (points.shape[0], points.shape[2]))
    return points + translation[:, None, :]


def select_landmarks(points: jax.Array, indices) -> jax.Array:
    """Gathers landmark vertices.

    Args:
      points: ``[B, N, K]``.
      indices: ``[L]`` 0-based vertex indices.
    Returns:
      ``[B, L, K]``.
    """
    chex.assert_rank(points, 3)
    idx = np.asarray(indices) if not isinstance(indices, jax.Array) else indices
    if idx.ndim != 1:
        raise ValueError(f"landmark indices must be 1-D, got shape {idx.shape}")
    if isinstance(idx, np.ndarray) and idx.size and (idx.min() < 0 or idx.max() >= points.shape[1]):
        raise ValueError(
            f"landmark indices must lie in [0, {points.shape[1]}), got [{idx.min()}, {idx.max()}]"
        )
    return points[:, idx, :]


def project_theta(
    theta: jax.Array, mean: jax.Array, basis: jax.Array, parametrisation: str = "matconvnet"
) -> Projection:
    """The original's geometric chain: model -> r2R -> rotate -> project -> scale -> translate.

    Args:
      theta: ``[B, 6 + D]``.
      mean: ``[N, 3]``.
      basis: ``[N, 3, D]``.
      parametrisation: scale parametrisation, see ``log_scale_to_scale``.
    Returns:
      A ``Projection`` with ``points2d`` ``[B, N, 2]`` in the image frame.
    """
    _check_finite("theta", theta)
    theta_lib.check(theta)
    r, t, logs, alpha = theta_lib.split(theta)
    vertices = morphable_shape(mean, basis, alpha)
    rot = axis_angle_to_matrix(r)
    rotated = rotate(vertices, rot)
    scale = log_scale_to_scale(logs, parametrisation)
    points = translate_points(scale_points(project_orthographic(rotated), scale), t)
    return Projection(rot, scale, t, vertices, rotated, points)


def grid_resolution(n_vertices: int) -> int:
    """Side of the square UV grid of a model with ``n_vertices`` vertices."""
    res = int(round(np.sqrt(n_vertices)))
    if res * res != n_vertices:
        raise ValueError(
            f"the STN samples onto a square UV grid: the number of vertices must be "
            f"a perfect square, got {n_vertices}"
        )
    return res


def points_to_grid(points: jax.Array, image_size: Sequence[int]) -> jax.Array:
    """Image-frame points to a sampling grid, the original's vl_nngrid.

    ``gx = (x - W/2) / (W/2)``, ``gy = -(y - H/2) / (H/2)`` (y flipped so that -1 is
    the top row), and vertex k goes to output row ``k // res``, column ``k % res``.

    Args:
      points: ``[B, N, 2]`` image-frame points, N = res * res.
      image_size: (H, W) of the image that will be sampled.
    Returns:
      ``[B, res, res, 2]`` grid of (x, y) in [-1, 1] for ``bilinear_sample``.
    """
    chex.assert_rank(points, 3)
    chex.assert_axis_dimension(points, 2, 2)
    height, width = image_size
    res = grid_resolution(points.shape[1])
    gx = (points[..., 0] - width / 2) / (width / 2)
    gy = -(points[..., 1] - height / 2) / (height / 2)
    return jnp.stack([gx, gy], -1).reshape(points.shape[0], res, res, 2)


def image_frame_to_pixels(points: jax.Array, image_size: Sequence[int]) -> jax.Array:
    """Image-frame points to 0-based (column, row) pixel coordinates, y down.

    This is where the sampler reads the point: column ``x (W-1)/W``, row
    ``(H - y)(H-1)/H``.

    Args:
      points: ``[..., 2]`` (x from the left, y from the bottom).
      image_size: (H, W).
    Returns:
      ``[..., 2]`` (column, row).
    """
    height, width = image_size
    col = points[..., 0] * (width - 1) / width
    row = (height - points[..., 1]) * (height - 1) / height
    return jnp.stack([col, row], -1)


def pixels_to_image_frame(pixels: jax.Array, image_size: Sequence[int]) -> jax.Array:
    """Inverse of ``image_frame_to_pixels``: 0-based (column, row) to image frame."""
    height, width = image_size
    x = pixels[..., 0] * width / (width - 1)
    y = height - pixels[..., 1] * height / (height - 1)
    return jnp.stack([x, y], -1)
