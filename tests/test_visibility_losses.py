"""Visibility mask (true scatter-add normals) and the losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax3dmmstn.core import geometry as G
from jax3dmmstn.core import pose
from jax3dmmstn.core import losses as L
from jax3dmmstn.core import visibility as V
from jax3dmmstn.facemodel.morphable_model import grid_faces

pytestmark = pytest.mark.usefixtures("float64")


def _dome(res=24):
    """Half an ellipsoid facing +z on the original's UV grid layout."""
    k = np.arange(res * res)
    u, v = (k % res) / (res - 1), 1 - (k // res) / (res - 1)
    x, y = (u - 0.5) * 2, (v - 0.5) * 2
    z = np.sqrt(np.clip(1.2 - x**2 - y**2, 0, None))
    return np.stack([x * 70, y * 90, z * 60], -1)[None], grid_faces(res)


def test_plane_normals_closed_form():
    # A flat grid in the z = 0 plane: every vertex normal is +z times the sum of
    # the angles of its corners (pi / 2 + pi / 4 + ... per incident face).
    res = 4
    verts, faces = _dome(res)
    verts[..., 2] = 0
    normals = np.asarray(V.vertex_normals(jnp.asarray(verts), faces))[0]
    np.testing.assert_allclose(normals[:, :2], 0, atol=1e-9)
    area = (140 / 3) * (180 / 3)  # |cross| of each face = cell area
    angle_sum = np.zeros(res * res)
    for f in faces:
        p = verts[0, f, :2]
        for c in range(3):
            a, b = p[(c + 1) % 3] - p[c], p[(c + 2) % 3] - p[c]
            angle_sum[f[c]] += np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    np.testing.assert_allclose(normals[:, 2], area * angle_sum, rtol=1e-12)
    # Interior vertices are surrounded by 2 pi of angle.
    np.testing.assert_allclose(angle_sum[res + 1], 2 * np.pi)


def test_visibility_frontal_and_profile():
    verts, faces = _dome()
    mask = V.visibility_mask(jnp.asarray(verts), faces)
    assert mask.shape == (1, 24, 24, 1)
    assert float(mask.mean()) == 1.0
    rot = pose.pose_to_matrix(jnp.array([[-90.0, 0, 0]]))  # the nose turns to +x
    rotated = G.rotate(jnp.asarray(verts), rot)
    mask = np.asarray(V.visibility_mask(rotated, faces))[0, :, :, 0]
    # Turned towards +x: the u > 0.5 half (x > 0, now facing away) is hidden.
    # (Rows near the top and bottom lie in the flat z = 0 rim, edge-on now.)
    band = mask[6:18]
    assert band[:, :11].mean() == 1.0 and band[:, 13:].mean() == 0.0


def test_mask_has_no_gradient_and_masking():
    verts, faces = _dome(8)
    f = lambda x: V.visibility_mask(x, faces).sum()
    np.testing.assert_array_equal(jax.grad(f)(jnp.asarray(verts)), 0)
    texture = jnp.ones((1, 8, 8, 3))
    mask = jnp.zeros((1, 8, 8, 1)).at[:, :, :4].set(1)
    out = V.apply_mask(texture, mask)
    assert float(out.sum()) == 8 * 4 * 3


def test_faces_validation():
    verts, faces = _dome(4)
    with pytest.raises(ValueError, match="1-based faces"):
        V.vertex_normals(jnp.asarray(verts), faces + 16)


def test_landmark_loss_values():
    pred = jnp.array([[[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]])
    target = jnp.array([[[1.0, 0.0], [0.0, 0.0], [jnp.nan, jnp.nan]]])
    vis = jnp.array([[1.0, 1.0, 0.0]])
    assert float(L.landmark_loss(pred, target, vis, reduction="sum")) == 4 + 9 + 16
    assert float(L.landmark_loss(pred, target, vis, reduction="mean")) == 29 / 2
    grad = jax.grad(lambda p: L.landmark_loss(p, target, vis, reduction="sum"))(pred)
    np.testing.assert_array_equal(grad, [[[0, 4], [6, 8], [0, 0]]])


def test_landmark_loss_euclidean_distance():
    """The distance itself: errors (0, 2) and (3, 4) cost 2 + 5; each point is pulled along
    its error by a unit force, whatever the error's size (the squared form pulls with 2 e)."""
    pred = jnp.array([[[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]])
    target = jnp.array([[[1.0, 0.0], [0.0, 0.0], [jnp.nan, jnp.nan]]])
    vis = jnp.array([[1.0, 1.0, 0.0]])

    def loss(p, reduction="sum"):
        return L.landmark_loss(p, target, vis, reduction=reduction, distance="euclidean")

    assert float(loss(pred)) == pytest.approx(2 + 5, rel=1e-6)
    assert float(loss(pred, "mean")) == pytest.approx(7 / 2, rel=1e-6)
    np.testing.assert_allclose(jax.grad(loss)(pred), [[[0, 1], [0.6, 0.8], [0, 0]]], rtol=1e-6)
    # Smooth and finite at a zero error (the floor under the root), and the finite
    # differences agree at a generic point.
    at_target = jnp.where(jnp.isnan(target), 0.0, target)
    np.testing.assert_array_equal(jax.grad(loss)(at_target), np.zeros((1, 3, 2)))
    jax.test_util.check_grads(loss, (pred + 0.3,), order=2, modes=["rev"])
    with pytest.raises(ValueError, match="distance must be one of"):
        L.landmark_loss(pred, target, vis, reduction="sum", distance="l1")


def test_prior_loss():
    alpha = jnp.array([[1.0, -2.0], [3.0, 0.0]])
    assert float(L.prior_loss(alpha, reduction="sum")) == 14
    assert float(L.prior_loss(alpha, reduction="mean")) == 7


def test_symmetry_loss_values():
    tex = jnp.array([1.0, 2.0, 0.0, 5.0]).reshape(1, 1, 4, 1)
    mask = jnp.array([1.0, 1.0, 1.0, 1.0]).reshape(1, 1, 4, 1)
    # Pairs (0, 3), (1, 2): squared differences 16 + 4, each counted twice.
    assert float(L.symmetry_loss(tex, mask, reduction="mean")) == pytest.approx(40 / 4)
    assert float(L.symmetry_loss(tex, mask, reduction="sum")) == pytest.approx(40)
    # The original's rule: zeros are invisible -> only (0, 3) counts, 3 non-zero.
    assert float(
        L.symmetry_loss(tex, None, nonzero_as_mask=True, reduction="mean")
    ) == pytest.approx(32 / 3)
    # A symmetric texture costs nothing.
    sym = jnp.array([1.0, 2.0, 2.0, 1.0]).reshape(1, 1, 4, 1)
    assert float(L.symmetry_loss(sym, mask, reduction="mean")) == 0.0
    with pytest.raises(ValueError, match="visibility mask"):
        L.symmetry_loss(tex, reduction="mean")


def test_siamese_loss_values():
    tex = jnp.stack(
        [
            jnp.full((2, 2, 1), 1.0),
            jnp.full((2, 2, 1), 3.0),
            jnp.full((2, 2, 1), 2.0),
            jnp.full((2, 2, 1), 2.0),
        ]
    )
    mask = jnp.ones((4, 2, 2, 1)).at[0, 0, 0].set(0)
    # Pair 1: 3 visible texels of diff 2 -> 12; pair 2: 0. Count of visible = 15.
    assert float(L.siamese_loss(tex, mask, reduction="mean")) == pytest.approx(12 / 15)
    assert float(L.siamese_loss(tex, mask, reduction="sum")) == pytest.approx(12)
    ramp = jnp.arange(4.0).reshape(1, 1, 4, 1)
    pair = jnp.concatenate([ramp, jnp.flip(ramp, 2)])
    ones = jnp.ones_like(pair)
    assert float(L.siamese_loss(pair, ones, mirror_pairs=True, reduction="mean")) == 0.0
    assert float(L.siamese_loss(pair, ones, reduction="mean")) > 0
    with pytest.raises(ValueError, match="even"):
        L.siamese_loss(tex[:3], mask[:3], reduction="mean")


def test_reduction_is_required_and_checked():
    alpha = jnp.ones((2, 3))
    tex, mask = jnp.ones((2, 2, 2, 1)), jnp.ones((2, 2, 2, 1))
    pred = jnp.zeros((1, 3, 2))
    for call in (
        lambda **kw: L.landmark_loss(pred, pred, **kw),
        lambda **kw: L.prior_loss(alpha, **kw),
        lambda **kw: L.symmetry_loss(tex, mask, **kw),
        lambda **kw: L.siamese_loss(tex, mask, **kw),
    ):
        with pytest.raises(TypeError, match="reduction"):
            call()
        with pytest.raises(ValueError, match="reduction must be one of"):
            call(reduction="avg")
    with pytest.raises(TypeError):
        L.prior_loss(alpha, "sum")  # keyword only: the choice is named at the call


def test_face_normals_orientation_and_formula():
    # One triangle, clockwise as seen from +z: the original's normal points to +z.
    tri = jnp.array([[[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2.0, 0.0, 0.0]]])
    faces = np.array([[0, 1, 2]])
    np.testing.assert_array_equal(V.face_normals(tri, faces), [[[0.0, 0.0, 2.0]]])
    # Unbatched input works, and the formula is cross(p3 - p1, p2 - p1).
    verts, faces = _dome(6)
    p = verts[0]
    want = np.cross(p[faces[:, 2]] - p[faces[:, 0]], p[faces[:, 1]] - p[faces[:, 0]])
    np.testing.assert_allclose(V.face_normals(jnp.asarray(p), faces), want, atol=1e-9)
    # face_corner_terms and vertex_normals use it.
    normals, angles = V.face_corner_terms(jnp.asarray(verts), jnp.asarray(faces))
    np.testing.assert_array_equal(normals, V.face_normals(jnp.asarray(verts), faces))
    np.testing.assert_allclose(np.sum(angles, -1), np.pi, rtol=1e-12)
    # The dome faces the viewer, so every face normal has z > 0.
    assert np.all(np.asarray(normals)[..., 2] > 0)
