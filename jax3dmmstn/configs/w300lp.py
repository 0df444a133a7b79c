"""300W-LP for training and AFLW2000-3D for evaluation, read from the raw folders users
download (300W_LP.zip and AFLW2000-3D.zip, unzipped; no TensorFlow Datasets needed).

68 iBUG landmarks ("ibug68" set of the morphable model) from the labels' fitted 3DMM
(300W-LP ``landmarks/<subset>/<name>_pts.mat`` ``pts_3d``, AFLW2000-3D ``pt3d_68``); faces
cropped square around their landmarks (25% margin) and resized to 224 x 224, with random
shift/zoom jitter for training. Both flipped (``_Flip``) and unflipped 300W-LP images are
used. AFLW2000-3D is held out: evaluate on it, never tune on it.

    jax3dmmstn train --config w300lp --config.data.root=/data/300W_LP \\
        --config.data.eval_root=/data/AFLW2000 \\
        --config.model.vggface_path=/data/vgg-face.mat \\
        --config.morphable_model.path=/data/model.mat --workdir=/runs/w300lp
"""

import ml_collections

from jax3dmmstn.configs import load_config


def get_config() -> ml_collections.ConfigDict:
    # tfds_300wlp's recipe (model, optimiser, crops and augmentation) on the raw folders.
    config = load_config("tfds_300wlp")
    config.name = "w300lp"
    config.model.landmarks = "ibug68"
    data = config.data
    for key in ("tfds_name", "split", "eval_tfds_name", "eval_split", "data_dir"):
        del data[key]
    data.kind = "300w_lp"
    data.root = ""  # the 300W_LP folder (AFW/ HELEN/ IBUG/ LFPW/, _Flip, landmarks/)
    data.eval_root = ""  # the AFLW2000-3D folder (imageNNNNN.jpg + .mat)
    data.subsets = ("AFW", "HELEN", "IBUG", "LFPW")
    data.flipped = True
    return config
