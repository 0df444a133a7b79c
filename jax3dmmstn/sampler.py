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

import jax
import jax.numpy as jnp
import numpy as np

# The four bilinear neighbours as (row offset, column offset).
_NEIGHBOUR_OFFSETS = ((0, 0), (1, 0), (0, 1), (1, 1))


def _check_inputs(image, grid):
  """Shape checks with messages a user can act on (static shapes only)."""
  if image.ndim != 4:
    raise ValueError(f"image must be [B, H, W, C], got shape {image.shape}")
  if grid.ndim != 4 or grid.shape[-1] != 2:
    raise ValueError(f"grid must be [Bo, Ho, Wo, 2], got shape {grid.shape}")
  batch, out_batch = image.shape[0], grid.shape[0]
  if batch == 0 or out_batch % batch != 0:
    raise ValueError(
        f"the grid batch ({out_batch}) must be a multiple of the image batch "
        f"({batch})")
  if min(image.shape[1:3]) < 1:
    raise ValueError(f"image has an empty spatial size: {image.shape}")
  if not jnp.issubdtype(grid.dtype, jnp.floating):
    raise ValueError(f"grid must be floating point, got {grid.dtype}")
  if not isinstance(grid, jax.core.Tracer) and not np.all(
      np.isfinite(np.asarray(grid))):
    raise ValueError("grid has non-finite (NaN or inf) entries")


def _compute_dtype(image, grid):
  return jnp.promote_types(jnp.promote_types(image.dtype, grid.dtype),
                           jnp.float32)


def _sample_points(image_flat, grid_flat, height, width):
  """Neighbour indices, weights and values of every sample.

  Args:
    image_flat: ``[B * H * W, C]`` image with the batch folded into the rows.
    grid_flat: ``[B, P, 2]`` (x, y) in [-1, 1], in the compute dtype.
  Returns:
    (rows, valid, values, wx, wy): for each of the 4 neighbours (in
    ``_NEIGHBOUR_OFFSETS`` order) its row in ``image_flat`` ``[B, P]`` (clipped
    into its image, valid or not), whether it lies inside the image ``[B, P]``
    and its pixel values ``[B, P, C]`` (0 outside); and the fractional
    positions ``wx``, ``wy`` ``[B, P]`` inside the floor() cell.
  """
  batch = grid_flat.shape[0]
  px = (grid_flat[..., 0] + 1) * 0.5 * (width - 1)
  py = (grid_flat[..., 1] + 1) * 0.5 * (height - 1)
  x0 = jnp.floor(px)
  y0 = jnp.floor(py)
  wx = px - x0
  wy = py - y0
  x0 = x0.astype(jnp.int32)
  y0 = y0.astype(jnp.int32)
  first_row = (jnp.arange(batch, dtype=jnp.int32) * (height * width))[:, None]
  rows, valid, values = [], [], []
  for dy, dx in _NEIGHBOUR_OFFSETS:
    xi, yi = x0 + dx, y0 + dy
    inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
    row = first_row + (jnp.clip(yi, 0, height - 1) * width +
                       jnp.clip(xi, 0, width - 1))
    value = jnp.take(image_flat, row, axis=0, mode="clip")
    rows.append(row)
    valid.append(inside)
    values.append(jnp.where(inside[..., None], value, 0))
  return rows, valid, values, wx, wy


def _corner_weights(wx, wy, dy, dx):
  """Bilinear weight of neighbour (dy, dx): ``[B, P]``."""
  return (wx if dx else 1 - wx) * (wy if dy else 1 - wy)


def _flatten(image, grid, dtype):
  batch, height, width, channels = image.shape
  out_batch, out_h, out_w, _ = grid.shape
  group = out_batch // batch
  image_flat = image.astype(dtype).reshape(batch * height * width, channels)
  # Output n = b * group + j samples image b: put a group's grids side by side.
  grid_flat = grid.astype(dtype).reshape(batch, group * out_h * out_w, 2)
  return image_flat, grid_flat


def _forward(image, grid):
  dtype = _compute_dtype(image, grid)
  _, height, width, channels = image.shape
  image_flat, grid_flat = _flatten(image, grid, dtype)
  rows, valid, values, wx, wy = _sample_points(image_flat, grid_flat, height,
                                               width)
  out = 0
  for k, (dy, dx) in enumerate(_NEIGHBOUR_OFFSETS):
    out = out + _corner_weights(wx, wy, dy, dx)[..., None] * values[k]
  out = out.reshape(grid.shape[:3] + (channels,)).astype(image.dtype)
  return out, (rows, valid, values, wx, wy)


@jax.custom_vjp
def _bilinear_sample(image, grid):
  return _forward(image, grid)[0]


def _bilinear_sample_fwd(image, grid):
  out, saved = _forward(image, grid)
  # Residuals must be arrays: empty arrays carry the image's (H, W) and the
  # inputs' dtypes to the backward pass.
  image_tag = jnp.zeros((0,) + image.shape[1:3], image.dtype)
  grid_tag = jnp.zeros((0,), grid.dtype)
  return out, (saved, image_tag, grid_tag)


def _bilinear_sample_bwd(residuals, d_out):
  (rows, valid, values, wx, wy), image_tag, grid_tag = residuals
  _, height, width = image_tag.shape
  batch, channels = values[0].shape[0], values[0].shape[2]
  dtype = wx.dtype
  grid_shape = d_out.shape[:3] + (2,)
  d_out = d_out.astype(dtype).reshape(batch, -1, channels)  # [B, P, C]

  d_image = jnp.zeros((batch * height * width, channels), dtype)
  d_px = jnp.zeros_like(wx)
  d_py = jnp.zeros_like(wy)
  for k, (dy, dx) in enumerate(_NEIGHBOUR_OFFSETS):
    # d/dimage: the neighbour receives weight * dY (weight 0 outside the
    # image, so the clipped row it points at gains nothing).
    weight = jnp.where(valid[k], _corner_weights(wx, wy, dy, dx), 0)
    d_image = d_image.at[rows[k]].add(weight[..., None] * d_out,
                                      mode="promise_in_bounds")
    # d/dgrid: derivative of the interpolant inside the floor() cell; values
    # are 0 outside the image, so those neighbours add nothing.
    v_dot = jnp.sum(values[k] * d_out, axis=-1)
    d_px = d_px + (2 * dx - 1) * (wy if dy else 1 - wy) * v_dot
    d_py = d_py + (2 * dy - 1) * (wx if dx else 1 - wx) * v_dot
  d_image = d_image.reshape(batch, height, width, channels)
  d_grid = jnp.stack([d_px * (0.5 * (width - 1)), d_py * (0.5 * (height - 1))],
                     -1)
  return (d_image.astype(image_tag.dtype),
          d_grid.reshape(grid_shape).astype(grid_tag.dtype))


_bilinear_sample.defvjp(_bilinear_sample_fwd, _bilinear_sample_bwd)


def bilinear_sample(image: jax.Array, grid: jax.Array) -> jax.Array:
  """Samples ``image`` at ``grid`` (MatConvNet vl_nnbilinearsampler semantics).

  Args:
    image: ``[B, H, W, C]``, row 0 at the top.
    grid: ``[Bo, Ho, Wo, 2]`` of (x, y) in [-1, 1]; ``Bo`` a multiple of ``B``.
  Returns:
    ``[Bo, Ho, Wo, C]`` in the image's dtype.
  """
  image, grid = jnp.asarray(image), jnp.asarray(grid)
  _check_inputs(image, grid)
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
