"""Self-occlusion mask of the 3DMM-STN (the original's vl_nnvisibilitymask).

A vertex is visible when its angle-weighted vertex normal, computed on the
rotated mesh, has a non-negative z component (z points towards the viewer).

Face normal convention (the original's, kept so that its models work unchanged):
for a face (v1, v2, v3) with positions p1, p2, p3 the normal is
``cross(p2 - p1, p2 - p3)`` (:func:`face_normals`, the one copy of the formula);
each corner adds it times the corner's angle to its vertex. The original's
MATLAB ``normals(v1,:) = normals(v1,:) + w`` keeps only one face's contribution
per vertex when an index repeats; here contributions are summed (a true
scatter-add). ``jax3dmmstn.matconvnet.vl_nnvisibilitymask``
reproduces the original's accumulation exactly.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jax3dmmstn.core import geometry


def _check_faces(faces, n_vertices: int):
    faces_np = None if isinstance(faces, jax.core.Tracer) else np.asarray(faces)
    if faces_np is not None:
        if faces_np.ndim != 2 or faces_np.shape[1] != 3:
            raise ValueError(f"faces must be [F, 3], got {faces_np.shape}")
        if faces_np.size and (faces_np.min() < 0 or faces_np.max() >= n_vertices):
            raise ValueError(
                f"faces must hold 0-based vertex indices in [0, {n_vertices}), got "
                f"[{faces_np.min()}, {faces_np.max()}] (1-based faces? subtract 1)"
            )


def _safe_normalise(v: jax.Array) -> jax.Array:
    norm_sq = jnp.sum(v * v, axis=-1, keepdims=True)
    safe = jnp.where(norm_sq > 0, norm_sq, 1.0)
    return v / jnp.sqrt(safe)


def face_normals(vertices: jax.Array, faces) -> jax.Array:
    """The original's face normals, not normalised (length = twice the face's area).

    For a face (v1, v2, v3) at p1, p2, p3 the normal is ``cross(p2 - p1, p2 - p3)``
    (= ``cross(p3 - p1, p2 - p1)``), the original's formula, kept operation for
    operation so that masks match it bit for bit. Orientation: this is minus the
    right-hand-rule normal of (p1, p2, p3), so it points towards the viewer (+z)
    when the corners run clockwise as seen from +z, as the morphable models'
    front-facing triangles do.

    Args:
      vertices: ``[..., N, 3]``.
      faces: ``[F, 3]`` 0-based vertex indices.
    Returns:
      ``[..., F, 3]``.
    """
    p1 = vertices[..., faces[:, 0], :]
    p2 = vertices[..., faces[:, 1], :]
    p3 = vertices[..., faces[:, 2], :]
    return jnp.cross(p2 - p1, p2 - p3)


def corner_angles(vertices: jax.Array, faces) -> jax.Array:
    """Interior angles (radians) at the corners of each face, the original's formulas.

    Args:
      vertices: ``[..., N, 3]``.
      faces: ``[F, 3]`` 0-based.
    Returns:
      ``[..., F, 3]``; the third is pi minus the other two, as in the original.
    """
    p1 = vertices[..., faces[:, 0], :]
    p2 = vertices[..., faces[:, 1], :]
    p3 = vertices[..., faces[:, 2], :]
    e1 = _safe_normalise(p2 - p1)
    e2 = _safe_normalise(p3 - p1)
    e3 = _safe_normalise(p2 - p3)
    a1 = jnp.arccos(jnp.clip(jnp.sum(e1 * e2, -1), -1.0, 1.0))
    a2 = jnp.arccos(jnp.clip(jnp.sum(e3 * e1, -1), -1.0, 1.0))
    a3 = jnp.pi - (a1 + a2)
    return jnp.stack([a1, a2, a3], -1)


def face_corner_terms(vertices: jax.Array, faces):
    """Face normals and corner angles: the two factors of each corner's contribution.

    Args:
      vertices: ``[B, N, 3]``.
      faces: ``[F, 3]`` 0-based.
    Returns:
      normals ``[B, F, 3]`` (:func:`face_normals`) and angles ``[B, F, 3]``
      (:func:`corner_angles`).
    """
    return face_normals(vertices, faces), corner_angles(vertices, faces)


def vertex_normals(vertices: jax.Array, faces) -> jax.Array:
    """Angle-weighted vertex normals accumulated with a true scatter-add.

    Args:
      vertices: ``[B, N, 3]``.
      faces: ``[F, 3]`` 0-based vertex indices.
    Returns:
      ``[B, N, 3]`` un-normalised normals.
    """
    chex.assert_rank(vertices, 3)
    chex.assert_axis_dimension(vertices, 2, 3)
    _check_faces(faces, vertices.shape[1])
    faces = jnp.asarray(faces, jnp.int32)
    normals, angles = face_corner_terms(vertices, faces)
    contributions = normals[:, :, None, :] * angles[..., None]  # [B, F, 3, 3]
    batch, n_vertices = vertices.shape[:2]
    return jnp.zeros((batch, n_vertices, 3), vertices.dtype).at[:, faces].add(contributions)


def visibility_from_normals(normals: jax.Array) -> jax.Array:
    """``[B, N, 3]`` normals -> ``[B, N]`` float mask, 1 where ``normal_z >= 0``."""
    return (normals[..., 2] >= 0).astype(normals.dtype)


def vertex_visibility(rotated_vertices: jax.Array, faces) -> jax.Array:
    """Per-vertex self-occlusion visibility of a rotated mesh, no gradient.

    Args:
      rotated_vertices: ``[B, N, 3]`` (after rotation; orthographic view along -z).
      faces: ``[F, 3]`` 0-based.
    Returns:
      ``[B, N]`` float {0, 1}.
    """
    rotated_vertices = jax.lax.stop_gradient(rotated_vertices)
    return visibility_from_normals(vertex_normals(rotated_vertices, faces))


def visibility_mask(rotated_vertices: jax.Array, faces) -> jax.Array:
    """Visibility laid out like the sampler output: vertex k at row k // res, col k % res.

    Args:
      rotated_vertices: ``[B, N, 3]`` with N = res * res.
      faces: ``[F, 3]`` 0-based.
    Returns:
      ``[B, res, res, 1]`` float {0, 1}; it carries no gradient. Broadcasts against
      a ``[B, res, res, C]`` texture.
    """
    res = geometry.grid_resolution(rotated_vertices.shape[1])
    visible = vertex_visibility(rotated_vertices, faces)
    return visible.reshape(visible.shape[0], res, res, 1)


def apply_mask(texture: jax.Array, mask: jax.Array) -> jax.Array:
    """Masks a sampled texture: ``[B, H, W, C] * [B, H, W, 1 or C]``."""
    chex.assert_rank([texture, mask], 4)
    chex.assert_equal_shape_prefix([texture, mask], 3)
    return texture * jax.lax.stop_gradient(mask).astype(texture.dtype)
