"""The BFM builder on meshes of known shape written in the BFM's file structures."""

import numpy as np
import pytest
import scipy.io
from scipy.spatial import Delaunay

from jax3dmmstn import cli
from jax3dmmstn.facemodel.bfm import (
    BFMArrays,
    BuildOptions,
    build_bfm_model,
    build_bfm_model_from_arrays,
    cotangent_laplacian,
    extrapolate_displacements,
)
from jax3dmmstn.facemodel.landmarks68 import ground_ibug68
from jax3dmmstn.facemodel.morphable_model import (
    AFLW21_FLIP,
    AFLW21_INDICES_112_ONE_BASED,
    MorphableModel,
    grid_faces,
)
from jax3dmmstn.facemodel.uv_resampling import grid_resampling_matrix, locate_points


def uv_mesh(per_side=21, seed=0, jitter=0.25):
    """A Delaunay mesh of the unit square like BFM_UV's Tutte embedding: vertices on the boundary
    (corners included) and on the symmetry line u = 0.5, the others a jittered grid.
    Returns uv [V, 2], triangles [F, 3]."""
    rng = np.random.default_rng(seed)
    s = np.linspace(0.0, 1.0, per_side)
    uv = np.stack(np.meshgrid(s, s, indexing="xy"), -1).reshape(-1, 2)
    step = s[1]
    interior = (uv.min(1) > 0) & (uv.max(1) < 1)
    moved = uv + rng.uniform(-jitter, jitter, uv.shape) * step
    moved[np.isclose(uv[:, 0], 0.5), 0] = 0.5  # keep the midline exact
    uv = np.where(interior[:, None], moved, uv)
    return uv, Delaunay(uv).simplices.astype(np.int64)


def grid_points(res):
    k = np.arange(res * res)
    return np.stack([(k % res) / (res - 1), 1 - (k // res) / (res - 1)], 1)


def linear(uv, matrix):
    """Rows [u, v, 1] @ matrix.T: a field linear in UV. uv [P, 2], matrix [C, 3] -> [P, C]."""
    return np.c_[uv, np.ones(len(uv))] @ np.asarray(matrix, dtype=np.float64).T


# ----------------------------------------------------------------------------- Laplacian
def original_laplace_beltrami(x, f):
    """The original's LaplaceBeltrami.m construction (gradient matrices, divergence as their
    face-area-weighted transpose), written independently of jax3dmmstn.facemodel.bfm."""
    import scipy.sparse as sp

    n, m = len(x), len(f)
    xf = [x[f[:, i]] for i in range(3)]
    na = np.cross(xf[1] - xf[0], xf[2] - xf[0])
    area = np.linalg.norm(na, axis=1) / 2
    normal = na / np.linalg.norm(na, axis=1, keepdims=True)
    rows, cols, vals = [], [], []
    for i in range(3):
        s, t = (i + 1) % 3, (i + 2) % 3
        rows.append(np.arange(m))
        cols.append(f[:, i])
        vals.append(np.cross(xf[t] - xf[s], normal))
    rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    d_a = sp.diags(1 / (2 * area))
    grads = [d_a @ sp.csr_matrix((vals[:, k], (rows, cols)), shape=(m, n)) for k in range(3)]
    return sum(g.T @ sp.diags(2 * area) @ g for g in grads)


def test_cotangent_laplacian_is_the_originals_operator():
    uv, tri = uv_mesh(9)
    x = np.c_[uv, 0.3 * np.sin(3 * uv[:, 0]) * np.cos(2 * uv[:, 1])]  # a curved surface
    lap = cotangent_laplacian(x, tri)
    ref = original_laplace_beltrami(x, tri)
    assert np.allclose(lap.toarray(), ref.toarray(), atol=1e-10 * np.abs(ref).max())
    assert np.allclose(lap.toarray(), lap.toarray().T)
    assert np.allclose(np.asarray(lap.sum(axis=1)).ravel(), 0, atol=1e-9)
    # Linear precision: on a planar mesh L kills linear functions at interior vertices.
    planar = cotangent_laplacian(np.c_[uv, np.zeros(len(uv))], tri)
    interior = (uv.min(1) > 0) & (uv.max(1) < 1)
    values = linear(uv, [[2.0, -3.0, 1.0]])
    assert np.abs((planar @ values)[interior]).max() < 1e-10


def test_degenerate_mean_triangle_is_reported():
    x = np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0]])
    with pytest.raises(ValueError, match="degenerate"):
        cotangent_laplacian(x, np.array([[0, 1, 2], [0, 1, 3]]))


