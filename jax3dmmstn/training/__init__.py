"""Training: optimiser, loss composition, jit / pmap steps, NaN guard, Orbax checkpoints.

The pieces are small and separately testable; :func:`train_and_evaluate` (the loop behind
``train.py``) puts them together.

Devices
-------
One device: ``jax.jit``. Several (local or across processes): ``jax.pmap`` over the local
devices, each device holding ``global_batch / device_count`` examples, gradients averaged with
``lax.pmean``. Every loss term is computed on a shard as a *sum* over its examples and then
normalised so that the mean over shards equals the loss of the whole global batch:
``mean`` reduction divides by the shard's batch size, ``sum`` reduction (the original's)
multiplies the shard sum by the number of shards. Hence 1 and N devices with the same global
batch give the same parameters (up to float summation order).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import time
from typing import Any, Callable, Iterable, Mapping

import flax
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax3dmmstn.core import losses as loss_lib
from jax3dmmstn.core import theta as theta_lib

logger = logging.getLogger(__name__)

Array = Any
PyTree = Any

HEAD_MODULE = "theta_head"
LOSS_TERMS = ("landmark", "prior", "siamese", "symmetry")


# --------------------------------------------------------------------------------------------
# Optimiser.
# --------------------------------------------------------------------------------------------
def _path_names(path) -> tuple[str, ...]:
    names = []
    for entry in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(entry, attribute):
                names.append(str(getattr(entry, attribute)))
                break
    return tuple(names)


def param_labels(params: PyTree) -> PyTree:
    """Label each leaf 'head_kernel', 'head_bias' (the theta head) or 'default'."""

    def label(path, _):
        names = _path_names(path)
        if HEAD_MODULE in names:
            return "head_bias" if names[-1] == "bias" else "head_kernel"
        return "default"

    return jax.tree_util.tree_map_with_path(label, params)


def weight_decay_mask(params: PyTree, head_bias_decay: bool = False) -> PyTree:
    """True where weight decay applies: everywhere except the theta head's bias (as original)."""
    labels = param_labels(params)
    return jax.tree.map(lambda lab: head_bias_decay or lab != "head_bias", labels)


def make_learning_rate(config, total_steps: int) -> optax.Schedule:
    """Constant, or linear warm-up then cosine decay over ``total_steps`` to lr * final."""
    lr = float(config.learning_rate)
    kind = config.get("schedule", "constant")
    if kind == "constant":
        return optax.constant_schedule(lr)
    if kind == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=lr * config.get("warmup_init_fraction", 0.0),
            peak_value=lr,
            warmup_steps=int(config.get("warmup_steps", 0)),
            decay_steps=max(int(total_steps), int(config.get("warmup_steps", 0)) + 1),
            end_value=lr * float(config.get("final_lr_fraction", 0.01)),
        )
    raise ValueError(f"unknown schedule {kind!r}; expected 'constant' or 'warmup_cosine'")


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
    """The optimiser of ``config.optim`` with the theta head's learning-rate multipliers.

    sgd (MatConvNet's cnn_train_dag): g <- g + wd * w (mask: not the head bias);
      m <- momentum * m + g; w <- w - lr * mult * m. The multiplier scales the whole step,
      weight-decay term included, as MatConvNet's ``thisLR = lr * param.learningRate`` does.
    adam: Adam, then decoupled weight decay (AdamW; same mask), then -lr * mult.
    Multipliers: ``head_lr_multipliers = (weights, bias)``, (4, 8) in the original; applied
    with ``optax.multi_transform`` on the labels of :func:`param_labels`.
    """
    kind = config.optimizer
    wd = float(config.get("weight_decay", 0.0))
    mask = functools.partial(
        weight_decay_mask, head_bias_decay=bool(config.get("head_bias_weight_decay", False))
    )
    parts = []
    if config.get("grad_clip_norm", 0.0):
        parts.append(optax.clip_by_global_norm(float(config.grad_clip_norm)))
    if kind == "sgd":
        if wd:
            parts.append(optax.add_decayed_weights(wd, mask=mask))
        if config.get("momentum", 0.0):
            parts.append(
                optax.trace(
                    decay=float(config.momentum), nesterov=bool(config.get("nesterov", False))
                )
            )
    elif kind == "adam":
        parts.append(
            optax.scale_by_adam(
                b1=float(config.get("b1", 0.9)),
                b2=float(config.get("b2", 0.999)),
                eps=float(config.get("eps", 1e-8)),
            )
        )
        if wd:
            parts.append(optax.add_decayed_weights(wd, mask=mask))
    else:
        raise ValueError(f"unknown optimizer {kind!r}; expected 'sgd' or 'adam'")
    parts.append(optax.scale_by_learning_rate(make_learning_rate(config, total_steps)))
    weight_mult, bias_mult = (float(v) for v in config.get("head_lr_multipliers", (1.0, 1.0)))
    parts.append(
        optax.multi_transform(
            {
                "head_kernel": optax.scale(weight_mult),
                "head_bias": optax.scale(bias_mult),
                "default": optax.identity(),
            },
            param_labels,
        )
    )
    return optax.chain(*parts)


