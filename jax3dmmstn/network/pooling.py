"""2 x 2 max pooling with stride 2 whose backward pass is elementwise.

``max_pool_2x2(x [B, H, W, C]) -> [B, H // 2, W // 2, C]``: the same values and the same
gradient as ``flax.linen.max_pool(x, (2, 2), strides=(2, 2))`` (VALID: an odd last row or
column is dropped), where each window's gradient goes to its first maximum in row-major
order (XLA's select-and-scatter with a ``>=`` select; MatConvNet's ``vl_nnpool`` also routes
it to one element).

Why not ``nn.max_pool``: its gradient is XLA's select-and-scatter, which the CPU backend runs
as a scalar loop. For VGG-16's five pools at B = 8 forward + backward took 414 ms against
torch's 172 ms; this formulation (a reshape, a max over the window axes and, backward, a
mask of the first maximum) takes 66 ms. ``benchmarks/train_step.py`` times the whole step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _windows(x):
    """``[B, H, W, C]`` -> the four window elements in row-major order, each ``[B, H/2, W/2, C]``."""
    batch, height, width, channels = x.shape
    x = x[:, : height // 2 * 2, : width // 2 * 2]
    x = x.reshape(batch, height // 2, 2, width // 2, 2, channels)
    return [x[:, :, i, :, j] for i in (0, 1) for j in (0, 1)]


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2 x 2 max pool, stride 2, VALID. ``[B, H, W, C] -> [B, H // 2, W // 2, C]``."""
    if x.ndim != 4 or min(x.shape[1:3]) < 2:
        raise ValueError(f"max_pool_2x2 needs [B, H, W, C] with H, W >= 2, got shape {x.shape}")
    a, b, c, d = _windows(x)
    return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


def _max_pool_fwd(x):
    return max_pool_2x2(x), x


def _max_pool_bwd(x, g):
    elements = _windows(x)
    top = jnp.maximum(jnp.maximum(elements[0], elements[1]), jnp.maximum(elements[2], elements[3]))
    taken = jnp.zeros(top.shape, jnp.bool_)
    grads = []
    for element in elements:
        # The first element equal to the maximum takes the whole gradient.
        first = (element == top) & ~taken
        taken = taken | first
        grads.append(jnp.where(first, g, jnp.zeros_like(g)))
    batch, height, width, channels = x.shape
    grid = jnp.stack(grads, 0).reshape(2, 2, batch, height // 2, width // 2, channels)
    dx = grid.transpose(2, 3, 0, 4, 1, 5).reshape(batch, height // 2 * 2, width // 2 * 2, channels)
    if dx.shape != x.shape:
        dx = jnp.pad(dx, ((0, 0), (0, height - dx.shape[1]), (0, width - dx.shape[2]), (0, 0)))
    return (dx,)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)
