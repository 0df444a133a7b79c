"""Synthetic face renderer: a z-buffered, shaded, jitted JAX splatting rasteriser.

Geometry is the STN's own (``jax3dmmstn.core.geometry.project_theta``): the morphable
shape of ``alpha`` is rotated by ``R(r)``, projected orthographically along z,
scaled by ``s = 0.99 ** logs`` and translated by ``t``. The projected points are
in the image frame (x from the left, y from the bottom), and a surface point is
drawn on the pixel the STN's sampler reads for it
(``geometry.image_frame_to_pixels``: column ``x (W - 1) / W``, row
``(H - y)(H - 1) / H``). So sampling the rendered image with
``bilinear_sample(image, points_to_grid(points2d))`` gives back the shaded
texture of every visible vertex, and the returned landmarks are exactly
``project_theta(theta).points2d[:, landmark indices]``.

How it draws (per image, batched; three jitted stages, because XLA on CPU
would otherwise fuse the z-buffer passes into the per-pixel loop and redo them
for every channel):

1. Per-vertex shading on the model's res x res UV grid: Lambertian diffuse plus
   ambient plus a little Blinn-Phong specular, with a random light direction and
   colour, on the model's albedo times a random skin tone and smooth blotches.
   Normals are the mean shape's grid normals plus their first-order change with
   alpha (precomputed), rotated by R.
2. Splatting with a depth test: every grid cell is subdivided f x f times, f
   chosen per cell at construction so that neighbouring samples are at most
   ``_MAX_SAMPLE_SPACING`` pixels apart at the largest scale (the subdivided
   model, ``subdivide``, is linear in alpha like the model, so the STN chain
   projects it with one matrix product per coordinate). Each sample is rounded
   to its pixel and one ``scatter-min`` of an int32 key (quantised depth, sample
   id) keeps the front-most sample per pixel. That is a z-buffer: the nose hides
   the far cheek and the face hides the far ear, not just back-face culling. Two
   passes fill the one-pixel gaps between samples (and one-pixel specks of a far
   surface seen through such a gap).
3. Covered pixels take the vertex colours interpolated bilinearly at their
   winning sample; the rest show a cluttered background (a crop of a bank of random shape-and-grating pictures, made once,
   with a random colour transform and gradient per image); optional occluders
   (ellipses and rectangles) are drawn in front; then contrast, white balance,
   brightness and sensor noise.
4. A landmark is visible when it is inside the image, the z-buffer winner at its
   pixel is on the landmark's own surface (within ``_SAME_SURFACE_DISTANCE``
   model units of it along the grid and less than ``_FOLD_DEPTH`` in front, or
   not in front of it by more than ``_DEPTH_TOLERANCE``) and no occluder covers
   it.

All randomness is drawn in numpy from one Generator per image
(``sample_scenes``), so an image is a pure function of its seed, whatever else is
in the batch; ``FaceRenderer.render`` is a pure jitted function of the stacked
scene parameters (``SyntheticFaces`` renders in fixed chunks of 32, so an
example is bit-identical whatever batch it is drawn in).
Speed: see ``benchmarks/data_pipeline.py``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jax3dmmstn.core import geometry
from jax3dmmstn.core import theta as theta_lib
from jax3dmmstn.facemodel.morphable_model import MorphableModel

# Landmark visibility: the z-buffer winner at the landmark's pixel is "the same
# surface" when it lies within this distance of the landmark along the grid
# (UV cells times the model's median cell edge, model units: a pixel spans about
# two cells), or when it is not in front of the landmark by more than this depth
# (model units, mm).
_SAME_SURFACE_DISTANCE = 5.0
_DEPTH_TOLERANCE = 2.0
# ...but a winner this much in front is the surface folding over the landmark
# (the nose tip over a nostril), however close along the grid.
_FOLD_DEPTH = 6.0
# Surface samples are at most this far apart (pixels) at the largest scale, so
# the gaps between rounded samples are at most one pixel wide; the two hole
# filling passes close those.
_MAX_SAMPLE_SPACING = 2.0
# Hole filling replaces a pixel by its neighbours' surface when it is this much
# farther (model units) than both: a speck of a far surface seen through a gap.
_SPECK_DEPTH = 3.0
_SHAPE_PARAMS = 13  # kind, cx, cy, ax, ay, angle, r, g, b, freq, grating angle, phase, amp
_NUM_OCCLUDERS = 2
_BANK_SIZE = 16
_BANK_SHAPES = 14
_NOISE_MARGIN = 128
_NUM_SMOOTH_FIELDS = 4
_MAX_CELL_FACTOR = 8
# Packing of a sample's colour interpolation: base vertex (16 bits), row and
# column fractions (7 bits each).
_FRACTION_LEVELS = 127
_EMPTY = int(np.iinfo(np.int32).max)


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """Ranges of the random scene parameters.

    Attributes:
      image_size: side of the square output image (pixels).
      max_yaw, max_pitch, max_roll: pose ranges (degrees, uniform in +-max).
      face_height: range of the mean face's height as a fraction of the image
        height (sets the scale s).
      max_shift: translation jitter, fraction of the image size.
      alpha_clip: alpha ~ N(0, 1) truncated to +-alpha_clip.
      occluder_probability: chance of each of the two occluder slots.
      noise_sigma: largest sensor noise standard deviation (0..255 units).
      colour_jitter: strength of skin tone, light colour, white balance and
        background colour changes (0: none).
      background: "clutter" (the random bank) or "plain" (a flat grey, for tests).
      upsample: cell subdivision factor (0: automatic from the model and scale).
      landmark_set: model landmark set returned as ``landmarks``; all of the
        model's sets are also returned as ``landmarks_<name>``.
    """

    image_size: int = 224
    max_yaw: float = 75.0
    max_pitch: float = 30.0
    max_roll: float = 30.0
    face_height: Tuple[float, float] = (0.55, 0.85)
    max_shift: float = 0.08
    alpha_clip: float = 3.0
    occluder_probability: float = 0.15
    noise_sigma: float = 4.0
    colour_jitter: float = 1.0
    background: str = "clutter"
    upsample: int = 0
    landmark_set: str = "aflw21"

    def __post_init__(self):
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        lo, hi = self.face_height
        if not 0 < lo <= hi:
            raise ValueError(f"face_height must be 0 < lo <= hi, got {self.face_height}")
        if not 0 <= self.occluder_probability <= 1:
            raise ValueError("occluder_probability must be in [0, 1]")
        if self.background not in ("clutter", "plain"):
            raise ValueError(f"background must be 'clutter' or 'plain', got {self.background!r}")
        if self.upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {self.upsample}")


def model_height(model: MorphableModel) -> float:
    """Vertical extent of the mean shape (model units)."""
    return float(np.ptp(model.mean[:, 1]))


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


# ------------------------------------------------------------------------------
# Random scenes (numpy).
# ------------------------------------------------------------------------------
def _random_shapes(
    rng: np.random.Generator,
    count: int,
    centre,
    spread,
    size_range,
    size: float,
    max_radius: float = np.inf,
) -> np.ndarray:
    """``[count, 13]`` shape parameters in pixels (see ``_shape_inside``)."""
    shapes = np.zeros((count, _SHAPE_PARAMS), np.float32)
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


def _occluder_window(config: RenderConfig) -> int:
    return min(config.image_size, 128)


def _sample_raw(
    rng: np.random.Generator,
    model: MorphableModel,
    config: RenderConfig,
    identity_alpha: Optional[np.ndarray],
) -> Dict[str, np.ndarray]:
    """The random numbers of one image (everything but the rotation vector)."""
    size = config.image_size
    jitter = config.colour_jitter
    ypr = np.array(
        [
            rng.uniform(-config.max_yaw, config.max_yaw),
            rng.uniform(-config.max_pitch, config.max_pitch),
            rng.uniform(-config.max_roll, config.max_roll),
        ],
        np.float32,
    )
    face_size = rng.uniform(*config.face_height) * size
    scale = face_size / model_height(model)
    logs = math.log(scale) / math.log(geometry.MATCONVNET_SCALE_BASE)
    t = size / 2 + rng.uniform(-config.max_shift, config.max_shift, 2) * size
    clip = config.alpha_clip
    alpha = np.clip(rng.standard_normal(model.n_components), -clip, clip)
    if identity_alpha is not None:
        alpha[: model.n_identity] = identity_alpha
    light = np.array([rng.uniform(-1, 1), rng.uniform(-0.6, 1.0), rng.uniform(0.3, 1.2)])
    light /= np.linalg.norm(light)
    darkness = rng.uniform(0, 1) ** 1.5 * jitter
    tone = (1 - darkness) * np.array([1.08, 1.05, 1.02]) + darkness * np.array([0.55, 0.42, 0.36])
    tone *= 1 + 0.06 * jitter * rng.uniform(-1, 1, 3)
    face_centre = np.array([t[0], size - t[1]])  # (col, row), near enough
    window = _occluder_window(config)
    occluders = _random_shapes(
        rng,
        _NUM_OCCLUDERS,
        face_centre,
        0.45 * face_size,
        (0.08, 0.3),
        face_size,
        max_radius=window / 2 - 2,
    )
    occluders[:, 12] *= 0.4  # plainer objects than the clutter
    return {
        "pose": ypr,
        "translation": np.asarray(t, np.float32),
        "log_scale": np.float32(logs),
        "alpha": np.asarray(alpha, np.float32),
        "light_direction": light.astype(np.float32),
        "ambient": np.float32(rng.uniform(0.25, 0.6)),
        "diffuse": np.float32(rng.uniform(0.45, 0.9)),
        "specular": np.float32(rng.uniform(0.0, 0.15)),
        "shininess": np.float32(rng.uniform(8, 30)),
        "light_colour": (1 + 0.12 * jitter * rng.uniform(-1, 1, 3)).astype(np.float32),
        "skin_tone": tone.astype(np.float32),
        "texture_weights": (jitter * rng.normal(0, 0.05, _NUM_SMOOTH_FIELDS)).astype(np.float32),
        "background_index": np.int32(rng.integers(0, _BANK_SIZE)),
        "background_offset": rng.integers(0, size // 2 + 1, 2).astype(np.int32),
        "background_gain": (1 + 0.35 * jitter * rng.uniform(-1, 1, 3)).astype(np.float32),
        "background_bias": (40 * jitter * rng.uniform(-1, 1, 3)).astype(np.float32),
        "background_gradient": (0.4 * jitter * rng.uniform(-1, 1, 3)).astype(np.float32),
        "occluders": occluders,
        "occluder_on": (rng.uniform(size=_NUM_OCCLUDERS) < config.occluder_probability).astype(
            np.float32
        ),
        "contrast": np.float32(1 + 0.15 * jitter * rng.uniform(-1, 1)),
        "brightness": np.float32(12 * jitter * rng.uniform(-1, 1)),
        "white_balance": (1 + 0.06 * jitter * rng.uniform(-1, 1, 3)).astype(np.float32),
        "noise_sigma": np.float32(config.noise_sigma * rng.uniform(0, 1)),
        "noise_offset": rng.integers(0, _NOISE_MARGIN, 2).astype(np.int32),
    }


def sample_scenes(
    rngs: Sequence[np.random.Generator],
    model: MorphableModel,
    config: RenderConfig,
    identity_alphas: Optional[Sequence[Optional[np.ndarray]]] = None,
) -> Dict[str, np.ndarray]:
    """Random scenes, one Generator per image, stacked: dict of ``[B, ...]`` arrays.

    ``theta`` ``[B, 6 + D]`` is in the STN's parametrisation (r axis-angle of the
    drawn (yaw, pitch, roll) ``pose``, t pixels, logs with s = 0.99 ** logs,
    alpha); ``identity_alphas[i]`` (``[n_identity]`` or None) fixes the identity
    part of image i's alpha.
    """
    if identity_alphas is None:
        identity_alphas = [None] * len(rngs)
    raws = [_sample_raw(rng, model, config, ident) for rng, ident in zip(rngs, identity_alphas)]
    scenes = {k: np.stack([raw[k] for raw in raws]) for k in raws[0]}
    rotation = geometry.yaw_pitch_roll_to_matrix(scenes["pose"].astype(np.float32))
    r = np.asarray(geometry.matrix_to_axis_angle(rotation), np.float32)
    parts = (scenes.pop("translation"), scenes.pop("log_scale"), scenes.pop("alpha"))
    scenes["theta"] = theta_lib.merge(r, *parts).astype(np.float32)
    return scenes


# ------------------------------------------------------------------------------
# Drawing helpers (JAX).
# ------------------------------------------------------------------------------
def _shape_inside(shapes: jax.Array, cols: jax.Array, rows: jax.Array) -> jax.Array:
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
        inside = _shape_inside(shapes[k], cols, rows)
        canvas = jnp.where(inside[..., None], _shape_colour(shapes[k], cols, rows), canvas)
    return canvas


def _background_bank(size: int) -> np.ndarray:
    """``[_BANK_SIZE, 3S/2, 3S/2, 3]`` uint8 cluttered pictures (fixed seed).

    Smooth colour fields with ellipses and rectangles (some with gratings), drawn
    at half resolution and upsampled: a slightly defocused background. Each image
    crops a random S x S window of one and recolours it.
    """
    rng = np.random.default_rng(20170101)
    big = size * 3 // 2
    half = big // 2
    fields = rng.uniform(20, 235, (_BANK_SIZE, 4, 4, 3)).astype(np.float32)
    shapes = np.stack(
        [
            _random_shapes(rng, _BANK_SHAPES, (half / 2, half / 2), half / 2, (0.04, 0.3), half)
            for _ in range(_BANK_SIZE)
        ]
    )

    @jax.jit
    def draw(fields, shapes):
        base = jax.image.resize(fields, (_BANK_SIZE, half, half, 3), "cubic")
        pictures = jax.vmap(_paint_shapes)(base, shapes)
        return jax.image.resize(pictures, (_BANK_SIZE, big, big, 3), "linear")

    return np.clip(np.asarray(draw(fields, shapes)), 0, 255).astype(np.uint8)


def _noise_tile(size: int) -> np.ndarray:
    """Fixed unit Gaussian noise; each image reads a random window of it (fresh
    normals per pixel would cost more than the rest of the render)."""
    side = size + _NOISE_MARGIN
    return np.random.default_rng(12345).standard_normal((side, side, 3)).astype(np.float32)


def _grid_normals_np(points: np.ndarray, res: int) -> np.ndarray:
    """Unnormalised outward normals ``[N, 3]`` of a grid surface ``[N, 3]`` (row 0 top)."""
    grid = points.reshape(res, res, 3).astype(np.float64)
    d_row = np.gradient(grid, axis=0)
    d_col = np.gradient(grid, axis=1)
    # Rows go down the face (-y), columns to the right (+x): row x col = +z.
    return np.cross(d_row, d_col).reshape(-1, 3)


def _smooth_fields(model: MorphableModel) -> np.ndarray:
    """``[_NUM_SMOOTH_FIELDS, N]`` smooth blotch patterns on the UV square (fixed;
    each image weights them randomly)."""
    rng = np.random.default_rng(777)
    u, v = model.uv[:, 0].astype(np.float64), model.uv[:, 1].astype(np.float64)
    fields = []
    for k in range(_NUM_SMOOTH_FIELDS):
        freq = 3.0
        total = np.zeros_like(u)
        for _ in range(6):
            w = rng.normal(0, freq, 2)
            total += np.cos(2 * np.pi * (w[0] * u + w[1] * v) + rng.uniform(0, 2 * np.pi))
        fields.append(total / np.sqrt(3.0))
    return np.stack(fields).astype(np.float32)


def _fill_holes(keys: jax.Array, threshold: jax.Array) -> jax.Array:
    """One pass over ``[B, H, W]`` z-buffer keys: closes one-pixel holes.

    A pixel that is empty, or farther by more than ``threshold`` (key units,
    ``[B, 1, 1]``) than both of two opposite neighbours (a speck of a far surface
    seen through a gap in a near one), takes the farther key of that neighbour
    pair: a real sample of the enclosing surface.
    """
    padded = jnp.pad(keys, ((0, 0), (1, 1), (1, 1)), constant_values=_EMPTY)
    up, down = padded[:, :-2, 1:-1], padded[:, 2:, 1:-1]
    left, right = padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]
    vertical = jnp.where((up != _EMPTY) & (down != _EMPTY), jnp.maximum(up, down), _EMPTY)
    horizontal = jnp.where((left != _EMPTY) & (right != _EMPTY), jnp.maximum(left, right), _EMPTY)
    candidate = jnp.minimum(vertical, horizontal)
    # keys - candidate cannot overflow: both lie in [0, 2^31 - 1].
    return jnp.where((candidate != _EMPTY) & (keys - candidate > threshold), candidate, keys)


# ------------------------------------------------------------------------------
# The renderer.
# ------------------------------------------------------------------------------
class FaceRenderer:
    """Renders batches of synthetic faces of one model (a jitted pure function).

    Args:
      model: a grid MorphableModel (``resolution > 0``); its albedo (a uniform skin
        colour when it has none).
      config: RenderConfig.
    """

    def __init__(self, model: MorphableModel, config: RenderConfig = RenderConfig()):
        if not model.resolution:
            raise ValueError("the renderer needs a grid model (resolution > 0)")
        if config.landmark_set not in model.landmarks:
            raise ValueError(
                f"model has no landmark set {config.landmark_set!r} "
                f"(it has {sorted(model.landmarks)})"
            )
        self.model = model
        self.config = config
        res = model.resolution
        self.cell_factors = cell_factors(model, config)
        corners, weights, coords = subdivision(res, self.cell_factors)
        n_samples = coords.shape[0]
        self.num_samples = n_samples
        self._id_bits = max(1, int(math.ceil(math.log2(n_samples))))
        if self._id_bits > 22 or model.n_vertices > 2**16:
            raise ValueError(
                f"{n_samples} surface samples of a {model.n_vertices}-vertex model "
                "are too many to pack into int32 z-buffer keys"
            )
        albedo = (
            model.albedo
            if model.albedo is not None
            else np.tile(np.array([[0.85, 0.68, 0.58]], np.float32), (model.n_vertices, 1))
        )
        # Normals to first order in alpha: n(alpha) ~ n0 + sum_d alpha_d dn_d.
        normal0 = _grid_normals_np(model.mean, res)
        d_normals = np.stack(
            [
                _grid_normals_np(model.mean + model.basis[:, :, d], res) - normal0
                for d in range(model.n_components)
            ],
            -1,
        )
        # The subdivided model: its shape is linear in alpha like the model's, so the
        # STN chain applied to it gives the bilinear samples of the projected cells.
        sample_mean = subdivide(model.mean, corners, weights)  # [P, 3]
        sample_basis = subdivide(model.basis, corners, weights)  # [P, 3, D]
        # Colour interpolation of a sample, packed into one int32: base vertex v00,
        # row and column fractions.
        frac = np.rint((coords - np.floor(coords)) * _FRACTION_LEVELS).astype(np.int64)
        sample_colour_info = corners[:, 0] | (frac[:, 0] << 16) | (frac[:, 1] << 23)
        size = config.image_size
        if config.background == "clutter":
            bank = _background_bank(size)
        else:
            bank = np.full((1, size * 3 // 2, size * 3 // 2, 3), 128, np.uint8)
        self._arrays = {
            "mean": jnp.asarray(model.mean),
            "basis": jnp.asarray(model.basis),
            # [3 (1 + D), P]: for each coordinate k, the samples' mean then basis rows.
            "sample_model": jnp.asarray(
                np.concatenate(
                    [sample_mean.T[:, None, :], sample_basis.transpose(1, 2, 0)], 1
                ).reshape(-1, n_samples),
                jnp.float32,
            ),
            "sample_colour_info": jnp.asarray(sample_colour_info, jnp.int32),
            "sample_coords": jnp.asarray(coords),
            "normal0": jnp.asarray(normal0.T, jnp.float32),  # [3, N]
            "d_normals": jnp.asarray(d_normals.transpose(1, 2, 0), jnp.float32),  # [3, D, N]
            "albedo": jnp.asarray(np.asarray(albedo).T),  # [3, N]
            "texture_fields": jnp.asarray(_smooth_fields(model)),
            "background_bank": jnp.asarray(bank),
            "noise": jnp.asarray(_noise_tile(size)),
        }
        self._landmark_index = {k: np.asarray(v) for k, v in model.landmarks.items()}
        grid = model.mean.reshape(res, res, 3)
        median_edge = float(
            np.median(
                np.concatenate(
                    [
                        np.linalg.norm(np.diff(grid, axis=0), axis=-1).ravel(),
                        np.linalg.norm(np.diff(grid, axis=1), axis=-1).ravel(),
                    ]
                )
            )
        )
        #: Grid cells within which a z-buffer winner counts as the landmark's surface.
        self.same_surface_cells = _SAME_SURFACE_DISTANCE / median_edge
        # Three jitted stages: XLA on CPU would otherwise fuse the z-buffer hole
        # filling and the colour gathers into the per-pixel output loop and
        # recompute them for every channel (several times slower).
        self._surface = jax.jit(self._surface_stage)
        self._fill = jax.jit(_fill_holes)
        self._pixels = jax.jit(self._pixel_stage)
        self._colours = jax.jit(self._colour_stage)

    def sample_scenes(
        self, rngs: Sequence[np.random.Generator], identity_alphas=None
    ) -> Dict[str, np.ndarray]:
        """``sample_scenes`` for this renderer's model and config."""
        return sample_scenes(rngs, self.model, self.config, identity_alphas)

    def render(self, scenes: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Draws a batch of scenes (``sample_scenes`` output, ``[B, ...]`` arrays).

        Returns numpy arrays: ``image`` uint8 ``[B, S, S, 3]``, ``theta``, ``pose``,
        ``landmarks`` ``[B, L, 2]`` / ``landmark_visible`` ``[B, L]`` of
        ``config.landmark_set``, ``landmarks_<set>`` / ``landmark_visible_<set>``
        for every set of the model, ``coverage`` bool ``[B, S, S]`` (face pixels) and
        ``depth`` ``[B, S, S]`` (rotated z of the visible surface, -inf elsewhere).
        """
        params = {k: v for k, v in scenes.items() if k != "pose"}
        if self.config.background != "clutter":
            params["background_index"] = np.zeros_like(scenes["background_index"])
        out = {k: np.asarray(v) for k, v in jax.device_get(self._render_device(params)).items()}
        out["theta"] = np.asarray(scenes["theta"], np.float32)
        out["pose"] = np.asarray(scenes["pose"], np.float32)
        main = self.config.landmark_set
        out["landmarks"] = out[f"landmarks_{main}"]
        out["landmark_visible"] = out[f"landmark_visible_{main}"]
        return out

    def _render_device(self, params):
        """The three stages; returns device arrays."""
        params = {k: jnp.asarray(v) for k, v in params.items()}
        colour, zbuffer, threshold, z_near, z_range = self._surface(self._arrays, params)
        zbuffer = self._fill(self._fill(zbuffer, threshold), threshold)
        face, occluder, out = self._pixels(self._arrays, params, colour, zbuffer, z_near, z_range)
        out["image"] = self._colours(self._arrays, params, face, out["coverage"], occluder)
        return out

    def _project_samples(self, arrays, theta):
        """The STN chain on the subdivided model: (column, row, depth), each ``[B, P]``.

        The chain of ``geometry.project_theta`` (shape = mean + basis alpha, R(r),
        orthographic projection, s = 0.99 ** logs, t) followed by
        ``geometry.image_frame_to_pixels`` is affine in the model's rows, so each
        output is one matrix product of per-image coefficients (R, s, t, alpha and
        the pixel map folded together) with the stacked [mean; basis] of the samples:
        the same numbers, computed by BLAS instead of 10^5-point elementwise loops.
        """
        size = self.config.image_size
        r, t, logs, alpha = theta_lib.split(theta)
        rot = geometry.axis_angle_to_matrix(r)
        scale = geometry.log_scale_to_scale(logs)
        # image_frame_to_pixels is affine per axis: col = c0 + cx x, row = r0 + ry y.
        probe = geometry.image_frame_to_pixels(jnp.array([[0.0, 0.0], [1.0, 1.0]]), (size, size))
        origin, gain = probe[0], probe[1] - probe[0]
        ones = jnp.ones_like(alpha[:, :1])
        weights = jnp.concatenate([ones, alpha], 1)  # [B, 1 + D]

        def output(row_of_r, coordinate_gain):
            # coef[b, k, j] = gain * R[b, i, k] * (1, alpha_b)[j]
            coef = coordinate_gain[:, None, None] * rot[:, row_of_r, :, None] * weights[:, None, :]
            return coef.reshape(coef.shape[0], -1) @ arrays["sample_model"]

        pixel_gain = gain[None] * scale[:, None]  # [B, 2]
        col = output(0, pixel_gain[:, 0]) + (origin[0] + gain[0] * t[:, 0])[:, None]
        row = output(1, pixel_gain[:, 1]) + (origin[1] + gain[1] * t[:, 1])[:, None]
        depth = output(2, jnp.ones_like(scale))
        return col, row, depth

    def sample_positions(self, theta) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(column, row, depth) ``[B, P]`` of every surface sample for theta ``[B, 6 + D]``;
        samples ``[:N]`` are the vertices (for checking against ``project_theta``)."""
        col, row, depth = jax.jit(self._project_samples)(self._arrays, jnp.asarray(theta))
        return np.asarray(col), np.asarray(row), np.asarray(depth)

    def _surface_stage(self, arrays, params):
        """Per-vertex colours ``[B, N, 3]`` and the raw z-buffer ``[B, S, S]`` keys."""
        size = self.config.image_size
        batch = params["theta"].shape[0]
        id_bits = self._id_bits
        depth_bits = 31 - id_bits
        theta = params["theta"]

        # 1. Per-vertex shading, one [B, N] array per coordinate and channel (the
        # [B, N, 3] form makes XLA recompute the reductions per channel).
        rot = geometry.axis_angle_to_matrix(theta_lib.rotation(theta))
        alpha = theta_lib.shape_weights(theta)
        model_normal = [
            arrays["normal0"][k][None] + alpha @ arrays["d_normals"][k] for k in range(3)
        ]
        normal = [sum(rot[:, i, j, None] * model_normal[j] for j in range(3)) for i in range(3)]
        inv_norm = jax.lax.rsqrt(sum(n * n for n in normal) + 1e-20)
        normal = [n * inv_norm for n in normal]
        light = params["light_direction"]
        lambert = jnp.maximum(sum(normal[k] * light[:, k, None] for k in range(3)), 0.0)
        half_vector = light + jnp.array([0.0, 0.0, 1.0])
        half_vector = half_vector / jnp.linalg.norm(half_vector, axis=-1, keepdims=True)
        n_dot_h = jnp.maximum(sum(normal[k] * half_vector[:, k, None] for k in range(3)), 1e-6)
        specular = params["specular"][:, None] * jnp.exp(
            params["shininess"][:, None] * jnp.log(n_dot_h)
        )
        texture = 1.0 + params["texture_weights"] @ arrays["texture_fields"]  # [B, N]
        shade = (params["ambient"][:, None] + params["diffuse"][:, None] * lambert) * texture
        channels = [
            jnp.clip(
                jnp.round(
                    255.0
                    * (
                        arrays["albedo"][c][None] * params["skin_tone"][:, c, None] * shade
                        + specular
                    )
                    * params["light_colour"][:, c, None]
                ),
                0,
                255,
            ).astype(jnp.int32)
            for c in range(3)
        ]
        # One int32 per vertex (R | G << 8 | B << 16): one gather per corner later.
        colour = channels[0] | (channels[1] << 8) | (channels[2] << 16)  # [B, N]

        # 2. Splat the subdivided surface into the z-buffer, fill holes.
        col, row, depth = self._project_samples(arrays, theta)
        n_samples = col.shape[1]
        col = jnp.floor(col + 0.5).astype(jnp.int32)  # nearest pixel centre
        row = jnp.floor(row + 0.5).astype(jnp.int32)
        inside = (col >= 0) & (col < size) & (row >= 0) & (row < size)
        plane = size * size + 1  # one spare slot per image for samples outside it
        pixel = jnp.where(inside, row * size + col, size * size)
        z_near = jnp.max(depth, axis=1, keepdims=True)
        z_range = jnp.maximum(z_near - jnp.min(depth, axis=1, keepdims=True), 1e-6)
        levels = 2**depth_bits - 1
        quantised = jnp.clip((z_near - depth) / z_range * levels, 0, levels)
        key = (quantised.astype(jnp.int32) << id_bits) | jnp.arange(n_samples, dtype=jnp.int32)[
            None
        ]
        flat = (pixel + plane * jnp.arange(batch, dtype=jnp.int32)[:, None]).reshape(-1)
        zbuffer = jnp.full((batch * plane,), _EMPTY, jnp.int32)
        zbuffer = zbuffer.at[flat].min(key.reshape(-1), mode="promise_in_bounds")
        zbuffer = zbuffer.reshape(batch, plane)[:, :-1].reshape(batch, size, size)
        # Specks: a sample more than _SPECK_DEPTH behind both neighbours of a pair.
        threshold = ((_SPECK_DEPTH / z_range * levels).astype(jnp.int32) << id_bits)[:, :, None]
        return colour, zbuffer, threshold, z_near, z_range

    def _face_colours(self, arrays, colour, winner):
        """Bilinearly interpolated packed colour of each pixel's winning sample.

        Args:
          colour: ``[B, N]`` packed vertex colours.
          winner: ``[B, S*S]`` sample ids.
        Returns:
          ``[B, S*S]`` packed RGB.
        """
        batch, n_vertices = colour.shape
        res = self.model.resolution
        info = jnp.take(arrays["sample_colour_info"], winner)
        base = (info & 0xFFFF) + n_vertices * jnp.arange(batch, dtype=jnp.int32)[:, None]
        fr = ((info >> 16) & 0x7F).astype(jnp.float32) / _FRACTION_LEVELS
        fc = ((info >> 23) & 0x7F).astype(jnp.float32) / _FRACTION_LEVELS
        flat = colour.reshape(-1)
        last = flat.shape[0] - 1
        corners = [
            jnp.take(flat, jnp.minimum(base + offset, last)) for offset in (0, 1, res, res + 1)
        ]
        weights = [(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc]
        packed = 0
        for c in range(3):
            value = sum(
                w * ((v >> (8 * c)) & 0xFF).astype(jnp.float32) for w, v in zip(weights, corners)
            )
            packed = packed | (jnp.round(value).astype(jnp.int32) << (8 * c))
        return packed

    def _pixel_stage(self, arrays, params, colour, zbuffer, z_near, z_range):
        """Per-pixel indices from the filled z-buffer (all ``[B, S, S]``) and landmarks.

        Returns the packed face colour (bilinear in the cell of the winning
        sample), the occluder index (0: none, k + 1: occluder k) and a dict with
        coverage, depth and the landmarks.
        """
        size = self.config.image_size
        batch = params["theta"].shape[0]
        id_bits = self._id_bits
        levels = 2 ** (31 - id_bits) - 1
        theta = params["theta"]
        covered = zbuffer != _EMPTY
        winner = jnp.where(covered, zbuffer & ((1 << id_bits) - 1), 0).reshape(batch, -1)
        front_depth = (
            z_near[:, :, None]
            - (zbuffer >> id_bits).astype(jnp.float32) / levels * z_range[:, :, None]
        )
        face = self._face_colours(arrays, colour, winner).reshape(batch, size, size)
        occluder = self._occluder_index(params)
        out = {"coverage": covered, "depth": jnp.where(covered, front_depth, -jnp.inf)}

        # Landmarks (the STN's own projection of the landmark vertices) and their
        # visibility from the z-buffer.
        flat_covered = covered.reshape(batch, -1)
        flat_depth = front_depth.reshape(batch, -1)
        flat_occluder = occluder.reshape(batch, -1)
        res = self.model.resolution
        for name, index in self._landmark_index.items():
            proj = geometry.project_theta(theta, arrays["mean"][index], arrays["basis"][index])
            points = proj.points2d
            # The z-buffer is read at the landmark's pixel. (Reading the 2 x 2 pixels
            # around it and taking any would call landmarks just behind a silhouette
            # visible; this way ambiguous landmarks at silhouettes count as hidden.)
            pix = jnp.round(geometry.image_frame_to_pixels(points, (size, size))).astype(jnp.int32)
            lm_inside = jnp.all((pix >= 0) & (pix < size), axis=-1)
            pix = jnp.clip(pix, 0, size - 1)
            lm_pixel = pix[..., 1] * size + pix[..., 0]
            w = jnp.take_along_axis(winner, lm_pixel, axis=1)
            w_coords = arrays["sample_coords"][w]  # [B, L, 2] (row, col) in grid cells
            own = jnp.stack([index // res, index % res], -1).astype(jnp.float32)
            cell_distance = jnp.max(jnp.abs(w_coords - own[None]), axis=-1)
            in_front = jnp.take_along_axis(flat_depth, lm_pixel, axis=1) - proj.rotated[..., 2]
            same_surface = (
                (cell_distance <= self.same_surface_cells) & (in_front <= _FOLD_DEPTH)
            ) | (in_front <= _DEPTH_TOLERANCE)
            occluded = jnp.take_along_axis(flat_occluder, lm_pixel, axis=1) > 0
            visible = (
                lm_inside
                & jnp.take_along_axis(flat_covered, lm_pixel, axis=1)
                & same_surface
                & ~occluded
            )
            out[f"landmarks_{name}"] = points
            out[f"landmark_visible_{name}"] = visible.astype(jnp.float32)
        return face, occluder, out

    def _colour_stage(self, arrays, params, face, covered, occluder):
        """The uint8 image ``[B, S, S, 3]`` from the per-pixel indices."""
        size = self.config.image_size

        def crop(index, offset):
            return jax.lax.dynamic_slice(
                arrays["background_bank"], (index, offset[0], offset[1], 0), (1, size, size, 3)
            )[0]

        background = jax.vmap(crop)(params["background_index"], params["background_offset"]).astype(
            jnp.float32
        )
        ramp = jnp.linspace(-1.0, 1.0, size, dtype=jnp.float32)
        gradient = params["background_gradient"]
        background = (
            background * params["background_gain"][:, None, None, :]
            + params["background_bias"][:, None, None, :]
            + 60.0
            * (
                gradient[:, 0, None, None, None] * ramp[None, :, None, None]
                + gradient[:, 1, None, None, None] * ramp[None, None, :, None]
            )
        )
        face = jnp.stack([((face >> (8 * c)) & 0xFF).astype(jnp.float32) for c in range(3)], -1)
        image = jnp.where(covered[..., None], face, background)
        # Occluders: flat colour with a soft shading ramp.
        shapes = params["occluders"]
        rows = jnp.arange(size, dtype=jnp.float32)[None, :, None]
        cols = jnp.arange(size, dtype=jnp.float32)[None, None, :]
        for k in range(_NUM_OCCLUDERS):
            shading = 1.0 + 0.002 * shapes[:, k, 12, None, None] * (
                cols - shapes[:, k, 1, None, None] + rows - shapes[:, k, 2, None, None]
            )
            colour_k = shapes[:, k, None, None, 6:9] * shading[..., None]
            image = jnp.where((occluder == k + 1)[..., None], colour_k, image)
        image = (image - 128.0) * params["contrast"][:, None, None, None] + 128.0
        image = (
            image * params["white_balance"][:, None, None, :]
            + params["brightness"][:, None, None, None]
        )

        def noise_window(offset):
            return jax.lax.dynamic_slice(
                arrays["noise"], (offset[0], offset[1], 0), (size, size, 3)
            )

        image = image + params["noise_sigma"][:, None, None, None] * jax.vmap(noise_window)(
            params["noise_offset"]
        )
        return jnp.clip(jnp.round(image), 0, 255).astype(jnp.uint8)

    def _occluder_index(self, params) -> jax.Array:
        """``[B, S, S]`` int32: 0 where no occluder is, else 1 + the topmost occluder."""
        size = self.config.image_size
        rows = jnp.arange(size, dtype=jnp.float32)[None, :, None]
        cols = jnp.arange(size, dtype=jnp.float32)[None, None, :]
        shapes = params["occluders"]
        index = jnp.zeros((shapes.shape[0], size, size), jnp.int32)
        for k in range(_NUM_OCCLUDERS):
            shape = shapes[:, k, None, None, :]  # [B, 1, 1, 13]
            inside = _shape_inside(shape, cols, rows) & (
                params["occluder_on"][:, k, None, None] > 0.5
            )
            index = jnp.where(inside, k + 1, index)
        return index