# --------------------------------------------------------------------------------------------
# Train state.
# --------------------------------------------------------------------------------------------
@flax.struct.dataclass
class TrainState:
    """Everything that changes during training and is checkpointed.

    step: int32 scalar; params: the 'params' collection; opt_state: optax state;
    rng: uint32 [2] key data (threefry), split once per step; data_position: int64-like
    scalar, the index of the next global batch to read.
    """

    step: Array
    params: PyTree
    opt_state: PyTree
    rng: Array
    data_position: Array

    def to_tree(self) -> dict:
        return dict(
            step=self.step,
            params=self.params,
            opt_state=self.opt_state,
            rng=self.rng,
            data_position=self.data_position,
        )

    @classmethod
    def from_tree(cls, tree: Mapping) -> "TrainState":
        return cls(**{k: tree[k] for k in ("step", "params", "opt_state", "rng", "data_position")})


def create_train_state(params: PyTree, tx: optax.GradientTransformation, seed: int) -> TrainState:
    rng = jax.random.key_data(jax.random.PRNGKey(seed))
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=rng,
        data_position=jnp.zeros((), jnp.int32),
    )


# --------------------------------------------------------------------------------------------
# Loss composition.
# --------------------------------------------------------------------------------------------
def _global_sum(x: Array, axis_name: str | None) -> Array:
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def _share(local_sum: Array, local_count: Array | None, axis_name: str | None) -> Array:
    """This shard's share of ``sum over all shards / count over all shards``.

    Scaled by the number of shards so that ``pmean`` over shards gives the global ratio (and
    pmean of its gradient the gradient of the global loss). The count is global, not per
    shard, so 1 or N devices give the same loss and gradients. ``local_count=None``: no
    normalisation (the global sum).
    """
    n_shards = 1 if axis_name is None else jax.lax.psum(1, axis_name)
    if local_count is None:
        return local_sum * n_shards
    count = jax.lax.stop_gradient(_global_sum(local_count, axis_name))
    return local_sum * n_shards / jnp.maximum(count, 1.0)


def compute_losses(
    outputs: Mapping[str, Array],
    batch: Mapping[str, Array],
    loss_config,
    axis_name: str | None = None,
) -> dict[str, Array]:
    """Loss terms of one shard and their weighted total (see :func:`_share` for sharding).

    outputs: the STN's dict; batch: 'landmarks' [b, L, 2] (image frame), 'landmark_visible'
    [b, L]. loss_config: ``weights`` (landmark, prior, siamese, symmetry), ``reduction``:
      'sum' (the original): landmark = sum over the global batch of squared pixel errors of
        visible landmarks; prior = sum of alpha**2;
      'mean': landmark = that sum / number of visible landmarks (a mean squared distance in
        pixels**2); prior = sum / global batch size.
    The texture terms are the original's in both cases: sum of squared differences over the
    global batch divided by the global number of visible texture values (the sums come from
    :mod:`jax3dmmstn.core.losses`, the counts are combined across devices here).
    ``siamese_mirror_pairs`` flips the second member of a pair before comparing (right for an
    image and its mirror; the original does not flip).
    Returns {'landmark', 'prior', 'siamese', 'symmetry', 'total'}; zero-weight texture terms
    are not computed.
    """
    reduction = loss_config.reduction
    if reduction not in ("sum", "mean"):
        raise ValueError(f"loss reduction must be 'mean' or 'sum', got {reduction!r}")
    weights = loss_config.weights
    visible = batch["landmark_visible"].astype(jnp.float32)
    alpha = outputs["alpha"]
    one = jnp.ones((), jnp.float32)
    terms = {}
    landmark_sum = loss_lib.landmark_loss(
        outputs["landmarks"], batch["landmarks"], visible, reduction="sum"
    )
    prior_sum = loss_lib.prior_loss(alpha, reduction="sum")
    if reduction == "mean":
        terms["landmark"] = _share(landmark_sum, jnp.sum(visible), axis_name)
        terms["prior"] = _share(prior_sum, one * alpha.shape[0], axis_name)
    else:
        terms["landmark"] = _share(landmark_sum, None, axis_name)
        terms["prior"] = _share(prior_sum, None, axis_name)
    have_texture = "texture" in outputs and "mask" in outputs
    for name in ("siamese", "symmetry"):
        if not (float(weights.get(name, 0.0)) and have_texture):
            terms[name] = jnp.zeros((), jnp.float32)
            continue
        texture, mask = outputs["texture"], outputs["mask"]
        count = jnp.sum(jnp.broadcast_to(jax.lax.stop_gradient(mask), texture.shape))
        if name == "siamese":
            total = loss_lib.siamese_loss(
                texture,
                mask,
                mirror_pairs=bool(loss_config.get("siamese_mirror_pairs", False)),
                reduction="sum",
            )
        else:
            total = loss_lib.symmetry_loss(texture, mask, reduction="sum")
        terms[name] = _share(total, count, axis_name)
    terms["total"] = sum(float(weights.get(name, 0.0)) * terms[name] for name in LOSS_TERMS)
    return terms


