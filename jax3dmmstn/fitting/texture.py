"""Refining a landmark fit with the original's texture terms (symmetry, siamese).

The objective is the STN's own: landmark + prior losses on theta plus the symmetry
(and siamese) losses of the texture the sampler pulls from the image on the
projected UV grid, masked by self-occlusion (:func:`jax3dmmstn.core.stn.compose_from_theta`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax3dmmstn.core import geometry
from jax3dmmstn.core import losses
from jax3dmmstn.core import theta as theta_lib
from jax3dmmstn.core.stn import compose_from_theta
from jax3dmmstn.fitting.landmarks import check_landmark_inputs


class TextureLossWeights(NamedTuple):
    """Weights of the refinement objective (defaults: the original's loss weights).

    They weigh the terms as the original reduces them (``TEXTURE_LOSS_REDUCTIONS``).
    """

    landmark: float = 0.8998
    prior: float = 0.1
    symmetry: float = 1e-4
    siamese: float = 0.0


# The original's reductions, which its weights above assume: landmark and prior
# summed over the batch, texture terms divided by the number of visible values.
TEXTURE_LOSS_REDUCTIONS = {"landmark": "sum", "prior": "sum", "symmetry": "mean", "siamese": "mean"}


# Adam's steps are about one learning rate per coordinate and step; theta's
# parts live on very different scales (radians, pixels, log-scale, std. devs.).
_REFINE_STEP_SCALE = {"r": 1e-3, "t": 5e-2, "logs": 5e-2, "alpha": 1e-2}


def texture_objective(
    theta,
    images,
    mean,
    basis,
    faces,
    landmark_index,
    landmarks,
    visibility,
    weights: TextureLossWeights,
    mirror_pairs: bool,
    parametrisation: str,
):
    """Landmark + prior + texture losses of theta ``[B, 6+D]`` on ``images [B, H, W, C]``.

    The texture is the STN's: the image sampled on the projected UV grid, masked by
    the self-occlusion mask. Returns (total, dict of the terms).
    """
    stn = compose_from_theta(
        theta,
        images,
        mean=mean,
        basis=basis,
        faces=faces,
        landmark_index=landmark_index,
        resolution=geometry.grid_resolution(mean.shape[0]),
        image_size=images.shape[1:3],
        scale_parametrisation=parametrisation,
    )
    texture, mask = stn["masked_texture"], stn["mask"]
    reduction = TEXTURE_LOSS_REDUCTIONS
    terms = {
        "landmark": losses.landmark_loss(
            stn["landmarks"], landmarks, visibility, reduction=reduction["landmark"]
        ),
        "prior": losses.prior_loss(theta_lib.shape_weights(theta), reduction=reduction["prior"]),
        "symmetry": losses.symmetry_loss(texture, mask, reduction=reduction["symmetry"]),
    }
    if weights.siamese:
        terms["siamese"] = losses.siamese_loss(
            texture, mask, mirror_pairs=mirror_pairs, reduction=reduction["siamese"]
        )
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return total, terms


def refine_with_texture(
    theta,
    images,
    model,
    landmarks,
    visibility=None,
    landmark_set: str = "aflw21",
    weights: TextureLossWeights = TextureLossWeights(),
    steps: int = 100,
    learning_rate: float = 1.0,
    mirror_pairs: bool = True,
    parametrisation: str = "matconvnet",
):
    """Refines theta with the symmetry (and siamese) terms on the sampled texture.

    Starts from ``theta`` (e.g. ``fit_model_landmarks(...).theta``) and runs ``steps``
    Adam steps on ``weights.landmark * landmark + weights.prior * prior +
    weights.symmetry * symmetry [+ weights.siamese * siamese]``, all as the STN
    computes them. With ``weights.siamese`` the batch must hold pairs (2i, 2i+1) of
    the same face; ``mirror_pairs`` flips the second texture (an image and its mirror).

    Args:
      theta: ``[B, 6+D]`` starting point.
      images: ``[B, H, W, C]`` float images (row 0 at the top).
      model: a ``MorphableModel`` on a UV grid.
      landmarks: ``[B, L, 2]`` image-frame landmarks; visibility ``[B, L]`` or None.
      learning_rate: multiplies the per-part step sizes (radians 1e-3, pixels and
        log-scale 5e-2, alpha 1e-2 per step).
    Returns:
      (theta ``[B, 6+D]``, dict of the final loss terms).
    """
    theta = jnp.asarray(theta, jnp.float32)
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4 or images.shape[0] != theta.shape[0]:
        raise ValueError(
            f"images must be [B, H, W, C] with B = {theta.shape[0]}, got {images.shape}"
        )
    if landmark_set not in model.landmarks:
        raise ValueError(f"the model has no landmark set {landmark_set!r}")
    landmarks, visibility = check_landmark_inputs(
        landmarks, visibility, len(model.landmarks[landmark_set])
    )
    if weights.siamese and theta.shape[0] % 2:
        raise ValueError("the siamese term needs pairs: an even batch")
    constants = dict(
        images=images,
        mean=jnp.asarray(model.mean, jnp.float32),
        basis=jnp.asarray(model.basis, jnp.float32),
        faces=jnp.asarray(model.faces, jnp.int32),
        landmark_index=jnp.asarray(model.landmarks[landmark_set], jnp.int32),
        landmarks=landmarks,
        visibility=visibility,
    )
    return _refine_jit(
        theta, constants, weights, mirror_pairs, parametrisation, float(learning_rate), int(steps)
    )


def _refine_impl(theta, constants, weights, mirror_pairs, parametrisation, learning_rate, steps):
    parts = theta_lib.part_names(theta_lib.n_components(theta))
    step_scale = jnp.asarray([_REFINE_STEP_SCALE[p] for p in parts], theta.dtype)
    optimizer = optax.chain(
        optax.scale_by_adam(), optax.scale(-learning_rate), optax.scale(step_scale)
    )

    def objective(params):
        return texture_objective(
            params,
            weights=weights,
            mirror_pairs=mirror_pairs,
            parametrisation=parametrisation,
            **constants,
        )

    grad_fn = jax.grad(lambda p: objective(p)[0])

    def step(_, carry):
        params, state = carry
        updates, state = optimizer.update(grad_fn(params), state, params)
        return params + updates, state

    theta, _ = jax.lax.fori_loop(0, steps, step, (theta, optimizer.init(theta)))
    return theta, objective(theta)[1]


_refine_jit = jax.jit(_refine_impl, static_argnums=(2, 3, 4, 5, 6))