# ----------------------------------------------------------------------------- extrapolation
def _hole(uv, centre=(0.5, 0.45), radius=0.15):
    return np.flatnonzero(np.hypot(uv[:, 0] - centre[0], uv[:, 1] - centre[1]) < radius)


def test_extrapolation_matches_the_least_squares_of_the_original():
    uv, tri = uv_mesh(11, seed=2)
    x = np.c_[uv, 0.2 * uv[:, 0] ** 2]
    mapped = np.setdiff1d(np.arange(len(uv)), _hole(uv))
    w = np.random.default_rng(0).normal(size=(mapped.size, 6))
    got = extrapolate_displacements(x, tri, mapped, w)
    # [L; S] \ [L V; S V + w] - V with dense least squares.
    lap = original_laplace_beltrami(x, tri).toarray()
    select = np.zeros((mapped.size, len(uv)))
    select[np.arange(mapped.size), mapped] = 1
    for c in range(6):
        v = np.tile(x[:, c % 3], 1)
        solution, *_ = np.linalg.lstsq(
            np.vstack([lap, select]), np.concatenate([lap @ v, select @ v + w[:, c]]), rcond=None
        )
        assert np.allclose(got[:, c], solution - v, atol=1e-8)


def test_harmonic_displacement_is_reproduced_in_the_hole():
    uv, tri = uv_mesh(41, seed=3)
    x = np.c_[uv * 100.0, np.zeros(len(uv))]  # planar: linear fields are harmonic
    hole = _hole(uv)
    assert hole.size > 100
    mapped = np.setdiff1d(np.arange(len(uv)), hole)
    field = linear(uv, [[3.0, -1.0, 0.5], [0.2, 2.0, -1.0], [-4.0, 1.0, 2.0]])  # [V, 3]
    got = extrapolate_displacements(x, tri, mapped, field[mapped])
    span = np.ptp(field[hole], axis=0).max()
    # Reproduced up to the pull of the data rows at the mesh border (where L of a linear
    # field is not 0), which has died out by the time it reaches the hole.
    assert np.abs(got[hole] - field[hole]).max() < 1e-3 * span
    # A bump hidden in the hole is not reproduced: the test can tell the fields apart.
    bump = np.exp(-((uv[:, 0] - 0.5) ** 2 + (uv[:, 1] - 0.45) ** 2) / (2 * 0.04**2))
    got_bump = extrapolate_displacements(x, tri, mapped, bump[mapped, None])[:, 0]
    assert np.abs(got_bump[hole] - bump[hole]).max() > 0.5


def test_extrapolation_errors():
    uv, tri = uv_mesh(7)
    x = np.c_[uv, np.zeros(len(uv))]
    with pytest.raises(ValueError, match="displacements"):
        extrapolate_displacements(x, tri, np.arange(5), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="mapped"):
        extrapolate_displacements(x, tri, np.array([0, len(uv)]), np.zeros((2, 3)))
    # A second, disconnected piece with no data cannot be solved.
    x2 = np.concatenate([x, x + 5])
    tri2 = np.concatenate([tri, tri + len(uv)])
    with pytest.raises(ValueError, match="no mapped vertex"):
        extrapolate_displacements(x2, tri2, np.arange(len(uv)), np.zeros((len(uv), 1)))


# ----------------------------------------------------------------------------- resampling
@pytest.mark.parametrize("res", [2, 11, 12, 112])
def test_every_grid_point_is_located_and_linear_fields_are_exact(res):
    uv, tri = uv_mesh()
    weights = grid_resampling_matrix(uv, tri, res)
    assert weights.shape == (res * res, len(uv))
    assert np.all(np.diff(weights.indptr) <= 3)
    assert np.allclose(np.asarray(weights.sum(axis=1)).ravel(), 1.0)
    assert weights.min() >= 0
    matrix = [[2.0, 3.0, 1.0], [-1.0, 0.5, 4.0], [0.3, 0.2, -7.0]]
    assert np.abs(weights @ linear(uv, matrix) - linear(grid_points(res), matrix)).max() < 1e-12


