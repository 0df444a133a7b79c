"""Random scenes of the synthetic renderer: what each image shows, drawn in numpy.

All randomness is drawn from one Generator per image, in a fixed order (pose and
shape, light and skin, occluder shapes, shading, background, occluder switches,
camera), so an image is a pure function of its seed whatever else is in the
batch. ``sample_scenes`` stacks the draws of a batch and expresses the pose,
scale and translation as the STN's theta.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from jax3dmmstn.core import geometry, pose
from jax3dmmstn.core import theta as theta_lib
from jax3dmmstn.data import scenery
from jax3dmmstn.facemodel.morphable_model import MorphableModel

# Smooth blotch patterns of the skin texture, weighted randomly per image.
NUM_SMOOTH_FIELDS = 4


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


def _occluder_window(config: RenderConfig) -> int:
    return min(config.image_size, 128)


def _draw_pose_and_shape(rng, model, config, identity_alpha):
    """Pose (yaw, pitch, roll degrees), face height (pixels), t, logs and alpha."""
    size = config.image_size
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
    return ypr, face_size, t, logs, alpha


def _draw_light_and_skin(rng, jitter):
    """Unit light direction and the skin tone (from pale to dark, RGB gains)."""
    light = np.array([rng.uniform(-1, 1), rng.uniform(-0.6, 1.0), rng.uniform(0.3, 1.2)])
    light /= np.linalg.norm(light)
    darkness = rng.uniform(0, 1) ** 1.5 * jitter
    tone = (1 - darkness) * np.array([1.08, 1.05, 1.02]) + darkness * np.array([0.55, 0.42, 0.36])
    tone *= 1 + 0.06 * jitter * rng.uniform(-1, 1, 3)
    return light, tone


def _draw_occluder_shapes(rng, config, t, face_size):
    """Occluder shapes around the face, small enough for the occluder window."""
    face_centre = np.array([t[0], config.image_size - t[1]])  # (col, row), near enough
    window = _occluder_window(config)
    occluders = scenery.random_shapes(
        rng,
        scenery.NUM_OCCLUDERS,
        face_centre,
        0.45 * face_size,
        (0.08, 0.3),
        face_size,
        max_radius=window / 2 - 2,
    )
    occluders[:, 12] *= 0.4  # plainer objects than the clutter
    return occluders


def _draw_shading(rng, jitter):
    return {
        "ambient": np.float32(rng.uniform(0.25, 0.6)),
        "diffuse": np.float32(rng.uniform(0.45, 0.9)),
        "specular": np.float32(rng.uniform(0.0, 0.15)),
        "shininess": np.float32(rng.uniform(8, 30)),
        "light_colour": (1 + 0.12 * jitter * rng.uniform(-1, 1, 3)).astype(np.float32),
        "texture_weights": (jitter * rng.normal(0, 0.05, NUM_SMOOTH_FIELDS)).astype(np.float32),
    }


def _draw_background(rng, jitter, size):
    return {
        "background_index": np.int32(rng.integers(0, scenery.BANK_SIZE)),
        "background_offset": rng.integers(0, size // 2 + 1, 2).astype(np.int32),
        "background_gain": (1 + 0.35 * jitter * rng.uniform(-1, 1, 3)).astype(np.float32),
        "background_bias": (40 * jitter * rng.uniform(-1, 1, 3)).astype(np.float32),
        "background_gradient": (0.4 * jitter * rng.uniform(-1, 1, 3)).astype(np.float32),
    }


def _draw_camera(rng, config):
    jitter = config.colour_jitter
    return {
        "contrast": np.float32(1 + 0.15 * jitter * rng.uniform(-1, 1)),
        "brightness": np.float32(12 * jitter * rng.uniform(-1, 1)),
        "white_balance": (1 + 0.06 * jitter * rng.uniform(-1, 1, 3)).astype(np.float32),
        "noise_sigma": np.float32(config.noise_sigma * rng.uniform(0, 1)),
        "noise_offset": rng.integers(0, scenery.NOISE_MARGIN, 2).astype(np.int32),
    }


def _sample_raw(
    rng: np.random.Generator,
    model: MorphableModel,
    config: RenderConfig,
    identity_alpha: Optional[np.ndarray],
) -> Dict[str, np.ndarray]:
    """The random numbers of one image (everything but the rotation vector).

    The draws are in a fixed order (the helpers are called in sequence): changing
    it changes every rendered image of a seed.
    """
    jitter = config.colour_jitter
    ypr, face_size, t, logs, alpha = _draw_pose_and_shape(rng, model, config, identity_alpha)
    light, tone = _draw_light_and_skin(rng, jitter)
    occluders = _draw_occluder_shapes(rng, config, t, face_size)
    shading = _draw_shading(rng, jitter)
    background = _draw_background(rng, jitter, config.image_size)
    occluder_on = rng.uniform(size=scenery.NUM_OCCLUDERS) < config.occluder_probability
    return {
        "pose": ypr,
        "translation": np.asarray(t, np.float32),
        "log_scale": np.float32(logs),
        "alpha": np.asarray(alpha, np.float32),
        "light_direction": light.astype(np.float32),
        "skin_tone": tone.astype(np.float32),
        **shading,
        **background,
        "occluders": occluders,
        "occluder_on": occluder_on.astype(np.float32),
        **_draw_camera(rng, config),
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
    rotation = pose.pose_to_matrix(scenes["pose"].astype(np.float32))
    r = np.asarray(geometry.matrix_to_axis_angle(rotation), np.float32)
    parts = (scenes.pop("translation"), scenes.pop("log_scale"), scenes.pop("alpha"))
    scenes["theta"] = theta_lib.merge(r, *parts).astype(np.float32)
    return scenes
