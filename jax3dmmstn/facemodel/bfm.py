"""Builds a grid morphable model from the Basel Face Model (BFM09) and 3DDFA's expressions.

This is the original's prepareExpressionBFM.m + resampleModel.m in numpy/scipy:

1. Identity: the first n_identity BFM shape components, each multiplied by its standard
   deviation shapeEV, so that alpha ~ N(0, 1) is a plausible face.
2. Expression (optional): 3DDFA's expression components w_exp live on 53215 of the BFM's 53490
   vertices (map_tddfa_to_basel, 0-based); the BFM's mouth interior has no 3DDFA counterpart.
   Each component becomes a displacement d of every BFM vertex minimising
   ||L d||^2 + ||S d - w||^2, with L the cotangent Laplace-Beltrami operator of the mean shape
   and S the selection of the mapped vertices: d follows w where it is known and extends it
   harmonically (smoothly) into the mouth.
3. Resampling: every point of a res x res grid in the UV plane (BFM_UV.mat, a Tutte embedding
   onto the unit square) is located in its UV triangle; its position, basis rows and albedo are
   the barycentric interpolation of the triangle's vertices. Grid vertex k sits at
   u = (k % res) / (res - 1), v = 1 - (k // res) / (res - 1).
4. Units: the BFM is in micrometres; everything is divided by 1000 (mm).

Choice about the scaling by shapeEV: the original scales only the 5 identity components it
uses (``shapePC(:,i) .* shapeEV(i)`` for i = 1..5) and leaves the 3DDFA expression columns as
they are. Here every identity component that is kept (n_identity of them, any number) is scaled by
its shapeEV, which is the same thing for n_identity = 5 and keeps alpha ~ N(0, 1) meaningful for
more; expression columns are used unscaled, as in the original (pass ``expression_scale`` to
scale them, e.g. by 3DDFA's sigma_exp).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import scipy.sparse.linalg

from jax3dmmstn.facemodel.morphable_model import (
    LANDMARK_FLIPS,
    MorphableModel,
    PathLike,
    default_aflw21_landmarks,
    grid_faces,
    grid_mirror,
    grid_uv,
    load_mat,
    read_anl,
)

BFM_UNIT_DIVISOR = 1000.0  # BFM micrometres -> mm


# ------------------------------------------------------------------------ Laplace-Beltrami
def cotangent_laplacian(vertices: np.ndarray, triangles: np.ndarray) -> scipy.sparse.csr_matrix:
    """The cotangent Laplace-Beltrami matrix of a triangle mesh.

    vertices [V, 3], triangles [F, 3] 0-based. Returns L [V, V] (sparse, symmetric, positive
    semi-definite, rows summing to 0) with L_ij = -(cot a_ij + cot b_ij) for each edge ij (a, b the
    angles opposite the edge) and L_ii = -sum_j L_ij. This is exactly the original's
    LaplaceBeltrami.m operator, sum_k Grad_k' diag(2 A) Grad_k (the P1 finite-element stiffness
    matrix times 2), so the least-squares weighting between its rows and the data rows is the same.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    triangles = np.asarray(triangles, dtype=np.int64)
    n = vertices.shape[0]
    rows, cols, weights = [], [], []
    for corner in range(3):
        i, j, k = (triangles[:, (corner + s) % 3] for s in range(3))
        # Angle at vertex i, opposite edge jk: cot = (a . b) / |a x b|.
        a, b = vertices[j] - vertices[i], vertices[k] - vertices[i]
        cross = np.linalg.norm(np.cross(a, b), axis=1)
        if np.any(cross == 0):
            bad = int(np.flatnonzero(cross == 0)[0])
            raise ValueError(
                f"triangle {bad} ({triangles[bad].tolist()}) of the mean shape is "
                "degenerate (zero area); the Laplace-Beltrami operator is undefined"
            )
        cot = (a * b).sum(axis=1) / cross
        rows += [j, k]
        cols += [k, j]
        weights += [-cot, -cot]
    rows, cols, weights = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
    off = scipy.sparse.coo_matrix((weights, (rows, cols)), shape=(n, n)).tocsr()
    return (off - scipy.sparse.diags(np.asarray(off.sum(axis=1)).ravel())).tocsr()


