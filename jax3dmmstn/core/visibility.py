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

On the regular UV grid (:func:`is_regular_grid`) the same sum is computed without a
scatter, from fixed neighbour offsets (:func:`vertex_normals` ``method="grid"``); any
other mesh uses the scatter-add. Both use the one copy of the formulas
(:func:`triangle_normals`, :func:`triangle_angles`) and agree to float rounding.
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


# The formulas work on points given as (x, y, z) tuples of equally shaped arrays, so
# that the regular-grid path runs on coordinate planes (contiguous, vectorised
# loops); the [..., 3] public functions unstack and restack.


def _components(p: jax.Array) -> tuple:
    return p[..., 0], p[..., 1], p[..., 2]


def _sub(a: tuple, b: tuple) -> tuple:
    return tuple(x - y for x, y in zip(a, b))


def _dot(a: tuple, b: tuple) -> jax.Array:
    # Two adds, not a reduction: an XLA reduction over an axis of 3 is a separate,
    # slow loop on CPU, adds fuse with their neighbours.
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _arccos(x: jax.Array) -> jax.Array:
    """``arccos`` for ``x`` in [-1, 1]: vectorisable polynomials in float32 and narrower.

    XLA's CPU ``acos`` (an ``atan2``) is not vectorised and costs ~20 ns per element, which
    was half of the visibility mask's time. Below float64 this is Cephes' ``acosf``:
    ``acos(|x|) = 2 asin(sqrt((1 - |x|) / 2))`` above 0.5, ``pi / 2 - asin(|x|)`` below,
    ``asin`` by a degree-11 odd minimax polynomial, and ``pi - acos(|x|)`` for x < 0.
    Measured on 2 million points of [-1, 1] against float64 ``numpy.arccos``: at most
    1.25 ulp (XLA's own float32 acos: 2.3 ulp). float64 uses ``jnp.arccos``.
    """
    if x.dtype == jnp.float64:
        return jnp.arccos(x)
    a = jnp.abs(x)
    big = a > 0.5
    z_big = 0.5 * (1 - a)
    arg = jnp.where(big, jnp.sqrt(z_big), a)
    z = jnp.where(big, z_big, a * a)
    poly = (
        ((4.2163199048e-2 * z + 2.4181311049e-2) * z + 4.5470025998e-2) * z + 7.4953002686e-2
    ) * z + 1.6666752422e-1
    asin = arg + arg * z * poly
    acos_abs = jnp.where(big, 2 * asin, np.float32(np.pi / 2) - asin)
    return jnp.where(x < 0, np.float32(np.pi) - acos_abs, acos_abs).astype(x.dtype)


def _triangle_normals(p1: tuple, p2: tuple, p3: tuple) -> tuple:
    """The original's face-normal formula ``cross(p2 - p1, p2 - p3)`` (the only copy)."""
    a, b = _sub(p2, p1), _sub(p2, p3)
    return (
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    )


def _triangle_angles(p1: tuple, p2: tuple, p3: tuple) -> tuple:
    """Interior angles at p1, p2, p3, the original's formulas (the only copy).

    The angle between edges e and f is ``arccos(clip(e . f / sqrt(|e|^2 |f|^2)))``: the
    original normalises e and f first, which equals this up to rounding (a float32 ulp
    or so of the cosine) but needs six divides whose results XLA keeps in memory; this
    fuses into one loop. A zero-length edge gives cosine 0 (pi / 2), as normalising a zero
    vector to 0 did. The third angle is pi minus the other two, as in the original.
    """
    e1, e2, e3 = _sub(p2, p1), _sub(p3, p1), _sub(p2, p3)
    len1, len2, len3 = _dot(e1, e1), _dot(e2, e2), _dot(e3, e3)

    def angle(dot, len_a, len_b):
        product = len_a * len_b
        cosine = dot * jax.lax.rsqrt(jnp.where(product > 0, product, 1.0))
        return _arccos(jnp.clip(jnp.where(product > 0, cosine, 0.0), -1.0, 1.0))

    a1 = angle(_dot(e1, e2), len1, len2)
    a2 = angle(_dot(e3, e1), len3, len1)
    return a1, a2, jnp.pi - (a1 + a2)


def triangle_normals(p1: jax.Array, p2: jax.Array, p3: jax.Array) -> jax.Array:
    """The original's face-normal formula on corner positions: ``cross(p2 - p1, p2 - p3)``.

    :func:`face_normals` (corners gathered by index) and the regular-grid path of
    :func:`vertex_normals` (corners as static slices) share this one formula.

    Args:
      p1, p2, p3: ``[..., 3]`` corner positions (same shape).
    Returns:
      ``[..., 3]``, not normalised (length = twice the triangle's area).
    """
    return jnp.stack(_triangle_normals(*map(_components, (p1, p2, p3))), -1)


