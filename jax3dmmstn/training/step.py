"""The train step: loss composition across devices, gradients, update and the NaN guard.

Every loss term is computed on a shard as a *sum* over its examples and then normalised so
that the mean over shards equals the loss of the whole global batch: ``mean`` reduction
divides by the global count, ``sum`` reduction (the original's) multiplies the shard sum by
the number of shards. Hence 1 and N devices with the same global batch give the same
parameters (up to float summation order).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax3dmmstn.core import losses as loss_lib
from jax3dmmstn.training.state import TrainState

Array = Any
PyTree = Any

LOSS_TERMS = ("landmark", "prior", "siamese", "symmetry")


# --------------------------------------------------------------------------------------------
# Loss composition.
# --------------------------------------------------------------------------------------------
def _global_sum(x: Array, axis_name: str | None) -> Array:
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def _share(local_sum: Array, local_count: Array | None, axis_name: str | None) -> Array:
    """This shard's share of ``sum over all shards / count over all shards``.

    Scaled by the number of shards so that ``pmean`` over shards gives the global ratio (and
    pmean of its gradient the gradient of the global loss). The count is global, not per
    shard, so 1 or N devices give the same loss and gradients. ``local_count=None``: no
    normalisation (the global sum).
    """
    n_shards = 1 if axis_name is None else jax.lax.psum(1, axis_name)
    if local_count is None:
        return local_sum * n_shards
    count = jax.lax.stop_gradient(_global_sum(local_count, axis_name))
    return local_sum * n_shards / jnp.maximum(count, 1.0)


def _texture_term(name: str, outputs: Mapping, loss_config, axis_name: str | None) -> Array:
    """'siamese' or 'symmetry': sum of squared differences / global count of visible values.

    outputs: 'texture' [b, res, res, C], 'mask' [b, res, res, 1 or C].
    """
    texture, mask = outputs["texture"], outputs["mask"]
    count = jnp.sum(jnp.broadcast_to(jax.lax.stop_gradient(mask), texture.shape))
    if name == "siamese":
        mirror_pairs = bool(loss_config.get("siamese_mirror_pairs", False))
        total = loss_lib.siamese_loss(texture, mask, mirror_pairs=mirror_pairs, reduction="sum")
    else:
        total = loss_lib.symmetry_loss(texture, mask, reduction="sum")
    return _share(total, count, axis_name)


def compute_losses(
    outputs: Mapping[str, Array],
    batch: Mapping[str, Array],
    loss_config,
    axis_name: str | None = None,
) -> dict[str, Array]:
    """Loss terms of one shard and their weighted total (see :func:`_share` for sharding).

    outputs: the STN's dict; batch: 'landmarks' [b, L, 2] (image frame), 'landmark_visible'
    [b, L]. loss_config: ``weights`` (landmark, prior, siamese, symmetry),
    ``landmark_distance`` ('squared', the original, or 'euclidean'; see
    :func:`jax3dmmstn.core.losses.landmark_loss`), ``reduction``:
      'sum' (the original): landmark = sum over the global batch of the visible landmarks'
        squared pixel errors (or distances); prior = sum of alpha**2;
      'mean': landmark = that sum / number of visible landmarks (a mean squared distance in
        pixels**2, or a mean distance in pixels); prior = sum / global batch size.
    The texture terms are the original's in both cases: sum of squared differences over the
    global batch divided by the global number of visible texture values (the sums come from
    :mod:`jax3dmmstn.core.losses`, the counts are combined across devices here).
    ``siamese_mirror_pairs`` flips the second member of a pair before comparing (right for an
    image and its mirror; the original does not flip).
    Returns {'landmark', 'prior', 'siamese', 'symmetry', 'total'}; zero-weight texture terms
    are not computed.
    """
    reduction = loss_config.reduction
    if reduction not in ("sum", "mean"):
        raise ValueError(f"loss reduction must be 'mean' or 'sum', got {reduction!r}")
    weights = loss_config.weights
    visible = batch["landmark_visible"].astype(jnp.float32)
    alpha = outputs["alpha"]
    # The per-shard sums; the reduction only decides what they are divided by.
    landmark_sum = loss_lib.landmark_loss(
        outputs["landmarks"],
        batch["landmarks"],
        visible,
        reduction="sum",
        distance=loss_config.get("landmark_distance", "squared"),
    )
    prior_sum = loss_lib.prior_loss(alpha, reduction="sum")
    mean = reduction == "mean"
    one = jnp.ones((), jnp.float32)
    terms = {
        "landmark": _share(landmark_sum, jnp.sum(visible) if mean else None, axis_name),
        "prior": _share(prior_sum, one * alpha.shape[0] if mean else None, axis_name),
    }
    have_texture = "texture" in outputs and "mask" in outputs
    for name in ("siamese", "symmetry"):
        if float(weights.get(name, 0.0)) and have_texture:
            terms[name] = _texture_term(name, outputs, loss_config, axis_name)
        else:
            terms[name] = jnp.zeros((), jnp.float32)
    terms["total"] = sum(float(weights.get(name, 0.0)) * terms[name] for name in LOSS_TERMS)
    return terms


# --------------------------------------------------------------------------------------------
# The step and its NaN guard.
# --------------------------------------------------------------------------------------------
# Arrays at least this large, with a size divisible by _GRAM_WIDTH, take the Gram route.
_GRAM_WIDTH = 16
_GRAM_MIN_SIZE = 1 << 16


def _squares(x: Array) -> Array:
    """Sum of the squares of ``x``'s entries (float32 scalar).

    Large arrays as the trace of the 16 x 16 Gram matrix of their [n / 16, 16] view: a matrix
    product reads the array once at memory speed, where XLA's CPU reduction of the squares
    (also ``jnp.vdot``, which it rewrites into one) is about three times slower; for
    VGG-16's fc6 kernel (103 M entries) 37 ms against 115 ms.
    """
    x = jnp.ravel(x).astype(jnp.float32)
    if x.size >= _GRAM_MIN_SIZE and x.size % _GRAM_WIDTH == 0:
        rows = x.reshape(-1, _GRAM_WIDTH)
        # HIGHEST: accelerators' default f32 products may round the entries (TF32 / bf16).
        return jnp.trace(jnp.matmul(rows.T, rows, precision=jax.lax.Precision.HIGHEST))
    return jnp.vdot(x, x)


def _sum_of_squares(tree: PyTree) -> Array:
    """Sum of the squares of every entry of ``tree`` (float32 scalar).

    It is finite exactly when every entry is finite, unless it overflows (an entry beyond
    ~1e19), which a training step treats as a failure too. So one pass over an array gives
    both a norm and a finiteness check (``optax.tree.norm`` and ``jnp.isfinite`` cost a pass,
    a temporary and a slow reduction each on CPU; with VGG-16's 138 M parameters they were a
    tenth of the step).
    """
    return sum((_squares(x) for x in jax.tree.leaves(tree)), jnp.zeros((), jnp.float32))


def make_train_step(
    apply_fn: Callable, tx: optax.GradientTransformation, loss_config, axis_name: str | None = None
) -> Callable:
    """(state, batch) -> (new state, metrics). Pure; wrap in jit or pmap(axis_name=...).

    NaN guard: when any loss term or any gradient is not finite, the returned state keeps the
    old params and optimiser state (only step/data position advance) and metrics['finite'] is
    False; :func:`check_finite_metrics` then raises on the host naming the step and the term.
    """

    def loss_fn(params, batch):
        outputs = apply_fn({"params": params}, batch["image"])
        terms = compute_losses(outputs, batch, loss_config, axis_name=axis_name)
        return terms["total"], terms

    def step(state: TrainState, batch: Mapping[str, Array]):
        (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            terms = jax.lax.pmean(terms, axis_name)
        updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        term_finite = {name: jnp.isfinite(value) for name, value in terms.items()}
        grad_squares = _sum_of_squares(grads)
        grad_finite = jnp.isfinite(grad_squares)
        update_finite = jnp.isfinite(_sum_of_squares(new_params))
        finite = jnp.all(jnp.stack(list(term_finite.values()))) & grad_finite & update_finite
        # A cond returns one branch's buffers; a where would read and write every parameter
        # and optimiser slot once more (two passes over VGG-16's 138 M parameters).
        kept_params, kept_opt_state = jax.lax.cond(
            finite,
            lambda new, old: new,
            lambda new, old: old,
            (new_params, new_opt_state),
            (state.params, state.opt_state),
        )
        new_state = TrainState(
            step=state.step + 1,
            params=kept_params,
            opt_state=kept_opt_state,
            rng=jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state.rng))[0]),
            data_position=state.data_position + 1,
        )
        metrics = dict(terms)
        metrics["grad_norm"] = jnp.sqrt(grad_squares)
        metrics["finite"] = finite
        metrics["finite_terms"] = term_finite
        metrics["finite_grad"] = grad_finite
        metrics["finite_update"] = update_finite
        return new_state, metrics

    return step


class NonFiniteError(FloatingPointError):
    """A loss term, gradient or update became NaN/inf; the parameters were not changed."""


def check_finite_metrics(metrics: Mapping[str, Any], step: int) -> None:
    """Raise :class:`NonFiniteError` naming ``step`` and the offending term when not finite."""
    metrics = jax.device_get(metrics)
    if bool(np.all(metrics["finite"])):
        return
    bad = [name for name, ok in metrics["finite_terms"].items() if not np.all(ok)]
    if bad:
        values = {name: float(np.ravel(metrics[name])[0]) for name in bad}
        what = f"loss term(s) {bad} = {values}"
    elif not np.all(metrics["finite_grad"]):
        what = f"the gradient (global norm {float(np.ravel(metrics['grad_norm'])[0])})"
    else:
        what = "the updated parameters (optimiser step overflowed)"
    raise NonFiniteError(
        f"non-finite {what} at step {step}; the parameters were NOT updated "
        f"(they are those after step {step - 1}); lower the learning rate, "
        f"check the data, or resume from the last checkpoint"
    )
