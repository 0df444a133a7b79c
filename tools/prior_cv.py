"""Choosing the shape prior's weight on AFLW *training* crops only (never AFLW2000-3D).

    .venv/bin/python tools/prior_cv.py --root AFLW_GT --model model.mat [--faces 3000]

The 68-point NME of a network trained on the 21 AFLW points rests on what the points do not
constrain: the jaw line follows from the inner face through the morphable model and its prior.
This measures that on training faces: fit the visible *inner* AFLW points (brows, eyes, nose,
mouth) with the landmark fitter, identity included (``fitting.fit_model_landmarks``), and score
the held-out *contour* points, both ear lobes and the chin, by the NME of the visible points'
box; and, as a second check, four random visible points held out. Printed per fitter prior
weight (on summed squared pixel errors) with the equivalent training-loss weight
(``loss.weights.prior`` with mean-reduced losses: the fitter's weight divided by the mean
number of visible points, since the training loss divides the landmark sum by that count and
the prior sum by the batch size). That is for the squared distance; the aflw config's loss on
the distance itself, at its landmark weight of 8, pulls as hard as the squared one at the
4-pixel mean error, so the same prior weight holds there.
"""

from __future__ import annotations

import argparse

import numpy as np

from jax3dmmstn import fitting
from jax3dmmstn.core import geometry
from jax3dmmstn.data import aflw_crops
from jax3dmmstn.evaluation import metrics
from jax3dmmstn.facemodel import morphable_model

# AFLW-21 order (facemodel.landmarks68.IBUG68_TO_AFLW21): 12 left ear lobe, 16 right ear lobe,
# 20 chin, the points on the jaw line.
CONTOUR = (12, 16, 20)


def held_out_nme(model, landmarks, fit_visible, held_out, box, prior_weight: float) -> np.ndarray:
    """Per-face NME of the held-out points after fitting the others.

    landmarks [B, 21, 2]; fit_visible, held_out [B, 21] in {0, 1}; box [B]. Returns [B].
    """
    result = fitting.fit_model_landmarks(
        model, landmarks, fit_visible, "aflw21", prior_weight=prior_weight
    )
    projected = geometry.project_theta(result.theta, model.mean, model.basis).points2d
    points = np.asarray(projected)[:, model.landmarks["aflw21"]]
    return metrics.mean_visible_error(points, landmarks, held_out) / box


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="folder of AFLW_GT_crop/ and AFLW_GT_*.npy")
    parser.add_argument("--model", required=True, help="the original's model.mat")
    parser.add_argument("--faces", type=int, default=3000)
    parser.add_argument("--prior-weights", default="0.3,1,1.6,3,10,30,100,1000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--aflw21",
        default="ibug68_mapped",
        choices=morphable_model.AFLW21_SETS,
        help="model.mat's 21 AFLW vertices (the aflw config's: ibug68_mapped)",
    )
    args = parser.parse_args()
    model = morphable_model.load_matconvnet_model(args.model, aflw21=args.aflw21)
    train = aflw_crops.load_aflw_crops(args.root, "train", on_error="skip")
    rng = np.random.default_rng(args.seed)
    rows = rng.choice(len(train), min(args.faces, len(train)), replace=False)
    examples = [train[int(i)] for i in rows]
    landmarks = np.stack([e["landmarks"] for e in examples]).astype(np.float64)
    visible = np.stack([e["landmark_visible"] for e in examples]).astype(np.float64)
    box = metrics.landmark_box_size(landmarks, visible > 0)

    contour = np.zeros(visible.shape[1])
    contour[list(CONTOUR)] = 1.0
    contour_held = visible * contour
    random_held = np.zeros_like(visible)
    for i, row in enumerate(visible):
        candidates = np.flatnonzero(row > 0)
        if len(candidates) >= 10:
            random_held[i, rng.choice(candidates, 4, replace=False)] = 1.0
    splits = {}
    for name, held in (("contour", contour_held), ("random 4", random_held)):
        keep = (held.sum(axis=1) > 0) & ((visible - held).sum(axis=1) >= 8)
        splits[name] = (keep, held)
    mean_visible = visible.sum(axis=1).mean()
    print(
        f"{len(examples)} training faces, {mean_visible:.1f} visible points on average; "
        + ", ".join(f"{name}: {keep.sum()} faces" for name, (keep, _) in splits.items())
    )
    print("fitter prior | loss.weights.prior | held-out NME (%): " + " | ".join(splits))
    for prior_weight in (float(w) for w in args.prior_weights.split(",")):
        nmes = []
        for keep, held in splits.values():
            nme = held_out_nme(
                model,
                landmarks[keep],
                (visible - held)[keep],
                held[keep],
                box[keep],
                prior_weight,
            )
            nmes.append(f"{100 * nme.mean():.2f}")
        print(f"{prior_weight:12g} | {prior_weight / mean_visible:18.3f} | " + " | ".join(nmes))


if __name__ == "__main__":
    main()
