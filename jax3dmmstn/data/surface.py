"""The face surface as the renderer draws it: subdivided samples, normals, texture.

The model's res x res vertex grid is too coarse to splat at the largest scales,
so every grid cell is subdivided f x f times (``cell_factors``, ``subdivision``).
The subdivided model (``subdivide``) is linear in alpha like the model, so the
STN chain projects it with one matrix product per coordinate
(``sample_model``). Per-vertex data for shading (normals to first order in
alpha, albedo, smooth blotch fields) is precomputed here in numpy.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jax3dmmstn.core import visibility
from jax3dmmstn.data.scenes import NUM_SMOOTH_FIELDS, RenderConfig, model_height
from jax3dmmstn.facemodel.morphable_model import MorphableModel

# Surface samples are at most this far apart (pixels) at the largest scale, so
# the gaps between rounded samples are at most one pixel wide; the renderer's two
# hole filling passes close those.
_MAX_SAMPLE_SPACING = 2.0
_MAX_CELL_FACTOR = 8
# Packing of a sample's colour interpolation: base vertex (16 bits), row and
# column fractions (7 bits each).
FRACTION_LEVELS = 127
# Skin colour of a model without albedo.
_DEFAULT_ALBEDO = (0.85, 0.68, 0.58)


def cell_factors(model: MorphableModel, config: RenderConfig) -> np.ndarray:
    """Subdivision factor of every grid cell, ``[R - 1, R - 1]`` int.

    A cell is split f x f times so that its samples are at most
    ``_MAX_SAMPLE_SPACING`` pixels apart at the largest scale the scenes use, for
    the mean shape stretched by two standard deviations of every component (so
    the mouth slit of an open mouth gets more samples than the forehead).
    ``config.upsample`` > 0 forces one factor for all cells.
    """
    res = model.resolution
    if config.upsample:
        return np.full((res - 1, res - 1), int(config.upsample))
    grid = model.mean.reshape(res, res, 3).astype(np.float64)
    basis = model.basis.reshape(res, res, 3, -1).astype(np.float64)

    def edge(a, b):
        (ga, ba), (gb, bb) = a, b
        return np.linalg.norm(gb - ga, axis=-1) + 2.0 * np.sqrt(
            np.sum(np.linalg.norm(bb - ba, axis=-2) ** 2, axis=-1)
        )

    corners = [
        (grid[r0 : res - 1 + r0, c0 : res - 1 + c0], basis[r0 : res - 1 + r0, c0 : res - 1 + c0])
        for r0, c0 in ((0, 0), (0, 1), (1, 0), (1, 1))
    ]
    longest = np.max(
        [
            edge(corners[0], corners[1]),
            edge(corners[2], corners[3]),
            edge(corners[0], corners[2]),
            edge(corners[1], corners[3]),
        ],
        axis=0,
    )
    max_scale = config.face_height[1] * config.image_size / model_height(model)
    return np.clip(np.ceil(longest * max_scale / _MAX_SAMPLE_SPACING), 1, _MAX_CELL_FACTOR).astype(
        np.int64
    )


def subdivision(res: int, factors: np.ndarray):
    """Samples of the grid surface: vertices first, then each cell's sub-samples.

    Args:
      res: grid side.
      factors: ``[R - 1, R - 1]`` per-cell subdivision factors.
    Returns:
      (corners ``[P, 4]`` int vertex indices (v00, v01, v10, v11 of the cell),
      weights ``[P, 4]`` bilinear weights, coords ``[P, 2]`` (row, col) grid
      coordinates). Sample k < N is vertex k.
    """
    k = np.arange(res * res)
    rows, cols = np.divmod(k, res)
    corner_list = [
        np.stack(
            [
                k,
                np.minimum(k + 1, res * res - 1),
                np.minimum(k + res, res * res - 1),
                np.minimum(k + res + 1, res * res - 1),
            ],
            1,
        )
    ]
    frac_list = [np.zeros((k.size, 2))]
    base_list = [np.stack([rows, cols], 1).astype(np.float64)]
    for f in np.unique(factors):
        if f < 2:
            continue
        cell_r, cell_c = np.nonzero(factors == f)
        sub = np.array([(a / f, b / f) for a in range(f) for b in range(f) if a or b])
        v00 = np.repeat(cell_r * res + cell_c, len(sub))
        corner_list.append(np.stack([v00, v00 + 1, v00 + res, v00 + res + 1], 1))
        frac_list.append(np.tile(sub, (cell_r.size, 1)))
        base_list.append(np.repeat(np.stack([cell_r, cell_c], 1), len(sub), axis=0))
    corners = np.concatenate(corner_list)
    frac = np.concatenate(frac_list)
    fr, fc = frac[:, 0], frac[:, 1]
    weights = np.stack([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc], 1)
    coords = np.concatenate(base_list) + frac
    return corners.astype(np.int64), weights, coords.astype(np.float32)


def subdivide(values: np.ndarray, corners: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-vertex ``[N, ...]`` values at the samples: ``[P, ...]`` (bilinear)."""
    values = np.asarray(values, np.float64)
    w = weights.reshape(weights.shape + (1,) * (values.ndim - 1))
    return np.sum(values[corners] * w, axis=1)