# --------------------------------------------------------------------------------------------
# Train step, NaN guard.
# --------------------------------------------------------------------------------------------
def _all_finite(tree: PyTree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(
    apply_fn: Callable, tx: optax.GradientTransformation, loss_config, axis_name: str | None = None
) -> Callable:
    """(state, batch) -> (new state, metrics). Pure; wrap in jit or pmap(axis_name=...).

    NaN guard: when any loss term or any gradient is not finite, the returned state keeps the
    old params and optimiser state (only step/data position advance) and metrics['finite'] is
    False; :func:`check_finite_metrics` then raises on the host naming the step and the term.
    """

    def loss_fn(params, batch):
        outputs = apply_fn({"params": params}, batch["image"])
        terms = compute_losses(outputs, batch, loss_config, axis_name=axis_name)
        return terms["total"], terms

    def step(state: TrainState, batch: Mapping[str, Array]):
        (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            terms = jax.lax.pmean(terms, axis_name)
        updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        term_finite = {name: jnp.isfinite(value) for name, value in terms.items()}
        grad_finite = _all_finite(grads)
        update_finite = _all_finite(new_params)
        finite = jnp.all(jnp.stack(list(term_finite.values()))) & grad_finite & update_finite
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = TrainState(
            step=state.step + 1,
            params=keep(new_params, state.params),
            opt_state=keep(new_opt_state, state.opt_state),
            rng=jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state.rng))[0]),
            data_position=state.data_position + 1,
        )
        metrics = dict(terms)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["finite"] = finite
        metrics["finite_terms"] = term_finite
        metrics["finite_grad"] = grad_finite
        metrics["finite_update"] = update_finite
        return new_state, metrics

    return step


class NonFiniteError(FloatingPointError):
    """A loss term, gradient or update became NaN/inf; the parameters were not changed."""


def check_finite_metrics(metrics: Mapping[str, Any], step: int) -> None:
    """Raise :class:`NonFiniteError` naming ``step`` and the offending term when not finite."""
    metrics = jax.device_get(metrics)
    if bool(np.all(metrics["finite"])):
        return
    bad = [name for name, ok in metrics["finite_terms"].items() if not np.all(ok)]
    if bad:
        values = {name: float(np.ravel(metrics[name])[0]) for name in bad}
        what = f"loss term(s) {bad} = {values}"
    elif not np.all(metrics["finite_grad"]):
        what = f"the gradient (global norm {float(np.ravel(metrics['grad_norm'])[0])})"
    else:
        what = "the updated parameters (optimiser step overflowed)"
    raise NonFiniteError(
        f"non-finite {what} at step {step}; the parameters were NOT updated "
        f"(they are those after step {step - 1}); lower the learning rate, "
        f"check the data, or resume from the last checkpoint"
    )


# --------------------------------------------------------------------------------------------
# pmap replication (batches are sharded by jax3dmmstn.data.batching.BatchIterator).
# --------------------------------------------------------------------------------------------
def replicate(tree: PyTree) -> PyTree:
    """Host copies stacked along a new leading axis, one per local device (pmap shards it)."""
    n = jax.local_device_count()
    return jax.tree.map(
        lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), jax.device_get(tree)
    )


def unreplicate(tree: PyTree) -> PyTree:
    """The first local replica as host arrays (no cross-device or cross-process gather)."""

    def first(x):
        if isinstance(x, jax.Array):
            return np.asarray(x.addressable_shards[0].data)[0]
        return np.asarray(x)[0]

    return jax.tree.map(first, tree)


# --------------------------------------------------------------------------------------------
# Checkpoints.
# --------------------------------------------------------------------------------------------
class Checkpointer:
    """Orbax CheckpointManager under ``workdir/checkpoints``: state pytree + config JSON.

    Saves are atomic (Orbax writes a temporary directory and renames it when complete, so a
    run killed mid-save leaves the previous checkpoints intact); ``max_to_keep`` keeps the last
    k. The state pytree holds params, opt_state, step, rng and data_position.
    """

    def __init__(self, workdir: str, max_to_keep: int = 3):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_names=("state", "config"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: TrainState, config_json: dict, force: bool = False) -> bool:
        ocp = self._ocp
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return False
        saved = self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(jax.device_get(state.to_tree())),
                config=ocp.args.JsonSave(config_json),
            ),
            force=force,
        )
        return bool(saved)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore(
        self, template: TrainState, step: int | None = None
    ) -> tuple[TrainState, dict] | None:
        """Restore into ``template``'s structure; None when there is no checkpoint."""
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        target = jax.device_get(template.to_tree())
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), config=ocp.args.JsonRestore()
            ),
        )
        return TrainState.from_tree(restored["state"]), dict(restored["config"] or {})

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


