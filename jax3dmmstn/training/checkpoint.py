"""Checkpoints: Orbax under ``workdir/checkpoints`` (state pytree + the run's config as JSON),
for resuming a run and for loading a trained model (``predict``, ``evaluate``)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import ml_collections
import orbax.checkpoint as ocp

from jax3dmmstn.training import builders
from jax3dmmstn.training.state import TrainState

logger = logging.getLogger(__name__)

PyTree = Any


def checkpoint_directory(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


class Checkpointer:
    """Orbax CheckpointManager under ``workdir/checkpoints``: state pytree + config JSON.

    Saves are atomic (Orbax writes a temporary directory and renames it when complete, so a
    run killed mid-save leaves the previous checkpoints intact); ``max_to_keep`` keeps the last
    k. The state pytree holds params, opt_state, step, rng and data_position.
    ``create=False`` opens an existing directory only (for reading a trained model).
    """

    def __init__(self, workdir: str, max_to_keep: int = 3, create: bool = True):
        self.directory = checkpoint_directory(workdir)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create),
            item_names=("state", "config"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: TrainState, config_json: dict, force: bool = False) -> bool:
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

    def restore_untyped(self, step: int) -> tuple[dict, dict]:
        """(state tree as saved, config JSON) of ``step``, without a template.

        The optimiser state comes back as nested dicts (its optax types need the config);
        params, step, rng and data_position are as saved.
        """
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(), config=ocp.args.JsonRestore()
            ),
        )
        return dict(restored["state"]), dict(restored["config"] or {})

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def config_to_dict(config) -> dict:
    """A ConfigDict as the plain JSON dict saved with each checkpoint."""
    return (
        json.loads(config.to_json_best_effort())
        if hasattr(config, "to_json_best_effort")
        else dict(config)
    )


def warn_config_changes(saved: Mapping, current: Mapping, prefix: str = "") -> None:
    """Log each field of the resumed run's config that differs from the checkpoint's."""
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            warn_config_changes(a, b, prefix + key + ".")
        elif a != b and not (
            isinstance(a, list) and isinstance(b, (list, tuple)) and list(a) == list(b)
        ):
            logger.warning("resuming with %s%s = %r (checkpoint had %r)", prefix, key, b, a)


class TrainedModel(NamedTuple):
    """A trained STN as its latest checkpoint holds it.

    config: the run's ConfigDict (as saved with the checkpoint); morphable_model and model:
    rebuilt from it by the training builders; params: the 'params' collection; step: the
    checkpoint's step.
    """

    config: ml_collections.ConfigDict
    morphable_model: Any
    model: Any
    params: PyTree
    step: int


def load_trained(workdir: str) -> TrainedModel:
    """The latest checkpoint of the training run in ``workdir``, ready to apply.

    Raises FileNotFoundError when ``workdir/checkpoints`` does not exist or holds no
    checkpoint, ValueError when the saved config does not rebuild a model (for instance a
    face model file that has moved).
    """
    directory = checkpoint_directory(workdir)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"{directory} does not exist: expected the workdir of a training run"
        )
    checkpointer = Checkpointer(workdir, create=False)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        state, config_json = checkpointer.restore_untyped(step)
    finally:
        checkpointer.close()
    config = ml_collections.ConfigDict(config_json)
    try:
        morphable_model = builders.build_morphable_model(config)
        model = builders.build_model(config, morphable_model)
    except (ValueError, OSError, KeyError, AttributeError) as error:
        raise ValueError(
            f"cannot rebuild the model of the checkpoint in {directory} (step {step}): {error}"
        ) from error
    return TrainedModel(config, morphable_model, model, state["params"], int(step))