def sample_model(corners: np.ndarray, weights: np.ndarray, model: MorphableModel) -> np.ndarray:
    """``[3 (1 + D), P]`` float32: for each coordinate k, the samples' mean then basis rows
    (the subdivided model, laid out for ``FaceRenderer``'s one-product projection)."""
    sample_mean = subdivide(model.mean, corners, weights)  # [P, 3]
    sample_basis = subdivide(model.basis, corners, weights)  # [P, 3, D]
    stacked = np.concatenate([sample_mean.T[:, None, :], sample_basis.transpose(1, 2, 0)], 1)
    return stacked.reshape(-1, corners.shape[0]).astype(np.float32)


def sample_colour_info(corners: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``[P]`` int32: a sample's colour interpolation packed into one int (base vertex
    v00, row and column fractions in ``FRACTION_LEVELS`` steps)."""
    frac = np.rint((coords - np.floor(coords)) * FRACTION_LEVELS).astype(np.int64)
    return (corners[:, 0] | (frac[:, 0] << 16) | (frac[:, 1] << 23)).astype(np.int32)


def albedo(model: MorphableModel) -> np.ndarray:
    """``[N, 3]`` albedo: the model's, or a uniform skin colour when it has none."""
    if model.albedo is not None:
        return np.asarray(model.albedo)
    return np.tile(np.array([_DEFAULT_ALBEDO], np.float32), (model.n_vertices, 1))


def first_order_normals(model: MorphableModel):
    """Vertex normals to first order in alpha: ``n(alpha) ~ n0 + sum_d alpha_d dn_d``.

    The normals are the core's angle-weighted vertex normals of the model's mesh
    (``visibility.vertex_normals``, the formula the STN's visibility mask uses),
    of the mean shape and of the mean shape moved by one unit of each component.

    Returns ``n0`` ``[N, 3]`` and ``dn`` ``[N, 3, D]`` (unnormalised; the renderer
    normalises after rotating).
    """
    mean = np.asarray(model.mean, np.float32)
    shapes = np.concatenate([mean[None], mean[None] + np.moveaxis(model.basis, -1, 0)])
    normals = np.asarray(visibility.vertex_normals(jnp.asarray(shapes), model.faces))
    normal0 = normals[0]
    return normal0, np.moveaxis(normals[1:] - normal0, 0, -1)


def smooth_fields(model: MorphableModel) -> np.ndarray:
    """``[NUM_SMOOTH_FIELDS, N]`` smooth blotch patterns on the UV square (fixed;
    each image weights them randomly)."""
    rng = np.random.default_rng(777)
    u, v = model.uv[:, 0].astype(np.float64), model.uv[:, 1].astype(np.float64)
    fields = []
    for k in range(NUM_SMOOTH_FIELDS):
        freq = 3.0
        total = np.zeros_like(u)
        for _ in range(6):
            w = rng.normal(0, freq, 2)
            total += np.cos(2 * np.pi * (w[0] * u + w[1] * v) + rng.uniform(0, 2 * np.pi))
        fields.append(total / np.sqrt(3.0))
    return np.stack(fields).astype(np.float32)


def median_cell_edge(model: MorphableModel) -> float:
    """Median length of the mean shape's grid edges (model units)."""
    grid = model.mean.reshape(model.resolution, model.resolution, 3)
    edges = [np.linalg.norm(np.diff(grid, axis=a), axis=-1).ravel() for a in (0, 1)]
    return float(np.median(np.concatenate(edges)))