def test_points_on_vertices_edges_boundary_and_midline_are_not_lost():
    # A mesh whose vertices are exactly the 11 x 11 grid: every grid point lies on a vertex,
    # hence on edges and (for the outer ones) the boundary; u = 0.5 is the midline.
    res = 11
    uv = grid_points(res)
    tri = grid_faces(res).astype(np.int64)
    triangle, bary = locate_points(uv, tri, uv)
    assert np.all(triangle >= 0)
    weights = grid_resampling_matrix(uv, tri, res)
    assert np.allclose(weights.toarray(), np.eye(res * res))
    # Points exactly on interior edges (midpoints of grid cells' edges) and on the boundary.
    mids = (uv[tri[:, 0]] + uv[tri[:, 1]]) / 2
    triangle, bary = locate_points(uv, tri, mids)
    assert np.all(triangle >= 0) and np.allclose(bary.sum(1), 1)
    assert np.allclose(np.einsum("pk,pkc->pc", bary, uv[tri[triangle]]), mids)


def test_grid_points_outside_the_uv_domain():
    uv, tri = uv_mesh()
    half = uv[:, 1] <= 0.5  # keep the lower half of the square
    keep = np.flatnonzero(half)
    remap = -np.ones(len(uv), np.int64)
    remap[keep] = np.arange(keep.size)
    tri_half = remap[tri[np.all(half[tri], axis=1)]]
    with pytest.raises(ValueError, match="outside the UV domain"):
        grid_resampling_matrix(uv[keep], tri_half, 9)
    weights = grid_resampling_matrix(uv[keep], tri_half, 9, outside="nearest")
    values = weights @ uv[keep]
    g = grid_points(9)
    inside = locate_points(uv[keep], tri_half, g)[0] >= 0
    assert inside.sum() >= 9 * 4 and (~inside).sum() >= 9 * 4
    assert np.allclose(values[inside], g[inside])
    # Outside points go to the closest point of the domain: inside it (up to rounding) and
    # no farther than the closest mesh vertex.
    assert np.all(locate_points(uv[keep], tri_half, values[~inside], tolerance=1e-7)[0] >= 0)
    dist = np.linalg.norm(values[~inside] - g[~inside], axis=1)
    nearest_vertex = np.linalg.norm(g[~inside, None] - uv[keep][None], axis=2).min(1)
    assert np.all(dist <= nearest_vertex + 1e-12)


# ----------------------------------------------------------------------------- from files
MEAN_UV = [[150.0, 0.0, -75.0], [0.0, 180.0, -90.0], [10.0, -20.0, 60.0]]  # mm per unit UV


def write_bfm_files(tmp_path, n_pc=4, n_exp=3, seed=0):
    """A mesh linear in UV, in the layouts of the original files (BFM units: micrometres)."""
    rng = np.random.default_rng(seed)
    uv, tri = uv_mesh(31, seed=seed)
    n = len(uv)
    mean = linear(uv, MEAN_UV) * 1000.0
    pcs = [linear(uv, rng.normal(size=(3, 3))) for _ in range(n_pc)]  # unit-ish, in um
    shape_pc = np.stack([p.reshape(-1) for p in pcs], 1)
    shape_ev = np.linspace(3.0, 1.0, n_pc) * 1000.0
    hole = _hole(uv)
    mapped = np.setdiff1d(np.arange(n), hole)
    exp_fields = [linear(uv, rng.normal(size=(3, 3))) * 1000.0 for _ in range(n_exp)]
    w_exp = np.stack([f[mapped].reshape(-1) for f in exp_fields], 1)
    tex = linear(uv, [[100.0, 50.0, 50.0], [20.0, 80.0, 60.0], [0.0, 30.0, 120.0]])
    scipy.io.savemat(
        tmp_path / "01_MorphableModel.mat",
        {
            "shapeMU": mean.reshape(-1, 1).astype(np.float32),
            "shapePC": shape_pc.astype(np.float32),
            "shapeEV": shape_ev.reshape(-1, 1).astype(np.float32),
            "tl": (tri + 1).astype(np.int32),
            "texMU": tex.reshape(-1, 1).astype(np.float32),
        },
    )
    scipy.io.savemat(tmp_path / "BFM_UV.mat", {"UV": uv})
    scipy.io.savemat(tmp_path / "Model_Expression.mat", {"w_exp": w_exp.astype(np.float32)})
    scipy.io.savemat(
        tmp_path / "map_tddfa_to_basel.mat",
        {"map_tddfa_to_basel": mapped.astype(np.uint16).reshape(1, -1)},
    )
    return dict(
        uv=uv,
        tri=tri,
        mean=mean,
        pcs=pcs,
        shape_ev=shape_ev,
        exp_fields=exp_fields,
        tex=tex,
        hole=hole,
        shape_pc=shape_pc.astype(np.float32),
    )


