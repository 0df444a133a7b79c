"""The localisers' CPU-oriented layers compute exactly what flax's standard layers compute."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jax3dmmstn.network.layers import Conv, WholeMapConv, bias_add
from jax3dmmstn.network.pooling import max_pool_2x2
from jax3dmmstn.training import step as step_module
from jax3dmmstn.training.xla_options import CPU_OPTIONS, compiler_options


def _flax_pool(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (3, 7, 9, 2), (1, 2, 2, 1)])
def test_max_pool_matches_flax_values_and_gradient_with_ties(shape):
    rng = np.random.default_rng(0)
    # Integers 0..2: most windows hold ties, where the gradient must go to the first maximum.
    x = jnp.asarray(rng.integers(0, 3, shape).astype(np.float32))
    g = jnp.asarray(rng.normal(size=(shape[0], shape[1] // 2, shape[2] // 2, shape[3])), jnp.float32)
    np.testing.assert_array_equal(max_pool_2x2(x), _flax_pool(x))
    ours = jax.vjp(max_pool_2x2, x)[1](g)[0]
    theirs = jax.vjp(_flax_pool, x)[1](g)[0]
    np.testing.assert_array_equal(ours, theirs)


def test_max_pool_gradient_goes_to_one_element_per_window():
    x = jnp.zeros((1, 2, 2, 1))  # four equal values: the first (top-left) takes it all
    dx = jax.grad(lambda x: max_pool_2x2(x).sum())(x)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1.0, 0.0], [0.0, 0.0]])


def test_max_pool_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[B, H, W, C\].*\(1, 1, 5, 3\)"):
        max_pool_2x2(jnp.zeros((1, 1, 5, 3)))


@pytest.mark.parametrize("padding", ["SAME", ((1, 1), (1, 1))])
def test_conv_equals_flax_conv(padding):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 9, 9, 5)), jnp.float32)
    init = nn.initializers.he_normal()
    theirs = nn.Conv(7, (3, 3), padding=padding, kernel_init=init)
    ours = Conv(7, (3, 3), padding=padding, kernel_init=init)
    params = theirs.init(jax.random.PRNGKey(1), x)
    same_init = ours.init(jax.random.PRNGKey(1), x)
    jax.tree.map(np.testing.assert_array_equal, params, same_init)
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias
    np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-6, atol=1e-6)
    loss = lambda module: lambda p: jnp.sum(jnp.sin(module.apply(p, x)))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
        jax.grad(loss(ours))(params),
        jax.grad(loss(theirs))(params),
    )


def test_whole_map_conv_equals_a_valid_convolution_covering_the_map():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 7, 7, 4)), jnp.float32)
    theirs = nn.Conv(6, (7, 7), padding="VALID")
    ours = WholeMapConv(6)
    params = theirs.init(jax.random.PRNGKey(3), x)
    jax.tree.map(np.testing.assert_array_equal, params, ours.init(jax.random.PRNGKey(3), x))
    params = jax.tree.map(lambda p: p + 0.05, params)
    out = ours.apply(params, x)
    assert out.shape == (3, 1, 1, 6)
    np.testing.assert_allclose(out, theirs.apply(params, x), rtol=1e-5, atol=1e-5)


def test_bias_add_gradients_match_finite_differences():
    rng = np.random.default_rng(4)
    y = jnp.asarray(rng.normal(size=(2, 3, 4, 5)))
    bias = jnp.asarray(rng.normal(size=(5,)))
    check_grads(bias_add, (y, bias), order=1, modes=("rev",))
    d_bias = jax.grad(lambda b: jnp.sum(bias_add(y, b) * y))(bias)
    np.testing.assert_allclose(d_bias, jnp.sum(y, axis=(0, 1, 2)), rtol=1e-12)


def test_compiler_options_apply_on_cpu_only_and_keep_values():
    assert compiler_options("gpu") == {} and compiler_options("tpu") == {}
    options = compiler_options("cpu")
    assert options in ({}, CPU_OPTIONS)  # {} only where this jaxlib lacks the option
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 12, 12, 4)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(6).normal(size=(3, 3, 4, 8)), jnp.float32)

    def grads(x, w):
        conv = lambda x, w: jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1))(x, w)

    with_options = jax.jit(grads, compiler_options=options)(x, w)
    default = jax.jit(grads)(x, w)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), with_options, default)


@pytest.mark.parametrize("size", [10, 1 << 16, (1 << 16) + 3])
def test_sum_of_squares_both_routes(size):
    x = jnp.asarray(np.random.default_rng(7).normal(size=(size,)), jnp.float32)
    tree = {"a": x, "b": jnp.arange(3.0)}
    expected = float(np.sum(np.asarray(x, np.float64) ** 2)) + 5.0
    np.testing.assert_allclose(float(step_module._sum_of_squares(tree)), expected, rtol=1e-5)
    for bad in (np.nan, np.inf, -np.inf):
        assert not np.isfinite(float(step_module._sum_of_squares({"a": x.at[size // 2].set(bad)})))
