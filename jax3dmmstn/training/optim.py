"""The optimiser: SGD with momentum (MatConvNet's) or Adam, weight decay, learning-rate schedule
and the theta head's learning-rate multipliers."""

from __future__ import annotations

import functools
from typing import Any

import jax
import optax

PyTree = Any

HEAD_MODULE = "theta_head"


def _path_names(path) -> tuple[str, ...]:
    names = []
    for entry in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(entry, attribute):
                names.append(str(getattr(entry, attribute)))
                break
    return tuple(names)


def param_labels(params: PyTree) -> PyTree:
    """Label each leaf 'head_kernel', 'head_bias' (the theta head) or 'default'."""

    def label(path, _):
        names = _path_names(path)
        if HEAD_MODULE in names:
            return "head_bias" if names[-1] == "bias" else "head_kernel"
        return "default"

    return jax.tree_util.tree_map_with_path(label, params)


def weight_decay_mask(params: PyTree, head_bias_decay: bool = False) -> PyTree:
    """True where weight decay applies: everywhere except the theta head's bias (as original)."""
    labels = param_labels(params)
    return jax.tree.map(lambda lab: head_bias_decay or lab != "head_bias", labels)


def make_learning_rate(config, total_steps: int) -> optax.Schedule:
    """Constant, or linear warm-up then cosine decay over ``total_steps`` to lr * final."""
    lr = float(config.learning_rate)
    kind = config.get("schedule", "constant")
    if kind == "constant":
        return optax.constant_schedule(lr)
    if kind == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=lr * config.get("warmup_init_fraction", 0.0),
            peak_value=lr,
            warmup_steps=int(config.get("warmup_steps", 0)),
            decay_steps=max(int(total_steps), int(config.get("warmup_steps", 0)) + 1),
            end_value=lr * float(config.get("final_lr_fraction", 0.01)),
        )
    raise ValueError(f"unknown schedule {kind!r}; expected 'constant' or 'warmup_cosine'")


def _direction(config, mask) -> list[optax.GradientTransformation]:
    """The optimiser's update direction (before the learning rate), weight decay included."""
    kind = config.optimizer
    wd = float(config.get("weight_decay", 0.0))
    parts = []
    if kind == "sgd":
        if wd:
            parts.append(optax.add_decayed_weights(wd, mask=mask))
        if config.get("momentum", 0.0):
            nesterov = bool(config.get("nesterov", False))
            parts.append(optax.trace(decay=float(config.momentum), nesterov=nesterov))
    elif kind == "adam":
        parts.append(
            optax.scale_by_adam(
                b1=float(config.get("b1", 0.9)),
                b2=float(config.get("b2", 0.999)),
                eps=float(config.get("eps", 1e-8)),
            )
        )
        if wd:
            parts.append(optax.add_decayed_weights(wd, mask=mask))
    else:
        raise ValueError(f"unknown optimizer {kind!r}; expected 'sgd' or 'adam'")
    return parts


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
    """The optimiser of ``config.optim`` with the theta head's learning-rate multipliers.

    sgd (MatConvNet's cnn_train_dag): g <- g + wd * w (mask: not the head bias);
      m <- momentum * m + g; w <- w - lr * mult * m. The multiplier scales the whole step,
      weight-decay term included, as MatConvNet's ``thisLR = lr * param.learningRate`` does.
    adam: Adam, then decoupled weight decay (AdamW; same mask), then -lr * mult.
    Multipliers: ``head_lr_multipliers = (weights, bias)``, (4, 8) in the original; applied
    with ``optax.multi_transform`` on the labels of :func:`param_labels`.
    """
    mask = functools.partial(
        weight_decay_mask, head_bias_decay=bool(config.get("head_bias_weight_decay", False))
    )
    parts = []
    if config.get("grad_clip_norm", 0.0):
        parts.append(optax.clip_by_global_norm(float(config.grad_clip_norm)))
    parts += _direction(config, mask)
    parts.append(optax.scale_by_learning_rate(make_learning_rate(config, total_steps)))
    weight_mult, bias_mult = (float(v) for v in config.get("head_lr_multipliers", (1.0, 1.0)))
    multipliers = {
        "head_kernel": optax.scale(weight_mult),
        "head_bias": optax.scale(bias_mult),
        "default": optax.identity(),
    }
    parts.append(optax.multi_transform(multipliers, param_labels))
    return optax.chain(*parts)
