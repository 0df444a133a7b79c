"""The original's imdb.mat (AFLW crops, 21 landmarks) with this project's training recipe.

Like the matconvnet config (VGG-Face localiser, mirrors, the original's model and landmarks)
but with the optimisation that converges on the synthetic data: losses averaged, Adam with
warm-up and cosine decay, siamese pairs compared after flipping the mirror's texture, and the
theta head's t / logs biases initialised from the mean training landmarks. bfloat16 localiser
compute is a flag away on accelerators (--config.model.dtype=bfloat16).

    jax3dmmstn train --config imdb --config.data.path=/data/imdb.mat \\
        --config.model.vggface_path=/data/vgg-face.mat \\
        --config.morphable_model.path=/data/model.mat --workdir=/runs/imdb
"""

import ml_collections

from jax3dmmstn.configs import load_config
from jax3dmmstn.network.vggface import VGG_FACE_INPUT_MEAN


def get_config() -> ml_collections.ConfigDict:
    config = load_config("matconvnet")
    config.name = "imdb"
    config.data.eval_size = 1024
    config.model.init_head_from_data = True
    config.model.localiser_kwargs.input_mean = VGG_FACE_INPUT_MEAN
    config.loss.reduction = "mean"
    config.loss.siamese_mirror_pairs = True
    config.loss.weights.landmark = 1.0
    config.optim = ml_collections.ConfigDict(
        dict(
            optimizer="adam",
            learning_rate=1e-4,
            schedule="warmup_cosine",
            warmup_steps=500,
            final_lr_fraction=0.01,
            weight_decay=1e-4,
            head_lr_multipliers=(4.0, 8.0),
            head_bias_weight_decay=False,
            grad_clip_norm=0.0,
            momentum=0.9,
        )
    )
    config.total_steps = 30_000
    return config