def paths(tmp_path):
    return [
        tmp_path / n
        for n in (
            "01_MorphableModel.mat",
            "BFM_UV.mat",
            "Model_Expression.mat",
            "map_tddfa_to_basel.mat",
        )
    ]


def test_build_from_files_reproduces_fields_linear_in_uv(tmp_path):
    data = write_bfm_files(tmp_path)
    res = 16
    model = build_bfm_model(*paths(tmp_path), resolution=res, n_identity=3, n_expression=2)
    g = grid_points(res)
    assert model.resolution == res and model.n_vertices == res * res
    assert (model.n_identity, model.n_expression) == (3, 2) and model.units == "mm"
    # The mean: the BFM's float32 micrometres, divided by 1000.
    assert np.allclose(model.mean, linear(g, MEAN_UV), atol=1e-4)
    # Identity columns: shapePC * shapeEV / 1000 (float32 shapePC, linear in UV).
    for j in range(3):
        f32 = data["shape_pc"][:, j].reshape(-1, 3).astype(np.float64)
        coeffs = np.linalg.lstsq(np.c_[data["uv"], np.ones(len(data["uv"]))], f32, rcond=None)[0].T
        expected = linear(g, coeffs) * np.float32(data["shape_ev"][j]) / 1000.0
        assert np.allclose(model.basis[:, :, j], expected, rtol=1e-5, atol=1e-6), j
    # Expression columns: linear fields known outside the mouth hole, extended harmonically
    # (away from the mesh border, whose soft data rows bend the least-squares solution).
    away = np.all((g > 0.3) & (g < 0.7), axis=1)
    for j in range(2):
        expected = linear(
            g,
            np.linalg.lstsq(
                np.c_[data["uv"], np.ones(len(data["uv"]))], data["exp_fields"][j], rcond=None
            )[0].T,
        )
        error = np.abs(model.basis[away, :, 3 + j] - expected[away] / 1000.0).max()
        assert error < 1e-3 * np.abs(expected / 1000.0).max(), j
    # Albedo: texMU / 255.
    assert np.allclose(
        model.albedo,
        linear(g, [[100.0, 50.0, 50.0], [20.0, 80.0, 60.0], [0.0, 30.0, 120.0]]) / 255.0,
        atol=1e-5,
    )
    assert np.array_equal(model.faces, grid_faces(res))
    assert "shapeEV" in model.provenance
    model.save(tmp_path / "out.npz")
    again = MorphableModel.load(tmp_path / "out.npz")
    assert np.array_equal(again.basis, model.basis) and again.provenance == model.provenance


def test_identity_only_and_all_components(tmp_path):
    write_bfm_files(tmp_path, n_pc=4)
    bfm, uv = paths(tmp_path)[:2]
    model = build_bfm_model(bfm, uv, resolution=8, n_identity=4, with_albedo=False)
    assert (model.n_identity, model.n_expression) == (4, 0) and model.albedo is None
    with pytest.raises(ValueError, match="n_identity"):
        build_bfm_model(bfm, uv, resolution=8, n_identity=5)


