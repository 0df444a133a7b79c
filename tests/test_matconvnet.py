"""MatConvNet-layout layers against hand transliterations of the original's
formulas (MATLAB shapes, column-major reshapes, 1-based indices) and against
the native functions."""

import numpy as np
import pytest

from jax3dmmstn.core import geometry as G
from jax3dmmstn import matconvnet as M
from jax3dmmstn.core import sampler as S
from jax3dmmstn.core import visibility as V
from jax3dmmstn.facemodel.morphable_model import grid_faces

pytestmark = pytest.mark.usefixtures("float64")
RNG = np.random.default_rng(0)


def _skew(v):
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def _rodrigues(r):
    theta = np.linalg.norm(r)
    if theta == 0:
        return np.eye(3)
    k = _skew(r / theta)
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * k @ k


def _gallego_yezzi(r, R):
    """dR/dr_i (the original's backward): ((r_i [r]x + [r x (I - R) e_i]x) / |r|^2) R."""
    if not np.any(r):
        return [_skew(e) for e in np.eye(3)]
    sq = r @ r
    return [
        (r[i] * _skew(r) + _skew(np.cross(r, (np.eye(3) - R)[:, i]))) / sq @ R for i in range(3)
    ]


def test_r2R_forward_backward():
    r = RNG.normal(size=(1, 1, 3, 4))
    r[..., 1] = 0  # the original's identity special case
    R = M.vl_nnr2R(r)
    assert R.shape == (1, 3, 3, 4)
    dCdR = RNG.normal(size=(1, 3, 3, 4))
    dr = M.vl_nnr2R(r, dCdR)
    assert dr.shape == (1, 1, 3, 4)
    for b in range(4):
        rb = r[0, 0, :, b]
        want_R = _rodrigues(rb)
        np.testing.assert_allclose(R[0, :, :, b], want_R, atol=1e-14)
        want_dr = [np.sum(dCdR[0, :, :, b] * d) for d in _gallego_yezzi(rb, want_R)]
        np.testing.assert_allclose(dr[0, 0, :, b], want_dr, atol=1e-12)


def test_split_round_trip():
    X = RNG.normal(size=(1, 1, 16, 3))
    alpha, r, t, logs = M.vl_nnsplit(X)
    assert alpha.shape == (1, 1, 10, 3) and t.shape == (1, 2, 1, 3)
    np.testing.assert_array_equal(t[0, :, 0], X[0, 0, 3:5])
    np.testing.assert_array_equal(M.vl_nnsplit(X, alpha, r, t, logs), X)


def test_model_layer():
    n, d, b = 5, 3, 2
    model = {"shapeMU": RNG.normal(size=(3 * n, 1)), "shapePC": RNG.normal(size=(3 * n, d))}
    X = RNG.normal(size=(1, 1, d, b))
    y = M.vl_nnmodel(X, model)
    for i in range(b):
        flat = model["shapeMU"][:, 0] + model["shapePC"] @ X[0, 0, :, i]
        np.testing.assert_allclose(y[0, :, :, i], flat.reshape(3, n, order="F"))
    dzdy = RNG.normal(size=(1, 3, n, b))
    dX = M.vl_nnmodel(X, model, dzdy)
    for i in range(b):
        np.testing.assert_allclose(
            dX[0, 0, :, i], model["shapePC"].T @ dzdy[0, :, :, i].reshape(-1, order="F")
        )


