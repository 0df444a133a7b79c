"""The 3DMM-STN as a Flax module: localiser -> theta -> 3DMM -> pose -> landmarks, grid, texture.

The network regresses theta (:mod:`jax3dmmstn.core.theta`) from an image with a localiser
(:mod:`jax3dmmstn.network.localisers`) and turns it, through the one parameter-free chain
(:func:`jax3dmmstn.core.stn.compose_from_theta`), into every intermediate the original MatConvNet DAG computes:
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

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax3dmmstn.core import theta as theta_lib
from jax3dmmstn.core.stn import compose_from_theta
from jax3dmmstn.network.localisers import make_localiser

Array = Any


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
        if shape[-1] < theta_lib.N_POSE:
            raise ValueError(f"theta needs at least {theta_lib.N_POSE} outputs, got {shape[-1]}")
        bias = np.zeros(shape, np.float32)
        bias[..., theta_lib.TRANSLATION] = (width / 2.0, height / 2.0)
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
            theta_lib.size(self.n_components),
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
    """Build the STN for a :class:`~jax3dmmstn.facemodel.morphable_model.MorphableModel`."""
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
