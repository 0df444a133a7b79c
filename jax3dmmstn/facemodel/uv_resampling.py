"""Resampling a triangle mesh onto a res x res UV grid: point location and barycentrics.

Every grid point is located in the triangle of the mesh's UV embedding that holds it; the grid
values are the barycentric interpolation of that triangle's vertices
(``grid_resampling_matrix``). Used by the BFM builder (``bfm``), step 3 of
prepareExpressionBFM.m / resampleModel.m.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse


def _triangle_frames(uv: np.ndarray, tri: np.ndarray):
    """Per triangle: corners [F, 3, 2], origin, edge vectors e1, e2, determinant, size, and
    whether it is usable (not degenerate)."""
    corners = uv[tri]  # [F, 3, 2]
    origin = corners[:, 0]
    e1, e2 = corners[:, 1] - origin, corners[:, 2] - origin
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    scale = np.maximum(np.abs(e1).max(1), np.abs(e2).max(1))
    usable = np.abs(det) > 1e-14 * np.maximum(scale, 1e-300) ** 2
    return corners, origin, e1, e2, det, scale, usable


def _candidate_pairs(points, corners, scale, usable, tolerance):
    """(triangle, point) index pairs whose triangle's bounding box (padded by the tolerance)
    overlaps the point's bucket, on a bucket grid of the points (they need not be on a grid)."""
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

    # Every bucket of every triangle's box, then every point of each such bucket.
    width = np.where(usable, box_hi[:, 0] - box_lo[:, 0] + 1, 0).clip(min=0)
    height = np.where(usable, box_hi[:, 1] - box_lo[:, 1] + 1, 0).clip(min=0)
    n_cells = width * height
    cand_tri = np.repeat(np.arange(len(corners)), n_cells)
    offset = np.arange(n_cells.sum()) - np.repeat(np.cumsum(n_cells) - n_cells, n_cells)
    bx = box_lo[cand_tri, 0] + offset // np.maximum(height[cand_tri], 1)
    by = box_lo[cand_tri, 1] + offset % np.maximum(height[cand_tri], 1)
    bucket = bx * n_buckets + by
    count = starts[bucket + 1] - starts[bucket]
    pair_tri = np.repeat(cand_tri, count)
    pair_pos = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    pair_point = order[np.repeat(starts[bucket], count) + pair_pos]
    return pair_tri, pair_point


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
    corners, origin, e1, e2, det, scale, usable = _triangle_frames(uv, tri)
    pair_tri, pair_point = _candidate_pairs(points, corners, scale, usable, tolerance)

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
