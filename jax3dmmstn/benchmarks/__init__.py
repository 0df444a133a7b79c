"""Speed benchmarks: ``jax3dmmstn benchmark NAME [ARGS...]``.

Each benchmark is a module here with a ``main(argv)``; ``jax3dmmstn benchmark NAME --help``
gives its options. ``sampler`` compares with PyTorch and needs the optional ``torch`` extra
(``pip install 'jax3dmmstn[torch]'``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = {
    "all": "every figure below in one table (and JSON), torch ratios where torch is installed",
    "chain": "the STN's parameter-free chain + losses, forward + d/dtheta, JAX vs torch (port)",
    "sampler": "bilinear sampler forward + backward, JAX vs torch grid_sample (needs torch)",
    "train_step": "one training step of both localisers: images/s, FLOPs, memory, vs torch",
    "fit": "landmark fitting: Levenberg-Marquardt vs the original demo's descent",
    "data_pipeline": "renderer, batching and real-data loading throughput",
    "build_bfm": "building the grid model from a BFM-sized synthetic input",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in BENCHMARKS:
        module = importlib.import_module(f"{__name__}.{argv[0]}")
        status = module.main(argv[1:])
        return status if isinstance(status, int) else 0
    parser = argparse.ArgumentParser(
        prog="jax3dmmstn benchmark",
        description="Run one speed benchmark; 'jax3dmmstn benchmark NAME --help' for its options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="benchmarks:\n"
        + "\n".join(f"  {name:14s} {text}" for name, text in BENCHMARKS.items()),
    )
    parser.add_argument("name", choices=list(BENCHMARKS), metavar="NAME", help="the benchmark")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its options")
    parser.parse_args(argv)  # exits: --help, or a name that is not a benchmark
    return 2
