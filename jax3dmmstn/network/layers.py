"""Convolution layers of the localisers, formulated for XLA's CPU backend.

Same parameters (names, shapes, initialisation) and the same function as ``flax.linen.Conv``;
what differs is how the backward pass is computed (``benchmarks/train_step.py`` times it):

* ``bias_add``: the bias gradient (a sum of the output gradient over batch and pixels) is a
  matrix-vector product with a vector of ones. XLA's CPU reduction of VGG-16's first map
  (8 x 224 x 224 x 64) takes 46 ms, the product 6 ms.
* ``WholeMapConv``: MatConvNet's fully connected layer (a VALID convolution whose kernel
  covers the whole map) as one matrix product: VGG-16's fc6 (7 x 7 x 512 -> 4096), B = 8,
  forward + backward, 670 ms as a convolution, 287 ms as a product (torch 546 ms).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = Any


@jax.custom_vjp
def bias_add(y: Array, bias: Array) -> Array:
    """``y [..., C] + bias [C]``."""
    return y + bias


def _bias_add_fwd(y, bias):
    return y + bias, bias


def _bias_add_bwd(bias, g):
    # The sum over all leading axes as ones @ g [N, C]: a product, not a reduction. HIGHEST:
    # a sum must not round its terms (accelerators' default f32 products may use TF32 / bf16).
    rows = g.reshape(-1, g.shape[-1])
    ones = jnp.ones((1, rows.shape[0]), rows.dtype)
    d_bias = jnp.matmul(ones, rows, precision=jax.lax.Precision.HIGHEST)[0].astype(bias.dtype)
    return g, d_bias


bias_add.defvjp(_bias_add_fwd, _bias_add_bwd)


class Conv(nn.Module):
    """``nn.Conv(features, kernel_size, padding=...)`` on [B, H, W, C] (stride 1, HWIO kernel,
    params 'kernel' and 'bias'), with the bias gradient of :func:`bias_add`."""

    features: int
    kernel_size: Sequence[int]
    padding: Any = "SAME"
    dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param(
            "kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        y = jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(1, 1),
            padding=self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return bias_add(y, bias)


class WholeMapConv(nn.Module):
    """MatConvNet's fully connected layer: a VALID convolution whose kernel covers the whole
    input map, ``[B, h, w, C] -> [B, 1, 1, features]`` with an HWIO kernel ``[h, w, C, features]``
    (the parameters of ``nn.Conv(features, (h, w), padding="VALID")``, same names, shapes and
    initialisation), computed as one matrix product.
    """

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        batch, height, width, channels = x.shape
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (height, width, channels, self.features)
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        # [h, w, C] flattens in the same (row-major) order for the image and the kernel.
        y = bias_add(x.reshape(batch, -1) @ kernel.reshape(-1, self.features), bias)
        return y.reshape(batch, 1, 1, self.features)
