"""The original recipe (anilbas/3DMMasSTN, dagnn_3dmmasstn.m + cnn_train_dag defaults).

VGG-Face localiser (import vgg-face.mat with --config.model.vggface_path), 224 x 224 inputs,
the original's imdb.mat (--config.data.path), SGD with momentum 0.9 and weight decay 5e-4
(none on the theta bias), learning rate 1e-10 on losses *summed* over the batch, loss weights
0.8998 (landmarks) / 0.1 (prior) / 1e-4 (siamese) / 1e-4 (symmetry), batch 32 doubled by
mirrors (64 images), s = 0.99 ** logs, theta head initialised with Xavier x 0.001 weights and
t = (112, 112), learning-rate multipliers 4 (weights) and 8 (bias).

    jax3dmmstn train --config matconvnet --config.data.path=/data/imdb.mat \\
        --config.model.vggface_path=/data/vgg-face.mat \\
        --config.morphable_model.path=/data/model.mat --workdir=/runs/matconvnet

Known differences from MatConvNet (by design): the siamese loss normalises by the global count
of visible texels also when the batch is split over devices; the visibility normals are a true
scatter-add (see REFERENCE.md). The original's numEpochs = 1000; set total_steps to taste.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = "matconvnet"
    config.seed = 0
    config.morphable_model = _morphable_model()
    config.data = _data()
    config.model = _model()
    config.loss = _loss()
    config.optim = _optim()
    config.batch_size = 32  # before mirroring: the network sees 64 images per step
    config.total_steps = 100_000
    config.max_train_seconds = 0.0
    config.parallel = "auto"
    config.log_every = 50
    config.eval_every = 2000
    config.checkpoint_every = 2000
    config.keep_checkpoints = 3
    config.snapshots = True
    config.progress_bar = True
    config.tensorboard = "auto"  # TensorBoard logs when tensorboardX is installed
    config.final_eval = True
    return config


def _morphable_model() -> ml_collections.ConfigDict:
    """The original's model.mat (112 x 112 grid, 5 identity + 5 expression components)."""
    return ml_collections.ConfigDict(
        dict(
            kind="matconvnet",
            path="model.mat",
            landmarks_path="",
            aflw21="original",  # or "aflw_grounded", "ibug68_mapped" (load_matconvnet_model)
            resolution=112,
            n_identity=5,
            n_expression=5,
            seed=0,
        )
    )


def _data() -> ml_collections.ConfigDict:
    """The original's imdb.mat, each image doubled by its mirror."""
    return ml_collections.ConfigDict(
        dict(
            kind="imdb",
            path="imdb.mat",
            image_size=(224, 224),
            mirror=True,
            seed=0,
            eval_size=0,
            eval_batch_size=32,
            prefetch=2,
            on_error="fail",
        )
    )


def _model() -> ml_collections.ConfigDict:
    """VGG-Face (import vgg-face.mat) at 224 x 224; the original's theta head."""
    return ml_collections.ConfigDict(
        dict(
            localiser="vgg16",
            localiser_input_size=None,
            dtype="float32",
            scale_parametrisation="matconvnet",
            landmarks="aflw21",
            with_texture=True,
            vggface_path="",
            init_head_from_data=False,
            # The original feeds imdb images as stored (no mean subtraction in getBatch).
            localiser_kwargs=ml_collections.ConfigDict(dict(input_mean=(0.0, 0.0, 0.0))),
        )
    )


def _loss() -> ml_collections.ConfigDict:
    """The original's summed losses and weights."""
    return ml_collections.ConfigDict(
        dict(
            reduction="sum",
            landmark_distance="squared",
            siamese_mirror_pairs=False,
            weights=ml_collections.ConfigDict(
                dict(landmark=0.8998, prior=0.1, siamese=1e-4, symmetry=1e-4)
            ),
        )
    )


def _optim() -> ml_collections.ConfigDict:
    """cnn_train_dag's SGD: momentum 0.9, weight decay 5e-4, learning rate 1e-10."""
    return ml_collections.ConfigDict(
        dict(
            optimizer="sgd",
            learning_rate=1e-10,
            schedule="constant",
            momentum=0.9,
            nesterov=False,
            weight_decay=5e-4,
            head_lr_multipliers=(4.0, 8.0),
            head_bias_weight_decay=False,
            grad_clip_norm=0.0,
        )
    )