def test_rotate_projection_scale_translate_selection():
    n, b = 6, 3
    X = RNG.normal(size=(1, 3, n, b))
    R = M.vl_nnr2R(RNG.normal(size=(1, 1, 3, b)))
    dz = RNG.normal(size=(1, 3, n, b))
    y = M.vl_nnrotate3D(X, R)
    dX, dR = M.vl_nnrotate3D(X, R, dz)
    for i in range(b):
        np.testing.assert_allclose(y[0, :, :, i], R[0, :, :, i] @ X[0, :, :, i])
        np.testing.assert_allclose(dX[0, :, :, i], R[0, :, :, i].T @ dz[0, :, :, i])
        np.testing.assert_allclose(dR[0, :, :, i], dz[0, :, :, i] @ X[0, :, :, i].T)

    P = M.vl_nnprojection(X)
    np.testing.assert_array_equal(P, X[:, :2])
    dP = M.vl_nnprojection(X, dz[:, :2])
    np.testing.assert_array_equal(dP[:, :2], dz[:, :2])
    np.testing.assert_array_equal(dP[:, 2], 0)

    logs = RNG.normal(size=(1, 1, 1, b))
    s = M.vl_nnlogScale2Scale(logs)
    np.testing.assert_allclose(s, 0.99**logs)
    ds = RNG.normal(size=s.shape)
    np.testing.assert_allclose(M.vl_nnlogScale2Scale(logs, ds), ds * 0.99**logs * np.log(0.99))

    X2 = X[:, :2]
    dz2 = dz[:, :2]
    np.testing.assert_allclose(M.vl_nnscale2D(X2, s), X2 * s)
    dX2, dS = M.vl_nnscale2D(X2, s, dz2)
    np.testing.assert_allclose(dX2, dz2 * s)
    np.testing.assert_allclose(dS, np.sum(dz2 * X2, axis=(1, 2), keepdims=True))

    T = RNG.normal(size=(1, 2, 1, b))
    np.testing.assert_allclose(M.vl_nntranslate2D(X2, T), X2 + T)
    dX2, dT = M.vl_nntranslate2D(X2, T, dz2)
    np.testing.assert_array_equal(dX2, dz2)
    np.testing.assert_allclose(dT, dz2.sum(axis=2, keepdims=True))

    idx = np.array([2, 5, 1])
    np.testing.assert_array_equal(M.vl_nnselection(X2, idx), X2[:, :, idx - 1])
    dsel = RNG.normal(size=(1, 2, 3, b))
    d = M.vl_nnselection(X2, idx, dsel)
    want = np.zeros_like(X2)
    want[:, :, idx - 1] = dsel
    np.testing.assert_array_equal(d, want)
    with pytest.raises(ValueError, match="1-based"):
        M.vl_nnselection(X2, [0, 1])


def _original_grid(X):
    """vl_nngrid forward, transliterated (column-major reshape, permute)."""
    gd = int(np.sqrt(X.shape[2]))
    Xo = (X - 112) / 112
    Xo = Xo.reshape(2, gd, gd, X.shape[3], order="F")
    newgrid = np.stack([-Xo[1], Xo[0]], 0)
    return newgrid.transpose(0, 2, 1, 3)


def test_grid_layer():
    X = RNG.uniform(0, 224, size=(1, 2, 16, 2))
    np.testing.assert_allclose(M.vl_nngrid(X), _original_grid(X))
    dY = RNG.normal(size=(2, 4, 4, 2))
    true = M.vl_nngrid(X, dY)
    orig = M.vl_nngrid(X, dY, original_backward=True)
    # Same for 224 x 224 images.
    np.testing.assert_allclose(true, orig)
    # The true derivative by finite differences (the layer is linear).
    eps = RNG.normal(size=X.shape)
    np.testing.assert_allclose(
        np.sum((M.vl_nngrid(X + eps) - M.vl_nngrid(X)) * dY), np.sum(true * eps)
    )
    # For another image size only the true derivative changes with W/2.
    true_small = M.vl_nngrid(X, dY, image_size=(100, 100))
    np.testing.assert_allclose(true_small, true * 112 / 50)
    np.testing.assert_allclose(
        M.vl_nngrid(X, dY, image_size=(100, 100), original_backward=True), orig
    )


