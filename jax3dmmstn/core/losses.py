"""Losses of the 3DMM-STN: landmark, statistical prior, symmetry, siamese.

Every loss takes ``reduction`` as a required keyword, so each caller states its
choice (a training config, or the original's): ``"sum"`` adds the terms over the
batch, ``"mean"`` divides by the number of contributing terms, which keeps
learning rates independent of the batch size. The original sums the landmark and
prior losses (hence its learning rate of 1e-10) and divides the symmetry and
siamese sums by the number of visible texture values (``"mean"``).

The texture losses take explicit visibility masks (``[B, H, W, 1]`` or
``[B, H, W, C]``, e.g. ``jax3dmmstn.core.visibility.visibility_mask``). The original
has no masks there: it treats a texture value of exactly 0 as "not visible"
(the masked texture is 0 where the mask is) and normalises by the number of
non-zero values. ``nonzero_as_mask=True`` reproduces that rule.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

_REDUCTIONS = ("sum", "mean")
LANDMARK_DISTANCES = ("squared", "euclidean")
# Added under the square root of the Euclidean distance so that its gradient stays finite
# at a zero error (pixels**2: a 0.001-pixel floor, far below any annotation's precision).
_EUCLIDEAN_EPS = 1e-6


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def landmark_loss(
    predicted: jax.Array,
    target: jax.Array,
    visibility: jax.Array | None = None,
    *,
    reduction: str,
    distance: str = "squared",
) -> jax.Array:
    """Landmark error over visible landmarks (squared: the original's vl_nneuclideanloss).

    Args:
      predicted: ``[B, L, 2]`` projected landmarks (image frame, pixels).
      target: ``[B, L, 2]`` annotated landmarks.
      visibility: ``[B, L]`` weights (1 visible, 0 missing); all ones if None.
      reduction: ``"sum"`` over landmarks (the original), or ``"mean"``: the sum divided by
        the number of visible landmarks.
      distance: per landmark, ``"squared"`` Euclidean distance (the original; pixels**2) or
        the ``"euclidean"`` distance itself (pixels: what NME averages; a point the model
        cannot reach pulls with a constant force instead of one growing with its error).
    Returns:
      Scalar.
    """
    _check_reduction(reduction)
    if distance not in LANDMARK_DISTANCES:
        raise ValueError(f"distance must be one of {LANDMARK_DISTANCES}, got {distance!r}")
    chex.assert_rank(predicted, 3)
    chex.assert_axis_dimension(predicted, 2, 2)
    chex.assert_equal_shape([predicted, target])
    if visibility is None:
        visibility = jnp.ones(predicted.shape[:2], predicted.dtype)
    chex.assert_shape(visibility, predicted.shape[:2])
    visibility = jax.lax.stop_gradient(visibility).astype(predicted.dtype)
    # Missing landmarks may be stored as NaN or (0, 0): zero them before the
    # product so that 0 * NaN cannot poison the loss.
    target = jnp.where(visibility[..., None] > 0, target, predicted)
    per_landmark = jnp.sum((predicted - target) ** 2, axis=-1)
    if distance == "euclidean":
        per_landmark = jnp.sqrt(per_landmark + _EUCLIDEAN_EPS)
    total = jnp.sum(visibility * per_landmark)
    if reduction == "mean":
        total = total / jnp.maximum(jnp.sum(visibility), 1.0)
    return total


def prior_loss(alpha: jax.Array, *, reduction: str) -> jax.Array:
    """Statistical prior ``sum(alpha ** 2)`` (the original's vl_nnsse).

    Args:
      alpha: ``[B, D]`` morphable-model weights (in units of standard deviations).
      reduction: ``"sum"`` or ``"mean"`` (divided by B).
    Returns:
      Scalar.
    """
    _check_reduction(reduction)
    chex.assert_rank(alpha, 2)
    total = jnp.sum(alpha**2)
    if reduction == "mean":
        total = total / alpha.shape[0]
    return total


def _texture_masks(texture, mask, nonzero_as_mask):
    """Broadcast visibility ``[B, H, W, C]`` (floats in {0, 1})."""
    chex.assert_rank(texture, 4)
    if mask is None and not nonzero_as_mask:
        raise ValueError("pass a visibility mask or set nonzero_as_mask=True")
    if mask is None:
        visible = jnp.ones_like(texture)
    else:
        chex.assert_rank(mask, 4)
        chex.assert_equal_shape_prefix([texture, mask], 3)
        visible = jnp.broadcast_to(jax.lax.stop_gradient(mask).astype(texture.dtype), texture.shape)
    if nonzero_as_mask:
        visible = visible * (jax.lax.stop_gradient(texture) != 0).astype(texture.dtype)
    return visible


def _normalised(total, count, reduction):
    if reduction == "mean":
        return total / jnp.maximum(count, 1.0)
    return total


def symmetry_loss(
    texture: jax.Array,
    mask: jax.Array | None = None,
    nonzero_as_mask: bool = False,
    *,
    reduction: str,
) -> jax.Array:
    """Bilateral symmetry of the UV texture (the original's vl_nnsymmetry).

    ``d = V - flip_u(V)`` where the texel and its mirror are both visible; the loss
    is ``sum(d ** 2)`` divided (``reduction="mean"``, the original's choice) by the
    number of visible values of V.

    Args:
      texture: ``[B, H, W, C]`` sampled UV texture (width = the u axis).
      mask: ``[B, H, W, 1 or C]`` visibility, or None with ``nonzero_as_mask``.
      nonzero_as_mask: also treat exact zeros of ``texture`` as invisible and count
        only non-zero values (the original's rule, for an already masked texture).
      reduction: ``"mean"`` (divide by the visible count) or ``"sum"``.
    Returns:
      Scalar.
    """
    _check_reduction(reduction)
    visible = _texture_masks(texture, mask, nonzero_as_mask)
    both = visible * jnp.flip(visible, axis=2)
    diff = texture - jnp.flip(texture, axis=2)
    return _normalised(jnp.sum(both * diff**2), jnp.sum(visible), reduction)


def siamese_loss(
    texture: jax.Array,
    mask: jax.Array | None = None,
    nonzero_as_mask: bool = False,
    mirror_pairs: bool = False,
    *,
    reduction: str,
) -> jax.Array:
    """Multi-view consistency of pairs (2i, 2i+1) (the original's vl_nnsiamese).

    ``d = V_a - V_b`` where both are visible, ``sum(d ** 2)`` divided by the number
    of visible values in the whole batch (``reduction="mean"``, the original's).

    Args:
      texture: ``[B, H, W, C]`` with B even; images 2i and 2i+1 form a pair.
      mask: ``[B, H, W, 1 or C]`` visibility, or None with ``nonzero_as_mask``.
      nonzero_as_mask: the original's "non-zero texel" rule, see ``symmetry_loss``.
      mirror_pairs: flip the second member along u before comparing. Use it when
        the pair is an image and its horizontal mirror, whose texture is the first
        one's mirrored; the original compares the two textures unflipped.
      reduction: ``"mean"`` or ``"sum"``.
    Returns:
      Scalar.
    """
    _check_reduction(reduction)
    if texture.shape[0] % 2:
        raise ValueError(
            f"siamese_loss needs pairs: the batch must be even, got {texture.shape[0]}"
        )
    visible = _texture_masks(texture, mask, nonzero_as_mask)
    first, second = texture[0::2], texture[1::2]
    vis_first, vis_second = visible[0::2], visible[1::2]
    if mirror_pairs:
        second = jnp.flip(second, axis=2)
        vis_second = jnp.flip(vis_second, axis=2)
    both = vis_first * vis_second
    return _normalised(jnp.sum(both * (first - second) ** 2), jnp.sum(visible), reduction)
