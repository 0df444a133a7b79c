"""MorphableModel container, .npz round trip, the original's model.mat and .anl readers."""

import numpy as np
import pytest
import scipy.io

from jax3dmmstn.facemodel.morphable_model import (
    AFLW21_FLIP,
    AFLW21_INDICES_112_ONE_BASED,
    IBUG68_FLIP,
    MorphableModel,
    grid_faces,
    grid_mirror,
    grid_uv,
    load_matconvnet_model,
    read_anl,
)


def _tiny_model(res=4, d=3, albedo=True):
    rng = np.random.default_rng(0)
    n = res * res
    return MorphableModel(
        mean=rng.normal(size=(n, 3)),
        basis=rng.normal(size=(n, 3, d)),
        faces=grid_faces(res),
        resolution=res,
        uv=grid_uv(res),
        landmarks={"aflw21": rng.integers(0, n, 21)},
        landmark_flip={"aflw21": AFLW21_FLIP},
        mirror=grid_mirror(res),
        albedo=rng.uniform(size=(n, 3)) if albedo else None,
        n_identity=2,
        n_expression=d - 2,
        provenance="unit test",
    )


def _assert_same(a: MorphableModel, b: MorphableModel):
    for name in ["mean", "basis", "faces", "uv", "mirror"]:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert (a.albedo is None) == (b.albedo is None)
    if a.albedo is not None:
        assert a.albedo.dtype == b.albedo.dtype and np.array_equal(a.albedo, b.albedo)
    assert a.landmarks.keys() == b.landmarks.keys()
    for k in a.landmarks:
        assert np.array_equal(a.landmarks[k], b.landmarks[k])
        assert np.array_equal(a.landmark_flip[k], b.landmark_flip[k])
    for name in ["resolution", "n_identity", "n_expression", "units", "provenance"]:
        assert getattr(a, name) == getattr(b, name), name


def test_grid_layout_matches_the_original_formulas():
    res = 5
    uv = grid_uv(res)
    k = 7  # row 1, column 2
    assert np.allclose(uv[k], [2 / 4, 1 - 1 / 4])
    assert np.allclose(uv[0], [0, 1]) and np.allclose(uv[-1], [1, 0])
    faces = grid_faces(res)
    assert faces.shape == (2 * 4 * 4, 3) and faces.dtype == np.int32
    # The original's first cell (MATLAB sub2ind over [res res], i = column, j = row, 1-based):
    # triangles (1,1),(2,1),(1,2) and (2,2),(1,2),(2,1); the second cell is one row down.
    sub2ind = lambda i, j: (i - 1) + (j - 1) * res  # noqa: E731  0-based result
    assert faces[0].tolist() == [sub2ind(1, 1), sub2ind(2, 1), sub2ind(1, 2)]
    assert faces[1].tolist() == [sub2ind(2, 2), sub2ind(1, 2), sub2ind(2, 1)]
    assert faces[2].tolist() == [sub2ind(1, 2), sub2ind(2, 2), sub2ind(1, 3)]
    # The original's 112 model has 24642 faces.
    assert grid_faces(112).shape == (24642, 3)
    mirror = grid_mirror(res)
    assert np.allclose(uv[mirror, 0], 1 - uv[:, 0]) and np.array_equal(uv[mirror, 1], uv[:, 1])


def test_flip_permutations():
    assert (
        AFLW21_FLIP.tolist()
        == (
            np.array([6, 5, 4, 3, 2, 1, 12, 11, 10, 9, 8, 7, 17, 16, 15, 14, 13, 20, 19, 18, 21])
            - 1
        ).tolist()
    )
    for flip in (AFLW21_FLIP, IBUG68_FLIP):
        assert np.array_equal(flip[flip], np.arange(flip.size))  # an involution
    assert IBUG68_FLIP[0] == 16 and IBUG68_FLIP[36] == 45 and IBUG68_FLIP[48] == 54
    assert IBUG68_FLIP[30] == 30 and IBUG68_FLIP[57] == 57 and IBUG68_FLIP[66] == 66


def test_properties_and_shape():
    m = _tiny_model()
    assert m.n_vertices == 16 and m.n_components == 3
    assert m.flat_mean.shape == (48,) and m.flat_basis.shape == (48, 3)
    # x, y, z interleaved per vertex, like the original's shapeMU / shapePC.
    assert m.flat_mean[3 * 5 + 1] == m.mean[5, 1]
    assert m.flat_basis[3 * 5 + 2, 1] == m.basis[5, 2, 1]
    alpha = np.array([1.0, -2.0, 0.5], np.float32)
    expected = (m.flat_mean + m.flat_basis @ alpha).reshape(-1, 3)
    assert np.allclose(m.shape(alpha), expected, atol=1e-5)
    assert m.shape(np.stack([alpha, alpha])).shape == (2, 16, 3)
    assert m.mean.dtype == np.float32 and m.faces.dtype == np.int32
    with pytest.raises(ValueError):
        m.mean[0, 0] = 1.0  # read-only: the model is frozen


