"""The 3DMM-STN as a Flax module: localiser -> theta -> 3DMM -> pose -> landmarks, grid, texture.

The network regresses theta = (r[3] axis-angle, t[2] pixels, logs[1], alpha[D]) from an image
and turns it, through the pure functions of :mod:`jax3dmmstn.geometry`, :mod:`~jax3dmmstn.sampler`
and :mod:`~jax3dmmstn.visibility`, into every intermediate the original MatConvNet DAG computes:
the 3D shape, its rotated and projected vertices, the 21 landmarks, the sampling grid, the UV
texture sampled from the input image, the self-occlusion mask and the masked texture.

Why Flax linen and not nnx
--------------------------
Linen keeps parameters as a plain nested dict that lives *outside* the module. Everything this
project does with parameters wants exactly that: ``jax.pmap`` replicates and shards pytrees,
``optax.multi_transform`` labels leaves by their path, Orbax saves and restores pytrees, and the
VGG-Face importer writes a dict of arrays from a .mat file. With nnx the same code would have to
``nnx.split`` / ``nnx.merge`` at every one of those boundaries (and pmap of stateful objects is
not supported), while the module itself has no state worth mutating (no batch norm, no dropout:
the deployed VGG-Face has neither). Linen also matches the Flax examples whose train.py/configs
layout we follow, and stays supported in flax 0.12.

Shapes: images [B, H, W, C] (row 0 = top), theta [B, 6 + D]. Landmarks, 2D vertices and
translations are in the original's image frame (x from the left, y from the bottom, pixels).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax3dmmstn import geometry, sampler, visibility

Array = Any

# Positions inside theta = (r[3], t[2], logs[1], alpha[D]).
ROTATION_SLICE = slice(0, 3)
TRANSLATION_SLICE = slice(3, 5)
LOG_SCALE_INDEX = 5
N_POSE_PARAMETERS = 6


# --------------------------------------------------------------------------------------------
# Theta head: the original's initialisation.
# --------------------------------------------------------------------------------------------
def theta_kernel_init(gain: float = 1e-3) -> Callable:
    """MatConvNet's ``xavier(h, w, in, out)`` times ``gain``: N(0, 2 / fan_in) * gain.

    (MatConvNet's "xavier" helper is He-normal: randn * sqrt(2 / (h * w * in)).)
    """
    return nn.initializers.variance_scaling(2.0 * gain**2, "fan_in", "normal")


def theta_bias_init(image_size: tuple[int, int]) -> Callable:
    """Bias zero except t = (W / 2, H / 2), the image centre in the image frame.

    For the original's 224 x 224 input this is (112, 112).
    """
    height, width = image_size

    def init(key, shape, dtype=jnp.float32):
        del key
        if shape[-1] < N_POSE_PARAMETERS:
            raise ValueError(f"theta needs at least {N_POSE_PARAMETERS} outputs, got {shape[-1]}")
        bias = np.zeros(shape, np.float32)
        bias[..., TRANSLATION_SLICE] = (width / 2.0, height / 2.0)
        return jnp.asarray(bias, dtype)

    return init


class ThetaHead(nn.Module):
    """Fully connected layer features [B, F] -> theta [B, 6 + D], always in float32.

    Equivalent to the original's 1 x 1 convolution on a 1 x 1 x 4096 feature map.
    """

    n_outputs: int
    image_size: tuple[int, int]
    kernel_gain: float = 1e-3

    @nn.compact
    def __call__(self, features: Array) -> Array:
        return nn.Dense(
            self.n_outputs,
            kernel_init=theta_kernel_init(self.kernel_gain),
            bias_init=theta_bias_init(self.image_size),
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            name="dense",
        )(features.astype(jnp.float32))


# --------------------------------------------------------------------------------------------
# Localisers: image [B, h, w, C] -> features [B, F].
# --------------------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """A small, fast localiser for CPU training: 4 conv stages then one hidden dense layer.

    Each stage is two 3x3 convolutions (group norm, ReLU) and a 2x2 max pool; the last map is
    flattened, not pooled, so that where things are in the image survives into the features
    (theta is mostly positions). Input [B, h, w, C] in [0, 255], mapped to [-1, 1] first so
    that the theta head's tiny initial weights give a theta close to its bias (as with the
    original's mean-subtracted VGG input); output [B, hidden].
    """

    widths: Sequence[int] = (16, 32, 64, 128)
    convs_per_stage: int = 2
    hidden: int = 256
    norm: str = "group"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.norm not in ("group", "none"):
            raise ValueError(f"SmallCNN norm must be 'group' or 'none', got {self.norm!r}")
        x = (x.astype(jnp.float32) / 127.5 - 1.0).astype(self.dtype)
        for stage, width in enumerate(self.widths):
            for i in range(self.convs_per_stage):
                name = f"conv{stage + 1}_{i + 1}"
                x = nn.Conv(
                    width,
                    (3, 3),
                    padding="SAME",
                    dtype=self.dtype,
                    kernel_init=nn.initializers.he_normal(),
                    name=name,
                )(x)
                if self.norm == "group":
                    # Group norm, not batch norm: per example, so 1 or N devices (and any
                    # batch split) compute the same function, and there is no state to sync.
                    x = nn.GroupNorm(
                        num_groups=min(8, width), dtype=self.dtype, name=f"{name}_norm"
                    )(x)
                x = nn.relu(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(
            self.hidden, dtype=self.dtype, kernel_init=nn.initializers.he_normal(), name="fc"
        )(x)
        return nn.relu(x)


# VGG-Face / VGG-16 convolution blocks: (layer names, output channels) per block.
VGG16_BLOCKS = (
    (("conv1_1", "conv1_2"), 64),
    (("conv2_1", "conv2_2"), 128),
    (("conv3_1", "conv3_2", "conv3_3"), 256),
    (("conv4_1", "conv4_2", "conv4_3"), 512),
    (("conv5_1", "conv5_2", "conv5_3"), 512),
)


class VGG16(nn.Module):
    """The VGG-Face network without fc8 and softmax, laid out like MatConvNet's simplenn.

    conv3x3 (pad 1) + ReLU blocks with 2x2/2 max pools, fc6 as a VALID convolution whose kernel
    covers the whole last map (7 x 7 at 224 input), fc7 as a 1 x 1 convolution, both + ReLU.
    Layer names equal MatConvNet's so that :mod:`jax3dmmstn.vggface_import` maps them 1:1.
    ``width_divisor`` shrinks every width (for tests); the default is the real network.
    Input [B, 224, 224, 3] minus ``input_mean``; output [B, 4096].
    """

    width_divisor: int = 1
    fc_width: int = 4096
    input_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = (x - jnp.asarray(self.input_mean, x.dtype)).astype(self.dtype)
        for names, width in VGG16_BLOCKS:
            for name in names:
                x = nn.Conv(
                    max(1, width // self.width_divisor),
                    (3, 3),
                    padding=((1, 1), (1, 1)),
                    dtype=self.dtype,
                    name=name,
                )(x)
                x = nn.relu(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.Conv(self.fc_width, x.shape[1:3], padding="VALID", dtype=self.dtype, name="fc6")(x)
        x = nn.relu(x)
        x = nn.Conv(self.fc_width, (1, 1), padding="VALID", dtype=self.dtype, name="fc7")(x)
        x = nn.relu(x)
        return x.reshape(x.shape[0], -1)


def make_localiser(name: str, dtype: Any = jnp.float32, **kwargs) -> nn.Module:
    """'small_cnn' -> :class:`SmallCNN`, 'vgg16' -> :class:`VGG16` (kwargs go to the module)."""
    name = name.lower()
    if name in ("small_cnn", "smallcnn", "small"):
        return SmallCNN(dtype=dtype, **kwargs)
    if name in ("vgg16", "vgg", "vgg_face", "vggface"):
        return VGG16(dtype=dtype, **kwargs)
    raise ValueError(f"unknown localiser {name!r}; expected 'small_cnn' or 'vgg16'")


# --------------------------------------------------------------------------------------------
# The whole STN.
# --------------------------------------------------------------------------------------------
class STN3DMM(nn.Module):
    """3DMM spatial transformer: images [B, H, W, C] -> dict of every intermediate.

    Attributes:
      localiser: image [B, h, w, C] -> features [B, F].
      mean: [N, 3] mean shape; basis: [N, 3, D]; faces: [F, 3] int32; landmark_index: [L] int32.
      resolution: the UV grid side (N == resolution**2); 0 turns texture sampling off.
      image_size: (H, W) of the full input image (the frame theta lives in).
      localiser_input_size: (h, w) the image is resized to before the localiser (None = as is).
        The sampler always reads the full-resolution image.
      scale_parametrisation: "matconvnet" (s = 0.99 ** logs) or "exp".

    Returns a dict:
      theta [B, 6+D]; r [B, 3]; t [B, 2]; logs [B]; alpha [B, D]; R [B, 3, 3]; s [B];
      vertices3d [B, N, 3] (shape before pose); rotated [B, N, 3]; points2d [B, N, 2];
      landmarks [B, L, 2]; and when resolution > 0: grid [B, res, res, 2] ((x, y) in [-1, 1]),
      texture [B, res, res, C], mask [B, res, res, 1], masked_texture [B, res, res, C].
    """

    localiser: nn.Module
    mean: Any
    basis: Any
    faces: Any
    landmark_index: Any
    resolution: int
    image_size: tuple[int, int] = (224, 224)
    localiser_input_size: tuple[int, int] | None = None
    scale_parametrisation: str = "matconvnet"
    head_gain: float = 1e-3
    with_texture: bool = True

    @property
    def n_components(self) -> int:
        return int(np.shape(self.basis)[-1])

    @nn.compact
    def __call__(self, images: Array) -> dict[str, Array]:
        if images.ndim != 4:
            raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
        if tuple(images.shape[1:3]) != tuple(self.image_size):
            raise ValueError(
                f"images are {tuple(images.shape[1:3])} but the model was built for "
                f"image_size={tuple(self.image_size)}"
            )
        small = images
        if self.localiser_input_size is not None and tuple(self.localiser_input_size) != tuple(
            images.shape[1:3]
        ):
            h, w = self.localiser_input_size
            small = jax.image.resize(
                images.astype(jnp.float32), (images.shape[0], h, w, images.shape[3]), "linear"
            )
        features = self.localiser(small)
        theta = ThetaHead(
            N_POSE_PARAMETERS + self.n_components,
            tuple(self.image_size),
            kernel_gain=self.head_gain,
            name="theta_head",
        )(features)
        out = compose_from_theta(
            theta,
            images if self.with_texture else None,
            mean=self.mean,
            basis=self.basis,
            faces=self.faces,
            landmark_index=self.landmark_index,
            resolution=self.resolution,
            image_size=self.image_size,
            scale_parametrisation=self.scale_parametrisation,
        )
        return out


def compose_from_theta(
    theta: Array,
    images: Array | None,
    *,
    mean,
    basis,
    faces,
    landmark_index,
    resolution: int,
    image_size: tuple[int, int],
    scale_parametrisation: str = "matconvnet",
) -> dict[str, Array]:
    """The parameter-free part of the STN: theta [B, 6+D] (+ images [B, H, W, C]) -> dict.

    Pure function (also used by evaluation to turn ground-truth theta into landmarks).
    Texture outputs are computed only when ``images`` is given and ``resolution`` > 0.
    """
    mean = jnp.asarray(mean, jnp.float32)
    basis = jnp.asarray(basis, jnp.float32)
    if theta.ndim != 2 or theta.shape[1] != N_POSE_PARAMETERS + basis.shape[-1]:
        raise ValueError(
            f"theta must be [B, {N_POSE_PARAMETERS + basis.shape[-1]}] for a "
            f"{basis.shape[-1]}-component model, got {theta.shape}"
        )
    r, t, logs, alpha = geometry.split_theta(theta)
    chain = geometry.project_theta(theta, mean, basis, parametrisation=scale_parametrisation)
    points2d = chain.points2d
    out = dict(
        theta=theta,
        r=r,
        t=t,
        logs=logs,
        alpha=alpha,
        R=chain.rotation,
        s=chain.scale,
        vertices3d=chain.vertices,
        rotated=chain.rotated,
        points2d=points2d,
        landmarks=geometry.select_landmarks(points2d, landmark_index),
    )
    if images is not None and resolution > 0:
        grid = geometry.points_to_grid(points2d, image_size=tuple(image_size))
        texture = sampler.bilinear_sample(images.astype(jnp.float32), grid)
        mask = visibility.visibility_mask(chain.rotated, faces)
        out.update(
            grid=grid,
            texture=texture,
            mask=mask,
            masked_texture=visibility.apply_mask(texture, mask),
        )
    return out


def build_stn(
    morphable_model,
    *,
    localiser: str = "small_cnn",
    image_size=(224, 224),
    localiser_input_size=None,
    landmarks: str = "aflw21",
    scale_parametrisation: str = "matconvnet",
    dtype: Any = jnp.float32,
    with_texture: bool = True,
    localiser_kwargs: dict | None = None,
) -> STN3DMM:
    """Build the STN for a :class:`~jax3dmmstn.morphable_model.MorphableModel`."""
    if landmarks not in morphable_model.landmarks:
        raise ValueError(
            f"the morphable model has no landmark set {landmarks!r}; it has "
            f"{sorted(morphable_model.landmarks)}"
        )
    resolution = int(getattr(morphable_model, "resolution", 0) or 0)
    if resolution and resolution * resolution != morphable_model.mean.shape[0]:
        raise ValueError(
            f"model resolution {resolution} does not match {morphable_model.mean.shape[0]} vertices"
        )
    return STN3DMM(
        localiser=make_localiser(localiser, dtype=dtype, **(localiser_kwargs or {})),
        mean=np.asarray(morphable_model.mean, np.float32),
        basis=np.asarray(morphable_model.basis, np.float32),
        faces=np.asarray(morphable_model.faces, np.int32),
        landmark_index=np.asarray(morphable_model.landmarks[landmarks], np.int32),
        resolution=resolution,
        image_size=tuple(int(v) for v in image_size),
        localiser_input_size=None
        if localiser_input_size is None
        else tuple(int(v) for v in localiser_input_size),
        scale_parametrisation=scale_parametrisation,
        with_texture=with_texture and resolution > 0,
    )
