"""The train state: everything that changes during training and is checkpointed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

Array = Any
PyTree = Any

_FIELDS = ("step", "params", "opt_state", "rng", "data_position")


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training and is checkpointed.

    step: int32 scalar; params: the 'params' collection; opt_state: optax state;
    rng: uint32 [2] key data (threefry), split once per step; data_position: int64-like
    scalar, the index of the next global batch to read.
    """

    step: Array
    params: PyTree
    opt_state: PyTree
    rng: Array
    data_position: Array

    def to_tree(self) -> dict:
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_tree(cls, tree: Mapping) -> TrainState:
        return cls(**{name: tree[name] for name in _FIELDS})


def create_train_state(params: PyTree, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Step 0: ``params``, a fresh optimiser state, the key of ``seed``, data position 0."""
    rng = jax.random.key_data(jax.random.PRNGKey(seed))
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=rng,
        data_position=jnp.zeros((), jnp.int32),
    )
