"""Bilinear sampler with MatConvNet's vl_nnbilinearsampler semantics.

``bilinear_sample(image [B, H, W, C], grid [Bo, Ho, Wo, 2]) -> [Bo, Ho, Wo, C]``

* ``grid[..., 0]`` is the horizontal coordinate x and ``grid[..., 1]`` the vertical
  coordinate y, both in [-1, 1], where -1 and +1 are the centres of the first and
  last pixel: column ``(x + 1) / 2 * (W - 1)``, row ``(y + 1) / 2 * (H - 1)``
  (0-based, row 0 at the top). This is torch's ``grid_sample(align_corners=True,
  padding_mode="zeros")``; MatConvNet stores the same grid as ``2 x Ho x Wo x No``
  with the vertical coordinate first (see ``jax3dmmstn.matconvnet``).
* Each of the four neighbours contributes only when it lies inside the image
  (zero padding per neighbour); a sample entirely outside gives 0.
* ``Bo`` may be a multiple of ``B``: output ``n`` samples image ``n // (Bo // B)``.
* The derivative with respect to the grid is the derivative of the bilinear
  interpolant inside the cell chosen by ``floor``: at an exact pixel position it is
  the one-sided derivative towards the next pixel. It is summed over channels.
* Border strip: a sample up to one pixel before the first pixel centre (floor =
  -1) gets the partial value of the first pixel, as MatConvNet's CUDA kernel does.
  MatConvNet's CPU code returns 0 value and 0 gradient there (it compares a signed
  -1 with an unsigned size); we follow the CUDA kernel, which is symmetric with
  the far border.

Images may be float32, float64 or bfloat16; the interpolation is computed in at
least float32 and returned in the image's dtype. The grid's gradient has the
grid's dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
from jax.custom_derivatives import SymbolicZero
import jax.numpy as jnp
import numpy as np

# The four bilinear neighbours as (row offset, column offset).
_NEIGHBOUR_OFFSETS = ((0, 0), (1, 0), (0, 1), (1, 1))

# Above this many channels the d/dgrid channel sum is a reduction; below it is
# unrolled into adds, which XLA fuses into the surrounding loop (a reduction
# over a trailing axis of 3 is a separate, slow kernel on CPU).
_MAX_UNROLLED_CHANNELS = 16


def _check_inputs(image, grid):
    """Shape checks with messages a user can act on (static shapes only)."""
    if image.ndim != 4:
        raise ValueError(f"image must be [B, H, W, C], got shape {image.shape}")
    if grid.ndim != 4 or grid.shape[-1] != 2:
        raise ValueError(f"grid must be [Bo, Ho, Wo, 2], got shape {grid.shape}")
    batch, out_batch = image.shape[0], grid.shape[0]
    if batch == 0 or out_batch % batch != 0:
        raise ValueError(
            f"the grid batch ({out_batch}) must be a multiple of the image batch ({batch})"
        )
    if min(image.shape[1:3]) < 1:
        raise ValueError(f"image has an empty spatial size: {image.shape}")
    if not jnp.issubdtype(grid.dtype, jnp.floating):
        raise ValueError(f"grid must be floating point, got {grid.dtype}")
    if not isinstance(grid, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(grid))):
        raise ValueError("grid has non-finite (NaN or inf) entries")


def _compute_dtype(image, grid):
    return jnp.promote_types(jnp.promote_types(image.dtype, grid.dtype), jnp.float32)


# How the fast path works (benchmarks/sampler.py measures it; see
# README.md, "Performance"). XLA on CPU pays for every pass over a
# [samples, 2, 2, C] array and for every recomputation of the per-sample index
# and weight arithmetic inside a fused loop, so:
# * The forward pass reads each sample's 2 x 2 x C window of the image, viewed as
#   a [B * H, W * C] matrix, with ONE gather of window (2, 2 * C). The window
#   start is clamped into the image and each window column (row) gets the
#   bilinear weight of the neighbour it holds, or 0 when it holds none: this is
#   the per-neighbour zero padding, exactly, without padding (copying) the image.
# * d/dimage is four 1-D scatter-adds of C-vectors into the [B * H * W, C] view
#   (cheaper per element in XLA's CPU scatter than one scatter of 2 x 2C
#   windows). It is only computed when the image is differentiated: the custom
#   VJP uses symbolic zeros, so a grid-only gradient (a 3DMM-STN's image is an
#   input) never builds it, with or without jit.
# * d/dgrid needs the window values again. With d/dimage as well, it re-reads
#   them as two 2-pixel rows per sample, a gather that XLA does not merge with
#   the forward one and fuses into the d/dgrid loop, so no [samples, 2, 2, C]
#   array is kept (less memory traffic, fewer fresh pages). Without d/dimage it
#   uses the forward pass's gather, which XLA computes once for both passes.


def _window_axis(position, size):
    """One axis of the 2-wide window around ``position`` (pixel units).

    Args:
      position: ``[B, P]`` 0-based pixel coordinate (float).
      size: the image's extent along this axis, >= 2.
    Returns:
      start: ``[B, P]`` int32 first pixel of the window, in [0, size - 2].
      weights: (w0, w1), ``[B, P]`` bilinear weights of pixels start and
        start + 1 (0 for a pixel that is not a neighbour of the sample).
      slopes: (s0, s1), ``[B, P]`` d weight / d position for the same pixels
        (-1, +1 or 0): the one-sided derivative inside the floor() cell.
    """
    floor = jnp.floor(position)
    frac = position - floor
    # Far outside stays far outside (and the int32 cast cannot overflow).
    floor = jnp.clip(floor, -2, size)
    start = jnp.clip(floor, 0, size - 2)
    floor_is_first = floor == start  # neighbours: start (floor), start + 1
    ceil_is_first = floor + 1 == start  # floor = -1: start is the ceil neighbour
    floor_is_second = floor == start + 1  # floor = size - 1: start + 1 is floor
    # frac * 0 rather than 0 so that a NaN position still gives NaN.
    zero = frac * 0
    one = jnp.ones_like(frac)
    w0 = jnp.where(floor_is_first, 1 - frac, jnp.where(ceil_is_first, frac, zero))
    w1 = jnp.where(floor_is_first, frac, jnp.where(floor_is_second, 1 - frac, zero))
    s0 = jnp.where(floor_is_first, -one, jnp.where(ceil_is_first, one, zero))
    s1 = jnp.where(floor_is_first, one, jnp.where(floor_is_second, -one, zero))
    # Clip the integer too: a NaN position must not index outside the image.
    start = jnp.clip(start.astype(jnp.int32), 0, size - 2)
    return start, (w0, w1), (s0, s1)


class _Windows(NamedTuple):
    """Per-sample window geometry, all ``[B, P]`` (``P = group * Ho * Wo``)."""

    row: jax.Array  # first window row in the [B * Hp, Wp * C] view (int32)
    col: jax.Array  # first window pixel column (int32)
    wx: tuple  # (w0, w1) x weights of columns col, col + 1
    sx: tuple  # (s0, s1) their slopes d w / d x (pixel units)
    wy: tuple  # (w0, w1) y weights of rows row, row + 1
    sy: tuple  # (s0, s1) their slopes d w / d y


def _sample_windows(grid, batch, height, width, padded_height, padded_width, dtype):
    """Window of every sample.

    Args:
      grid: ``[Bo, Ho, Wo, 2]``; output ``b * group + j`` samples image ``b``.
      batch, height, width: the image's B, H, W (they define the coordinates).
      padded_height, padded_width: the extents actually indexed (>= 2).
      dtype: the compute dtype.
    Returns:
      ``_Windows``.
    """
    grid_flat = grid.astype(dtype).reshape(batch, -1, 2)
    px = (grid_flat[..., 0] + 1) * 0.5 * (width - 1)
    py = (grid_flat[..., 1] + 1) * 0.5 * (height - 1)
    col, wx, sx = _window_axis(px, padded_width)
    start_y, wy, sy = _window_axis(py, padded_height)
    row = jnp.arange(batch, dtype=jnp.int32)[:, None] * padded_height + start_y
    return _Windows(row, col, wx, sx, wy, sy)


def _gather_windows(image, windows):
    """``image [B, Hp, Wp, C]`` -> ``v[i][j]``, ``[B, P, C]``: window pixel (i, j).

    One gather of (2, 2C) blocks from the ``[B * Hp, Wp * C]`` view.
    """
    batch, padded_height, padded_width, channels = image.shape
    dims = jax.lax.GatherDimensionNumbers(
        offset_dims=(2, 3), collapsed_slice_dims=(), start_index_map=(0, 1)
    )
    starts = jnp.stack([windows.row, windows.col * channels], -1)  # [B, P, 2]
    blocks = jax.lax.gather(
        image.reshape(batch * padded_height, padded_width * channels),
        starts,
        dims,
        (2, 2 * channels),
        mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    )
    blocks = blocks.reshape(windows.row.shape + (2, 2, channels))
    return [[blocks[:, :, i, j] for j in (0, 1)] for i in (0, 1)]


def _gather_window_rows(image, windows):
    """Same values as ``_gather_windows``, read as two 2-pixel rows per sample.

    A different HLO gather on purpose: see the note above ``_window_axis``.
    """
    batch, padded_height, padded_width, channels = image.shape
    dims = jax.lax.GatherDimensionNumbers(
        offset_dims=(2, 3), collapsed_slice_dims=(), start_index_map=(0,)
    )
    first_pixel = windows.row * padded_width + windows.col
    pixels = image.reshape(-1, channels)
    rows = [
        jax.lax.gather(
            pixels,
            (first_pixel + i * padded_width)[..., None],
            dims,
            (2, channels),
            mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS,
        )
        for i in (0, 1)
    ]  # [B, P, 2, C] each
    return [[rows[i][:, :, j] for j in (0, 1)] for i in (0, 1)]


def _pad_to_two(image):
    """Zero-pads a 1-pixel-high or -wide image to 2 so that windows fit.

    The extra pixel lies outside the image, where samples read 0 anyway.
    """
    _, height, width, _ = image.shape
    if height >= 2 and width >= 2:
        return image
    return jnp.pad(image, ((0, 0), (0, max(0, 2 - height)), (0, max(0, 2 - width)), (0, 0)))


def _channel_sum(x):
    """``[..., C] -> [...]``."""
    if x.shape[-1] > _MAX_UNROLLED_CHANNELS:
        return jnp.sum(x, axis=-1)
    total = x[..., 0]
    for c in range(1, x.shape[-1]):
        total = total + x[..., c]
    return total


def _prepare(image, grid):
    """Compute-dtype image padded to >= 2 x 2, and the windows of the grid."""
    dtype = _compute_dtype(image, grid)
    batch, height, width, _ = image.shape
    padded = _pad_to_two(image.astype(dtype))
    _, padded_height, padded_width, _ = padded.shape
    windows = _sample_windows(grid, batch, height, width, padded_height, padded_width, dtype)
    return padded, windows


def _forward(image, grid):
    padded, w = _prepare(image, grid)
    v = _gather_windows(padded, w)
    e = lambda a: a[..., None]
    (wx0, wx1), (wy0, wy1) = w.wx, w.wy
    # Same order of terms as _NEIGHBOUR_OFFSETS.
    out = (
        e(wx0 * wy0) * v[0][0]
        + e(wx0 * wy1) * v[1][0]
        + e(wx1 * wy0) * v[0][1]
        + e(wx1 * wy1) * v[1][1]
    )
    return out.reshape(grid.shape[:3] + (image.shape[-1],)).astype(image.dtype)


def _image_gradient(padded_shape, w, d, height, width):
    """d/dimage ``[B, H, W, C]`` from the cotangent ``d [B, P, C]``.

    Every window pixel receives its weight * d (weight 0 for pixels that are not
    neighbours of the sample).
    """
    batch, padded_height, padded_width, channels = padded_shape
    (wx0, wx1), (wy0, wy1) = w.wx, w.wy
    first_pixel = w.row * padded_width + w.col
    d_image = jnp.zeros((batch * padded_height * padded_width, channels), d.dtype)
    for offset, weight in (
        (0, wx0 * wy0),
        (1, wx1 * wy0),
        (padded_width, wx0 * wy1),
        (padded_width + 1, wx1 * wy1),
    ):
        d_image = d_image.at[first_pixel + offset].add(
            weight[..., None] * d, mode="promise_in_bounds"
        )
    d_image = d_image.reshape(padded_shape)
    return d_image[:, :height, :width]


def _grid_gradient(v, w, d, height, width):
    """d/dgrid ``[B, P, 2]``: derivative of the interpolant in the floor() cell.

    Summed over channels; pixels outside the image are never in a window, and
    window pixels that are not neighbours have weight and slope 0.
    """
    (wx0, wx1), (sx0, sx1) = w.wx, w.sx
    (wy0, wy1), (sy0, sy1) = w.wy, w.sy
    vd = [[_channel_sum(v[i][j] * d) for j in (0, 1)] for i in (0, 1)]
    d_px = wy0 * (sx0 * vd[0][0] + sx1 * vd[0][1]) + wy1 * (sx0 * vd[1][0] + sx1 * vd[1][1])
    d_py = wx0 * (sy0 * vd[0][0] + sy1 * vd[1][0]) + wx1 * (sy0 * vd[0][1] + sy1 * vd[1][1])
    return jnp.stack([d_px * (0.5 * (width - 1)), d_py * (0.5 * (height - 1))], -1)


@jax.custom_vjp
def _bilinear_sample(image, grid):
    return _forward(image, grid)


def _bilinear_sample_fwd(image, grid):
    # symbolic_zeros: the arguments arrive as CustomVJPPrimal(value, perturbed).
    # Residuals are the inputs only (the backward pass recomputes the windows;
    # under jit XLA shares what it can with the forward pass), plus which
    # gradients are wanted, as the static shape of an empty array.
    wanted = jnp.zeros((int(image.perturbed), int(grid.perturbed)), jnp.bool_)
    return _forward(image.value, grid.value), (image.value, grid.value, wanted)


def _bilinear_sample_bwd(residuals, d_out):
    image, grid, wanted = residuals
    want_image, want_grid = (bool(n) for n in wanted.shape)
    if isinstance(d_out, SymbolicZero):
        return None, None
    batch, height, width, channels = image.shape
    padded, w = _prepare(image, grid)
    d = d_out.astype(padded.dtype).reshape(batch, -1, channels)  # [B, P, C]
    d_image = d_grid = None
    if want_image:
        d_image = _image_gradient(padded.shape, w, d, height, width)
        d_image = d_image.astype(image.dtype)
    if want_grid:
        v = (_gather_window_rows if want_image else _gather_windows)(padded, w)
        d_grid = _grid_gradient(v, w, d, height, width)
        d_grid = d_grid.reshape(grid.shape).astype(grid.dtype)
    return d_image, d_grid


_bilinear_sample.defvjp(_bilinear_sample_fwd, _bilinear_sample_bwd, symbolic_zeros=True)


def bilinear_sample(image: jax.Array, grid: jax.Array, *, rematerialise: bool = False) -> jax.Array:
    """Samples ``image`` at ``grid`` (MatConvNet vl_nnbilinearsampler semantics).

    Args:
      image: ``[B, H, W, C]``, row 0 at the top.
      grid: ``[Bo, Ho, Wo, 2]`` of (x, y) in [-1, 1]; ``Bo`` a multiple of ``B``.
      rematerialise: wrap the sampler in ``jax.checkpoint``: a gradient keeps nothing of
        the forward pass (not the per-sample windows XLA would otherwise keep for the
        backward pass) and recomputes it. Same values and gradients; less memory for large
        outputs at the cost of a second forward pass.
    Returns:
      ``[Bo, Ho, Wo, C]`` in the image's dtype.
    """
    image, grid = jnp.asarray(image), jnp.asarray(grid)
    _check_inputs(image, grid)
    if rematerialise:
        return jax.checkpoint(_bilinear_sample)(image, grid)
    return _bilinear_sample(image, grid)


def bilinear_sample_reference(image: jax.Array, grid: jax.Array) -> jax.Array:
    """The same sampler as a plain gather differentiated by JAX's autodiff.

    Slower than ``bilinear_sample``; kept as an independent check of its custom
    VJP (``floor`` has a zero derivative, so autodiff yields the same one-sided
    grid derivative).

    Args:
      image: ``[B, H, W, C]``.
      grid: ``[Bo, Ho, Wo, 2]``.
    Returns:
      ``[Bo, Ho, Wo, C]``.
    """
    image, grid = jnp.asarray(image), jnp.asarray(grid)
    _check_inputs(image, grid)
    batch, height, width, channels = image.shape
    dtype = _compute_dtype(image, grid)
    input_dtype = image.dtype
    group = grid.shape[0] // batch
    image = jnp.repeat(image.astype(dtype), group, axis=0)
    gx = (grid[..., 0].astype(dtype) + 1) * 0.5 * (width - 1)
    gy = (grid[..., 1].astype(dtype) + 1) * 0.5 * (height - 1)
    x0 = jnp.floor(jax.lax.stop_gradient(gx))
    y0 = jnp.floor(jax.lax.stop_gradient(gy))
    out = 0
    n = jnp.arange(grid.shape[0])[:, None, None]
    for dy, dx in _NEIGHBOUR_OFFSETS:
        xi = (x0 + dx).astype(jnp.int32)
        yi = (y0 + dy).astype(jnp.int32)
        inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
        pixel = image[n, jnp.clip(yi, 0, height - 1), jnp.clip(xi, 0, width - 1)]
        wwx = (gx - x0) if dx else (1 - (gx - x0))
        wwy = (gy - y0) if dy else (1 - (gy - y0))
        out = out + jnp.where(inside, wwx * wwy, 0)[..., None] * pixel
    return out.astype(input_dtype)