def triangle_angles(p1: jax.Array, p2: jax.Array, p3: jax.Array) -> jax.Array:
    """Interior angles (radians) at p1, p2, p3, the original's formulas.

    Args:
      p1, p2, p3: ``[..., 3]`` corner positions (same shape).
    Returns:
      ``[..., 3]``; the third is pi minus the other two, as in the original.
    """
    return jnp.stack(_triangle_angles(*map(_components, (p1, p2, p3))), -1)


def _face_corners(vertices: jax.Array, faces):
    """``[..., N, 3]``, ``[F, 3]`` -> p1, p2, p3, each ``[..., F, 3]``."""
    return tuple(vertices[..., faces[:, i], :] for i in range(3))


def face_normals(vertices: jax.Array, faces) -> jax.Array:
    """The original's face normals, not normalised (length = twice the face's area).

    For a face (v1, v2, v3) at p1, p2, p3 the normal is ``cross(p2 - p1, p2 - p3)``
    (= ``cross(p3 - p1, p2 - p1)``, :func:`triangle_normals`), the original's formula,
    kept operation for operation so that masks match it bit for bit. Orientation: this
    is minus the right-hand-rule normal of (p1, p2, p3), so it points towards the viewer
    (+z) when the corners run clockwise as seen from +z, as the morphable models'
    front-facing triangles do.

    Args:
      vertices: ``[..., N, 3]``.
      faces: ``[F, 3]`` 0-based vertex indices.
    Returns:
      ``[..., F, 3]``.
    """
    return triangle_normals(*_face_corners(vertices, faces))


def corner_angles(vertices: jax.Array, faces) -> jax.Array:
    """Interior angles (radians) at the corners of each face, the original's formulas.

    Args:
      vertices: ``[..., N, 3]``.
      faces: ``[F, 3]`` 0-based.
    Returns:
      ``[..., F, 3]``; the third is pi minus the other two, as in the original.
    """
    return triangle_angles(*_face_corners(vertices, faces))


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


def is_regular_grid(faces, n_vertices: int) -> bool:
    """Whether ``faces`` are the res x res UV grid's triangles (any face order).

    The grid's triangles, as the original's resampleModel.m (and
    ``facemodel.morphable_model.grid_faces``) emit them: for the cell whose top-left
    vertex is k = row * res + col, (k, k + 1, k + res) and (k + res + 1, k + res, k + 1),
    corners in exactly this order. Traced faces (unknown at trace time) are not.

    Args:
      faces: ``[F, 3]`` 0-based vertex indices (numpy or a concrete jax array).
      n_vertices: N.
    """
    if isinstance(faces, jax.core.Tracer):
        return False
    res = int(round(np.sqrt(n_vertices)))
    faces = np.asarray(faces)
    if res < 2 or res * res != n_vertices or faces.shape != (2 * (res - 1) ** 2, 3):
        return False
    row, col = np.meshgrid(np.arange(res - 1), np.arange(res - 1), indexing="ij")
    k = (row * res + col).ravel()
    want = np.concatenate(
        [np.stack([k, k + 1, k + res], 1), np.stack([k + res + 1, k + res, k + 1], 1)]
    ).astype(np.int64)
    key = lambda f: np.sort((f[:, 0] * n_vertices + f[:, 1]) * n_vertices + f[:, 2])
    return bool(np.array_equal(key(faces.astype(np.int64)), key(want)))


# The six corners a vertex (r, c) of the regular grid is part of, as (offsets of the
# triangle's p1, p2, p3 from the vertex, which corner the vertex is, where it exists):
# faces A = (k, k + 1, k + res) and B = (k + res + 1, k + res, k + 1) of the cells around.
_GRID_CORNERS = (
    (((0, 0), (0, 1), (1, 0)), 0, ("bottom", "right")),  # A of cell (r, c)
    (((0, -1), (0, 0), (1, -1)), 1, ("bottom", "left")),  # A of cell (r, c - 1)
    (((-1, 0), (-1, 1), (0, 0)), 2, ("top", "right")),  # A of cell (r - 1, c)
    (((0, 0), (0, -1), (-1, 0)), 0, ("top", "left")),  # B of cell (r - 1, c - 1)
    (((0, 1), (0, 0), (-1, 1)), 1, ("top", "right")),  # B of cell (r - 1, c)
    (((1, 0), (1, -1), (0, 0)), 2, ("bottom", "left")),  # B of cell (r, c - 1)
)


