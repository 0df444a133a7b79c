"""The procedural face model: symmetry, orthogonal components, size, mesh quality, visibility,
landmarks on the right anatomy, albedo."""

import jax.numpy as jnp
import numpy as np
import pytest

from jax3dmmstn.core.geometry import axis_angle_to_matrix
from jax3dmmstn.facemodel.morphable_model import AFLW21_FLIP, IBUG68_FLIP, MorphableModel
from jax3dmmstn.facemodel.synthetic import synthetic_face_model
from jax3dmmstn.core.visibility import visibility_mask

REFLECT_X = np.array([-1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def model():
    return synthetic_face_model()


def _visible_fraction(vertices, faces, r):
    rot = axis_angle_to_matrix(jnp.asarray(r, jnp.float32))[None]
    rotated = jnp.einsum("bij,bnj->bni", rot, jnp.asarray(vertices, jnp.float32)[None])
    return float(jnp.mean(visibility_mask(rotated, jnp.asarray(faces))))


def _triangle_areas_and_min_angle(v, faces):
    p = [v[faces[:, i]].astype(np.float64) for i in range(3)]
    areas = 0.5 * np.linalg.norm(np.cross(p[1] - p[0], p[2] - p[0]), axis=1)
    angles = []
    for i in range(3):
        a, b = p[(i + 1) % 3] - p[i], p[(i + 2) % 3] - p[i]
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        angles.append(np.degrees(np.arccos(np.clip(cos, -1, 1))))
    return areas, np.min(angles)


def test_structure_and_determinism(model):
    assert isinstance(model, MorphableModel)
    assert model.resolution == 112 and model.n_vertices == 112**2
    assert model.basis.shape == (112**2, 3, 10)
    assert (model.n_identity, model.n_expression) == (5, 5) and model.units == "mm"
    again = synthetic_face_model()
    assert np.array_equal(model.mean, again.mean) and np.array_equal(model.basis, again.basis)
    assert np.array_equal(model.albedo, again.albedo)
    # Extra components beyond the five designed ones come from the seed.
    a = synthetic_face_model(32, n_identity=7, n_expression=6, seed=0)
    b = synthetic_face_model(32, n_identity=7, n_expression=6, seed=1)
    assert a.n_components == 13
    assert np.array_equal(a.basis[..., :5], b.basis[..., :5])
    assert not np.allclose(a.basis[..., 5:7], b.basis[..., 5:7])


def test_mean_is_bilaterally_symmetric(model):
    mirrored = model.mean[model.mirror] * REFLECT_X
    assert np.array_equal(mirrored, model.mean)
    assert np.allclose(model.albedo[model.mirror], model.albedo, atol=1e-6)


def test_components_are_orthogonal_and_plausibly_scaled(model):
    basis = model.flat_basis.astype(np.float64)
    gram = basis.T @ basis
    off = gram - np.diag(np.diag(gram))
    assert np.abs(off).max() < 1e-5 * np.diag(gram).min()
    largest = np.linalg.norm(model.basis, axis=1).max(axis=0)  # mm per std, per component
    assert np.all(largest > 2.0) and np.all(largest < 8.0)
    # Mouth opening (expression 1) at +3 std drops the lower lip by about a centimetre.
    lips = model.landmarks["ibug68"][[51, 57]]  # top of upper, bottom of lower lip
    alpha = np.zeros(10, np.float32)
    alpha[model.n_identity] = 3.0
    gap0 = -np.diff(model.mean[lips, 1])[0]
    gap3 = -np.diff(model.shape(alpha)[lips, 1])[0]
    assert gap3 - gap0 > 9.0


def test_size_and_origin(model):
    mean = model.mean
    width = np.ptp(mean[:, 0])
    assert 140.0 < width < 170.0  # ~150 mm like the BFM
    assert 150.0 < np.ptp(mean[:, 1]) < 200.0
    assert np.abs(mean.mean(axis=0)).max() < 1e-3  # origin at the centroid
    eyes = model.landmarks["aflw21"][[7, 10]]
    assert 55.0 < np.ptp(mean[eyes, 0]) < 75.0  # interpupillary distance


def test_mesh_is_non_degenerate_and_consistently_oriented(model):
    areas, min_angle = _triangle_areas_and_min_angle(model.mean, model.faces)
    assert areas.min() > 0.05 and min_angle > 3.0
    # Each interior edge is used once in each direction by its two triangles.
    f = model.faces
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    codes = directed[:, 0].astype(np.int64) * model.n_vertices + directed[:, 1]
    assert np.unique(codes).size == codes.size
    reverse = directed[:, 1].astype(np.int64) * model.n_vertices + directed[:, 0]
    interior = np.isin(reverse, codes)
    res = model.resolution
    assert interior.sum() == 2 * (3 * (res - 1) ** 2 - 2 * (res - 1))


@pytest.mark.parametrize("case", ["mean", "normal_draw", "extreme"])
def test_normals_point_out_frontal_all_visible_profile_half(model, case):
    alpha = np.zeros(model.n_components, np.float32)
    if case == "normal_draw":  # a plausible face: alpha ~ N(0, 1)
        alpha[:] = np.random.default_rng(1).normal(size=alpha.size)
    elif case == "extreme":  # +-3 std identity, +3 std every expression (mouth wide open)
        alpha[:] = 3.0
        alpha[1 : model.n_identity : 2] = -3.0
    vertices = model.shape(alpha)
    frontal = _visible_fraction(vertices, model.faces, [0.0, 0.0, 0.0])
    # Only the backs of the ears, the edge-on sides of the mask (at +-90 deg azimuth, tilted
    # slightly back by the reshaping to the BFM's 68 mean) and under the jaw hide.
    assert frontal > (0.91 if case == "mean" else 0.83)
    for yaw in (np.pi / 2, -np.pi / 2):
        assert 0.45 < _visible_fraction(vertices, model.faces, [0.0, yaw, 0.0]) < 0.55
    # Turned 90 degrees to one side, the side facing the camera is the visible one.
    mask = np.asarray(
        visibility_mask(
            jnp.einsum(
                "ij,nj->ni",
                axis_angle_to_matrix(jnp.array([0.0, np.pi / 2, 0.0])),
                jnp.asarray(vertices),
            )[None],
            jnp.asarray(model.faces),
        )
    )[0, ..., 0]
    res = model.resolution
    left, right = mask[:, : res // 2].mean(), mask[:, res // 2 :].mean()
    assert max(left, right) > 0.8 and min(left, right) < 0.2
    # No folds in the face: every triangle of the central face region faces the camera.
    areas, min_angle = _triangle_areas_and_min_angle(vertices, model.faces)
    assert min_angle > 2.0
    v = vertices.astype(np.float64)
    p1, p2, p3 = (v[model.faces[:, i]] for i in range(3))
    nz = np.cross(p2 - p1, p2 - p3)[:, 2]
    uv = model.uv[model.faces].mean(axis=1)
    central = (np.abs(uv[:, 0] - 0.5) < 0.3) & (uv[:, 1] > 0.3) & (uv[:, 1] < 0.9)
    assert np.all(nz[central] > 0)


def test_aflw21_landmarks_sit_on_the_anatomy(model):
    lm = model.landmarks["aflw21"]
    p = model.mean[lm]
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    # Left to right within each group (image left = smaller x = smaller u).
    for group in ([0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16], [17, 18, 19]):
        assert np.all(np.diff(x[group]) > 0), group
    # Top to bottom: brows, eyes, nose, mouth, chin.
    assert y[:6].min() > y[6:12].max() > y[13:16].max() > y[17:20].max() > y[20]
    assert np.argmax(z) == 14  # the nose tip sticks out most
    assert abs(z[14] - model.mean[:, 2].max()) < 3.0
    assert np.abs(x[12]) > 60 and np.abs(x[16]) > 60  # ears at the sides
    # Flip permutation: the mirror vertex of each paired point is its partner.
    paired = AFLW21_FLIP != np.arange(21)
    assert np.array_equal(model.mirror[lm[paired]], lm[AFLW21_FLIP[paired]])
    assert np.allclose(np.abs(x[[14, 18, 20]]), 0, atol=1.5)  # centre points on the midline
    # The albedo agrees: eyebrows dark, eye centres (pupils) darker, mouth red.
    albedo = model.albedo[lm]
    assert np.all(albedo[:6].mean(1) < 0.45)
    assert np.all(albedo[[7, 10]].mean(1) < 0.2)
    assert np.all(albedo[17:20, 0] > albedo[17:20, 2] + 0.15)


def test_ibug68_landmarks_sit_on_the_anatomy(model):
    lm = model.landmarks["ibug68"]
    p = model.mean[lm]
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    assert np.all(np.diff(x[:17]) > 0)  # jaw from left to right
    assert np.argmin(y[:17]) == 8 and y[8] < y[57]  # chin below the lower lip
    assert np.all(np.diff(y[27:31]) < 0)  # nose bridge top to tip
    assert np.argmax(z) == 30  # nose tip
    assert x[36] < x[39] < 0 < x[42] < x[45]  # eye corners
    assert y[51] > y[62] >= y[66] > y[57]  # lips top to bottom
    paired = IBUG68_FLIP != np.arange(68)
    assert np.array_equal(model.mirror[lm[paired]], lm[IBUG68_FLIP[paired]])
    # The hand-placed AFLW points and the grounded iBUG ones agree where they overlap: mouth
    # corners and nose tip (the iBUG nose tip is the BFM's, a few mm from the hand-placed one).
    aflw = model.landmarks["aflw21"]
    assert aflw[17] == lm[48] and aflw[19] == lm[54]
    assert np.linalg.norm(model.mean[aflw[14]] - model.mean[lm[30]]) < 4.0


def test_albedo(model):
    albedo = model.albedo
    assert albedo.shape == (model.n_vertices, 3) and albedo.dtype == np.float32
    assert albedo.min() >= 0 and albedo.max() <= 1
    # Mostly skin: red > green > blue on the cheeks and forehead.
    cheek = model.landmarks["ibug68"][[3, 13]]
    assert np.all(albedo[cheek, 0] > albedo[cheek, 1]) and np.all(
        albedo[cheek, 1] > albedo[cheek, 2]
    )
    nostrils = model.landmarks["ibug68"][[32, 34]]
    assert np.all(albedo[nostrils].mean(1) < albedo[cheek].mean(1))


@pytest.mark.parametrize("res", [33, 64])
def test_other_resolutions(res):
    m = synthetic_face_model(res, n_identity=2, n_expression=3)
    assert m.n_vertices == res * res and m.n_components == 5
    assert np.array_equal(m.mean[m.mirror] * REFLECT_X, m.mean)
    lm = m.landmarks["aflw21"]
    assert np.argmax(m.mean[lm, 2]) == 14
    if res % 2:  # odd grids have a centre column: midline points map to themselves
        assert np.all(m.mean[lm[[14, 18, 20]], 0] == 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="resolution"):
        synthetic_face_model(8)
    with pytest.raises(ValueError, match="component"):
        synthetic_face_model(32, n_identity=0, n_expression=0)
