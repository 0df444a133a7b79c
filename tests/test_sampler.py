"""Bilinear sampler: MatConvNet semantics, torch parity, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jax3dmmstn.core.sampler import bilinear_sample, bilinear_sample_reference

pytestmark = pytest.mark.usefixtures("float64")


def _pixel_to_grid(pixel, size):
    return pixel / (size - 1) * 2 - 1


def _grid_away_from_integers(rng, shape, height, width, margin=1.3):
    """Grid points whose pixel positions are >= 0.05 px from any integer."""
    g = rng.uniform(-margin, margin, size=shape + (2,))
    for axis, size in ((0, width), (1, height)):
        pix = (g[..., axis] + 1) / 2 * (size - 1)
        frac = pix - np.floor(pix)
        pix = np.floor(pix) + np.clip(frac, 0.05, 0.95)
        g[..., axis] = _pixel_to_grid(pix, size)
    return g


def test_exact_pixel_centres_return_pixels():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 4, 5, 2))
    rows, cols = np.meshgrid(np.arange(4), np.arange(5), indexing="ij")
    grid = np.stack([_pixel_to_grid(cols, 5), _pixel_to_grid(rows, 4)], -1)[None]
    np.testing.assert_allclose(bilinear_sample(image, grid), image, atol=1e-14)


def test_closed_form_interpolation_and_zero_padding():
    image = np.arange(12.0).reshape(1, 3, 4, 1) + 1  # value = 1 + 4 row + col
    # Inside: a linear image is reproduced exactly.
    pix = np.array([[0.25, 1.5], [2.75, 0.5]])  # (col, row)
    grid = np.stack([_pixel_to_grid(pix[:, 0], 4), _pixel_to_grid(pix[:, 1], 3)], -1).reshape(
        1, 1, 2, 2
    )
    out = np.asarray(bilinear_sample(image, grid))[0, 0, :, 0]
    np.testing.assert_allclose(out, 1 + 4 * pix[:, 1] + pix[:, 0])
    # Half a pixel before the first column: the neighbour at column -1 is 0
    # (MatConvNet CUDA semantics): value = 0.5 * image[row, 0].
    grid = np.array([[[[_pixel_to_grid(-0.5, 4), _pixel_to_grid(1, 3)]]]])
    np.testing.assert_allclose(bilinear_sample(image, grid)[0, 0, 0, 0], 0.5 * 5)
    # Beyond the last pixel by half a pixel: symmetric.
    grid = np.array([[[[_pixel_to_grid(3.5, 4), _pixel_to_grid(1, 3)]]]])
    np.testing.assert_allclose(bilinear_sample(image, grid)[0, 0, 0, 0], 0.5 * 8)
    # Entirely outside: 0.
    grid = np.array([[[[3.0, 0.0], [0.0, -2.0]]]])
    np.testing.assert_array_equal(bilinear_sample(image, grid), 0)


def test_several_grids_per_image():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(2, 6, 7, 3))
    grid = rng.uniform(-1, 1, size=(6, 4, 5, 2))
    out = bilinear_sample(image, grid)
    for n in range(6):
        single = bilinear_sample(image[n // 3 : n // 3 + 1], grid[n : n + 1])
        np.testing.assert_allclose(out[n], single[0], atol=1e-14)


def test_matches_torch_grid_sample():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    image = rng.normal(size=(3, 9, 11, 4))
    grid = rng.uniform(-1.2, 1.2, size=(3, 5, 6, 2))
    grid[0, 0, :3] = [[-1, -1], [1, 1], [1, -1]]  # exact corners
    want = (
        torch.nn.functional.grid_sample(
            torch.tensor(image).permute(0, 3, 1, 2),
            torch.tensor(grid),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        )
        .permute(0, 2, 3, 1)
        .numpy()
    )
    np.testing.assert_allclose(bilinear_sample(image, grid), want, atol=1e-12)


def test_gradients_against_finite_differences():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(2, 5, 6, 3))
    grid = _grid_away_from_integers(rng, (4, 3, 4), 5, 6)
    check_grads(bilinear_sample, (image, grid), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_gradients_match_autodiff_of_plain_gather():
    rng = np.random.default_rng(4)
    image = rng.normal(size=(2, 7, 5, 3))
    grid = rng.uniform(-1.2, 1.2, size=(4, 6, 6, 2))
    # Include exact pixel positions and the borders (one-sided derivatives).
    grid[0, 0, :4] = [[-1, -1], [1, 1], [0, 0], [_pixel_to_grid(-0.5, 5), 0]]
    cot = rng.normal(size=(4, 6, 6, 3))
    _, vjp_a = jax.vjp(bilinear_sample, image, grid)
    _, vjp_b = jax.vjp(bilinear_sample_reference, image, grid)
    for a, b in zip(vjp_a(cot), vjp_b(cot)):
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_one_sided_grid_derivative_at_pixels_and_far_border():
    image = np.array([[1.0, 3.0, 4.0]]).reshape(1, 1, 3, 1)
    f = lambda gx: bilinear_sample(
        image, jnp.stack([gx, jnp.zeros_like(gx)], -1).reshape(1, 1, -1, 2)
    ).sum()
    gx = jnp.array([_pixel_to_grid(1.0, 3)])  # exactly on column 1
    # floor picks the cell [1, 2]: slope (4 - 3) per pixel, times (W - 1) / 2.
    np.testing.assert_allclose(jax.grad(f)(gx), [1.0 * 1.0])
    # At +1, the neighbour beyond the last pixel is 0: -x[last] * (W - 1) / 2.
    np.testing.assert_allclose(jax.grad(f)(jnp.array([1.0])), [-4.0 * 1.0])


def test_image_gradient_closed_form():
    # d out / d image for one sample at (col 0.25, row 0.5) of a 2 x 2 image.
    image = np.zeros((1, 2, 2, 1))
    grid = np.array([[[[_pixel_to_grid(0.25, 2), _pixel_to_grid(0.5, 2)]]]])
    _, vjp = jax.vjp(bilinear_sample, image, grid)
    d_image, _ = vjp(np.ones((1, 1, 1, 1)))
    np.testing.assert_allclose(
        d_image[0, :, :, 0], [[0.75 * 0.5, 0.25 * 0.5], [0.75 * 0.5, 0.25 * 0.5]]
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_low_precision_images(dtype):
    rng = np.random.default_rng(5)
    image = rng.uniform(size=(2, 8, 8, 3))
    grid = rng.uniform(-1, 1, size=(2, 4, 4, 2)).astype(np.float32)
    out = bilinear_sample(jnp.asarray(image, dtype), jnp.asarray(grid))
    assert out.dtype == dtype
    want = bilinear_sample(jnp.asarray(image, dtype).astype(jnp.float64), grid)
    tol = 1e-6 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(np.asarray(out, np.float64), want, atol=tol)
    grads = jax.grad(lambda i, g: bilinear_sample(i, g).astype(jnp.float32).sum(), (0, 1))(
        jnp.asarray(image, dtype), jnp.asarray(grid)
    )
    assert grads[0].dtype == dtype and grads[1].dtype == jnp.float32
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads)


def test_jit_and_vmap():
    rng = np.random.default_rng(6)
    image = jnp.asarray(rng.normal(size=(2, 5, 5, 1)))
    grid = jnp.asarray(rng.uniform(-1, 1, size=(2, 3, 3, 2)))
    np.testing.assert_allclose(jax.jit(bilinear_sample)(image, grid), bilinear_sample(image, grid))
    per_example = jax.vmap(lambda i, g: bilinear_sample(i[None], g[None])[0])(image, grid)
    np.testing.assert_allclose(per_example, bilinear_sample(image, grid))


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"image must be \[B, H, W, C\]"):
        bilinear_sample(np.zeros((4, 4, 3)), np.zeros((1, 2, 2, 2)))
    with pytest.raises(ValueError, match=r"grid must be \[Bo, Ho, Wo, 2\]"):
        bilinear_sample(np.zeros((1, 4, 4, 3)), np.zeros((1, 2, 2, 3)))
    with pytest.raises(ValueError, match="multiple of the image batch"):
        bilinear_sample(np.zeros((2, 4, 4, 3)), np.zeros((3, 2, 2, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        bilinear_sample(np.zeros((1, 4, 4, 3)), np.full((1, 2, 2, 2), np.nan))


@pytest.mark.parametrize("argnums", [0, 1, (0, 1)])
def test_partial_gradients_match_reference(argnums):
    # The custom VJP skips the image scatter when only the grid is differentiated.
    rng = np.random.default_rng(7)
    image = rng.normal(size=(2, 6, 7, 3))
    grid = rng.uniform(-1.2, 1.2, size=(4, 5, 5, 2))
    cot = rng.normal(size=(4, 5, 5, 3))
    loss = lambda f: lambda i, g: jnp.sum(f(i, g) * cot)
    got = jax.jit(jax.grad(loss(bilinear_sample), argnums))(image, grid)
    want = jax.grad(loss(bilinear_sample_reference), argnums)(image, grid)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_one_pixel_wide_image_and_far_grid():
    rng = np.random.default_rng(8)
    image = rng.normal(size=(1, 5, 1, 2))
    grid = rng.uniform(-1.5, 1.5, size=(1, 3, 3, 2))
    grid[0, 0, 0] = [1e9, -1e9]
    cot = rng.normal(size=(1, 3, 3, 2))
    out, vjp_a = jax.vjp(bilinear_sample, image, grid)
    want, vjp_b = jax.vjp(bilinear_sample_reference, image, grid)
    np.testing.assert_allclose(out, want, atol=1e-12)
    for x, y in zip(vjp_a(cot), vjp_b(cot)):
        np.testing.assert_allclose(x, y, atol=1e-12)