def test_landmarks_map_to_the_nearest_grid_vertices(tmp_path):
    data = write_bfm_files(tmp_path)
    uv = data["uv"]
    res = 11
    # BFM vertices lying exactly on grid points: corners and the ends of the midlines.
    targets = {
        (0.0, 1.0): 0,
        (1.0, 1.0): res - 1,
        (0.0, 0.0): res * (res - 1),
        (0.5, 1.0): 5,
        (0.5, 0.0): 10 * res + 5,
        (0.0, 0.5): 5 * res,
    }
    bfm_idx = [int(np.flatnonzero(np.all(np.isclose(uv, t), axis=1))[0]) for t in targets]
    aflw = np.resize(bfm_idx, 21)
    anl = tmp_path / "lm21.anl"
    anl.write_text("% BFM vertices\n" + "\n".join(str(i + 1) for i in aflw) + "\n")
    model = build_bfm_model(
        *paths(tmp_path)[:2], resolution=res, n_identity=2, landmarks={"aflw21": anl}
    )
    assert model.landmarks["aflw21"].tolist() == np.resize(list(targets.values()), 21).tolist()
    assert np.array_equal(model.landmark_flip["aflw21"], AFLW21_FLIP)
    # A vertex off the grid goes to the nearest grid vertex in UV.
    off = int(np.argmin(np.hypot(uv[:, 0] - 0.33, uv[:, 1] - 0.61)))
    m2 = build_bfm_model_from_arrays(
        BFMArrays(data["mean"].reshape(-1), data["shape_pc"], data["shape_ev"], data["tri"], uv),
        BuildOptions(resolution=res, n_identity=1),
        landmarks={"aflw21": np.full(21, off)},
    )
    u, v = uv[off]
    assert m2.landmarks["aflw21"][0] == round((1 - v) * (res - 1)) * res + round(u * (res - 1))
    # Default at 112: the original's 21 vertices.
    m3 = build_bfm_model_from_arrays(
        BFMArrays(data["mean"].reshape(-1), data["shape_pc"], data["shape_ev"], data["tri"], uv),
        BuildOptions(resolution=112, n_identity=1),
    )
    assert m3.landmarks["aflw21"].tolist() == [i - 1 for i in AFLW21_INDICES_112_ONE_BASED]
    # No 68 set given: one grounded on the BFM's 68-landmark mean (landmarks68), anchored on
    # the AFLW points; a given one is kept.
    assert m3.landmarks["ibug68"].shape == (68,) and set(m3.landmark_flip) == {"aflw21", "ibug68"}
    assert np.array_equal(m3.landmarks["ibug68"], ground_ibug68(m3))
    m4 = build_bfm_model_from_arrays(
        BFMArrays(data["mean"].reshape(-1), data["shape_pc"], data["shape_ev"], data["tri"], uv),
        BuildOptions(resolution=res, n_identity=1),
        landmarks={"aflw21": np.full(21, off), "ibug68": np.full(68, off)},
    )
    assert np.all(m4.landmarks["ibug68"] == m2.landmarks["aflw21"][0])


def test_file_errors(tmp_path):
    write_bfm_files(tmp_path)
    bfm, uv, exp, tmap = paths(tmp_path)
    with pytest.raises(FileNotFoundError):
        build_bfm_model(tmp_path / "nope.mat", uv)
    with pytest.raises(ValueError, match="together"):
        build_bfm_model(bfm, uv, exp)
    content = scipy.io.loadmat(bfm)
    scipy.io.savemat(
        tmp_path / "noev.mat",
        {k: v for k, v in content.items() if not k.startswith("__") and k != "shapeEV"},
    )
    with pytest.raises(ValueError, match="shapeEV"):
        build_bfm_model(tmp_path / "noev.mat", uv)
    scipy.io.savemat(tmp_path / "baduv.mat", {"UV": np.zeros((5, 2))})
    with pytest.raises(ValueError, match="UV must be"):
        build_bfm_model(bfm, tmp_path / "baduv.mat", n_identity=2)
    scipy.io.savemat(tmp_path / "badmap.mat", {"map_tddfa_to_basel": np.zeros((1, 3), np.uint16)})
    with pytest.raises(ValueError, match="w_exp must be"):
        build_bfm_model(bfm, uv, exp, tmp_path / "badmap.mat", n_identity=2)
    v73 = tmp_path / "v73.mat"
    v73.write_bytes(b"MATLAB 7.3 MAT-file".ljust(512, b" ") + b"\x89HDF\r\n\x1a\n" + bytes(32))
    with pytest.raises(ValueError, match="v7.3"):
        build_bfm_model(v73, uv, n_identity=2)


def test_prepare_model_cli(tmp_path, capsys):
    write_bfm_files(tmp_path)
    bfm, uv, exp, tmap = paths(tmp_path)
    out = tmp_path / "models" / "model.npz"
    code = cli.main(
        [
            "prepare-model",
            "--bfm",
            str(bfm),
            "--uv",
            str(uv),
            "--expression",
            str(exp),
            "--tddfa-map",
            str(tmap),
            "--resolution",
            "12",
            "--identity",
            "2",
            "--expressions",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0 and out.exists()
    assert "144 vertices" in capsys.readouterr().out
    model = MorphableModel.load(out)
    assert (model.resolution, model.n_identity, model.n_expression) == (12, 2, 3)
    direct = build_bfm_model(bfm, uv, exp, tmap, resolution=12, n_identity=2, n_expression=3)
    assert np.array_equal(model.basis, direct.basis) and np.array_equal(model.mean, direct.mean)
    # Errors are reported, not raised, by the command.
    assert (
        cli.main(
            [
                "prepare-model",
                "--bfm",
                str(tmp_path / "missing.mat"),
                "--uv",
                str(uv),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err
