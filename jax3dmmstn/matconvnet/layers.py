"""The original's layers in MatConvNet's own array layouts, for verification.

One function per layer of anilbas/3DMMasSTN (and MatConvNet's
vl_nnbilinearsampler), with the same name, argument order and MATLAB array
shapes (numpy arrays shaped as in MATLAB; landmark and face indices 1-based as
in the original). Without the derivative argument a function runs forward;
with it, backward, returning what the MATLAB function returns. Backward passes
are ``jax.vjp`` of the native functions, i.e. true derivatives.

Where the original's backward is not the derivative of its forward
(``vl_nngrid``, ``vl_nnsymmetry``, ``vl_nnsiamese``), ``original_backward=True``
reproduces the original's formula; each docstring says how they differ.

Inputs may be float32 or float64 numpy arrays; outputs are numpy arrays of the
same floating dtype (float32 by default, as MatConvNet's ``single``).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax3dmmstn.core import geometry
from jax3dmmstn.core import losses
from jax3dmmstn.core import sampler
from jax3dmmstn.core import theta as theta_lib
from jax3dmmstn.core import visibility

# The original's grid layer centres and scales by this literal (224 x 224 input).
_ORIGINAL_GRID_HALF_SIZE = 112.0


def _as_float(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite (NaN or inf) entries")
    return arr


def _with_ndim4(x: np.ndarray, name: str, leading: Sequence[Optional[int]]):
    """MATLAB drops trailing singleton dims: restore a 4-D array and check it."""
    if x.ndim > 4:
        raise ValueError(f"{name} must have at most 4 dimensions, got {x.shape}")
    x = x.reshape(x.shape + (1,) * (4 - x.ndim))
    for axis, size in enumerate(leading):
        if size is not None and x.shape[axis] != size:
            raise ValueError(
                f"{name} must have size {size} in dimension {axis + 1} (MATLAB "
                f"layout), got shape {x.shape}"
            )
    return x


def _np(x, dtype) -> np.ndarray:
    return np.asarray(x, dtype=dtype)


def _vjp(fn, primals, cotangent):
    _, pullback = jax.vjp(fn, *primals)
    return pullback(jnp.asarray(cotangent))


# --------------------------------------------------------------------- pose


def vl_nnr2R(r, dCdR=None):
    """Axis-angle to rotation matrix.

    Args:
      r: ``1 x 1 x 3 x B``.
      dCdR: ``1 x 3 x 3 x B`` or None.
    Returns:
      ``R``: ``1 x 3 x 3 x B`` (forward) or ``dCdr``: ``1 x 1 x 3 x B``. The
      original's backward uses a closed form that divides by ``|r|^2`` (and a
      special case at r = 0); the values agree, ours keeps full precision for tiny
      non-zero r.
    """
    r = _with_ndim4(_as_float(r, "r"), "r", (1, 1, 3, None))
    dtype = r.dtype
    r_native = jnp.asarray(r[0, 0].T)  # [B, 3]

    def fn(rv):
        return geometry.axis_angle_to_matrix(rv).transpose(1, 2, 0)[None]

    if dCdR is None:
        return _np(fn(r_native), dtype)
    dCdR = _with_ndim4(_as_float(dCdR, "dCdR"), "dCdR", (1, 3, 3, r.shape[3]))
    (dr,) = _vjp(fn, (r_native,), dCdR.astype(dtype))
    return _np(dr.T[None, None], dtype)


def vl_nnsplit(X, dx=None, dr=None, dt=None, ds=None):
    """Splits theta ``1 x 1 x (6 + D) x B`` into (alpha, r, t, logs).

    Forward returns ``alpha 1 x 1 x D x B``, ``r 1 x 1 x 3 x B``, ``t 1 x 2 x 1 x B``,
    ``logs 1 x 1 x 1 x B``; backward (given the four derivatives in those shapes)
    returns ``dX`` ``1 x 1 x (6 + D) x B``. theta runs along MATLAB's channel axis
    (the third) in :mod:`jax3dmmstn.core.theta`'s layout.
    """
    X = _with_ndim4(_as_float(X, "X"), "X", (1, 1, None, None))
    if X.shape[2] < theta_lib.N_POSE:
        raise ValueError(f"theta needs at least {theta_lib.N_POSE} entries, got {X.shape[2]}")
    batch = X.shape[3]
    if dx is None:
        alpha = X[:, :, theta_lib.SHAPE, :]
        r = X[:, :, theta_lib.ROTATION, :]
        t = X[0, 0, theta_lib.TRANSLATION, :].reshape(1, 2, 1, batch)
        logs = X[:, :, theta_lib.LOG_SCALE, :].reshape(1, 1, 1, batch)
        return alpha, r, t, logs
    d_theta = theta_lib.merge(  # [B, 6 + D]
        np.asarray(dr).reshape(3, batch).T,
        np.asarray(dt).reshape(2, batch).T,
        np.asarray(ds).reshape(batch),
        np.asarray(dx).reshape(-1, batch).T,
    )
    return d_theta.T[None, None].astype(X.dtype)


def _model_arrays(model) -> tuple:
    """(mean [N,3], basis [N,3,D], faces or None) from a dict or MorphableModel."""
    if isinstance(model, Mapping):
        if "shapeMU" not in model or "shapePC" not in model:
            raise ValueError("model needs 'shapeMU' (3N x 1) and 'shapePC' (3N x D)")
        mu = np.asarray(model["shapeMU"], np.float64).reshape(-1)
        pc = np.asarray(model["shapePC"], np.float64)
        if pc.ndim != 2 or pc.shape[0] != mu.size or mu.size % 3:
            raise ValueError(f"shapePC must be 3N x D with 3N = {mu.size}, got {pc.shape}")
        return mu.reshape(-1, 3), pc.reshape(-1, 3, pc.shape[1])
    return np.asarray(model.mean), np.asarray(model.basis)


def vl_nnmodel(X, model, dzdy=None):
    """3DMM layer: ``shapeMU + shapePC * alpha``.

    Args:
      X: alpha, ``1 x 1 x D x B``.
      model: dict with ``shapeMU`` (3N x 1) and ``shapePC`` (3N x D), or a
        ``MorphableModel``.
      dzdy: ``1 x 3 x N x B`` or None.
    Returns:
      ``1 x 3 x N x B`` vertices, or ``1 x 1 x D x B`` (backward).
    """
    X = _with_ndim4(_as_float(X, "X"), "X", (1, 1, None, None))
    dtype = X.dtype
    mean, basis = _model_arrays(model)
    if basis.shape[2] != X.shape[2]:
        raise ValueError(
            f"alpha has {X.shape[2]} entries but the model has {basis.shape[2]} components"
        )
    mean, basis = jnp.asarray(mean, dtype), jnp.asarray(basis, dtype)

    def fn(alpha):
        return geometry.morphable_shape(mean, basis, alpha).transpose(2, 1, 0)[None]

    alpha = jnp.asarray(X[0, 0].T)
    if dzdy is None:
        return _np(fn(alpha), dtype)
    dzdy = _with_ndim4(_as_float(dzdy, "dzdy"), "dzdy", (1, 3, mean.shape[0], X.shape[3]))
    (dalpha,) = _vjp(fn, (alpha,), dzdy.astype(dtype))
    return _np(dalpha.T[None, None], dtype)


def vl_nnrotate3D(X, R, dzdy=None):
    """Rotates ``1 x 3 x N x B`` points by ``1 x 3 x 3 x B`` matrices.

    Returns ``y`` (forward) or ``(dX, dR)`` (backward).
    """
    X = _with_ndim4(_as_float(X, "X"), "X", (1, 3, None, None))
    R = _with_ndim4(_as_float(R, "R"), "R", (1, 3, 3, X.shape[3]))
    dtype = X.dtype

    def fn(points, rot):
        return geometry.rotate(points, rot).transpose(2, 1, 0)[None]

    points = jnp.asarray(X[0].transpose(2, 1, 0))
    rot = jnp.asarray(R[0].transpose(2, 0, 1).astype(dtype))
    if dzdy is None:
        return _np(fn(points, rot), dtype)
    dzdy = _with_ndim4(_as_float(dzdy, "dzdy"), "dzdy", X.shape)
    d_points, d_rot = _vjp(fn, (points, rot), dzdy.astype(dtype))
    return (
        _np(d_points.transpose(2, 1, 0)[None], dtype),
        _np(d_rot.transpose(1, 2, 0)[None], dtype),
    )


def vl_nnprojection(X, dzdy=None):
    """Orthographic projection ``1 x 3 x N x B`` -> ``1 x 2 x N x B`` (and back)."""
    X = _with_ndim4(_as_float(X, "X"), "X", (1, 3, None, None))
    dtype = X.dtype

    def fn(points):
        return geometry.project_orthographic(points).transpose(2, 1, 0)[None]

    points = jnp.asarray(X[0].transpose(2, 1, 0))
    if dzdy is None:
        return _np(fn(points), dtype)
    dzdy = _with_ndim4(_as_float(dzdy, "dzdy"), "dzdy", (1, 2, X.shape[2], X.shape[3]))
    (d_points,) = _vjp(fn, (points,), dzdy.astype(dtype))
    return _np(d_points.transpose(2, 1, 0)[None], dtype)


def vl_nnlogScale2Scale(s, dzdy=None):
    """``0.99 ** s`` for ``1 x 1 x 1 x B`` log-scales (and its derivative)."""
    s = _with_ndim4(_as_float(s, "s"), "s", (1, 1, 1, None))
    dtype = s.dtype

    def fn(logs):
        return geometry.log_scale_to_scale(logs, "matconvnet").reshape(1, 1, 1, -1)

    logs = jnp.asarray(s.reshape(-1))
    if dzdy is None:
        return _np(fn(logs), dtype)
    dzdy = _with_ndim4(_as_float(dzdy, "dzdy"), "dzdy", s.shape)
    (d_logs,) = _vjp(fn, (logs,), dzdy.astype(dtype))
    return _np(d_logs.reshape(s.shape), dtype)


def vl_nnscale2D(X, S, dzdy=None):
    """Scales ``1 x 2 x N x B`` points by ``1 x 1 x 1 x B``; backward ``(dX, dS)``."""
    X = _with_ndim4(_as_float(X, "X"), "X", (1, 2, None, None))
    S = _with_ndim4(_as_float(S, "S"), "S", (1, 1, 1, X.shape[3]))
    dtype = X.dtype

    def fn(points, scale):
        return geometry.scale_points(points, scale).transpose(2, 1, 0)[None]

    points = jnp.asarray(X[0].transpose(2, 1, 0))
    scale = jnp.asarray(S.reshape(-1).astype(dtype))
    if dzdy is None:
        return _np(fn(points, scale), dtype)
    dzdy = _with_ndim4(_as_float(dzdy, "dzdy"), "dzdy", X.shape)
    d_points, d_scale = _vjp(fn, (points, scale), dzdy.astype(dtype))
    return (_np(d_points.transpose(2, 1, 0)[None], dtype), _np(d_scale.reshape(S.shape), dtype))


def vl_nntranslate2D(X, T, dzdy=None):
    """Adds ``1 x 2 x 1 x B`` to ``1 x 2 x N x B`` points; backward ``(dX, dT)``."""
    X = _with_ndim4(_as_float(X, "X"), "X", (1, 2, None, None))
    T = _with_ndim4(_as_float(T, "T"), "T", (1, 2, 1, X.shape[3]))
    dtype = X.dtype

    def fn(points, translation):
        return geometry.translate_points(points, translation).transpose(2, 1, 0)[None]

    points = jnp.asarray(X[0].transpose(2, 1, 0))
    translation = jnp.asarray(T[0, :, 0].T.astype(dtype))
    if dzdy is None:
        return _np(fn(points, translation), dtype)
    dzdy = _with_ndim4(_as_float(dzdy, "dzdy"), "dzdy", X.shape)
    d_points, d_translation = _vjp(fn, (points, translation), dzdy.astype(dtype))
    return (
        _np(d_points.transpose(2, 1, 0)[None], dtype),
        _np(d_translation.T.reshape(T.shape), dtype),
    )


def vl_nnselection(X, idx, dzdy=None):
    """Selects landmark vertices ``idx`` (1-based) from ``1 x 2 x N x B``.

    The backward scatters ``dzdy`` back; with repeated indices it sums (the true
    derivative) where MATLAB's assignment keeps the last one.
    """
    X = _with_ndim4(_as_float(X, "X"), "X", (1, None, None, None))
    dtype = X.dtype
    idx = np.asarray(idx).reshape(-1)
    if idx.size == 0 or np.any(idx != np.round(idx)) or idx.min() < 1 or (idx.max() > X.shape[2]):
        raise ValueError(f"idx must be 1-based integer vertex indices in [1, {X.shape[2]}]")
    idx0 = idx.astype(np.int64) - 1

    def fn(points):
        return geometry.select_landmarks(points, idx0).transpose(2, 1, 0)[None]

    points = jnp.asarray(X[0].transpose(2, 1, 0))
    if dzdy is None:
        return _np(fn(points), dtype)
    dzdy = _with_ndim4(_as_float(dzdy, "dzdy"), "dzdy", (1, X.shape[1], idx.size, X.shape[3]))
    (d_points,) = _vjp(fn, (points,), dzdy.astype(dtype))
    return _np(d_points.transpose(2, 1, 0)[None], dtype)


# --------------------------------------------------------------------- grid


def _grid_native(points2d, image_size):
    """``[B, N, 2]`` -> MATLAB grid ``2 x Ho x Wo x B`` (vertical coordinate first)."""
    grid = geometry.points_to_grid(points2d, image_size)  # [B, res, res, (x, y)]
    return grid[..., ::-1].transpose(3, 1, 2, 0)


def vl_nngrid(X, dzdy=None, image_size=(224, 224), original_backward=False):
    """Image-frame points ``1 x 2 x N x B`` to a sampling grid ``2 x gd x gd x B``.

    Forward: ``(X - W/2) / (W/2)`` (the original's literal 112 for 224 x 224
    images), vertical coordinate flipped and first, vertex k at row ``k // gd``,
    column ``k % gd``.

    Backward: the true derivative (``1/(W/2)`` for x, ``-1/(H/2)`` for y). The
    original multiplies by the literal ``1/112`` whatever the image size, which is
    the same for its 224 x 224 input; ``original_backward=True`` does that.

    Args:
      X: ``1 x 2 x N x B``, N a perfect square.
      dzdy: ``2 x gd x gd x B`` or None.
      image_size: (H, W) of the image the grid will sample.
      original_backward: reproduce the original's backward formula.
    Returns:
      ``2 x gd x gd x B`` or ``1 x 2 x N x B``.
    """
    X = _with_ndim4(_as_float(X, "X"), "X", (1, 2, None, None))
    dtype = X.dtype
    res = geometry.grid_resolution(X.shape[2])
    points = jnp.asarray(X[0].transpose(2, 1, 0))
    fn = lambda p: _grid_native(p, image_size)
    if dzdy is None:
        return _np(fn(points), dtype)
    dzdy = _with_ndim4(_as_float(dzdy, "dzdy"), "dzdy", (2, res, res, X.shape[3]))
    if original_backward:
        d_grid = dzdy.transpose(0, 2, 1, 3)  # back to (2, i, j, B) before permute
        d_points = np.stack([d_grid[1], -d_grid[0]], 0)  # (2, i, j, B)
        # Column-major reshape of (i, j) to vertex i + gd * j.
        d_points = d_points.reshape(2, res * res, -1, order="F")
        return _np(d_points[None] / _ORIGINAL_GRID_HALF_SIZE, dtype)
    (d_points,) = _vjp(fn, (points,), dzdy.astype(dtype))
    return _np(d_points.transpose(2, 1, 0)[None], dtype)


def vl_nnbilinearsampler(X, grid, dY=None):
    """MatConvNet's bilinear sampler in its own layouts.

    Args:
      X: ``H x W x C x N`` images.
      grid: ``2 x Ho x Wo x No`` with the vertical coordinate first; No a multiple
        of N.
      dY: ``Ho x Wo x C x No`` or None.
    Returns:
      ``Y`` ``Ho x Wo x C x No`` (forward) or ``(dX, dGrid)`` (backward). Follows
      the CUDA kernel at the first pixel's border strip (see
      ``jax3dmmstn.core.sampler``).
    """
    X = _with_ndim4(_as_float(X, "X"), "X", (None, None, None, None))
    grid = _with_ndim4(_as_float(grid, "grid"), "grid", (2, None, None, None))
    dtype = X.dtype
    if grid.shape[3] % X.shape[3]:
        raise ValueError(
            f"the number of grids ({grid.shape[3]}) must be a multiple of the number "
            f"of images ({X.shape[3]})"
        )
    image = jnp.asarray(X.transpose(3, 0, 1, 2))
    grid_native = jnp.asarray(grid.transpose(3, 1, 2, 0)[..., ::-1].astype(dtype))

    def fn(img, g):
        return sampler.bilinear_sample(img, g).transpose(1, 2, 3, 0)

    if dY is None:
        return _np(fn(image, grid_native), dtype)
    dY = _with_ndim4(
        _as_float(dY, "dY"), "dY", (grid.shape[1], grid.shape[2], X.shape[2], grid.shape[3])
    )
    d_image, d_grid = _vjp(fn, (image, grid_native), dY.astype(dtype))
    return (
        _np(d_image.transpose(1, 2, 3, 0), dtype),
        _np(d_grid[..., ::-1].transpose(3, 1, 2, 0), dtype),
    )


# --------------------------------------------------------------- visibility


def vl_nnvisibilitymask(X, faces, accumulate=False):
    """Self-occlusion mask ``gd x gd x 3 x B`` of rotated vertices ``1 x 3 x N x B``.

    By default this reproduces the original exactly, including its MATLAB
    accumulation ``normals(v1,:) = normals(v1,:) + w``, which for a vertex that
    appears several times as a face's first (second, third) corner keeps only the
    last such face's contribution. ``accumulate=True`` sums every contribution
    instead (``jax3dmmstn.core.visibility``'s behaviour). There is no backward: the
    mask carries no gradient.

    Args:
      X: ``1 x 3 x N x B`` rotated vertices.
      faces: ``F x 3`` 1-based vertex indices.
    Returns:
      ``gd x gd x 3 x B`` in {0, 1}, vertex k at row ``k // gd``, column ``k % gd``.
    """
    X = _with_ndim4(_as_float(X, "X"), "X", (1, 3, None, None))
    dtype = X.dtype
    res = geometry.grid_resolution(X.shape[2])
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be F x 3, got {faces.shape}")
    faces0 = faces.astype(np.int64) - 1
    if faces0.min() < 0 or faces0.max() >= X.shape[2]:
        raise ValueError(f"faces must be 1-based indices in [1, {X.shape[2]}]")
    vertices = X[0].transpose(2, 1, 0)  # [B, N, 3]
    if accumulate:
        visible = np.asarray(visibility.vertex_visibility(vertices, faces0))
    else:
        normals, angles = visibility.face_corner_terms(jnp.asarray(vertices), jnp.asarray(faces0))
        normals, angles = np.asarray(normals), np.asarray(angles)
        visible = np.empty(vertices.shape[:2], dtype)
        for b in range(vertices.shape[0]):
            acc = np.zeros((vertices.shape[1], 3), dtype)
            for corner in range(3):
                # MATLAB's A(idx,:) = A(idx,:) + W: every right-hand side reads the
                # old A, and for repeated idx the last assignment wins. numpy's fancy
                # assignment has the same semantics.
                idx = faces0[:, corner]
                acc[idx] = acc[idx] + normals[b] * angles[b, :, corner : corner + 1]
            visible[b] = acc[:, 2] >= 0
    mask = visible.reshape(-1, res, res)  # [B, row, col]
    return np.repeat(mask.transpose(1, 2, 0)[:, :, None, :], 3, axis=2).astype(dtype)


def vl_nnvisibility(X, V, dzdy=None):
    """Masks ``H x W x C x B`` by ``V`` (same shape); backward ``(dX, dV = 0)``."""
    X = _with_ndim4(_as_float(X, "X"), "X", (None, None, None, None))
    V = _with_ndim4(_as_float(V, "V"), "V", X.shape)
    if dzdy is None:
        return X * V
    dzdy = _with_ndim4(_as_float(dzdy, "dzdy"), "dzdy", X.shape)
    return dzdy * V, np.zeros_like(V)


# ------------------------------------------------------------------- losses


def _loss_derivative(p) -> float:
    """The scalar output derivative ``p`` of a loss layer."""
    return float(np.asarray(p).reshape(()))


def vl_nneuclideanloss(x, r, vis, p=None):
    """Landmark loss on ``1 x 2 x L x B`` predictions ``x`` and labels ``r``.

    ``vis`` is ``1 x 1 x L x B`` (or ``L x B``). Forward: the sum of squared x and y
    errors of visible landmarks. Backward (``p`` given): ``1 x 2 x L x B``.
    """
    x = _with_ndim4(_as_float(x, "x"), "x", (1, 2, None, None))
    r = _with_ndim4(_as_float(r, "r"), "r", x.shape)
    dtype = x.dtype
    vis = np.asarray(vis, dtype).reshape(x.shape[2], x.shape[3])

    def fn(pred):
        return losses.landmark_loss(
            pred, jnp.asarray(r[0].transpose(2, 1, 0)), jnp.asarray(vis.T), reduction="sum"
        )

    pred = jnp.asarray(x[0].transpose(2, 1, 0))
    if p is None:
        return _np(fn(pred), dtype)
    (d_pred,) = _vjp(fn, (pred,), jnp.asarray(_loss_derivative(p), dtype))
    return _np(d_pred.transpose(2, 1, 0)[None], dtype)


def vl_nnsse(x, p=None):
    """Prior ``sum(x .^ 2)`` over all entries of ``1 x 1 x D x B`` alpha.

    The original writes ``sum(sum(x.^2))``, which is this full sum for its
    ``1 x 1 x D x B`` input. Backward: ``2 p x``.
    """
    x = _as_float(x, "x")
    dtype = x.dtype
    fn = lambda a: losses.prior_loss(a.reshape(1, -1), reduction="sum")
    if p is None:
        return _np(fn(jnp.asarray(x)), dtype)
    (dx,) = _vjp(fn, (jnp.asarray(x),), jnp.asarray(_loss_derivative(p), dtype))
    return _np(dx, dtype)


def _texture_native(x):
    return jnp.asarray(x.transpose(3, 0, 1, 2))


def vl_nnsymmetry(x, p=None, original_backward=False):
    """Symmetry loss of masked textures ``H x W x C x B`` (flip along W = u).

    Forward: ``sum(d.^2) / count(x ~= 0)`` with ``d = (x - fliplr x)`` where both
    are non-zero. Backward: the true derivative is ``4 p m (x - fliplr x) / count``
    (the mirrored texel contributes as much as the texel itself);
    the original returns ``2 p m (x - fliplr x)``, without the mirrored term and
    without ``1/count``: ``original_backward=True``.
    """
    x = _with_ndim4(_as_float(x, "x"), "x", (None, None, None, None))
    dtype = x.dtype
    fn = lambda t: losses.symmetry_loss(t, None, nonzero_as_mask=True, reduction="mean")
    if p is None:
        return _np(fn(_texture_native(x)), dtype)
    p = _loss_derivative(p)
    if original_backward:
        both = (x != 0) & (np.flip(x, 1) != 0)
        return _np(2 * p * (x - np.flip(x, 1)) * both, dtype)
    (dt,) = _vjp(fn, (_texture_native(x),), jnp.asarray(p, dtype))
    return _np(dt.transpose(1, 2, 3, 0), dtype)


def vl_nnsiamese(x, p=None, original_backward=False):
    """Siamese loss of texture pairs (images 2i-1, 2i in MATLAB's 1-based order).

    Forward: ``sum(d.^2) / count(x ~= 0)`` with ``d = x_a - x_b`` where both are
    non-zero. Backward: the true derivative is ``+2 p m (x_a - x_b) / count`` for
    the first member and its negative for the second; the original returns
    ``2 p m (x_a - x_b)`` (same sign, no ``1/count``) for both:
    ``original_backward=True``.
    """
    x = _with_ndim4(_as_float(x, "x"), "x", (None, None, None, None))
    dtype = x.dtype
    if x.shape[3] % 2:
        raise ValueError(f"siamese pairs need an even batch, got {x.shape[3]}")
    fn = lambda t: losses.siamese_loss(t, None, nonzero_as_mask=True, reduction="mean")
    if p is None:
        return _np(fn(_texture_native(x)), dtype)
    p = _loss_derivative(p)
    if original_backward:
        a, b = x[..., 0::2], x[..., 1::2]
        d = 2 * p * (a - b) * ((a != 0) & (b != 0))
        return _np(np.repeat(d, 2, axis=3), dtype)
    (dt,) = _vjp(fn, (_texture_native(x),), jnp.asarray(p, dtype))
    return _np(dt.transpose(1, 2, 3, 0), dtype)


__all__ = [
    "vl_nnr2R",
    "vl_nnsplit",
    "vl_nnmodel",
    "vl_nnrotate3D",
    "vl_nnprojection",
    "vl_nnlogScale2Scale",
    "vl_nnscale2D",
    "vl_nntranslate2D",
    "vl_nnselection",
    "vl_nngrid",
    "vl_nnbilinearsampler",
    "vl_nnvisibilitymask",
    "vl_nnvisibility",
    "vl_nneuclideanloss",
    "vl_nnsse",
    "vl_nnsymmetry",
    "vl_nnsiamese",
]