# --------------------------------------------------------------------------------------------
# Building blocks of a run.
# --------------------------------------------------------------------------------------------
def build_morphable_model(config):
    """config.morphable_model: kind 'synthetic' | 'npz' | 'matconvnet' (+ path, ...)."""
    from jax3dmmstn.facemodel import morphable_model as mm_lib

    mm_config = config.morphable_model
    kind = mm_config.kind
    if kind == "synthetic":
        from jax3dmmstn.facemodel.synthetic import synthetic_face_model

        return synthetic_face_model(
            resolution=int(mm_config.resolution),
            n_identity=int(mm_config.n_identity),
            n_expression=int(mm_config.n_expression),
            seed=int(mm_config.get("seed", 0)),
        )
    if kind == "npz":
        return mm_lib.MorphableModel.load(mm_config.path)
    if kind == "matconvnet":
        return mm_lib.load_matconvnet_model(mm_config.path, mm_config.get("landmarks_path") or None)
    raise ValueError(
        f"unknown morphable_model.kind {kind!r}; expected 'synthetic', 'npz' or 'matconvnet'"
    )


def build_model(config, morphable_model):
    from jax3dmmstn.network import model as model_lib

    m = config.model
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(m.get("dtype", "float32"))
    if dtype is None:
        raise ValueError(f"model.dtype must be 'float32' or 'bfloat16', got {m.dtype!r}")
    localiser_kwargs = dict(m.get("localiser_kwargs", {}) or {})
    input_size = m.get("localiser_input_size", None)
    return model_lib.build_stn(
        morphable_model,
        localiser=m.localiser,
        image_size=tuple(config.data.image_size),
        localiser_input_size=None if not input_size else tuple(input_size),
        landmarks=m.get("landmarks", "aflw21"),
        scale_parametrisation=m.get("scale_parametrisation", "matconvnet"),
        dtype=dtype,
        with_texture=bool(m.get("with_texture", True)),
        localiser_kwargs=localiser_kwargs,
    )


def init_params(model, config, rng) -> PyTree:
    """Initialise the STN parameters (and import VGG-Face weights when configured)."""
    height, width = config.data.image_size
    dummy = jnp.zeros((1, height, width, 3), jnp.float32)
    params = jax.jit(model.init)(rng, dummy)["params"]
    params = jax.device_get(params)
    path = config.model.get("vggface_path", "")
    if path:
        from jax3dmmstn.network import vggface as vggface_import

        params = vggface_import.load_into_params(params, vggface_import.read_vggface(path))
    return params


def fit_scale_translation(model_points: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """Least-squares s, t with s * model_points + t ~ target; [L, 2] each -> (s, t [2])."""
    model_points = np.asarray(model_points, np.float64)
    target = np.asarray(target, np.float64)
    centred_model = model_points - model_points.mean(axis=0)
    centred_target = target - target.mean(axis=0)
    scale = float(np.sum(centred_model * centred_target) / np.sum(centred_model**2))
    if not scale > 0:
        raise ValueError(
            "the mean training landmarks do not fit the model's landmarks with a "
            "positive scale (mirrored or wrong landmark set?)"
        )
    return scale, target.mean(axis=0) - scale * model_points.mean(axis=0)


def init_head_from_landmarks(
    params: PyTree,
    morphable_model,
    landmark_index: np.ndarray,
    landmarks: np.ndarray,
    visible: np.ndarray,
    parametrisation: str = "matconvnet",
) -> PyTree:
    """Data-dependent init of the theta head's t and logs biases.

    The original starts at t = image centre, s = 1 (logs = 0), right for 224 x 224 crops of
    BFM-sized faces in mm. For other data, this sets t and s to the similarity that maps the
    frontal mean face's landmarks onto the mean training landmarks [B, L, 2] (visible ones,
    image frame), so that training starts with faces of the right size in the right place.
    """
    from jax3dmmstn.core import geometry

    visible = np.asarray(visible, np.float64)
    counts = visible.sum(axis=0)
    usable = counts > 0.5 * visible.shape[0]
    if usable.sum() < 2:
        raise ValueError("fewer than 2 landmarks are visible in most training images")
    weighted = (np.asarray(landmarks, np.float64) * visible[..., None]).sum(axis=0)
    mean_target = weighted / np.maximum(counts, 1)[:, None]
    model_xy = np.asarray(morphable_model.mean, np.float64)[np.asarray(landmark_index), :2]
    scale, translation = fit_scale_translation(model_xy[usable], mean_target[usable])
    logs = float(geometry.scale_to_log_scale(np.float32(scale), parametrisation))
    head = params["theta_head"]["dense"]
    bias = np.array(head["bias"], np.float32)
    bias[theta_lib.TRANSLATION] = translation
    bias[theta_lib.LOG_SCALE] = logs
    new = dict(params)
    new["theta_head"] = {"dense": dict(head, bias=bias)}
    return new


def config_to_dict(config) -> dict:
    return (
        json.loads(config.to_json_best_effort())
        if hasattr(config, "to_json_best_effort")
        else dict(config)
    )


class MetricsWriter:
    """Appends JSON rows to ``workdir/metrics.jsonl`` (process 0 only)."""

    def __init__(self, path: str, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run re-does those steps)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        from jax3dmmstn.evaluation import read_metrics

        rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        os.replace(tmp, self.path)

    def write(self, row: Mapping) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps({k: _plain(v) for k, v in row.items()}) + "\n")