@pytest.mark.parametrize("albedo", [True, False])
def test_npz_round_trip_is_exact(tmp_path, albedo):
    m = _tiny_model(albedo=albedo)
    path = tmp_path / "model.npz"
    m.save(path)
    _assert_same(m, MorphableModel.load(path))
    # A path without the .npz suffix is written as given, not renamed by numpy.
    other = tmp_path / "model.bin"
    m.save(other)
    assert other.exists()
    _assert_same(m, MorphableModel.load(other))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.npz"]


def test_validation_errors(tmp_path):
    m = _tiny_model()
    fields = dict(
        mean=m.mean,
        basis=m.basis,
        faces=m.faces,
        resolution=4,
        uv=m.uv,
        landmarks=m.landmarks,
        landmark_flip=m.landmark_flip,
        mirror=m.mirror,
        albedo=m.albedo,
        n_identity=2,
        n_expression=1,
    )
    with pytest.raises(ValueError, match="basis"):
        MorphableModel(**{**fields, "basis": m.basis[:5]})
    with pytest.raises(ValueError, match="n_identity"):
        MorphableModel(**{**fields, "n_expression": 2})
    with pytest.raises(ValueError, match="faces"):
        MorphableModel(**{**fields, "faces": m.faces + 1})
    with pytest.raises(ValueError, match="resolution"):
        MorphableModel(**{**fields, "resolution": 5})
    with pytest.raises(ValueError, match="NaN"):
        MorphableModel(**{**fields, "mean": np.full((16, 3), np.nan)})
    with pytest.raises(ValueError, match="albedo"):
        MorphableModel(**{**fields, "albedo": m.albedo * 2 + 0.5})
    with pytest.raises(ValueError, match="permutation"):
        MorphableModel(**{**fields, "landmark_flip": {"aflw21": np.zeros(21, np.int32)}})
    with pytest.raises(FileNotFoundError):
        MorphableModel.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable"):
        MorphableModel.load(bad)
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="missing arrays"):
        MorphableModel.load(tmp_path / "other.npz")


def test_read_anl(tmp_path):
    path = tmp_path / "lm.anl"
    path.write_text("%21 landmarks\n% a second comment\n2489\n2279\n\n9128\n")
    idx = read_anl(path)
    assert idx.dtype == np.int32 and idx.tolist() == [2488, 2278, 9127]
    (tmp_path / "bad.anl").write_text("% c\n12\nabc\n")
    with pytest.raises(ValueError, match="abc"):
        read_anl(tmp_path / "bad.anl")
    (tmp_path / "zero.anl").write_text("0\n")
    with pytest.raises(ValueError, match="1-based"):
        read_anl(tmp_path / "zero.anl")
    (tmp_path / "empty.anl").write_text("% nothing\n")
    with pytest.raises(ValueError, match="no landmark"):
        read_anl(tmp_path / "empty.anl")
    with pytest.raises(FileNotFoundError):
        read_anl(tmp_path / "missing.anl")


def _write_model_mat(path, res, d=10, seed=0):
    rng = np.random.default_rng(seed)
    n = res * res
    shape_mu = rng.normal(size=(3 * n, 1)).astype(np.float32)
    shape_pc = rng.normal(size=(3 * n, d)).astype(np.float32)
    faces = (grid_faces(res) + 1).astype(np.uint16)  # the original stores 1-based uint16
    scipy.io.savemat(
        path,
        {
            "shapeMU": shape_mu,
            "shapePC": shape_pc,
            "faces": faces,
            "nverts": np.array([[n]], dtype=np.float64),
        },
    )
    return shape_mu, shape_pc, faces