def _original_sampler(X, grid, dY=None):
    """vl_nnbilinearsampler transliterated (CUDA border semantics)."""
    H, W, C, N = X.shape
    _, Ho, Wo, No = grid.shape
    group = No // N
    Y = np.zeros((Ho, Wo, C, No))
    dX = np.zeros_like(X)
    dG = np.zeros_like(grid)
    for n in range(No):
        img = X[..., n // group]
        for i in range(Ho):
            for j in range(Wo):
                py = 0.5 * (grid[0, i, j, n] + 1) * (H - 1)
                px = 0.5 * (grid[1, i, j, n] + 1) * (W - 1)
                sy, sx = int(np.floor(py)), int(np.floor(px))
                wy, wx = py - sy, px - sx
                for c in range(C):
                    acc = dgx = dgy = 0.0
                    for jj in range(2):
                        for ii in range(2):
                            yy, xx = sy + ii, sx + jj
                            if not (0 <= yy < H and 0 <= xx < W):
                                continue
                            wwx = (1 - jj) * (1 - wx) + jj * wx
                            wwy = (1 - ii) * (1 - wy) + ii * wy
                            acc += wwx * wwy * img[yy, xx, c]
                            if dY is not None:
                                dy = dY[i, j, c, n]
                                dX[yy, xx, c, n // group] += wwx * wwy * dy
                                dgx += (2 * jj - 1) * wwy * dy * img[yy, xx, c]
                                dgy += (2 * ii - 1) * wwx * dy * img[yy, xx, c]
                    Y[i, j, c, n] = acc
                    dG[0, i, j, n] += 0.5 * (H - 1) * dgy
                    dG[1, i, j, n] += 0.5 * (W - 1) * dgx
    return Y, dX, dG


def test_bilinear_sampler_layer():
    X = RNG.normal(size=(5, 7, 2, 2))  # H != W
    grid = RNG.uniform(-1.3, 1.3, size=(2, 3, 4, 4))  # 2 grids per image
    grid[:, 0, 0, 0] = [-1, -1]
    grid[:, 0, 1, 0] = [1, 1]
    grid[:, 0, 2, 0] = [0.5, -0.5]  # exactly on pixel centres
    grid[:, 0, 3, 0] = [-1 - 0.5 / 2, -1 - 0.5 / 3]  # border strip
    dY = RNG.normal(size=(3, 4, 2, 4))
    Y, dX, dG = _original_sampler(X, grid, dY)
    np.testing.assert_allclose(M.vl_nnbilinearsampler(X, grid), Y, atol=1e-12)
    got_dX, got_dG = M.vl_nnbilinearsampler(X, grid, dY)
    np.testing.assert_allclose(got_dX, dX, atol=1e-12)
    np.testing.assert_allclose(got_dG, dG, atol=1e-12)
    # And it is the native sampler with the coordinate pair swapped.
    native = S.bilinear_sample(X.transpose(3, 0, 1, 2), grid.transpose(3, 1, 2, 0)[..., ::-1])
    np.testing.assert_allclose(
        M.vl_nnbilinearsampler(X, grid), np.asarray(native).transpose(1, 2, 3, 0)
    )
    with pytest.raises(ValueError, match="multiple"):
        M.vl_nnbilinearsampler(X, grid[..., :3])


def test_visibility_mask_layout_and_original_accumulation():
    res = 5
    k = np.arange(res * res)
    u, v = (k % res) / (res - 1), 1 - (k // res) / (res - 1)
    z = 30 * np.cos((u - 0.5) * 2.5) * np.cos((v - 0.5) * 2)
    verts = np.stack([u * 100, v * 100, z], 0)[None, :, :, None]
    faces = grid_faces(res) + 1
    mask = M.vl_nnvisibilitymask(verts, faces)
    assert mask.shape == (res, res, 3, 1)
    np.testing.assert_array_equal(mask, 1)  # frontal: all visible
    # Layout: rotate so only the columns u < 0.5 stay visible, compare rows.
    R = M.vl_nnr2R(np.array([0, np.pi / 2.2, 0]).reshape(1, 1, 3, 1))
    rotated = M.vl_nnrotate3D(verts, R)
    # (The original's non-accumulating normals may differ near the silhouette:
    # compare the layout with accumulate=True, which is the native rule.)
    mask = M.vl_nnvisibilitymask(rotated, faces, accumulate=True)
    native = np.asarray(V.vertex_visibility(rotated[0].transpose(2, 1, 0), faces - 1))
    np.testing.assert_array_equal(mask[:, :, 0, 0], native[0].reshape(res, res))
    # The original's non-accumulating sum: vertex 1 (1-based) is the first
    # corner of two faces. Face A faces -z with weight pi/2 * 100, face B (the
    # last) faces +z with weight pi/2 * 1. Summed: hidden; MATLAB keeps only B:
    # visible.
    verts = np.zeros((9, 3))
    verts[1:5] = [[10, 0, 0], [0, 10, 0], [0, -1, 0], [-1, 0, 0]]
    faces = np.array([[1, 2, 3], [1, 4, 5]])
    X = verts.T[None, :, :, None]
    assert M.vl_nnvisibilitymask(X, faces)[0, 0, 0, 0] == 1
    assert M.vl_nnvisibilitymask(X, faces, accumulate=True)[0, 0, 0, 0] == 0


def test_loss_layers():
    L, b = 4, 2
    x = RNG.normal(size=(1, 2, L, b))
    r = RNG.normal(size=(1, 2, L, b))
    vis = (RNG.uniform(size=(1, 1, L, b)) > 0.3).astype(float)
    y = M.vl_nneuclideanloss(x, r, vis)
    np.testing.assert_allclose(y, np.sum((x - r) ** 2 * vis))
    np.testing.assert_allclose(M.vl_nneuclideanloss(x, r, vis, 0.5), 0.5 * 2 * (x - r) * vis)

    a = RNG.normal(size=(1, 1, 10, 3))
    np.testing.assert_allclose(M.vl_nnsse(a), np.sum(a**2))
    np.testing.assert_allclose(M.vl_nnsse(a, 0.1), 0.2 * a)

    t = RNG.normal(size=(3, 4, 2, 4))
    t[RNG.uniform(size=t.shape) < 0.3] = 0
    both = (t != 0) & (np.flip(t, 1) != 0)
    d = (t - np.flip(t, 1)) * both
    np.testing.assert_allclose(M.vl_nnsymmetry(t), np.sum(d**2) / np.sum(t != 0))
    np.testing.assert_allclose(M.vl_nnsymmetry(t, 0.3, original_backward=True), 2 * 0.3 * d)
    np.testing.assert_allclose(M.vl_nnsymmetry(t, 0.3), 4 * 0.3 * d / np.sum(t != 0))

    a, c = t[..., 0::2], t[..., 1::2]
    m = (a != 0) & (c != 0)
    np.testing.assert_allclose(M.vl_nnsiamese(t), np.sum(((a - c) * m) ** 2) / np.sum(t != 0))
    orig = M.vl_nnsiamese(t, 0.3, original_backward=True)
    np.testing.assert_allclose(orig[..., 0], 2 * 0.3 * (a - c)[..., 0] * m[..., 0])
    np.testing.assert_allclose(orig[..., 1], orig[..., 0])
    true = M.vl_nnsiamese(t, 0.3)
    np.testing.assert_allclose(true[..., 0], 2 * 0.3 * ((a - c) * m)[..., 0] / np.sum(t != 0))
    np.testing.assert_allclose(true[..., 1], -true[..., 0])


def test_chain_matches_native_projection():
    """The demo's forward chain in MATLAB layouts equals geometry.project_theta."""
    n, d, b = 9, 4, 2
    mean, basis = RNG.normal(size=(n, 3)) * 50, RNG.normal(size=(n, 3, d))
    model = {"shapeMU": mean.reshape(-1, 1), "shapePC": basis.reshape(3 * n, d)}
    theta = RNG.normal(size=(1, 1, 6 + d, b))
    theta[0, 0, 3:5] += 112
    alpha, r, t, logs = M.vl_nnsplit(theta)
    X5 = M.vl_nntranslate2D(
        M.vl_nnscale2D(
            M.vl_nnprojection(M.vl_nnrotate3D(M.vl_nnmodel(alpha, model), M.vl_nnr2R(r))),
            M.vl_nnlogScale2Scale(logs),
        ),
        t,
    )
    native = G.project_theta(theta[0, 0].T, mean, basis).points2d
    np.testing.assert_allclose(X5[0].transpose(2, 1, 0), native, rtol=1e-12)


def test_layout_errors():
    with pytest.raises(ValueError, match="dimension 3"):
        M.vl_nnr2R(np.zeros((1, 1, 4, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        M.vl_nnr2R(np.full((1, 1, 3, 1), np.nan))
    with pytest.raises(ValueError, match="components"):
        M.vl_nnmodel(
            np.zeros((1, 1, 3, 1)), {"shapeMU": np.zeros((6, 1)), "shapePC": np.zeros((6, 2))}
        )
