"""XLA compiler options for the jitted steps, per computation (no process-wide XLA_FLAGS).

On CPU, XLA (jaxlib 0.10) hands every convolution to YNNPACK by default. YNNPACK's forward
convolution is as fast as XLA's own, but the weight gradient (a convolution whose "kernel"
is the whole activation map) is 2 to 4 times slower. Turning the YNNPACK fusions off for a
computation (``xla_cpu_experimental_ynn_fusion_type`` = '') keeps XLA's convolutions for all
three passes. Measured on the 2-core CPU, B = 8, forward + backward of one 3 x 3 convolution
(with ReLU): 112 x 112, 128 -> 128 channels 593 ms with YNNPACK, 287 ms without, torch 309 ms;
the nine distinct convolution shapes of VGG-16, one of each, 3639 ms -> 1734 ms (torch
1815 ms). Values are unchanged up to float rounding (the same sums in another order).

``compiler_options()`` returns these options for the default backend, or ``{}`` where they
do not apply (GPU, TPU) or where the installed jaxlib does not know the option.
"""

from __future__ import annotations

import jax

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def _known(options: dict) -> bool:
    """Whether this jaxlib accepts ``options`` (an unknown option fails the compile)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=options).lower(1.0).compile()
    except Exception:  # pylint: disable=broad-except  # XlaRuntimeError / ValueError by version
        return False
    return True


def compiler_options(backend: str | None = None) -> dict:
    """Options for ``jax.jit(..., compiler_options=...)`` on ``backend`` (default: jax's)."""
    backend = backend or jax.default_backend()
    if backend != "cpu" or not _known(CPU_OPTIONS):
        return {}
    return dict(CPU_OPTIONS)
