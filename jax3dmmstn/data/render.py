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
   Normals are the mean shape's vertex normals (the core's angle-weighted mesh
   normals, ``core.visibility.vertex_normals``) plus their first-order change
   with alpha (precomputed), rotated by R.
2. Splatting with a depth test: every grid cell is subdivided f x f times, f
   chosen per cell at construction so that neighbouring samples are at most
   ``surface._MAX_SAMPLE_SPACING`` pixels apart at the largest scale (the subdivided
   model, ``surface.subdivide``, is linear in alpha like the model, so the STN chain
   projects it with one matrix product per coordinate). Each sample is rounded
   to its pixel and one ``scatter-min`` of an int32 key (quantised depth, sample
   id) keeps the front-most sample per pixel. That is a z-buffer: the nose hides
   the far cheek and the face hides the far ear, not just back-face culling. Two
   passes fill the one-pixel gaps between samples (and one-pixel specks of a far
   surface seen through such a gap).
3. Covered pixels take the vertex colours interpolated bilinearly at their
   winning sample; the rest show a cluttered background (a crop of a bank of
   random shape-and-grating pictures, made once, with a random colour transform
   and gradient per image); optional occluders
   (ellipses and rectangles) are drawn in front; then contrast, white balance,
   brightness and sensor noise.
4. A landmark is visible when it is inside the image, the z-buffer winner at its
   pixel is on the landmark's own surface (within ``_SAME_SURFACE_DISTANCE``
   model units of it along the grid and less than ``_FOLD_DEPTH`` in front, or
   not in front of it by more than ``_DEPTH_TOLERANCE``) and no occluder covers
   it.

The parts: ``scenes`` (``RenderConfig``, ``sample_scenes``: the random scene of
each image), ``surface`` (the subdivided samples and the per-vertex shading data),
``scenery`` (backgrounds, occluders, sensor noise) and this module (the jitted
stages). ``RenderConfig`` and ``sample_scenes`` are re-exported here.

All randomness is drawn in numpy from one Generator per image
(``sample_scenes``), so an image is a pure function of its seed, whatever else is
in the batch; ``FaceRenderer.render`` is a pure jitted function of the stacked
scene parameters (``SyntheticFaces`` renders in fixed chunks of 32, so an
example is bit-identical whatever batch it is drawn in).
Speed: see ``benchmarks/data_pipeline.py``.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jax3dmmstn.core import geometry
from jax3dmmstn.core import theta as theta_lib
from jax3dmmstn.data import scenery, surface
from jax3dmmstn.data.scenes import RenderConfig, sample_scenes
from jax3dmmstn.facemodel.morphable_model import MorphableModel

__all__ = ["FaceRenderer", "RenderConfig", "sample_scenes"]

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
# Hole filling replaces a pixel by its neighbours' surface when it is this much
# farther (model units) than both: a speck of a far surface seen through a gap.
_SPECK_DEPTH = 3.0
_EMPTY = int(np.iinfo(np.int32).max)


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


def _check_model(model: MorphableModel, config: RenderConfig) -> None:
    if not model.resolution:
        raise ValueError("the renderer needs a grid model (resolution > 0)")
    if config.landmark_set not in model.landmarks:
        raise ValueError(
            f"model has no landmark set {config.landmark_set!r} (it has {sorted(model.landmarks)})"
        )


def _device_arrays(model: MorphableModel, config: RenderConfig, corners, weights, coords):
    """The renderer's constant arrays (model, samples, shading data, scenery)."""
    size = config.image_size
    normal0, d_normals = surface.first_order_normals(model)
    bank = (
        scenery.background_bank(size)
        if config.background == "clutter"
        else scenery.plain_bank(size)
    )
    return {
        "mean": jnp.asarray(model.mean),
        "basis": jnp.asarray(model.basis),
        "sample_model": jnp.asarray(surface.sample_model(corners, weights, model)),
        "sample_colour_info": jnp.asarray(surface.sample_colour_info(corners, coords)),
        "sample_coords": jnp.asarray(coords),
        "normal0": jnp.asarray(normal0.T, jnp.float32),  # [3, N]
        "d_normals": jnp.asarray(d_normals.transpose(1, 2, 0), jnp.float32),  # [3, D, N]
        "albedo": jnp.asarray(surface.albedo(model).T),  # [3, N]
        "texture_fields": jnp.asarray(surface.smooth_fields(model)),
        "background_bank": jnp.asarray(bank),
        "noise": jnp.asarray(scenery.noise_tile(size)),
    }


