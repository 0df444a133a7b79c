"""The STN's parameter-free chain, written once: theta -> shape, pose, landmarks, grid, texture, mask.

    theta [B, 6 + D] --3DMM--> vertices [B, N, 3] --Rodrigues--> rotated [B, N, 3]
          --scaled orthographic + t--> points2d [B, N, 2] --select--> landmarks [B, L, 2]
          --grid--> grid [B, res, res, 2] --bilinear sampler(image)--> texture [B, res, res, C]
    rotated --vertex normals--> mask [B, res, res, 1];  masked_texture = texture * mask

Training (the Flax STN), fitting (texture refinement), outputs (UV textures) and
predict all call :func:`compose_from_theta`; none of them re-writes the chain.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp

from jax3dmmstn.core import geometry
from jax3dmmstn.core import sampler
from jax3dmmstn.core import theta as theta_lib
from jax3dmmstn.core import visibility

Array = Any


def compose_from_theta(
    theta: Array,
    images: Array | None,
    *,
    mean,
    basis,
    faces,
    landmark_index=None,
    resolution: int,
    image_size: Sequence[int],
    scale_parametrisation: str = "matconvnet",
) -> dict[str, Array]:
    """theta ``[B, 6 + D]`` (+ images ``[B, H, W, C]``) -> dict of every intermediate.

    Args:
      theta: ``[B, 6 + D]``.
      images: ``[B, H, W, C]`` (row 0 at the top), or None for geometry only.
      mean: ``[N, 3]``; basis: ``[N, 3, D]``; faces: ``[F, 3]`` 0-based;
      landmark_index: ``[L]`` vertex indices (static or traced); None leaves out landmarks.
      resolution: the UV grid side (N == resolution ** 2); 0 turns texture sampling off.
      image_size: (H, W) of the frame theta lives in.
      scale_parametrisation: see :func:`geometry.log_scale_to_scale`.
    Returns:
      theta, r ``[B, 3]``, t ``[B, 2]``, logs ``[B]``, alpha ``[B, D]``, R ``[B, 3, 3]``,
      s ``[B]``, vertices3d ``[B, N, 3]`` (shape before pose), rotated ``[B, N, 3]``,
      points2d ``[B, N, 2]`` and landmarks ``[B, L, 2]`` in the image frame; when images
      are given and resolution > 0 also grid ``[B, res, res, 2]`` ((x, y) in [-1, 1]),
      texture ``[B, res, res, C]``, mask ``[B, res, res, 1]``, masked_texture.
    """
    mean = jnp.asarray(mean, jnp.float32)
    basis = jnp.asarray(basis, jnp.float32)
    theta_lib.check(theta, basis.shape[-1])
    parts = theta_lib.split(theta)
    chain = geometry.project_theta(theta, mean, basis, parametrisation=scale_parametrisation)
    out = dict(
        theta=theta,
        r=parts.r,
        t=parts.t,
        logs=parts.logs,
        alpha=parts.alpha,
        R=chain.rotation,
        s=chain.scale,
        vertices3d=chain.vertices,
        rotated=chain.rotated,
        points2d=chain.points2d,
    )
    if landmark_index is not None:
        out["landmarks"] = geometry.select_landmarks(chain.points2d, landmark_index)
    if images is not None and resolution > 0:
        grid = geometry.points_to_grid(chain.points2d, image_size=tuple(image_size))
        texture = sampler.bilinear_sample(images.astype(jnp.float32), grid)
        mask = visibility.visibility_mask(chain.rotated, faces)
        out.update(
            grid=grid,
            texture=texture,
            mask=mask,
            masked_texture=visibility.apply_mask(texture, mask),
        )
    return out