def test_load_matconvnet_model_round_trip(tmp_path):
    path = tmp_path / "model.mat"
    shape_mu, shape_pc, faces = _write_model_mat(path, 112)
    m = load_matconvnet_model(path)
    assert m.resolution == 112 and m.n_identity == 5 and m.n_expression == 5
    assert np.array_equal(m.flat_mean, shape_mu[:, 0])
    assert np.array_equal(m.flat_basis, shape_pc)
    assert np.array_equal(m.faces, faces.astype(np.int32) - 1)
    # The original's 21 AFLW vertices by default, 0-based; 4536 (1-based) is the nose tip,
    # row 40, column 55 of the grid.
    lm = m.landmarks["aflw21"]
    assert lm.tolist() == [i - 1 for i in AFLW21_INDICES_112_ONE_BASED]
    assert (lm[14] // 112, lm[14] % 112) == (40, 55)
    assert np.array_equal(m.landmark_flip["aflw21"], AFLW21_FLIP)
    # No 68 file: a 68 set grounded on the BFM's 68-landmark mean, anchored on the AFLW points.
    assert set(m.landmarks) == {"aflw21", "ibug68"} and m.landmarks["ibug68"].shape == (68,)
    # The original's eyebrow points are mirror images of each other across the grid.
    assert np.array_equal(m.mirror[lm[:6]], lm[AFLW21_FLIP[:6]])
    # The loaded model survives the .npz round trip.
    m.save(tmp_path / "m.npz")
    _assert_same(m, MorphableModel.load(tmp_path / "m.npz"))


def test_load_matconvnet_model_with_anl_files(tmp_path):
    path = tmp_path / "model.mat"
    _write_model_mat(path, 10, d=4)
    anl = tmp_path / "lm68.anl"
    indices = np.arange(1, 69) + 30
    anl.write_text("%68 points\n" + "\n".join(map(str, indices)) + "\n")
    m = load_matconvnet_model(path, landmarks_path=anl)
    assert set(m.landmarks) == {"ibug68"}
    assert np.array_equal(m.landmarks["ibug68"], indices - 1)
    assert m.n_identity == 4 and m.n_expression == 0
    # Without landmark files a non-112 model has no landmark sets (nothing guessed).
    assert load_matconvnet_model(path).landmarks == {}
    too_big = tmp_path / "big.anl"
    too_big.write_text("\n".join(["101"] * 21))
    with pytest.raises(ValueError, match="exceeds"):
        load_matconvnet_model(path, landmarks_path=too_big)


def test_load_matconvnet_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_matconvnet_model(tmp_path / "missing.mat")
    n = 16
    scipy.io.savemat(tmp_path / "nokey.mat", {"shapeMU": np.zeros((3 * n, 1))})
    with pytest.raises(ValueError, match="shapePC"):
        load_matconvnet_model(tmp_path / "nokey.mat")
    scipy.io.savemat(
        tmp_path / "badpc.mat",
        {
            "shapeMU": np.zeros((3 * n, 1)),
            "shapePC": np.zeros((3 * n + 3, 2)),
            "faces": grid_faces(4) + 1,
        },
    )
    with pytest.raises(ValueError, match="shapePC"):
        load_matconvnet_model(tmp_path / "badpc.mat")
    scipy.io.savemat(
        tmp_path / "zerofaces.mat",
        {"shapeMU": np.zeros((3 * n, 1)), "shapePC": np.zeros((3 * n, 2)), "faces": grid_faces(4)},
    )
    with pytest.raises(ValueError, match="1-based"):
        load_matconvnet_model(tmp_path / "zerofaces.mat")
    scipy.io.savemat(
        tmp_path / "nverts.mat",
        {
            "shapeMU": np.zeros((3 * n, 1)),
            "shapePC": np.zeros((3 * n, 2)),
            "faces": grid_faces(4) + 1,
            "nverts": 15,
        },
    )
    with pytest.raises(ValueError, match="nverts"):
        load_matconvnet_model(tmp_path / "nverts.mat")
    # A v7.3 (HDF5) file: MATLAB's 128-byte text header, then HDF5 at byte 512.
    v73 = tmp_path / "v73.mat"
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2018 HDF5 schema 1.00 ."
    v73.write_bytes(header.ljust(512, b" ") + b"\x89HDF\r\n\x1a\n" + bytes(64))
    with pytest.raises(ValueError, match="v73.mat: not a readable MATLAB v7.3"):
        load_matconvnet_model(v73)


def test_fit_model_argument_takes_a_set_name_with_model_mat(tmp_path):
    from jax3dmmstn.fitting import cli as fit_cli

    path = tmp_path / "model.mat"
    _write_model_mat(path, 112)
    for name in ("aflw21", "ibug68"):  # a set of the model, not an .anl file
        assert set(fit_cli.load_model(str(path), name).landmarks) == {"aflw21", "ibug68"}
    with pytest.raises(FileNotFoundError, match="nothing.anl"):
        fit_cli.load_model(str(path), str(tmp_path / "nothing.anl"))
