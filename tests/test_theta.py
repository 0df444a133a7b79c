"""theta's one definition: layout, split/merge, checks, and JAX transformations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax3dmmstn.core import theta as T

D = 4


def _theta(batch=None, dtype=np.float32, seed=0):
    shape = (T.size(D),) if batch is None else (batch, T.size(D))
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def test_layout_constants_cover_every_column_once():
    columns = np.arange(T.size(D))
    covered = np.concatenate(
        [
            columns[T.ROTATION],
            columns[T.TRANSLATION],
            [columns[T.LOG_SCALE]],
            columns[T.SHAPE],
        ]
    )
    np.testing.assert_array_equal(covered, columns)
    assert T.N_POSE == 6 and T.size(D) == 6 + D
    assert T.n_components(np.zeros(T.size(D))) == D
    assert T.n_components(np.zeros((3, T.size(0)))) == 0


@pytest.mark.parametrize("batch", [None, 1, 5])
@pytest.mark.parametrize("as_jax", [False, True])
def test_split_merge_round_trip_is_exact(batch, as_jax):
    theta = _theta(batch)
    if as_jax:
        theta = jnp.asarray(theta)
    parts = T.split(theta)
    lead = () if batch is None else (batch,)
    assert parts.r.shape == lead + (3,)
    assert parts.t.shape == lead + (2,)
    assert parts.logs.shape == lead
    assert parts.alpha.shape == lead + (D,)
    merged = T.merge(*parts)
    assert isinstance(merged, jax.Array) == as_jax
    assert merged.dtype == theta.dtype and merged.shape == theta.shape
    np.testing.assert_array_equal(np.asarray(merged), np.asarray(theta))


def test_split_matches_the_documented_layout_and_accessors():
    theta = np.arange(T.size(D), dtype=np.float64)
    r, t, logs, alpha = T.split(theta)
    np.testing.assert_array_equal(r, [0, 1, 2])
    np.testing.assert_array_equal(t, [3, 4])
    assert logs == 5
    np.testing.assert_array_equal(alpha, np.arange(6, 6 + D))
    np.testing.assert_array_equal(T.rotation(theta), r)
    np.testing.assert_array_equal(T.translation(theta), t)
    assert T.log_scale(theta) == logs
    np.testing.assert_array_equal(T.shape_weights(theta), alpha)


def test_merge_kind_dtype_and_broadcasting():
    r, t, alpha = np.zeros(3, np.float32), np.ones(2, np.float32), np.ones((4, D), np.float32)
    # Numpy parts give numpy; a Python scalar does not widen float32.
    merged = T.merge(r, t, 0.5, alpha)
    assert type(merged) is np.ndarray and merged.dtype == np.float32
    # One pose broadcasts against a batch of alphas.
    assert merged.shape == (4, T.size(D))
    np.testing.assert_array_equal(merged[:, T.LOG_SCALE], 0.5)
    np.testing.assert_array_equal(T.shape_weights(merged), alpha)
    # Any JAX part gives a JAX array.
    assert isinstance(T.merge(r, jnp.asarray(t), 0.5, alpha), jax.Array)


def test_merge_rejects_parts_that_would_shift_the_layout():
    r, t, alpha = np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((2, D))
    with pytest.raises(ValueError, match=r"r must be \[\.\.\., 3\]"):
        T.merge(t, t, np.zeros(2), alpha)
    with pytest.raises(ValueError, match=r"t must be \[\.\.\., 2\]"):
        T.merge(r, r, np.zeros(2), alpha)
    with pytest.raises(ValueError, match=r"alpha must be \[\.\.\., D\]"):
        T.merge(r, t, np.zeros(2), 1.0)
    with pytest.raises(ValueError, match="do not broadcast"):
        T.merge(r, t, np.zeros(3), alpha)


@pytest.mark.parametrize(
    "call", [T.split, T.rotation, T.translation, T.log_scale, T.shape_weights, T.n_components]
)
def test_too_short_theta_is_refused(call):
    with pytest.raises(ValueError, match=r"theta must be \[\.\.\., 6 \+ D\], got shape \(2, 5\)"):
        call(np.zeros((2, 5)))


def test_check_messages():
    T.check(np.zeros((2, T.size(D))))
    T.check(np.zeros((2, T.size(D))), D)
    T.check(np.zeros(T.size(D)), D, batched=False)
    with pytest.raises(ValueError, match=r"theta must be \[B, 6 \+ D\], got shape \(10,\)"):
        T.check(np.zeros(10))
    with pytest.raises(ValueError, match=r"theta must be \[6 \+ D\], got shape \(1, 10\)"):
        T.check(np.zeros((1, 10)), batched=False)
    with pytest.raises(ValueError, match=r"theta must be \[B, 6 \+ D\], got shape \(3, 5\)"):
        T.check(np.zeros((3, 5)))
    with pytest.raises(
        ValueError, match=r"must be \[B, 10\] for a 4-component model, got shape \(3, 9\)"
    ):
        T.check(np.zeros((3, 9)), D)
    with pytest.raises(ValueError, match=r"must be \[10\], got shape \(2, 3, 10\)"):
        T.check(np.zeros((2, 3, 10)), D, batched=False)


def test_part_names():
    assert T.part_names(0) == ("r", "r", "r", "t", "t", "logs")
    names = T.part_names(D)
    assert len(names) == T.size(D) and names[T.N_POSE :] == ("alpha",) * D
    # Every column's name agrees with the slice that holds it.
    columns = np.arange(T.size(D))
    for part, index in (("r", T.ROTATION), ("t", T.TRANSLATION), ("alpha", T.SHAPE)):
        assert {names[c] for c in np.atleast_1d(columns[index])} == {part}
    assert names[T.LOG_SCALE] == "logs"


def test_jit_and_vmap_through_split_and_merge():
    theta = jnp.asarray(_theta(3))

    @jax.jit
    def scale_shape(th):
        r, t, logs, alpha = T.split(th)
        return T.merge(r, t, logs, 2.0 * alpha)

    out = scale_shape(theta)
    np.testing.assert_array_equal(out[:, : T.N_POSE], theta[:, : T.N_POSE])
    np.testing.assert_array_equal(T.shape_weights(out), 2.0 * T.shape_weights(theta))
    # vmap over the batch of unbatched thetas gives the batched result.
    np.testing.assert_array_equal(jax.vmap(scale_shape)(theta), out)
    # merge inside vmap, with a pose shared across the mapped axis.
    alphas = jnp.ones((5, D))
    merged = jax.vmap(lambda a: T.merge(jnp.zeros(3), jnp.ones(2), 0.0, a))(alphas)
    assert merged.shape == (5, T.size(D))


def test_grad_flows_to_the_right_columns():
    theta = jnp.asarray(_theta(2, np.float32))

    def loss(th):
        r, t, logs, alpha = T.split(th)
        return jnp.sum(r) + 2 * jnp.sum(t) + 3 * jnp.sum(logs) + 4 * jnp.sum(alpha)

    grad = jax.grad(loss)(theta)
    np.testing.assert_array_equal(grad, np.broadcast_to([1, 1, 1, 2, 2, 3] + [4] * D, theta.shape))
    # And back through merge: the gradient of each part is its own slice.
    cotangent = jnp.arange(theta.size, dtype=theta.dtype).reshape(theta.shape)
    _, pullback = jax.vjp(T.merge, *T.split(theta))
    for got, want in zip(pullback(cotangent), T.split(cotangent)):
        np.testing.assert_array_equal(got, want)
