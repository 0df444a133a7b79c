"""What surrounds the rendered face: cluttered backgrounds, occluders, sensor noise.

Backgrounds and occluders are the same kind of picture element, a *shape*: an
ellipse or rectangle with a colour and an optional square-wave grating, stored
as 13 numbers (kind, cx, cy, ax, ay, angle, r, g, b, grating frequency, grating
angle, phase, grating amplitude; pixels and radians). The background is a crop
of one picture from a bank of ``BANK_SIZE`` shape collages (made once, fixed
seed) under a random colour transform and gradient; occluders are up to
``NUM_OCCLUDERS`` shapes drawn in front of the face; sensor noise is a window of
one fixed noise tile.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SHAPE_PARAMS = 13
NUM_OCCLUDERS = 2
BANK_SIZE = 16
_BANK_SHAPES = 14
# The noise tile is this much larger than the image: each image reads a window
# at a random offset in [0, NOISE_MARGIN).
NOISE_MARGIN = 128


def random_shapes(
    rng: np.random.Generator,
    count: int,
    centre,
    spread,
    size_range,
    size: float,
    max_radius: float = np.inf,
) -> np.ndarray:
    """``[count, 13]`` shape parameters in pixels (see the module docstring)."""
    shapes = np.zeros((count, SHAPE_PARAMS), np.float32)
    shapes[:, 0] = rng.integers(0, 2, count)  # 0 ellipse, 1 rectangle
    shapes[:, 1:3] = np.asarray(centre) + rng.uniform(-spread, spread, (count, 2))
    half = rng.uniform(size_range[0], size_range[1], (count, 2)) * size
    shrink = np.minimum(1.0, max_radius / np.hypot(half[:, 0], half[:, 1]))
    shapes[:, 3:5] = np.maximum(half * shrink[:, None], 1.0)
    shapes[:, 5] = rng.uniform(0, np.pi, count)
    shapes[:, 6:9] = rng.uniform(0, 255, (count, 3))
    shapes[:, 9] = rng.uniform(0.05, 0.8, count) * (rng.uniform(size=count) < 0.6)
    shapes[:, 10] = rng.uniform(0, np.pi, count)
    shapes[:, 11] = rng.uniform(0, 2 * np.pi, count)
    shapes[:, 12] = rng.uniform(0.1, 0.5, count)
    return shapes


def shape_inside(shapes: jax.Array, cols: jax.Array, rows: jax.Array) -> jax.Array:
    """Whether pixels (cols, rows) lie in shapes ``[..., 13]`` (broadcasting)."""
    dx, dy = cols - shapes[..., 1], rows - shapes[..., 2]
    cos, sin = jnp.cos(shapes[..., 5]), jnp.sin(shapes[..., 5])
    u = (dx * cos + dy * sin) / shapes[..., 3]
    v = (dy * cos - dx * sin) / shapes[..., 4]
    return jnp.where(
        shapes[..., 0] > 0.5, jnp.maximum(jnp.abs(u), jnp.abs(v)) <= 1.0, u * u + v * v <= 1.0
    )


def _shape_colour(shapes: jax.Array, cols: jax.Array, rows: jax.Array) -> jax.Array:
    """RGB of shapes ``[..., 13]`` at pixels, with a square-wave grating. ``[..., 3]``."""
    phase = (
        shapes[..., 9] * (cols * jnp.cos(shapes[..., 10]) + rows * jnp.sin(shapes[..., 10]))
        + shapes[..., 11]
    )
    shade = 1.0 + shapes[..., 12] * jnp.sign(jnp.sin(phase)) * (shapes[..., 9] > 0)
    return jnp.stack([shapes[..., 6 + c] * shade for c in range(3)], -1)


def _paint_shapes(canvas: jax.Array, shapes: jax.Array) -> jax.Array:
    """Paints shapes ``[K, 13]`` in order onto one ``[H, W, 3]`` canvas."""
    height, width, _ = canvas.shape
    rows = jnp.arange(height, dtype=jnp.float32)[:, None]
    cols = jnp.arange(width, dtype=jnp.float32)[None, :]
    for k in range(shapes.shape[0]):
        inside = shape_inside(shapes[k], cols, rows)
        canvas = jnp.where(inside[..., None], _shape_colour(shapes[k], cols, rows), canvas)
    return canvas


def background_bank(size: int) -> np.ndarray:
    """``[BANK_SIZE, 3S/2, 3S/2, 3]`` uint8 cluttered pictures (fixed seed).

    Smooth colour fields with ellipses and rectangles (some with gratings), drawn
    at half resolution and upsampled: a slightly defocused background. Each image
    crops a random S x S window of one and recolours it.
    """
    rng = np.random.default_rng(20170101)
    big = size * 3 // 2
    half = big // 2
    fields = rng.uniform(20, 235, (BANK_SIZE, 4, 4, 3)).astype(np.float32)
    shapes = np.stack(
        [
            random_shapes(rng, _BANK_SHAPES, (half / 2, half / 2), half / 2, (0.04, 0.3), half)
            for _ in range(BANK_SIZE)
        ]
    )

    @jax.jit
    def draw(fields, shapes):
        base = jax.image.resize(fields, (BANK_SIZE, half, half, 3), "cubic")
        pictures = jax.vmap(_paint_shapes)(base, shapes)
        return jax.image.resize(pictures, (BANK_SIZE, big, big, 3), "linear")

    return np.clip(np.asarray(draw(fields, shapes)), 0, 255).astype(np.uint8)


def plain_bank(size: int) -> np.ndarray:
    """A one-picture bank of flat grey (``background="plain"``)."""
    return np.full((1, size * 3 // 2, size * 3 // 2, 3), 128, np.uint8)


def noise_tile(size: int) -> np.ndarray:
    """Fixed unit Gaussian noise; each image reads a random window of it (fresh
    normals per pixel would cost more than the rest of the render)."""
    side = size + NOISE_MARGIN
    return np.random.default_rng(12345).standard_normal((side, side, 3)).astype(np.float32)


def background(bank: jax.Array, params, size: int) -> jax.Array:
    """``[B, S, S, 3]`` float backgrounds: each image's crop of its bank picture,
    recoloured (gain, bias) with a linear gradient."""

    def crop(index, offset):
        return jax.lax.dynamic_slice(bank, (index, offset[0], offset[1], 0), (1, size, size, 3))[0]

    picture = jax.vmap(crop)(params["background_index"], params["background_offset"]).astype(
        jnp.float32
    )
    ramp = jnp.linspace(-1.0, 1.0, size, dtype=jnp.float32)
    gradient = params["background_gradient"]
    return (
        picture * params["background_gain"][:, None, None, :]
        + params["background_bias"][:, None, None, :]
        + 60.0
        * (
            gradient[:, 0, None, None, None] * ramp[None, :, None, None]
            + gradient[:, 1, None, None, None] * ramp[None, None, :, None]
        )
    )


def occluder_index(params, size: int) -> jax.Array:
    """``[B, S, S]`` int32: 0 where no occluder is, else 1 + the topmost occluder."""
    rows = jnp.arange(size, dtype=jnp.float32)[None, :, None]
    cols = jnp.arange(size, dtype=jnp.float32)[None, None, :]
    shapes = params["occluders"]
    index = jnp.zeros((shapes.shape[0], size, size), jnp.int32)
    for k in range(NUM_OCCLUDERS):
        shape = shapes[:, k, None, None, :]  # [B, 1, 1, 13]
        inside = shape_inside(shape, cols, rows) & (params["occluder_on"][:, k, None, None] > 0.5)
        index = jnp.where(inside, k + 1, index)
    return index


def paint_occluders(image: jax.Array, occluder: jax.Array, shapes: jax.Array) -> jax.Array:
    """Occluders over ``image`` ``[B, S, S, 3]`` where ``occluder`` (``occluder_index``)
    says: a flat colour with a soft shading ramp (plainer than the clutter)."""
    size = image.shape[1]
    rows = jnp.arange(size, dtype=jnp.float32)[None, :, None]
    cols = jnp.arange(size, dtype=jnp.float32)[None, None, :]
    for k in range(NUM_OCCLUDERS):
        shading = 1.0 + 0.002 * shapes[:, k, 12, None, None] * (
            cols - shapes[:, k, 1, None, None] + rows - shapes[:, k, 2, None, None]
        )
        colour_k = shapes[:, k, None, None, 6:9] * shading[..., None]
        image = jnp.where((occluder == k + 1)[..., None], colour_k, image)
    return image


def sensor_noise(tile: jax.Array, params, size: int) -> jax.Array:
    """``[B, S, S, 3]``: each image's window of the noise tile times its sigma."""

    def window(offset):
        return jax.lax.dynamic_slice(tile, (offset[0], offset[1], 0), (size, size, 3))

    return params["noise_sigma"][:, None, None, None] * jax.vmap(window)(params["noise_offset"])
