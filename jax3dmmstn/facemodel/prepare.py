"""Command line: build the STN's grid model from the Basel Face Model (+ 3DDFA expressions).

    jax3dmmstn prepare-model --bfm 01_MorphableModel.mat --uv BFM_UV.mat \\
        [--expression Model_Expression.mat --tddfa-map map_tddfa_to_basel.mat] \\
        [--resolution 112] [--identity 5] [--expressions 5] [--landmarks21 Landmarks21_BFM.anl] \\
        --out model.npz

The licensed files come from their owners: 01_MorphableModel.mat from the Basel Face Model
(BFM09) site, Model_Expression.mat from 3DDFA's release; BFM_UV.mat and map_tddfa_to_basel.mat
are in the original 3DMMasSTN repository (util/). The output is a MorphableModel .npz.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from jax3dmmstn.facemodel.bfm import build_bfm_model


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jax3dmmstn prepare-model",
        description="Resample the BFM (+ 3DDFA expressions) to a res x res UV grid model (.npz).",
    )
    parser.add_argument(
        "--bfm",
        type=Path,
        required=True,
        help="01_MorphableModel.mat (shapeMU, shapePC, shapeEV, tl, texMU)",
    )
    parser.add_argument("--uv", type=Path, required=True, help="BFM_UV.mat (UV, 53490 x 2)")
    parser.add_argument(
        "--expression",
        type=Path,
        default=None,
        help="3DDFA Model_Expression.mat (w_exp); needs --tddfa-map",
    )
    parser.add_argument(
        "--tddfa-map",
        type=Path,
        default=None,
        help="map_tddfa_to_basel.mat (0-based BFM vertex of each 3DDFA vertex)",
    )
    parser.add_argument("--resolution", type=int, default=112, help="grid resolution (default 112)")
    parser.add_argument(
        "--identity",
        type=int,
        default=5,
        help="number of identity components, scaled by shapeEV (default 5)",
    )
    parser.add_argument(
        "--expressions",
        type=int,
        default=5,
        help="number of expression components (default 5; ignored without --expression)",
    )
    parser.add_argument(
        "--landmarks21",
        type=Path,
        default=None,
        help="21 AFLW landmarks as BFM vertices (.anl, 1-based); default: the "
        "original's 21 points of the 112 grid",
    )
    parser.add_argument(
        "--landmarks68",
        type=Path,
        default=None,
        help="68 iBUG landmarks as BFM vertices (.anl, 1-based)",
    )
    parser.add_argument("--no-albedo", action="store_true", help="do not resample texMU")
    parser.add_argument("--out", type=Path, required=True, help="output .npz")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if (args.expression is None) != (args.tddfa_map is None):
        _parser().error("--expression and --tddfa-map must be given together")
    landmarks = {}
    if args.landmarks21:
        landmarks["aflw21"] = args.landmarks21
    if args.landmarks68:
        landmarks["ibug68"] = args.landmarks68
    start = time.perf_counter()
    try:
        model = build_bfm_model(
            args.bfm,
            args.uv,
            args.expression,
            args.tddfa_map,
            resolution=args.resolution,
            n_identity=args.identity,
            n_expression=args.expressions,
            landmarks=landmarks or None,
            with_albedo=not args.no_albedo,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.out)
    print(
        f"wrote {args.out}: {model.n_vertices} vertices ({model.resolution} x {model.resolution}), "
        f"{model.n_identity} identity + {model.n_expression} expression components, "
        f"landmarks {sorted(model.landmarks)}, in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