def _plain(value):
    value = np.asarray(value)
    return value.item() if value.size == 1 else value.tolist()


def _scalars(metrics: Mapping) -> dict:
    """Loss terms and grad norm of a (maybe replicated) metrics dict, as floats."""
    out = {}
    for name in LOSS_TERMS + ("total",):
        out[f"loss/{name}"] = float(np.ravel(metrics[name])[0])
    out["grad_norm"] = float(np.ravel(metrics["grad_norm"])[0])
    return out


def _eval_batches_from_dataset(dataset, count: int, batch_size: int, transform=None) -> list:
    from jax3dmmstn.data import batching

    count = min(int(count), len(dataset)) if count else len(dataset)
    if count <= 0:
        raise ValueError("the held-out dataset is empty")
    batches = []
    for start in range(0, count, batch_size):
        examples = [dataset[i] for i in range(start, min(count, start + batch_size))]
        if transform is not None:
            examples = [transform(example) for example in examples]
        batches.append(batching.collate(examples))
    return batches


def build_data(config, morphable_model) -> tuple[Any, list]:
    """(training source for BatchIterator, list of held-out batches) from ``config.data``.

    kind 'synthetic': rendered faces of ``morphable_model`` (held-out set from eval_seed);
    'imdb': the original's imdb.mat (set 1 train, set 2 held out);
    'tfds': tensorflow-datasets the300w_lp (train) and aflw2k3d (held out), cropped to
    image_size around the landmarks.
    """
    d = config.data
    kind = d.kind
    eval_batch = int(d.get("eval_batch_size", 64))
    size = tuple(int(v) for v in d.image_size)
    if kind == "synthetic":
        return _synthetic_data(config, morphable_model)
    from jax3dmmstn.data import loaders, preprocess

    if kind == "imdb":
        if not d.path:
            raise ValueError("config.data.path must point at imdb.mat for data.kind='imdb'")
        train = loaders.load_imdb_mat(d.path, "train", on_error=d.on_error, expected_size=size)
        held_out = loaders.load_imdb_mat(d.path, "val", on_error=d.on_error, expected_size=size)
        return train, _eval_batches_from_dataset(held_out, d.eval_size, eval_batch)
    if kind == "tfds":
        train = loaders.load_tfds(
            d.tfds_name or "the300w_lp",
            split=d.split,
            data_dir=d.data_dir or None,
            on_error=d.on_error,
        )
        held_out = loaders.load_tfds(
            d.get("eval_tfds_name", "") or "aflw2k3d",
            split=d.eval_split,
            data_dir=d.data_dir or None,
            on_error=d.on_error,
        )
        margin = float(d.get("crop_margin", 0.25))
        augment = functools.partial(
            preprocess.random_augment,
            out_size=size[0],
            margin=margin,
            max_shift=float(d.get("max_shift", 0.05)),
            zoom_range=tuple(d.get("zoom_range", (0.9, 1.1))),
        )
        crop = functools.partial(preprocess.crop_around_landmarks, out_size=size[0], margin=margin)
        from jax3dmmstn.data import batching

        source = batching.DatasetSource(train, augment, seed=int(config.seed))
        return source, _eval_batches_from_dataset(held_out, d.eval_size, eval_batch, crop)
    raise ValueError(f"unknown data.kind {kind!r}; expected 'synthetic', 'imdb' or 'tfds'")


