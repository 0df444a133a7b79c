"""The fast paths equal the general ones: grid-mesh normals vs the scatter-add, the float32
arccos, the rematerialised sampler, and the benchmarks' PyTorch chain vs ours."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax3dmmstn.core import geometry, sampler
from jax3dmmstn.core import visibility as V
from jax3dmmstn.facemodel.morphable_model import grid_faces
from jax3dmmstn.facemodel.synthetic import synthetic_face_model


@pytest.fixture(scope="module")
def model():
    return synthetic_face_model(resolution=24)


def _rotated(model, batch=6, seed=0):
    rng = np.random.default_rng(seed)
    d = model.basis.shape[-1]
    theta = np.concatenate(
        [rng.normal(0, 0.6, (batch, 3)), np.full((batch, 2), 112.0), np.zeros((batch, 1)),
         rng.normal(size=(batch, d))], 1
    ).astype(np.float32)
    return geometry.project_theta(jnp.asarray(theta), model.mean, model.basis).rotated


def test_regular_grid_is_recognised():
    faces = grid_faces(7)
    assert V.is_regular_grid(faces, 49)
    assert V.is_regular_grid(faces[::-1], 49)  # any face order
    assert not V.is_regular_grid(faces[:, [1, 0, 2]], 49)  # other winding
    assert not V.is_regular_grid(faces[:-1], 49)
    assert not V.is_regular_grid(faces, 64)
    flipped = faces.copy()
    flipped[0] = [0, 8, 7]  # a cell cut along the other diagonal
    assert not V.is_regular_grid(flipped, 49)


def test_grid_normals_equal_the_scatter_add(model):
    rotated = _rotated(model)
    grid = V.vertex_normals(rotated, model.faces, method="grid")
    scatter = V.vertex_normals(rotated, model.faces, method="scatter")
    scale = float(jnp.max(jnp.abs(scatter)))
    np.testing.assert_allclose(grid, scatter, atol=2e-6 * scale, rtol=0)
    assert np.array_equal(V.vertex_normals(rotated, model.faces), grid)  # auto picks the grid
    # Turned heads: some vertices hidden, and both paths agree on which.
    mask_grid = V.visibility_mask(rotated, model.faces)
    mask_scatter = (scatter[..., 2] >= 0).reshape(mask_grid.shape)
    assert 0.2 < float(mask_grid.mean()) < 1.0
    np.testing.assert_array_equal(mask_grid, mask_scatter)
    with pytest.raises(ValueError, match="regular UV grid"):
        V.vertex_normals(rotated, model.faces[:-1], method="grid")


def test_irregular_mesh_uses_the_scatter_path():
    # A fan around vertex 0: only the scatter-add can accumulate it.
    verts = jnp.array([[[0.0, 0, 1], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]]])
    faces = np.array([[0, 2, 1], [0, 3, 2], [0, 4, 3], [0, 1, 4]])
    normals = np.asarray(V.vertex_normals(verts, faces))[0]
    # Each face normal cross(p2 - p1, p2 - p3) has z = 1 here; vertex 0 sums 4 corners of
    # angle acos(1/2) = pi / 3.
    np.testing.assert_allclose(normals[0], [0, 0, 4 * np.pi / 3 * 1.0], atol=1e-5)


def test_float32_arccos_within_two_ulp():
    x = np.linspace(-1, 1, 200_001, dtype=np.float32)
    got = np.asarray(jax.jit(V._arccos)(jnp.asarray(x))).astype(np.float64)
    want = np.arccos(x.astype(np.float64))
    ulp = np.spacing(want.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got - want) / ulp) <= 2.0
    assert float(V._arccos(jnp.float32(1.0))) == 0.0


def test_rematerialised_sampler_same_values_and_gradients():
    rng = np.random.default_rng(1)
    image = jnp.asarray(rng.uniform(size=(2, 9, 11, 3)), jnp.float32)
    grid = jnp.asarray(rng.uniform(-1.1, 1.1, (4, 5, 6, 2)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(4, 5, 6, 3)), jnp.float32)

    def loss(image, grid, remat):
        return jnp.sum(weights * sampler.bilinear_sample(image, grid, rematerialise=remat) ** 2)

    plain = sampler.bilinear_sample(image, grid)
    np.testing.assert_array_equal(sampler.bilinear_sample(image, grid, rematerialise=True), plain)
    g_plain = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)(image, grid, False)
    g_remat = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)(image, grid, True)
    for a, b in zip(g_plain, g_remat):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        assert float(jnp.max(jnp.abs(a))) > 0
