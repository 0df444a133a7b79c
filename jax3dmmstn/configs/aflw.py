"""The paper's real-face recipe on a CPU: AFLW with its 21 manual landmarks, no pose or 3D
label, scored on AFLW2000-3D.

    jax3dmmstn train --config aflw --workdir W \\
        --config.data.root=<folder of AFLW_GT_crop/, AFLW_GT_crop.list, AFLW_GT_*.npy> \\
        --config.eval.aflw2000_root=<AFLW2000-3D folder> \\
        --config.morphable_model.path=<the original's model.mat>

Data: 3DDFA's 120 x 120 crops of AFLW (``jax3dmmstn.data.aflw_crops``; XgTu/2DASL ships
them): the 19,080 faces that are not AFLW2000-3D images, less the last ``data.eval_size``
kept for validation (never the test set); shift/zoom jitter; each face and its mirror form
a siamese pair. Supervision: the 21 AFLW points where they are marked visible, the
morphable model's 'aflw21' vertices (the original's model.mat defines them; the built-in
synthetic model, used when ``morphable_model.path`` is empty, has its own).

Evaluation (every ``eval_every`` steps and at the end), on 3DDFA's crops of the 2,000
AFLW2000-3D images with their .mat labels (``jax3dmmstn.evaluation.aflw2000_stn``):
``aflw2000_pose_mae_deg`` (and ``_yaw/_pitch/_roll``; the 1,969 images within +-99
degrees), ``aflw2000_nme68`` (3DDFA's AFLW2000-3D protocol, from the model's 68 'ibug68'
vertices) and ``aflw2000_nme21`` (3DDFA's AFLW protocol on the visible points), both in %,
each also per yaw bin. The model is never tuned on these numbers.

Measured (README): 48.5 min of training on 2 CPU cores with the original's model.mat (all
15,500 steps); AFLW2000-3D, flip-tested: pose MAE 4.36 degrees (yaw 3.65, pitch 6.21, roll
3.22), NME-68 4.71 %, NME-21 4.45 %.

The recipe is the synthetic config's (small CNN on a 128 x 128 copy folded 2 x 2, 512 hidden
units, Adam at 2e-3, mean-reduced losses, head initialised from the data) with a landmark
loss on the distance instead of its square, a stronger shape prior (0.6: the jaw line is
left to the model), model.mat's 21 AFLW vertices taken from its 68 BFM points by 3DDFA's
mapping, flip testing, and a time budget of 60 minutes on 2 CPU cores. Every choice was made
on training data only: the prior by ``tools/prior_cv.py``, the localiser, the vertices, the
loss and the flip test by the validation crops' NME-21.
``aflw_vgg16`` is the accelerator variant.
"""

import ml_collections

from jax3dmmstn.configs import load_config


def get_config() -> ml_collections.ConfigDict:
    config = load_config("synthetic")
    config.name = "aflw"
    mm = config.morphable_model
    mm.kind = "auto"  # path '' -> the built-in synthetic model; *.mat -> MatConvNet model.mat
    mm.path = ""
    # model.mat's 21 AFLW vertices (load_matconvnet_model's aflw21; the built-in model has its
    # own): 3DDFA's 68 -> 21 mapping of the model's 68 BFM points, the convention the AFLW
    # protocol scores in. Chosen by the validation crops' NME-21 through the 68 points (flip-
    # tested): 5.87 %, against 6.03 % for the original's set and 6.21 % for the set grounded
    # on AFLW's annotations (tools/ground_aflw21.py).
    mm.aflw21 = "ibug68_mapped"
    config.data = ml_collections.ConfigDict(
        dict(
            kind="aflw",
            root="",
            image_size=(120, 120),
            mirror=True,
            seed=0,
            eval_size=512,  # validation faces taken from the end of the training split
            eval_batch_size=128,
            max_shift=0.05,
            zoom_range=(0.9, 1.1),
            on_error="skip",  # irregular labels (points far outside the crop) are reported
            prefetch=2,
        )
    )
    # flip_test: validation and AFLW2000-3D predictions averaged with the mirrored crops'
    # (evaluation.flip_test). Chosen on the validation crops: NME-21 5.70 -> 5.64 %.
    config.eval = ml_collections.ConfigDict(dict(aflw2000_root="", flip_test=True))
    config.model.landmarks = "aflw21"
    # The jaw line is not among the 21 points: it follows from the inner face through the model
    # and its prior. Chosen on training crops only (tools/prior_cv.py): fitting the inner points
    # predicts the held-out ear lobes and chin best at a fitter weight of about 10, i.e. 0.6
    # here (the landmark loss is divided by the ~16 visible points, the prior by the batch).
    config.loss.weights.prior = 0.6
    # The landmark loss is the distance itself (core.losses.landmark_loss), not its square:
    # what NME averages, and points the 10-component model cannot reach stop dominating the
    # gradient. Chosen on the validation crops: NME-21 through the 68 points 5.87 -> 5.46 %
    # (flip-tested; the squared-distance run of the same recipe against this one).
    config.loss.landmark_distance = "euclidean"
    # The prior above was chosen against the squared distance, whose pull on a point is 2 e
    # at an error of e pixels; the distance pulls with 1. At the mean error the squared-loss
    # run reached on the validation crops (4.0 px) the weight 2 x 4 keeps the same balance
    # between the landmarks and the prior and texture terms.
    config.loss.weights.landmark = 8.0
    # The steps that fit the budget below at this network's speed on 2 cores (158 images/s on
    # a slow day: the budget stopped a 17,500-step schedule at 15,983), with a margin, so that
    # the cosine schedule runs to its end (15,500 steps took 48.5 and 49.5 min in measured runs).
    config.total_steps = 15500
    config.max_train_seconds = 3300.0  # stop (and evaluate) after 55 minutes of training
    config.eval_every = 2500
    config.checkpoint_every = 2500
    return config