class FaceRenderer:
    """Renders batches of synthetic faces of one model (a jitted pure function).

    Args:
      model: a grid MorphableModel (``resolution > 0``); its albedo (a uniform skin
        colour when it has none).
      config: RenderConfig.
    """

    def __init__(self, model: MorphableModel, config: RenderConfig = RenderConfig()):
        _check_model(model, config)
        self.model = model
        self.config = config
        self.cell_factors = surface.cell_factors(model, config)
        corners, weights, coords = surface.subdivision(model.resolution, self.cell_factors)
        self.num_samples = coords.shape[0]
        # z-buffer keys are (quantised depth << id bits) | sample id in one int32.
        self._id_bits = max(1, int(math.ceil(math.log2(self.num_samples))))
        if self._id_bits > 22 or model.n_vertices > 2**16:
            raise ValueError(
                f"{self.num_samples} surface samples of a {model.n_vertices}-vertex model "
                "are too many to pack into int32 z-buffer keys"
            )
        self._arrays = _device_arrays(model, config, corners, weights, coords)
        self._landmark_index = {k: np.asarray(v) for k, v in model.landmarks.items()}
        #: Grid cells within which a z-buffer winner counts as the landmark's surface.
        self.same_surface_cells = _SAME_SURFACE_DISTANCE / surface.median_cell_edge(model)
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
        """Per-vertex colours ``[B, N]`` (packed) and the raw z-buffer ``[B, S, S]`` keys,
        with the speck threshold and the depth range the keys are quantised over."""
        colour = self._vertex_colours(arrays, params)
        return (colour,) + self._splat(arrays, params["theta"])

    def _vertex_colours(self, arrays, params):
        """Shaded vertex colours, packed R | G << 8 | B << 16 into one int32 ``[B, N]``
        (one gather per cell corner later).

        Lambertian diffuse plus ambient plus Blinn-Phong specular on the albedo times
        skin tone and blotches. Everything is one ``[B, N]`` array per coordinate and
        channel: the ``[B, N, 3]`` form makes XLA recompute the reductions per channel.
        """
        theta = params["theta"]
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
        packed = 0
        for c in range(3):
            lit = arrays["albedo"][c][None] * params["skin_tone"][:, c, None] * shade + specular
            value = 255.0 * lit * params["light_colour"][:, c, None]
            packed = packed | (jnp.clip(jnp.round(value), 0, 255).astype(jnp.int32) << (8 * c))
        return packed

    def _splat(self, arrays, theta):
        """Splats the subdivided surface into a z-buffer of int32 keys ``[B, S, S]``.

        A key is (quantised depth from the nearest sample) << id bits | sample id, so
        one scatter-min keeps the front-most sample per pixel. Returns the keys, the
        speck threshold (``_SPECK_DEPTH`` in key units, ``[B, 1, 1]``), and the
        nearest depth and depth range ``[B, 1]`` the keys are quantised over.
        """
        size = self.config.image_size
        batch = theta.shape[0]
        id_bits = self._id_bits
        col, row, depth = self._project_samples(arrays, theta)
        n_samples = col.shape[1]
        col = jnp.floor(col + 0.5).astype(jnp.int32)  # nearest pixel centre
        row = jnp.floor(row + 0.5).astype(jnp.int32)
        inside = (col >= 0) & (col < size) & (row >= 0) & (row < size)
        plane = size * size + 1  # one spare slot per image for samples outside it
        pixel = jnp.where(inside, row * size + col, size * size)
        z_near = jnp.max(depth, axis=1, keepdims=True)
        z_range = jnp.maximum(z_near - jnp.min(depth, axis=1, keepdims=True), 1e-6)
        levels = 2 ** (31 - id_bits) - 1
        quantised = jnp.clip((z_near - depth) / z_range * levels, 0, levels)
        sample_id = jnp.arange(n_samples, dtype=jnp.int32)[None]
        key = (quantised.astype(jnp.int32) << id_bits) | sample_id
        flat = (pixel + plane * jnp.arange(batch, dtype=jnp.int32)[:, None]).reshape(-1)
        zbuffer = jnp.full((batch * plane,), _EMPTY, jnp.int32)
        zbuffer = zbuffer.at[flat].min(key.reshape(-1), mode="promise_in_bounds")
        zbuffer = zbuffer.reshape(batch, plane)[:, :-1].reshape(batch, size, size)
        threshold = ((_SPECK_DEPTH / z_range * levels).astype(jnp.int32) << id_bits)[:, :, None]
        return zbuffer, threshold, z_near, z_range

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
        fr = ((info >> 16) & 0x7F).astype(jnp.float32) / surface.FRACTION_LEVELS
        fc = ((info >> 23) & 0x7F).astype(jnp.float32) / surface.FRACTION_LEVELS
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
        occluder = scenery.occluder_index(params, size)
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
        """The uint8 image ``[B, S, S, 3]`` from the per-pixel indices: face or
        background, occluders in front, then contrast, white balance, brightness and
        sensor noise."""
        size = self.config.image_size
        face = jnp.stack([((face >> (8 * c)) & 0xFF).astype(jnp.float32) for c in range(3)], -1)
        backdrop = scenery.background(arrays["background_bank"], params, size)
        image = jnp.where(covered[..., None], face, backdrop)
        image = scenery.paint_occluders(image, occluder, params["occluders"])
        image = (image - 128.0) * params["contrast"][:, None, None, None] + 128.0
        image = (
            image * params["white_balance"][:, None, None, :]
            + params["brightness"][:, None, None, None]
        )
        image = image + scenery.sensor_noise(arrays["noise"], params, size)
        return jnp.clip(jnp.round(image), 0, 255).astype(jnp.uint8)