class InMemorySource:
    """A finite BatchSource over arrays held in memory (``arrays[key][i]`` is example i)."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        sizes = {len(v) for v in arrays.values()}
        if len(sizes) != 1:
            lengths = {k: len(v) for k, v in arrays.items()}
            raise ValueError(f"arrays of different lengths: {lengths}")
        self.arrays = dict(arrays)
        self.num_examples = sizes.pop()

    def load_batch(self, indices: np.ndarray, positions: np.ndarray | None = None) -> dict:
        del positions
        return {k: v[np.asarray(indices)] for k, v in self.arrays.items()}


def synthetic_render_config(config):
    """The data's :class:`~jax3dmmstn.data.render.RenderConfig` from ``config.data.render``."""
    from jax3dmmstn.data.render import RenderConfig

    size = tuple(int(v) for v in config.data.image_size)
    if size[0] != size[1]:
        raise ValueError(f"synthetic images are square; got data.image_size={size}")
    options = dict(config.data.get("render", {}) or {})
    for key in ("face_height",):
        if key in options:
            options[key] = tuple(options[key])
    return RenderConfig(
        image_size=size[0], landmark_set=config.model.get("landmarks", "aflw21"), **options
    )


def _synthetic_data(config, morphable_model):
    """Training source and held-out batches of rendered faces (jax3dmmstn.data.synthetic).

    ``data.train_size`` > 0: a finite training set of that many faces, rendered once up front
    and kept in memory when ``data.cache_train`` (cheap epochs; the renderer does not compete
    with training for the CPU); 0: an endless stream rendered on the fly.
    """
    from jax3dmmstn.data import render, synthetic

    d = config.data
    render_config = synthetic_render_config(config)
    renderer = render.FaceRenderer(morphable_model, render_config)
    train_size = int(d.get("train_size", 0) or 0) or None
    seed = int(d.get("seed", config.seed))
    train = synthetic.SyntheticFaces(
        morphable_model,
        render_config,
        seed=seed,
        stream="train",
        num_examples=train_size,
        renderer=renderer,
    )
    keep = ("image", "landmarks", "landmark_visible", "theta")
    if train_size and d.get("cache_train", True):
        chunk = 256
        parts = [
            train.load_batch(np.arange(i, min(train_size, i + chunk)))
            for i in range(0, train_size, chunk)
        ]
        train = InMemorySource({k: np.concatenate([p[k] for p in parts]) for k in keep})
    held_out = synthetic.heldout_set(
        morphable_model, int(d.eval_size), render_config, seed=seed, renderer=renderer
    )
    eval_batch = int(d.get("eval_batch_size", 64))
    eval_batches = [
        {k: held_out[k][i : i + eval_batch] for k in keep}
        for i in range(0, int(d.eval_size), eval_batch)
    ]
    return train, eval_batches


# --------------------------------------------------------------------------------------------
# Evaluation on the held-out set.
# --------------------------------------------------------------------------------------------
def make_eval_fn(model) -> Callable:
    keys = ("landmarks", "R", "vertices3d", "theta", "texture", "mask", "masked_texture")

    @jax.jit
    def predict(params, images):
        out = model.apply({"params": params}, images)
        return {k: out[k] for k in keys if k in out}

    return predict


def evaluate(
    predict: Callable,
    params: PyTree,
    batches: Iterable[Mapping],
    morphable_model,
) -> tuple[dict, dict]:
    """Held-out metrics (means) and the first batch's predictions (for snapshots).

    NME always; pose error (degrees) and 3D shape error (model units) when batches carry the
    ground-truth 'theta' [b, 6+D] (synthetic data).
    """
    from jax3dmmstn import evaluation
    from jax3dmmstn.core import geometry

    per_image: dict[str, list] = {"nme": []}
    first = None
    for batch in batches:
        out = jax.device_get(predict(params, jnp.asarray(batch["image"], jnp.float32)))
        if first is None:
            first = dict(
                out,
                image=np.asarray(batch["image"]),
                target=batch["landmarks"],
                visible=batch["landmark_visible"],
            )
        per_image["nme"].append(
            evaluation.landmark_nme(out["landmarks"], batch["landmarks"], batch["landmark_visible"])
        )
        if "theta" in batch:
            theta = np.asarray(batch["theta"], np.float32)
            r, _, _, alpha = theta_lib.split(theta)
            true_rotation = np.asarray(geometry.axis_angle_to_matrix(r))
            errors = evaluation.pose_errors(out["R"], true_rotation)
            per_image.setdefault("pose_mae_deg", []).append(errors["mae"])
            per_image.setdefault("pose_geodesic_deg", []).append(errors["geodesic"])
            true_shape = np.asarray(
                geometry.morphable_shape(morphable_model.mean, morphable_model.basis, alpha)
            )
            per_image.setdefault("shape_error", []).append(
                evaluation.shape_error(out["vertices3d"], true_shape)
            )
            # The same error of the mean shape (alpha = 0): what "no shape estimate" scores.
            mean_shape = np.broadcast_to(morphable_model.mean, true_shape.shape)
            per_image.setdefault("shape_error_mean_shape", []).append(
                evaluation.shape_error(mean_shape, true_shape)
            )
    if first is None:
        raise ValueError("the held-out set is empty")
    summary = evaluation.summarise({k: np.concatenate(v) for k, v in per_image.items()})
    return summary, first