def extrapolate_displacements(
    vertices: np.ndarray, triangles: np.ndarray, mapped: np.ndarray, displacements: np.ndarray
) -> np.ndarray:
    """Extends displacements known on some vertices to the whole mesh (the original's expression
    extrapolation into the mouth interior).

    Solves min_d ||L d||^2 + ||S d - w||^2 per column (L the cotangent Laplacian, S selects the
    mapped vertices), i.e. the original's least-squares ``[L; S] \\ [L V; S V + w] - V``.

    vertices [V, 3], triangles [F, 3] 0-based, mapped [M] vertex index of each known row,
    displacements [M, C] (any number of columns, e.g. 3 coordinates x components).
    Returns [V, C].
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    mapped = np.asarray(mapped, dtype=np.int64)
    w = np.asarray(displacements, dtype=np.float64)
    n = vertices.shape[0]
    if w.ndim != 2 or w.shape[0] != mapped.shape[0]:
        raise ValueError(f"displacements must be [M={mapped.shape[0]}, C], got {w.shape}")
    if mapped.size == 0 or mapped.min() < 0 or mapped.max() >= n:
        raise ValueError(f"mapped vertex indices must lie in [0, {n})")
    lap = cotangent_laplacian(vertices, triangles)
    select = scipy.sparse.csr_matrix(
        (np.ones(mapped.size), (np.arange(mapped.size), mapped)), shape=(mapped.size, n)
    )
    _check_every_component_has_data(triangles, n, mapped)
    # The normal equations (L'L + S'S) d = S'w, written as the augmented system
    #   [I  L; L' -S'S] [r; d] = [0; -S'w]   (r = -L d),
    # which has the sparsity of L rather than of L'L and factorises about twice as fast.
    augmented = scipy.sparse.bmat(
        [[scipy.sparse.identity(n), lap], [lap.T, -(select.T @ select)]], format="csc"
    )
    rhs = np.concatenate([np.zeros((n, w.shape[1])), -np.asarray(select.T @ w)])
    solution = scipy.sparse.linalg.splu(augmented, permc_spec="COLAMD").solve(rhs)
    return solution[n:]


def _check_every_component_has_data(triangles, n, mapped):
    """Without a mapped vertex in a connected piece of the mesh the least-squares problem has no
    unique solution (L is blind to a constant shift of that piece)."""
    tri = np.asarray(triangles, dtype=np.int64)
    edges = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    graph = scipy.sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    count, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    has_data = np.zeros(count, dtype=bool)
    has_data[labels[mapped]] = True
    if not has_data.all():
        raise ValueError(
            f"{int((~has_data).sum())} connected piece(s) of the mesh have no mapped "
            "vertex; the expression extrapolation would be undetermined there"
        )


# ------------------------------------------------------------------------ point location
def locate_points(
    uv: np.ndarray, triangles: np.ndarray, points: np.ndarray, tolerance: float = 1e-9
) -> tuple[np.ndarray, np.ndarray]:
    """Finds the triangle of a 2-D triangulation that contains each point, and its barycentrics.

    A point on an edge, on the boundary of the domain or at a vertex counts as inside (within
    `tolerance` in barycentric terms), so nothing is lost there; where several triangles hold a
    point the one it is deepest inside wins. Degenerate (zero-area) triangles are skipped.

    uv [V, 2], triangles [F, 3] 0-based, points [P, 2]. Returns (triangle [P] int64, -1 where no
    triangle holds the point; barycentric [P, 3] float64, rows summing to 1).
    """
    uv = np.asarray(uv, dtype=np.float64)
    tri = np.asarray(triangles, dtype=np.int64)
    points = np.asarray(points, dtype=np.float64)
    corners = uv[tri]  # [F, 3, 2]
    origin = corners[:, 0]
    e1, e2 = corners[:, 1] - origin, corners[:, 2] - origin
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    scale = np.maximum(np.abs(e1).max(1), np.abs(e2).max(1))
    usable = np.abs(det) > 1e-14 * np.maximum(scale, 1e-300) ** 2

    # Candidate (triangle, point) pairs from each triangle's bounding box, on a bucket grid of
    # the points (the points need not be on a grid).
    lo, hi = points.min(0), points.max(0)
    n_buckets = max(1, int(np.sqrt(len(points))))
    cell = np.maximum((hi - lo) / n_buckets, 1e-12)
    pad = tolerance * np.maximum(scale, 1e-12)[:, None]
    box_lo = np.floor((corners.min(1) - pad - lo) / cell).astype(np.int64)
    box_hi = np.floor((corners.max(1) + pad - lo) / cell).astype(np.int64)
    box_lo = np.clip(box_lo, 0, n_buckets - 1)
    box_hi = np.clip(box_hi, -1, n_buckets - 1)
    point_bucket = np.clip(np.floor((points - lo) / cell).astype(np.int64), 0, n_buckets - 1)
    bucket_id = point_bucket[:, 0] * n_buckets + point_bucket[:, 1]
    order = np.argsort(bucket_id, kind="stable")
    starts = np.searchsorted(bucket_id[order], np.arange(n_buckets * n_buckets + 1))

    width = np.where(usable, box_hi[:, 0] - box_lo[:, 0] + 1, 0).clip(min=0)
    height = np.where(usable, box_hi[:, 1] - box_lo[:, 1] + 1, 0).clip(min=0)
    n_cells = width * height
    cand_tri = np.repeat(np.arange(len(tri)), n_cells)
    offset = np.arange(n_cells.sum()) - np.repeat(np.cumsum(n_cells) - n_cells, n_cells)
    bx = box_lo[cand_tri, 0] + offset // np.maximum(height[cand_tri], 1)
    by = box_lo[cand_tri, 1] + offset % np.maximum(height[cand_tri], 1)
    bucket = bx * n_buckets + by
    count = starts[bucket + 1] - starts[bucket]
    pair_tri = np.repeat(cand_tri, count)
    pair_pos = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    pair_point = order[np.repeat(starts[bucket], count) + pair_pos]

    q = points[pair_point] - origin[pair_tri]
    d = det[pair_tri]
    b1 = (q[:, 0] * e2[pair_tri, 1] - q[:, 1] * e2[pair_tri, 0]) / d
    b2 = (e1[pair_tri, 0] * q[:, 1] - e1[pair_tri, 1] * q[:, 0]) / d
    bary = np.stack([1.0 - b1 - b2, b1, b2], axis=1)
    depth = bary.min(axis=1)
    keep = depth >= -tolerance
    pair_point, pair_tri, bary, depth = pair_point[keep], pair_tri[keep], bary[keep], depth[keep]
    # For each point keep its deepest triangle.
    best = np.lexsort((-depth, pair_point))
    pair_point, first = np.unique(pair_point[best], return_index=True)
    chosen = best[first]
    triangle = np.full(len(points), -1, dtype=np.int64)
    barycentric = np.zeros((len(points), 3))
    triangle[pair_point] = pair_tri[chosen]
    clipped = np.clip(bary[chosen], 0.0, None)  # remove the -tolerance slack
    barycentric[pair_point] = clipped / clipped.sum(axis=1, keepdims=True)
    return triangle, barycentric


def _nearest_on_boundary(uv, triangles, points):
    """For points outside the triangulation: the closest point on its boundary, as (triangle,
    barycentric). uv [V, 2], triangles [F, 3], points [P, 2]."""
    tri = np.asarray(triangles, dtype=np.int64)
    edges = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    owner = np.tile(np.arange(len(tri)), 3)
    slot = np.repeat(np.arange(3), len(tri))
    key = np.sort(edges, axis=1)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    boundary = counts[inverse.ravel()] == 1
    edges, owner, slot = edges[boundary], owner[boundary], slot[boundary]
    a, b = uv[edges[:, 0]], uv[edges[:, 1]]
    triangle = np.empty(len(points), dtype=np.int64)
    barycentric = np.zeros((len(points), 3))
    for p, point in enumerate(points):
        ab = b - a
        s = np.clip(((point - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-300), 0.0, 1.0)
        dist = np.linalg.norm(a + s[:, None] * ab - point, axis=1)
        e = int(np.argmin(dist))
        triangle[p] = owner[e]
        # Edge (slot, slot + 1) of the triangle: weights 1 - s and s on those two corners.
        barycentric[p, slot[e]] = 1.0 - s[e]
        barycentric[p, (slot[e] + 1) % 3] = s[e]
    return triangle, barycentric


def grid_resampling_matrix(
    uv: np.ndarray, triangles: np.ndarray, resolution: int, outside: str = "error"
) -> scipy.sparse.csr_matrix:
    """The sparse barycentric interpolation from mesh vertices to a res x res UV grid.

    uv [V, 2] per-vertex UV, triangles [F, 3] 0-based. outside: what to do with grid points
    outside the UV domain: "error" (the default) or "nearest" (use the closest point of the
    domain's boundary). Returns W [res * res, V] with three non-zeros per row summing to 1, so
    that grid_values = W @ vertex_values.
    """
    uv = np.asarray(uv, dtype=np.float64)
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    # The grid formula in float64 (grid_uv's float32 values would be off the exact lines).
    k = np.arange(resolution * resolution)
    grid = np.stack(
        [(k % resolution) / (resolution - 1), 1.0 - (k // resolution) / (resolution - 1)], 1
    )
    triangle, bary = locate_points(uv, triangles, grid)
    lost = np.flatnonzero(triangle < 0)
    if lost.size:
        if outside == "nearest":
            triangle[lost], bary[lost] = _nearest_on_boundary(uv, triangles, grid[lost])
        elif outside == "error":
            examples = ", ".join(f"({grid[i, 0]:.4f}, {grid[i, 1]:.4f})" for i in lost[:3])
            raise ValueError(
                f"{lost.size} of {len(grid)} grid points lie outside the UV domain (e.g. {examples}); "
                "use UV coordinates covering the unit square, or outside='nearest'"
            )
        else:
            raise ValueError(f"outside must be 'error' or 'nearest', got {outside!r}")
    cols = np.asarray(triangles, dtype=np.int64)[triangle]
    rows = np.repeat(np.arange(len(grid)), 3)
    return scipy.sparse.csr_matrix(
        (bary.ravel(), (rows, cols.ravel())), shape=(len(grid), uv.shape[0])
    )


def grid_vertices_nearest_uv(uv_points: np.ndarray, resolution: int) -> np.ndarray:
    """Grid vertex nearest to each UV point [L, 2]. Returns [L] int32 vertex indices."""
    uv_points = np.asarray(uv_points, dtype=np.float64)
    col = np.clip(np.rint(uv_points[:, 0] * (resolution - 1)), 0, resolution - 1).astype(np.int64)
    row = np.clip(np.rint((1.0 - uv_points[:, 1]) * (resolution - 1)), 0, resolution - 1).astype(
        np.int64
    )
    return (row * resolution + col).astype(np.int32)


# ------------------------------------------------------------------------ the builder
def build_bfm_model_from_arrays(
    shape_mu: np.ndarray,
    shape_pc: np.ndarray,
    shape_ev: np.ndarray,
    triangles: np.ndarray,
    uv: np.ndarray,
    *,
    w_exp: np.ndarray | None = None,
    tddfa_map: np.ndarray | None = None,
    tex_mu: np.ndarray | None = None,
    resolution: int = 112,
    n_identity: int = 5,
    n_expression: int = 5,
    expression_scale: np.ndarray | None = None,
    landmarks: Mapping[str, np.ndarray] | None = None,
    unit_divisor: float = BFM_UNIT_DIVISOR,
    outside: str = "error",
    provenance: str = "",
) -> MorphableModel:
    """The BFM (+ 3DDFA expressions) resampled to a res x res UV grid, as a MorphableModel.

    Args:
      shape_mu: [3V] (or [3V, 1]) BFM mean, x, y, z interleaved per vertex.
      shape_pc: [3V, K] BFM shape components; shape_ev: [K] their standard deviations.
      triangles: [F, 3] 0-based (the BFM's tl minus 1).
      uv: [V, 2] per-vertex UV (BFM_UV.mat).
      w_exp: [3M, E] 3DDFA expression components on M vertices, with tddfa_map [M] the 0-based
        BFM vertex of each; both or neither.
      tex_mu: [3V] mean texture in 0..255 (becomes the albedo), or None.
      resolution, n_identity (<= K), n_expression (<= E; 0 without w_exp).
      expression_scale: [n_expression] factors for the expression columns (default 1: the original).
      landmarks: name -> 0-based BFM vertex indices, mapped to the nearest grid vertices in UV;
        default: the original's 21 AFLW points of the 112 grid, moved to this resolution.
      unit_divisor: BFM units per output unit (1000: micrometres -> mm).
      outside: grid points outside the UV domain: "error" or "nearest" (see grid_resampling_matrix).
    """
    shape_mu = np.asarray(shape_mu, dtype=np.float64).reshape(-1)
    if shape_mu.size % 3:
        raise ValueError(f"shapeMU must hold 3V values, got {shape_mu.size}")
    n = shape_mu.size // 3
    shape_pc = np.asarray(shape_pc)
    if shape_pc.ndim != 2 or shape_pc.shape[0] != 3 * n:
        raise ValueError(f"shapePC must be [3V={3 * n}, K], got {shape_pc.shape}")
    shape_ev = np.asarray(shape_ev, dtype=np.float64).reshape(-1)
    if shape_ev.size != shape_pc.shape[1]:
        raise ValueError(f"shapeEV must hold K={shape_pc.shape[1]} values, got {shape_ev.size}")
    if not 0 <= n_identity <= shape_pc.shape[1]:
        raise ValueError(f"n_identity must be in [0, {shape_pc.shape[1]}], got {n_identity}")
    triangles = np.asarray(triangles, dtype=np.int64)
    if triangles.ndim != 2 or triangles.shape[1] != 3:
        raise ValueError(f"triangles must be [F, 3], got {triangles.shape}")
    if triangles.min() < 0 or triangles.max() >= n:
        raise ValueError(
            f"triangles must be 0-based indices in [0, {n}), got range "
            f"[{triangles.min()}, {triangles.max()}]"
        )
    uv = np.asarray(uv, dtype=np.float64)
    if uv.shape != (n, 2):
        raise ValueError(f"UV must be [V={n}, 2], got {uv.shape}")
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    vertices = shape_mu.reshape(n, 3)

    # Identity: [V, 3, n_identity], scaled by the standard deviations.
    identity = (
        np.asarray(shape_pc[:, :n_identity], dtype=np.float64) * shape_ev[:n_identity]
    ).reshape(n, 3, n_identity)
    columns = [identity]
    if (w_exp is None) != (tddfa_map is None):
        raise ValueError(
            "w_exp (Model_Expression.mat) and tddfa_map (map_tddfa_to_basel.mat) "
            "must be given together"
        )
    if w_exp is None:
        n_expression = 0
    else:
        w_exp = np.asarray(w_exp, dtype=np.float64)
        tddfa_map = np.asarray(tddfa_map).reshape(-1).astype(np.int64)
        m = tddfa_map.size
        if w_exp.ndim != 2 or w_exp.shape[0] != 3 * m:
            raise ValueError(
                f"w_exp must be [3M={3 * m}, E] for the {m} mapped vertices, got {w_exp.shape}"
            )
        if tddfa_map.min() < 0 or tddfa_map.max() >= n:
            raise ValueError(
                f"map_tddfa_to_basel must hold 0-based BFM vertex indices in [0, {n}), "
                f"got range [{tddfa_map.min()}, {tddfa_map.max()}]"
            )
        if not 0 <= n_expression <= w_exp.shape[1]:
            raise ValueError(f"n_expression must be in [0, {w_exp.shape[1]}], got {n_expression}")
        known = w_exp[:, :n_expression].reshape(m, 3 * n_expression)  # [M, (xyz, E)]
        if expression_scale is not None:
            scale = np.asarray(expression_scale, dtype=np.float64).reshape(-1)
            if scale.size != n_expression:
                raise ValueError(f"expression_scale must hold {n_expression} values")
            known = (known.reshape(m, 3, n_expression) * scale).reshape(m, -1)
        if n_expression:
            full = extrapolate_displacements(vertices, triangles, tddfa_map, known)
            columns.append(full.reshape(n, 3, n_expression))
    basis = np.concatenate(columns, axis=2)  # [V, 3, D]

    weights = grid_resampling_matrix(uv, triangles, resolution, outside=outside)
    d = basis.shape[2]
    grid_mean = weights @ vertices / unit_divisor
    grid_basis = (weights @ basis.reshape(n, 3 * d)).reshape(-1, 3, d) / unit_divisor
    albedo = None
    if tex_mu is not None:
        tex = np.asarray(tex_mu, dtype=np.float64).reshape(-1)
        if tex.size != 3 * n:
            raise ValueError(f"texMU must hold 3V={3 * n} values, got {tex.size}")
        albedo = np.clip(weights @ (tex.reshape(n, 3) / 255.0), 0.0, 1.0)

    if landmarks is None:
        grid_landmarks = {"aflw21": default_aflw21_landmarks(resolution)}
    else:
        grid_landmarks = {}
        for name, idx in landmarks.items():
            idx = np.asarray(idx, dtype=np.int64).reshape(-1)
            if idx.min() < 0 or idx.max() >= n:
                raise ValueError(f"landmarks[{name!r}] must be 0-based BFM vertex indices < {n}")
            if name not in LANDMARK_FLIPS or LANDMARK_FLIPS[name].size != idx.size:
                raise ValueError(
                    f"landmarks[{name!r}]: unknown set; known: "
                    f"{ {k: v.size for k, v in LANDMARK_FLIPS.items()} }"
                )
            grid_landmarks[name] = grid_vertices_nearest_uv(uv[idx], resolution)
    return MorphableModel(
        mean=grid_mean.astype(np.float32),
        basis=grid_basis.astype(np.float32),
        faces=grid_faces(resolution),
        resolution=resolution,
        uv=grid_uv(resolution),
        landmarks=grid_landmarks,
        landmark_flip={k: LANDMARK_FLIPS[k] for k in grid_landmarks},
        mirror=grid_mirror(resolution),
        albedo=None if albedo is None else albedo.astype(np.float32),
        n_identity=n_identity,
        n_expression=basis.shape[2] - n_identity,
        units="mm" if unit_divisor == BFM_UNIT_DIVISOR else f"BFM units / {unit_divisor:g}",
        provenance=provenance
        or json.dumps(
            {
                "builder": "jax3dmmstn.facemodel.bfm",
                "resolution": resolution,
                "n_identity": n_identity,
                "n_expression": basis.shape[2] - n_identity,
            }
        ),
    )


def build_bfm_model(
    bfm_path: PathLike,
    uv_path: PathLike,
    expression_path: PathLike | None = None,
    tddfa_map_path: PathLike | None = None,
    *,
    resolution: int = 112,
    n_identity: int = 5,
    n_expression: int = 5,
    landmarks: Mapping[str, PathLike | Sequence[int] | np.ndarray] | None = None,
    with_albedo: bool = True,
    outside: str = "error",
) -> MorphableModel:
    """Builds the grid model from the original files (what prepareExpressionBFM.m does).

    bfm_path: 01_MorphableModel.mat (shapeMU, shapePC, shapeEV, tl 1-based; texMU for the albedo).
    uv_path: BFM_UV.mat (UV, V x 2).
    expression_path: 3DDFA's Model_Expression.mat (w_exp), with tddfa_map_path:
      map_tddfa_to_basel.mat (map_tddfa_to_basel, 0-based); both or neither. Without them the
      model has identity components only.
    landmarks: name -> BFM vertex landmarks, either an .anl file (1-based, e.g. the original's
      Landmarks21_BFM.anl) or 0-based indices; default: the original's 21 AFLW grid points.
    See build_bfm_model_from_arrays for the rest.
    """
    if (expression_path is None) != (tddfa_map_path is None):
        raise ValueError(
            "--expression (Model_Expression.mat) and --tddfa-map "
            "(map_tddfa_to_basel.mat) must be given together"
        )
    bfm = load_mat(bfm_path, ["shapeMU", "shapePC", "shapeEV", "tl"])
    uv = load_mat(uv_path, ["UV"])["UV"]
    tl = np.asarray(bfm["tl"]).astype(np.int64)
    if tl.ndim != 2 or tl.shape[1] != 3 or tl.min() < 1:
        raise ValueError(
            f"{bfm_path}: tl must be an F x 3 array of 1-based vertex indices, got "
            f"shape {tl.shape}, minimum {tl.min()}"
        )
    w_exp = tddfa_map = None
    if expression_path is not None:
        w_exp = load_mat(expression_path, ["w_exp"])["w_exp"]
        tddfa_map = load_mat(tddfa_map_path, ["map_tddfa_to_basel"])["map_tddfa_to_basel"]
    tex_mu = bfm.get("texMU") if with_albedo else None
    bfm_landmarks = None
    if landmarks is not None:
        bfm_landmarks = {
            name: read_anl(v) if isinstance(v, (str, Path)) else np.asarray(v)
            for name, v in landmarks.items()
        }
    provenance = json.dumps(
        {
            "builder": "jax3dmmstn.facemodel.bfm.build_bfm_model",
            "bfm": Path(bfm_path).name,
            "uv": Path(uv_path).name,
            "expression": None if expression_path is None else Path(expression_path).name,
            "tddfa_map": None if tddfa_map_path is None else Path(tddfa_map_path).name,
            "resolution": resolution,
            "n_identity": n_identity,
            "n_expression": 0 if w_exp is None else n_expression,
            "identity_scaled_by": "shapeEV",
            "units": "BFM / 1000 (mm)",
        }
    )
    return build_bfm_model_from_arrays(
        bfm["shapeMU"],
        bfm["shapePC"],
        bfm["shapeEV"],
        tl - 1,
        uv,
        w_exp=w_exp,
        tddfa_map=tddfa_map,
        tex_mu=tex_mu,
        resolution=resolution,
        n_identity=n_identity,
        n_expression=n_expression,
        landmarks=bfm_landmarks,
        outside=outside,
        provenance=provenance,
    )
