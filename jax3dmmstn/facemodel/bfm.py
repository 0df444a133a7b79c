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
   u = (k % res) / (res - 1), v = 1 - (k // res) / (res - 1). (``uv_resampling``.)
4. Units: the BFM is in micrometres; everything is divided by 1000 (mm).

Choice about the scaling by shapeEV: the original scales only the 5 identity components it
uses (``shapePC(:,i) .* shapeEV(i)`` for i = 1..5) and leaves the 3DDFA expression columns as
they are. Here every identity component that is kept (n_identity of them, any number) is scaled by
its shapeEV, which is the same thing for n_identity = 5 and keeps alpha ~ N(0, 1) meaningful for
more; expression columns are used unscaled, as in the original (pass ``expression_scale`` to
scale them, e.g. by 3DDFA's sigma_exp).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import scipy.sparse.linalg

from jax3dmmstn.facemodel.landmarks68 import with_grounded_ibug68
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
from jax3dmmstn.facemodel.uv_resampling import grid_resampling_matrix, grid_vertices_nearest_uv

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


# ------------------------------------------------------------------------ the builder
@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """How the grid model is built.

    Attributes:
      resolution: grid side res (N = res ** 2 vertices).
      n_identity: BFM shape components kept (<= K), each scaled by its shapeEV.
      n_expression: 3DDFA expression components kept (<= E; 0 without expressions).
      expression_scale: factors for the expression columns (default 1: the original).
      unit_divisor: BFM units per output unit (1000: micrometres -> mm).
      outside: grid points outside the UV domain: "error" or "nearest" (see
        grid_resampling_matrix).
    """

    resolution: int = 112
    n_identity: int = 5
    n_expression: int = 5
    expression_scale: tuple[float, ...] | None = None
    unit_divisor: float = BFM_UNIT_DIVISOR
    outside: str = "error"

    def __post_init__(self):
        if self.resolution < 2:
            raise ValueError(f"resolution must be >= 2, got {self.resolution}")


@dataclasses.dataclass(frozen=True, eq=False)
class BFMArrays:
    """The BFM (and optionally 3DDFA's expressions) as arrays.

    Attributes:
      shape_mu: [3V] (or [3V, 1]) BFM mean, x, y, z interleaved per vertex.
      shape_pc: [3V, K] BFM shape components; shape_ev: [K] their standard deviations.
      triangles: [F, 3] 0-based (the BFM's tl minus 1).
      uv: [V, 2] per-vertex UV (BFM_UV.mat).
      w_exp: [3M, E] 3DDFA expression components on M vertices, with tddfa_map [M] the 0-based
        BFM vertex of each; both or neither.
      tex_mu: [3V] mean texture in 0..255 (becomes the albedo), or None.
    """

    shape_mu: np.ndarray
    shape_pc: np.ndarray
    shape_ev: np.ndarray
    triangles: np.ndarray
    uv: np.ndarray
    w_exp: np.ndarray | None = None
    tddfa_map: np.ndarray | None = None
    tex_mu: np.ndarray | None = None


def _checked_shape(bfm: BFMArrays, n_identity: int):
    """(vertices [V, 3], shape_pc, shape_ev [K], triangles [F, 3] int64, uv [V, 2]), checked."""
    shape_mu = np.asarray(bfm.shape_mu, dtype=np.float64).reshape(-1)
    if shape_mu.size % 3:
        raise ValueError(f"shapeMU must hold 3V values, got {shape_mu.size}")
    n = shape_mu.size // 3
    shape_pc = np.asarray(bfm.shape_pc)
    if shape_pc.ndim != 2 or shape_pc.shape[0] != 3 * n:
        raise ValueError(f"shapePC must be [3V={3 * n}, K], got {shape_pc.shape}")
    shape_ev = np.asarray(bfm.shape_ev, dtype=np.float64).reshape(-1)
    if shape_ev.size != shape_pc.shape[1]:
        raise ValueError(f"shapeEV must hold K={shape_pc.shape[1]} values, got {shape_ev.size}")
    if not 0 <= n_identity <= shape_pc.shape[1]:
        raise ValueError(f"n_identity must be in [0, {shape_pc.shape[1]}], got {n_identity}")
    triangles = np.asarray(bfm.triangles, dtype=np.int64)
    if triangles.ndim != 2 or triangles.shape[1] != 3:
        raise ValueError(f"triangles must be [F, 3], got {triangles.shape}")
    if triangles.min() < 0 or triangles.max() >= n:
        raise ValueError(
            f"triangles must be 0-based indices in [0, {n}), got range "
            f"[{triangles.min()}, {triangles.max()}]"
        )
    uv = np.asarray(bfm.uv, dtype=np.float64)
    if uv.shape != (n, 2):
        raise ValueError(f"UV must be [V={n}, 2], got {uv.shape}")
    return shape_mu.reshape(n, 3), shape_pc, shape_ev, triangles, uv


def _checked_expressions(bfm: BFMArrays, n: int, n_expression: int):
    """(w_exp [3M, E], tddfa_map [M] int64), checked, or (None, None) without expressions."""
    if (bfm.w_exp is None) != (bfm.tddfa_map is None):
        raise ValueError(
            "w_exp (Model_Expression.mat) and tddfa_map (map_tddfa_to_basel.mat) "
            "must be given together"
        )
    if bfm.w_exp is None:
        return None, None
    w_exp = np.asarray(bfm.w_exp, dtype=np.float64)
    tddfa_map = np.asarray(bfm.tddfa_map).reshape(-1).astype(np.int64)
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
    return w_exp, tddfa_map


def _expression_basis(vertices, triangles, w_exp, tddfa_map, options: BuildOptions):
    """[V, 3, n_expression] expression displacements of every BFM vertex: 3DDFA's
    components where they are known, extended harmonically into the mouth (None for
    n_expression = 0)."""
    n, n_expression = vertices.shape[0], options.n_expression
    m = tddfa_map.size
    known = w_exp[:, :n_expression].reshape(m, 3 * n_expression)  # [M, (xyz, E)]
    if options.expression_scale is not None:
        scale = np.asarray(options.expression_scale, dtype=np.float64).reshape(-1)
        if scale.size != n_expression:
            raise ValueError(f"expression_scale must hold {n_expression} values")
        known = (known.reshape(m, 3, n_expression) * scale).reshape(m, -1)
    if not n_expression:
        return None
    full = extrapolate_displacements(vertices, triangles, tddfa_map, known)
    return full.reshape(n, 3, n_expression)


def _grid_landmarks(landmarks, uv: np.ndarray, resolution: int) -> dict[str, np.ndarray]:
    """BFM vertex landmarks -> the nearest grid vertices in UV (default: the original's 21)."""
    if landmarks is None:
        return {"aflw21": default_aflw21_landmarks(resolution)}
    n = uv.shape[0]
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
    return grid_landmarks


def _grid_albedo(tex_mu, weights, n: int) -> np.ndarray | None:
    """texMU (0..255 per vertex) resampled to the grid, in 0..1."""
    if tex_mu is None:
        return None
    tex = np.asarray(tex_mu, dtype=np.float64).reshape(-1)
    if tex.size != 3 * n:
        raise ValueError(f"texMU must hold 3V={3 * n} values, got {tex.size}")
    return np.clip(weights @ (tex.reshape(n, 3) / 255.0), 0.0, 1.0).astype(np.float32)


def build_bfm_model_from_arrays(
    bfm: BFMArrays,
    options: BuildOptions = BuildOptions(),
    *,
    landmarks: Mapping[str, np.ndarray] | None = None,
    provenance: str = "",
) -> MorphableModel:
    """The BFM (+ 3DDFA expressions) resampled to a res x res UV grid, as a MorphableModel.

    Args:
      bfm: the BFM's arrays (BFMArrays).
      options: BuildOptions.
      landmarks: name -> 0-based BFM vertex indices, mapped to the nearest grid vertices in UV;
        default: the original's 21 AFLW points of the 112 grid, moved to this resolution.
        Without "ibug68", one is grounded on the BFM's 68-landmark mean
        (`landmarks68.ground_ibug68`, anchored on "aflw21").
      provenance: recorded in the model (default: the builder and the options).
    """
    res, n_identity = options.resolution, options.n_identity
    vertices, shape_pc, shape_ev, triangles, uv = _checked_shape(bfm, n_identity)
    n = vertices.shape[0]
    w_exp, tddfa_map = _checked_expressions(bfm, n, options.n_expression)
    # Identity: [V, 3, n_identity], scaled by the standard deviations.
    identity = np.asarray(shape_pc[:, :n_identity], dtype=np.float64) * shape_ev[:n_identity]
    columns = [identity.reshape(n, 3, n_identity)]
    if w_exp is not None:
        expression = _expression_basis(vertices, triangles, w_exp, tddfa_map, options)
        columns += [] if expression is None else [expression]
    basis = np.concatenate(columns, axis=2)  # [V, 3, D]
    d = basis.shape[2]

    weights = grid_resampling_matrix(uv, triangles, res, outside=options.outside)
    grid_mean = weights @ vertices / options.unit_divisor
    grid_basis = (weights @ basis.reshape(n, 3 * d)).reshape(-1, 3, d) / options.unit_divisor
    grid_landmarks = _grid_landmarks(landmarks, uv, res)
    default_provenance = {
        "builder": "jax3dmmstn.facemodel.bfm",
        "resolution": res,
        "n_identity": n_identity,
        "n_expression": d - n_identity,
    }
    model = MorphableModel(
        mean=grid_mean.astype(np.float32),
        basis=grid_basis.astype(np.float32),
        faces=grid_faces(res),
        resolution=res,
        uv=grid_uv(res),
        landmarks=grid_landmarks,
        landmark_flip={k: LANDMARK_FLIPS[k] for k in grid_landmarks},
        mirror=grid_mirror(res),
        albedo=_grid_albedo(bfm.tex_mu, weights, n),
        n_identity=n_identity,
        n_expression=d - n_identity,
        units=(
            "mm"
            if options.unit_divisor == BFM_UNIT_DIVISOR
            else f"BFM units / {options.unit_divisor:g}"
        ),
        provenance=provenance or json.dumps(default_provenance),
    )
    # No "ibug68" given: the 68 points grounded on the BFM's own 68-landmark mean.
    return with_grounded_ibug68(model)


def _read_bfm_files(bfm_path, uv_path, expression_path, tddfa_map_path, with_albedo) -> BFMArrays:
    """BFMArrays from the original's .mat files (tl made 0-based)."""
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
    return BFMArrays(
        shape_mu=bfm["shapeMU"],
        shape_pc=bfm["shapePC"],
        shape_ev=bfm["shapeEV"],
        triangles=tl - 1,
        uv=uv,
        w_exp=w_exp,
        tddfa_map=tddfa_map,
        tex_mu=bfm.get("texMU") if with_albedo else None,
    )


def _file_provenance(paths: dict, options: BuildOptions, has_expressions: bool) -> str:
    """The provenance record of a model built from files (file names and options)."""
    record = {"builder": "jax3dmmstn.facemodel.bfm.build_bfm_model"}
    record.update({k: None if p is None else Path(p).name for k, p in paths.items()})
    record.update(
        resolution=options.resolution,
        n_identity=options.n_identity,
        n_expression=options.n_expression if has_expressions else 0,
        identity_scaled_by="shapeEV",
        units="BFM / 1000 (mm)",
    )
    return json.dumps(record)


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
    The rest are the BuildOptions fields.
    """
    bfm = _read_bfm_files(bfm_path, uv_path, expression_path, tddfa_map_path, with_albedo)
    options = BuildOptions(
        resolution=resolution, n_identity=n_identity, n_expression=n_expression, outside=outside
    )
    bfm_landmarks = None
    if landmarks is not None:
        bfm_landmarks = {
            name: read_anl(v) if isinstance(v, (str, Path)) else np.asarray(v)
            for name, v in landmarks.items()
        }
    paths = {
        "bfm": bfm_path,
        "uv": uv_path,
        "expression": expression_path,
        "tddfa_map": tddfa_map_path,
    }
    provenance = _file_provenance(paths, options, bfm.w_exp is not None)
    return build_bfm_model_from_arrays(bfm, options, landmarks=bfm_landmarks, provenance=provenance)