def save_snapshots(workdir: str, step: int, first: Mapping, tag: str | None = None) -> list[str]:
    from jax3dmmstn import evaluation

    tag = tag or f"step_{step:07d}"
    directory = os.path.join(workdir, "snapshots")
    paths = [
        evaluation.save_landmark_snapshot(
            os.path.join(directory, f"{tag}_landmarks.png"),
            first["image"],
            first["landmarks"],
            first["target"],
            first["visible"],
        )
    ]
    if "texture" in first:
        paths.append(
            evaluation.save_texture_snapshot(
                os.path.join(directory, f"{tag}_textures.png"),
                first["texture"],
                first["mask"],
                first["masked_texture"],
            )
        )
    return paths


# --------------------------------------------------------------------------------------------
# The loop.
# --------------------------------------------------------------------------------------------
def choose_parallelism(config) -> str:
    mode = config.get("parallel", "auto")
    if mode == "auto":
        return "pmap" if jax.device_count() > 1 else "jit"
    if mode not in ("jit", "pmap"):
        raise ValueError(f"parallel must be 'auto', 'jit' or 'pmap', got {mode!r}")
    if mode == "jit" and jax.process_count() > 1:
        raise ValueError("parallel='jit' runs on one device; use 'pmap' with several processes")
    return mode


