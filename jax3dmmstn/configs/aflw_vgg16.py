"""The ``aflw`` recipe with the paper's localiser, for accelerators: VGG-16 on 224 x 224.

    jax3dmmstn train --config aflw_vgg16 --workdir W \\
        --config.data.root=<folder of AFLW_GT_crop/, AFLW_GT_crop.list, AFLW_GT_*.npy> \\
        --config.eval.aflw2000_root=<AFLW2000-3D folder> \\
        --config.morphable_model.path=<the original's model.mat> \\
        --config.model.vggface_path=<vgg-face.mat>   # optional: start from VGG-Face

Everything else (data, 21-point supervision, losses, the prior's weight, evaluation) is the
``aflw`` config's; the learning rate is the one the earlier VGG-16 variant of that config used.
Not measured here (no accelerator was at hand; on the 2-core CPU a VGG-16 step takes about
3 s at 8 images).
"""

import ml_collections

from jax3dmmstn.configs import load_config
from jax3dmmstn.network.vggface import VGG_FACE_INPUT_MEAN


def get_config() -> ml_collections.ConfigDict:
    config = load_config("aflw")
    config.name = "aflw_vgg16"
    config.model.localiser = "vgg16"
    config.model.localiser_input_size = (224, 224)
    # VGG-Face's average image, subtracted from the input as in the original.
    config.model.localiser_kwargs = ml_collections.ConfigDict(dict(input_mean=VGG_FACE_INPUT_MEAN))
    config.optim.learning_rate = 1e-3
    config.max_train_seconds = 0.0  # no CPU time budget
    return config
