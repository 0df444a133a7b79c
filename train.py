"""Train the 3DMM-STN: the same as ``jax3dmmstn train`` (see ``jax3dmmstn train --help``).

    python train.py                                   # the synthetic config, ./workdir
    python train.py --config matconvnet --config.data.path=/data/imdb.mat \
        --config.model.vggface_path=/data/vgg-face.mat --workdir /runs/original
    python train.py --config.total_steps=500 --config.optim.learning_rate=3e-4 --workdir ...
"""

import sys

from jax3dmmstn import cli

if __name__ == "__main__":
    sys.exit(cli.main(["train", *sys.argv[1:]]))