def train_and_evaluate(config, workdir: str, data=None, return_state: bool = False):
    """Train (resuming from ``workdir`` when it holds a checkpoint) and evaluate.

    ``data``: optional (train BatchSource or dataset, list of held-out batches); default built
    from ``config.data`` by :func:`jax3dmmstn.data.build_datasets` style helpers.
    Returns the final summary dict (also written to ``workdir/final_metrics.json``), and the
    final host :class:`TrainState` too when ``return_state``.
    """
    from jax3dmmstn.data import batching

    workdir = os.path.abspath(workdir)
    is_chief = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    start_time = time.time()
    morphable_model = build_morphable_model(config)
    model = build_model(config, morphable_model)
    tx = make_optimizer(config.optim, int(config.total_steps))  # bad options fail before data
    mode = choose_parallelism(config)
    if data is None:
        data = build_data(config, morphable_model)
    train_source, eval_batches = data
    n_local = jax.local_device_count() if mode == "pmap" else 1

    rng = jax.random.PRNGKey(config.seed)
    params = init_params(model, config, rng)
    if config.model.get("init_head_from_data", False):
        landmark_set = config.model.get("landmarks", "aflw21")
        source = (
            train_source
            if hasattr(train_source, "load_batch")
            else batching.DatasetSource(train_source)
        )
        indices = np.arange(min(int(source.num_examples or 256), 512))
        sample = source.load_batch(indices, indices)
        params = init_head_from_landmarks(
            params,
            morphable_model,
            morphable_model.landmarks[landmark_set],
            sample["landmarks"],
            sample["landmark_visible"],
            config.model.get("scale_parametrisation", "matconvnet"),
        )
    state = create_train_state(params, tx, config.seed)

    checkpointer = Checkpointer(workdir, max_to_keep=int(config.get("keep_checkpoints", 3)))
    metrics_writer = MetricsWriter(os.path.join(workdir, "metrics.jsonl"), enabled=is_chief)
    restored = checkpointer.restore(state)
    if restored is not None:
        state, saved_config = restored
        _warn_config_changes(saved_config, config_to_dict(config))
        logger.info("resumed from %s at step %d", checkpointer.directory, int(state.step))
    start_step = int(state.step)
    # Rows past the restored step (all of them when a run was killed before its first
    # checkpoint) belong to work that is about to be redone.
    metrics_writer.truncate_after(start_step)
    total_steps = int(config.total_steps)
    config_json = config_to_dict(config)

    step_fn = make_train_step(
        model.apply, tx, config.loss, axis_name="batch" if mode == "pmap" else None
    )
    if mode == "pmap":
        compiled_step = jax.pmap(step_fn, axis_name="batch", donate_argnums=(0,))
        device_state = replicate(state)
    else:
        compiled_step = jax.jit(step_fn, donate_argnums=(0,))
        device_state = jax.device_put(state)
    host_state = lambda: (
        unreplicate(device_state) if mode == "pmap" else jax.device_get(device_state)
    )

    mirror = bool(config.data.get("mirror", False))
    iterator = batching.BatchIterator(
        train_source,
        int(config.batch_size),
        seed=int(config.seed),
        start_step=int(jax.device_get(state.data_position)),
        mirror=mirror,
        flip_permutation=morphable_model.landmark_flip.get(config.model.get("landmarks", "aflw21")),
        split_devices=mode == "pmap",
        num_local_devices=n_local,
        prefetch=int(config.data.get("prefetch", 2)),
    )
    predict = make_eval_fn(model)
    images_per_step = int(config.batch_size) * (2 if mirror else 1)
    summary: dict = {}
    eval_every = int(config.get("eval_every", 0) or 0)
    log_every = max(1, int(config.get("log_every", 50)))
    checkpoint_every = int(config.get("checkpoint_every", 0) or 0)
    kill_at = int(config.get("debug_kill_at_step", -1))
    max_seconds = float(config.get("max_train_seconds", 0) or 0)
    progress = _progress_bar(
        total_steps, start_step, enabled=is_chief and bool(config.get("progress_bar", True))
    )
    window_start, window_steps = time.time(), 0
    last_eval_step = None
    try:
        for step in range(start_step + 1, total_steps + 1):
            batch = next(iterator)
            batch = {
                k: v for k, v in batch.items() if k in ("image", "landmarks", "landmark_visible")
            }
            device_state, metrics = compiled_step(device_state, batch)
            check_finite_metrics(metrics, step)
            window_steps += 1
            progress.update(1)
            if step % log_every == 0 or step == total_steps:
                elapsed = time.time() - window_start
                row = dict(
                    split="train",
                    step=step,
                    **_scalars(metrics),
                    images_per_s=images_per_step * window_steps / max(elapsed, 1e-9),
                    lr=float(make_learning_rate(config.optim, total_steps)(step - 1)),
                    wall_s=time.time() - start_time,
                )
                metrics_writer.write(row)
                progress.set_postfix(
                    {
                        "loss": f"{row['loss/total']:.4g}",
                        "lmk": f"{row['loss/landmark']:.4g}",
                        "img/s": f"{row['images_per_s']:.0f}",
                    }
                )
                window_start, window_steps = time.time(), 0
            if eval_every and (step % eval_every == 0 or step == total_steps):
                summary = _run_eval(
                    predict,
                    host_state().params,
                    eval_batches,
                    morphable_model,
                    config,
                    workdir,
                    step,
                    metrics_writer,
                    start_time,
                    is_chief,
                )
                last_eval_step = step
                progress.write(
                    f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in summary.items())
                )
            if checkpoint_every and step % checkpoint_every == 0 and step != total_steps:
                checkpointer.save(host_state(), config_json)
            if max_seconds and time.time() - start_time > max_seconds and step < total_steps:
                logger.warning(
                    "stopping at step %d: max_train_seconds=%s reached", step, max_seconds
                )
                progress.write(f"time budget reached: stopping at step {step} of {total_steps}")
                total_steps = step
                break
            if step == kill_at:  # simulated preemption, for the resume test
                checkpointer.wait()
                os.kill(os.getpid(), signal.SIGKILL)
        final_state = host_state()
        checkpointer.save(final_state, config_json, force=True)
        checkpointer.wait()
        if config.get("final_eval", True) and (last_eval_step != total_steps or not summary):
            summary = _run_eval(
                predict,
                final_state.params,
                eval_batches,
                morphable_model,
                config,
                workdir,
                total_steps,
                metrics_writer,
                start_time,
                is_chief,
            )
    finally:
        progress.close()
        iterator.close()
        checkpointer.close()
    summary = dict(
        summary, step=total_steps, wall_s=time.time() - start_time, resumed_from=start_step
    )
    if is_chief:
        from jax3dmmstn import evaluation

        if config.get("snapshots", True):
            evaluation.save_curves(
                os.path.join(workdir, "training_curve.png"),
                evaluation.read_metrics(metrics_writer.path),
                title=config.get("name", ""),
            )
        with open(os.path.join(workdir, "final_metrics.json"), "w") as handle:
            json.dump(summary, handle, indent=2)
    return (summary, final_state) if return_state else summary


def _run_eval(
    predict,
    params,
    eval_batches,
    morphable_model,
    config,
    workdir,
    step,
    metrics_writer,
    start_time,
    is_chief,
) -> dict:
    summary, first = evaluate(predict, params, eval_batches, morphable_model)
    metrics_writer.write(dict(split="eval", step=step, wall_s=time.time() - start_time, **summary))
    if is_chief and config.get("snapshots", True):
        save_snapshots(workdir, step, first, tag="latest")
    return summary


def _warn_config_changes(saved: Mapping, current: Mapping, prefix: str = "") -> None:
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            _warn_config_changes(a, b, prefix + key + ".")
        elif a != b and not (
            isinstance(a, list) and isinstance(b, (list, tuple)) and list(a) == list(b)
        ):
            logger.warning("resuming with %s%s = %r (checkpoint had %r)", prefix, key, b, a)


class _NoProgress:
    def update(self, n):
        pass

    def set_postfix(self, *a, **k):
        pass

    def write(self, text):
        logger.info(text)

    def close(self):
        pass


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=2.0)
