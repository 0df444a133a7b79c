"""300W-LP for training and AFLW2000-3D for evaluation, through tensorflow-datasets.

68 iBUG landmarks ("ibug68" set of the morphable model), faces cropped square around their
landmarks (25% margin) and resized to 224 x 224, with random shift/zoom jitter for training.
The datasets must be prepared beforehand under --config.data.data_dir (nothing is downloaded):
tfds.data_source reads them without TensorFlow. Evaluation is the 3DDFA protocol's NME
(landmark error / sqrt(w h) of the ground-truth landmark box) on AFLW2000-3D.

    jax3dmmstn train --config tfds_300wlp --config.data.data_dir=/data/tfds \\
        --config.model.vggface_path=/data/vgg-face.mat \\
        --config.morphable_model.path=/data/model.mat --workdir=/runs/300wlp
"""

import ml_collections

from jax3dmmstn.configs import load_config


def get_config() -> ml_collections.ConfigDict:
    config = load_config("imdb")
    config.name = "tfds_300wlp"
    config.model.landmarks = "ibug68"
    config.data = ml_collections.ConfigDict(
        dict(
            kind="tfds",
            tfds_name="the300w_lp",
            split="train",
            eval_tfds_name="aflw2k3d",
            eval_split="train",
            data_dir="",
            image_size=(224, 224),
            mirror=True,
            seed=0,
            eval_size=2000,
            eval_batch_size=32,
            crop_margin=0.25,
            max_shift=0.05,
            zoom_range=(0.9, 1.1),
            prefetch=4,
            on_error="skip",
        )
    )
    config.total_steps = 60_000
    return config
