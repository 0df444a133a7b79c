"""Shared test fixtures."""

import jax
import pytest


@pytest.fixture(scope="module")
def float64():
    """Enables float64 for one test module and restores the setting after it.

    Gradient checks against finite differences need float64; other modules (the
    renderer, the training loop) assume JAX's float32 default, so the switch must
    not leak out of the module that asks for it.
    """
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
