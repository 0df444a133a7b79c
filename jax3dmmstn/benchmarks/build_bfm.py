"""Times build_bfm_model on a synthetic BFM-sized input (no licensed data needed).

    jax3dmmstn benchmark build_bfm [--resolution 112] [--components 199]

The input has the BFM's sizes: 53490 vertices (a Delaunay mesh of the unit UV square, about
106.9k triangles; the BFM has 106466), 199 identity components, and 29 3DDFA-style expression
components on 53215 of the vertices (the other 275 form a "mouth" hole that the Laplace-Beltrami
solve fills). It writes the .mat files with scipy and times the whole build from files, and
the array-level steps separately. The issue's target: under 30 s for 112 x 112 on this machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.io
from scipy.spatial import Delaunay

from jax3dmmstn.facemodel import bfm

N_BFM = 53490
N_TDDFA = 53215


def synthetic_bfm_inputs(n_components: int = 199, n_expression: int = 29, seed: int = 0) -> dict:
    """BFM-sized arrays in the layouts of 01_MorphableModel.mat / BFM_UV.mat / 3DDFA files."""
    rng = np.random.default_rng(seed)
    side = np.linspace(0.0, 1.0, 200)
    boundary = np.concatenate(
        [
            np.stack([side, np.zeros_like(side)], 1),
            np.stack([side, np.ones_like(side)], 1),
            np.stack([np.zeros(198), side[1:-1]], 1),
            np.stack([np.ones(198), side[1:-1]], 1),
        ]
    )
    interior = rng.uniform(0.001, 0.999, size=(N_BFM - len(boundary), 2))
    uv = np.concatenate([boundary, interior])
    triangles = Delaunay(uv).simplices.astype(np.int64)
    u, v = uv[:, 0], uv[:, 1]
    # A face-sized dome in micrometres, like the BFM's units.
    vertices = np.stack(
        [
            (u - 0.5) * 150e3,
            (v - 0.5) * 180e3,
            60e3 * np.exp(-((u - 0.5) ** 2 + (v - 0.5) ** 2) / 0.1),
        ],
        1,
    )
    shape_pc = rng.normal(size=(3 * N_BFM, n_components)).astype(np.float32) / np.sqrt(3 * N_BFM)
    shape_ev = np.sort(rng.uniform(1e3, 1e5, n_components))[::-1].astype(np.float32)
    mouth = np.argsort((u - 0.5) ** 2 + (v - 0.4) ** 2)[: N_BFM - N_TDDFA]
    tddfa_map = np.setdiff1d(np.arange(N_BFM), mouth).astype(np.uint16)
    w_exp = rng.normal(size=(3 * N_TDDFA, n_expression)).astype(np.float32) * 1e3
    tex_mu = rng.uniform(0, 255, size=3 * N_BFM).astype(np.float32)
    return {
        "shapeMU": vertices.reshape(-1, 1).astype(np.float32),
        "shapePC": shape_pc,
        "shapeEV": shape_ev.reshape(-1, 1),
        "tl": (triangles + 1).astype(np.int32),
        "texMU": tex_mu.reshape(-1, 1),
        "UV": uv,
        "w_exp": w_exp,
        "map_tddfa_to_basel": tddfa_map.reshape(1, -1),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="jax3dmmstn benchmark build_bfm", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--resolution", type=int, default=112)
    parser.add_argument("--components", type=int, default=199)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    data = synthetic_bfm_inputs(args.components)
    print(
        f"synthetic input: {N_BFM} vertices, {len(data['tl'])} triangles, "
        f"{args.components} components ({time.perf_counter() - t0:.1f} s to make)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scipy.io.savemat(
            tmp / "01_MorphableModel.mat",
            {k: data[k] for k in ("shapeMU", "shapePC", "shapeEV", "tl", "texMU")},
        )
        scipy.io.savemat(tmp / "BFM_UV.mat", {"UV": data["UV"]})
        scipy.io.savemat(tmp / "Model_Expression.mat", {"w_exp": data["w_exp"]})
        scipy.io.savemat(
            tmp / "map_tddfa_to_basel.mat", {"map_tddfa_to_basel": data["map_tddfa_to_basel"]}
        )

        vertices = data["shapeMU"].reshape(-1, 3).astype(np.float64)
        triangles = data["tl"].astype(np.int64) - 1
        t = time.perf_counter()
        bfm.cotangent_laplacian(vertices, triangles)
        t_lap = time.perf_counter() - t
        t = time.perf_counter()
        bfm.extrapolate_displacements(
            vertices,
            triangles,
            data["map_tddfa_to_basel"].ravel(),
            data["w_exp"][:, :5].reshape(N_TDDFA, 15),
        )
        t_ext = time.perf_counter() - t
        t = time.perf_counter()
        bfm.grid_resampling_matrix(data["UV"], triangles, args.resolution)
        t_loc = time.perf_counter() - t

        t = time.perf_counter()
        model = bfm.build_bfm_model(
            tmp / "01_MorphableModel.mat",
            tmp / "BFM_UV.mat",
            tmp / "Model_Expression.mat",
            tmp / "map_tddfa_to_basel.mat",
            resolution=args.resolution,
            n_identity=args.components,
            n_expression=5,
        )
        t_total = time.perf_counter() - t
    print(f"  Laplace-Beltrami matrix:                {t_lap:6.2f} s")
    print(f"  expression extrapolation (5 comps):     {t_ext:6.2f} s")
    print(f"  UV point location ({args.resolution}x{args.resolution}):          {t_loc:6.2f} s")
    print(
        f"build_bfm_model from .mat files, {model.n_components} components, "
        f"{args.resolution}x{args.resolution}: {t_total:.1f} s (target < 30 s)"
    )


if __name__ == "__main__":
    main()
