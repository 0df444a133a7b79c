"""Localisers: the CNNs that read a face image, image ``[B, h, w, C]`` -> features ``[B, F]``.

``SmallCNN`` trains in minutes on a CPU; ``VGG16`` is the original's VGG-Face network,
laid out like MatConvNet's simplenn so that :mod:`jax3dmmstn.network.vggface` maps the
published weights onto it 1:1.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jax3dmmstn.network.layers import Conv, WholeMapConv
from jax3dmmstn.network.pooling import max_pool_2x2

Array = Any


# --------------------------------------------------------------------------------------------
# Localisers: image [B, h, w, C] -> features [B, F].
# --------------------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """A small, fast localiser for CPU training: 4 conv stages then one hidden dense layer.

    Each stage is two 3x3 convolutions (group norm, ReLU) and a 2x2 max pool; the last map is
    flattened, not pooled, so that where things are in the image survives into the features
    (theta is mostly positions). Input [B, h, w, C] in [0, 255], mapped to [-1, 1] first so
    that the theta head's tiny initial weights give a theta close to its bias (as with the
    original's mean-subtracted VGG input); output [B, hidden].

    ``space_to_depth`` = k > 1 folds each k x k block of pixels into channels first ([B, h, w, C]
    -> [B, h/k, w/k, k*k*C]): the network then reads a k times larger image per side (e.g. 128 x
    128 instead of 64 x 64) for about a tenth more work, and the pixel-level detail that a resize
    averages away (landmark positions, shading) reaches the first convolution.
    """

    widths: Sequence[int] = (16, 32, 64, 128)
    space_to_depth: int = 1
    convs_per_stage: int = 2
    hidden: int = 256
    norm: str = "group"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.norm not in ("group", "none"):
            raise ValueError(f"SmallCNN norm must be 'group' or 'none', got {self.norm!r}")
        x = (x.astype(jnp.float32) / 127.5 - 1.0).astype(self.dtype)
        input_size = tuple(x.shape[1:3])
        if self.space_to_depth > 1:
            x = space_to_depth(x, self.space_to_depth)
        smallest = 2 ** len(self.widths)  # each stage halves the map
        if min(x.shape[1:3]) < smallest:
            raise ValueError(
                f"SmallCNN: the {x.shape[1]} x {x.shape[2]} map (input {input_size} "
                f"after space_to_depth={self.space_to_depth}) is too small for "
                f"{len(self.widths)} pooling stages; it needs at least {smallest} x {smallest}"
            )
        for stage, width in enumerate(self.widths):
            for i in range(self.convs_per_stage):
                name = f"conv{stage + 1}_{i + 1}"
                x = Conv(
                    width,
                    (3, 3),
                    padding="SAME",
                    dtype=self.dtype,
                    kernel_init=nn.initializers.he_normal(),
                    name=name,
                )(x)
                if self.norm == "group":
                    # Group norm, not batch norm: per example, so 1 or N devices (and any
                    # batch split) compute the same function, and there is no state to sync.
                    x = nn.GroupNorm(
                        num_groups=min(8, width), dtype=self.dtype, name=f"{name}_norm"
                    )(x)
                x = nn.relu(x)
            x = max_pool_2x2(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(
            self.hidden, dtype=self.dtype, kernel_init=nn.initializers.he_normal(), name="fc"
        )(x)
        return nn.relu(x)


def space_to_depth(x: Array, block: int) -> Array:
    """[B, h, w, C] -> [B, h / block, w / block, block * block * C], each block's pixels as channels."""
    batch, height, width, channels = x.shape
    if height % block or width % block:
        raise ValueError(f"space_to_depth: {height} x {width} is not divisible by {block}")
    x = x.reshape(batch, height // block, block, width // block, block, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(
        batch, height // block, width // block, block * block * channels
    )


# VGG-Face / VGG-16 convolution blocks: (layer names, output channels) per block.
VGG16_BLOCKS = (
    (("conv1_1", "conv1_2"), 64),
    (("conv2_1", "conv2_2"), 128),
    (("conv3_1", "conv3_2", "conv3_3"), 256),
    (("conv4_1", "conv4_2", "conv4_3"), 512),
    (("conv5_1", "conv5_2", "conv5_3"), 512),
)


class VGG16(nn.Module):
    """The VGG-Face network without fc8 and softmax, laid out like MatConvNet's simplenn.

    conv3x3 (pad 1) + ReLU blocks with 2x2/2 max pools, fc6 as a VALID convolution whose kernel
    covers the whole last map (7 x 7 at 224 input), fc7 as a 1 x 1 convolution, both + ReLU.
    Layer names equal MatConvNet's so that :mod:`jax3dmmstn.network.vggface` maps them 1:1.
    ``width_divisor`` shrinks every width (for tests); the default is the real network.
    Input [B, 224, 224, 3] minus ``input_mean``; output [B, 4096].
    """

    width_divisor: int = 1
    fc_width: int = 4096
    input_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = (x - jnp.asarray(self.input_mean, x.dtype)).astype(self.dtype)
        for names, width in VGG16_BLOCKS:
            for name in names:
                x = Conv(
                    max(1, width // self.width_divisor),
                    (3, 3),
                    padding=((1, 1), (1, 1)),
                    dtype=self.dtype,
                    name=name,
                )(x)
                x = nn.relu(x)
            x = max_pool_2x2(x)
        x = WholeMapConv(self.fc_width, dtype=self.dtype, name="fc6")(x)
        x = nn.relu(x)
        x = WholeMapConv(self.fc_width, dtype=self.dtype, name="fc7")(x)
        x = nn.relu(x)
        return x.reshape(x.shape[0], -1)


def make_localiser(name: str, dtype: Any = jnp.float32, **kwargs) -> nn.Module:
    """'small_cnn' -> :class:`SmallCNN`, 'vgg16' -> :class:`VGG16` (kwargs go to the module)."""
    name = name.lower()
    if name in ("small_cnn", "smallcnn", "small"):
        return SmallCNN(dtype=dtype, **kwargs)
    if name in ("vgg16", "vgg", "vgg_face", "vggface"):
        return VGG16(dtype=dtype, **kwargs)
    raise ValueError(f"unknown localiser {name!r}; expected 'small_cnn' or 'vgg16'")