def _grid_vertex_normals(vertices: jax.Array, components=(0, 1, 2)) -> jax.Array:
    """:func:`vertex_normals` of the regular UV grid, without a scatter.

    Every vertex sums the six corner terms at fixed offsets around it (fewer at the
    border), each computed from static slices of the zero-padded coordinate planes
    ``[B, res + 2, res + 2]``: XLA fuses the whole sum into one vectorised loop over the
    vertices. Each face's terms are computed by each of its three vertices, which costs
    less than keeping per-face arrays in memory.

    Args:
      vertices: ``[B, N, 3]`` with N = res * res.
      components: which normal components to compute (``(2,)`` for the mask).
    Returns:
      ``[B, N, len(components)]``.
    """
    batch, n_vertices, _ = vertices.shape
    res = geometry.grid_resolution(n_vertices)
    planes = [
        jnp.pad(vertices[..., i].reshape(batch, res, res), ((0, 0), (1, 1), (1, 1)))
        for i in range(3)
    ]

    def shifted(offset):
        dr, dc = offset
        return tuple(p[:, 1 + dr : 1 + dr + res, 1 + dc : 1 + dc + res] for p in planes)

    index = np.arange(res)
    exists = dict(
        top=index[:, None] > 0,
        bottom=index[:, None] < res - 1,
        left=index[None, :] > 0,
        right=index[None, :] < res - 1,
    )
    terms = [[] for _ in components]
    for offsets, corner, sides in _GRID_CORNERS:
        corners = tuple(shifted(o) for o in offsets)
        normal = _triangle_normals(*corners)
        angle = _triangle_angles(*corners)[corner]
        valid = exists[sides[0]] & exists[sides[1]]
        for i, component in enumerate(components):
            terms[i].append(jnp.where(valid, normal[component] * angle, 0.0))
    totals = [sum(t[1:], t[0]) for t in terms]
    return jnp.stack(totals, -1).reshape(batch, n_vertices, len(components))


def _scatter_vertex_normals(vertices: jax.Array, faces: jax.Array) -> jax.Array:
    """:func:`vertex_normals` of any mesh: a true scatter-add of every corner's term."""
    normals, angles = face_corner_terms(vertices, faces)
    contributions = normals[:, :, None, :] * angles[..., None]  # [B, F, 3, 3]
    batch, n_vertices = vertices.shape[:2]
    return jnp.zeros((batch, n_vertices, 3), vertices.dtype).at[:, faces].add(contributions)


def vertex_normals(vertices: jax.Array, faces, method: str = "auto") -> jax.Array:
    """Angle-weighted vertex normals: the sum of every incident corner's contribution.

    Each corner of each face adds :func:`face_normals` times the corner's angle
    (:func:`corner_angles`) to its vertex.

    Args:
      vertices: ``[B, N, 3]``.
      faces: ``[F, 3]`` 0-based vertex indices.
      method: ``"scatter"`` (a scatter-add, any mesh), ``"grid"`` (fixed neighbour
        offsets; faces must be the regular UV grid's, :func:`is_regular_grid`) or
        ``"auto"``: ``"grid"`` when the faces are concrete and the regular grid's,
        else ``"scatter"``. The two agree to float rounding (the order of the sum).
    Returns:
      ``[B, N, 3]`` un-normalised normals.
    """
    chex.assert_rank(vertices, 3)
    chex.assert_axis_dimension(vertices, 2, 3)
    _check_faces(faces, vertices.shape[1])
    if method not in ("auto", "grid", "scatter"):
        raise ValueError(f"method must be 'auto', 'grid' or 'scatter', got {method!r}")
    regular = method != "scatter" and is_regular_grid(faces, vertices.shape[1])
    if method == "grid" and not regular:
        raise ValueError("method='grid' needs the regular UV grid's faces (is_regular_grid)")
    if regular:
        return _grid_vertex_normals(vertices)
    return _scatter_vertex_normals(vertices, jnp.asarray(faces, jnp.int32))


def _vertex_normal_z(vertices: jax.Array, faces) -> jax.Array:
    """``[B, N, 3]`` -> ``[B, N]``: the z component of :func:`vertex_normals` (all the mask needs)."""
    chex.assert_rank(vertices, 3)
    chex.assert_axis_dimension(vertices, 2, 3)
    _check_faces(faces, vertices.shape[1])
    if is_regular_grid(faces, vertices.shape[1]):
        return _grid_vertex_normals(vertices, (2,))[..., 0]
    return _scatter_vertex_normals(vertices, jnp.asarray(faces, jnp.int32))[..., 2]


def _stored(mask: jax.Array) -> jax.Array:
    """``mask`` (values 0 or 1) unchanged, computed once and kept in memory.

    XLA fuses a cheap elementwise computation into each of its consumers, and the texture
    losses read the mask flipped, in pairs and broadcast over channels: the grid path's
    vertex normals (one fused loop) would be recomputed each time. ``sqrt`` (exact on 0
    and 1) is an op XLA counts as expensive, and it does not fuse an expensive producer
    into consumers that read its elements more than once.
    """
    return jnp.sqrt(mask)


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
    visible = (_vertex_normal_z(rotated_vertices, faces) >= 0).astype(rotated_vertices.dtype)
    return _stored(visible)


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
