"""The training loop behind ``train.py``: build, resume, step, log, evaluate, checkpoint.

A run resumes from the latest checkpoint in its workdir; the data position, the RNG and the
optimiser state are part of the checkpoint, so a run killed and resumed ends with the same
parameters as one that was not interrupted; SIGTERM or Ctrl-C saves a checkpoint of the
step reached before the run stops (:mod:`jax3dmmstn.training.interrupt`). Outputs in the
workdir: checkpoints/, metrics.jsonl, tensorboard/ (with the ``[tensorboard]`` extra),
snapshots/latest_*.png and training_curve.png (both refreshed at every evaluation),
final_metrics.json.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax

from jax3dmmstn.data import batching
from jax3dmmstn.evaluation import aflw2000_stn, heldout, plots
from jax3dmmstn.training import builders, datasets, optim, parallel
from jax3dmmstn.training.checkpoint import Checkpointer, config_to_dict, warn_config_changes
from jax3dmmstn.training.interrupt import StopRequests, TrainingInterrupted
from jax3dmmstn.training.metrics import MetricsWriter, read_metrics, step_scalars
from jax3dmmstn.training.progress import make_progress
from jax3dmmstn.training.state import TrainState, create_train_state
from jax3dmmstn.training.step import check_finite_metrics, make_train_step
from jax3dmmstn.training.tensorboard import TensorBoardLog

logger = logging.getLogger(__name__)

# Metrics left out of the progress line (per yaw bin, over all images): in metrics.jsonl.
_DETAIL = ("_all", "_yaw_0_30", "_yaw_30_60", "_yaw_60_90")
# What the step reads from a training batch.
_BATCH_KEYS = ("image", "landmarks", "landmark_visible")


@dataclasses.dataclass
class _Run:
    """What every part of one run shares."""

    config: Any
    workdir: str
    start_time: float
    is_chief: bool
    morphable_model: Any
    model: Any
    eval_batches: list
    checkpointer: Checkpointer
    metrics: MetricsWriter
    tensorboard: TensorBoardLog
    predict: Callable  # (params, images) -> the STN outputs evaluation needs, jitted once
    benchmark: Callable | None  # params -> AFLW2000-3D protocol metrics (eval.aflw2000_root)
    config_json: dict  # saved with every checkpoint

    def wall_s(self) -> float:
        return time.time() - self.start_time


def initial_state(config, model, morphable_model, tx, train_source) -> TrainState:
    """Step 0 of a run: initial (maybe imported, maybe data-initialised) params and optimiser."""
    params = builders.init_params(model, config, jax.random.PRNGKey(config.seed))
    if config.model.get("init_head_from_data", False):
        source = datasets.as_batch_source(train_source)
        params = builders.init_head_from_data(params, config, morphable_model, source)
    return create_train_state(params, tx, config.seed)


def _flip_test_permutation(config, morphable_model):
    """The trained landmark set's flip permutation when ``eval.flip_test`` is on, else None."""
    if not config.get("eval", {}).get("flip_test", False):
        return None
    return morphable_model.landmark_flip[config.model.get("landmarks", "aflw21")]


def _resume(run: _Run, state: TrainState) -> TrainState:
    """The latest checkpoint's state when there is one, else ``state``; trims metrics.jsonl."""
    restored = run.checkpointer.restore(state)
    if restored is not None:
        state, saved_config = restored
        warn_config_changes(saved_config, config_to_dict(run.config))
        logger.info("resumed from %s at step %d", run.checkpointer.directory, int(state.step))
    # Rows past the restored step (all of them when a run was killed before its first
    # checkpoint) belong to work that is about to be redone.
    run.metrics.truncate_after(int(state.step))
    return state


def _batch_iterator(run: _Run, train_source, state: TrainState, mode: str):
    """This process's batches from the state's data position on: ``[B_local, ...]``, or
    ``[local devices, B_local / local devices, ...]`` for pmap."""
    config = run.config
    landmark_set = config.model.get("landmarks", "aflw21")
    return batching.BatchIterator(
        train_source,
        int(config.batch_size),
        seed=int(config.seed),
        start_step=int(jax.device_get(state.data_position)),
        mirror=bool(config.data.get("mirror", False)),
        flip_permutation=run.morphable_model.landmark_flip.get(landmark_set),
        split_devices=mode == "pmap",
        # 'shard' splits the same rows over the local devices when it builds the global
        # array; the iterator checks the split (mirror pairs kept on one device) for both.
        check_devices=mode == "shard",
        num_local_devices=jax.local_device_count() if parallel.uses_axis(mode) else 1,
        prefetch=int(config.data.get("prefetch", 2)),
    )


def _evaluate(run: _Run, params, step: int) -> dict:
    """Held-out metrics of ``params``, logged; the first batch drawn as snapshots/latest_*,
    and the training curve redrawn, so a running job can be watched."""
    summary, first = heldout.evaluate(run.predict, params, run.eval_batches, run.morphable_model)
    if run.benchmark is not None:
        summary.update(run.benchmark(params))
    row = dict(split="eval", step=step, wall_s=run.wall_s(), **summary)
    run.metrics.write(row)
    run.tensorboard.scalars("eval", step, row)
    if run.is_chief and run.config.get("snapshots", True):
        paths = plots.save_snapshots(run.workdir, step, first, tag="latest")
        run.tensorboard.images(step, paths)
        _save_curve(run)
    return summary


def _save_curve(run: _Run) -> None:
    plots.save_curves(
        os.path.join(run.workdir, "training_curve.png"),
        read_metrics(run.metrics.path),
        title=run.config.get("name", ""),
    )


class _Throughput:
    """Images per second over the steps since the last logged row."""

    def __init__(self, images_per_step: int):
        self.images_per_step = images_per_step
        self.start, self.steps = time.time(), 0

    def step(self) -> None:
        self.steps += 1

    def rate(self) -> float:
        rate = self.images_per_step * self.steps / max(time.time() - self.start, 1e-9)
        self.start, self.steps = time.time(), 0
        return rate


def _log_train_row(run: _Run, step: int, total_steps: int, metrics, speed, progress) -> None:
    config = run.config
    row = dict(
        split="train",
        step=step,
        **step_scalars(metrics),
        images_per_s=speed.rate(),
        lr=float(optim.make_learning_rate(config.optim, total_steps)(step - 1)),
        wall_s=run.wall_s(),
    )
    run.metrics.write(row)
    run.tensorboard.scalars("train", step, row)
    progress.train_row(step, row)


def _train_steps(run: _Run, distributed, iterator, start_step: int, progress, stop):
    """Steps start_step + 1 .. total_steps (fewer when max_train_seconds runs out).

    Returns (device state, the last step, the last evaluation's summary, the step it ran at).
    Raises TrainingInterrupted, after saving the step's checkpoint, when ``stop`` got a signal.
    """
    config = run.config
    total_steps = int(config.total_steps)
    eval_every = int(config.get("eval_every", 0) or 0)
    log_every = max(1, int(config.get("log_every", 50)))
    checkpoint_every = int(config.get("checkpoint_every", 0) or 0)
    max_seconds = float(config.get("max_train_seconds", 0) or 0)
    speed = _Throughput(int(config.batch_size) * (2 if config.data.get("mirror", False) else 1))
    device_state, summary, last_eval_step = distributed.state, {}, None
    for step in range(start_step + 1, total_steps + 1):
        batch = {k: v for k, v in next(iterator).items() if k in _BATCH_KEYS}
        device_state, metrics = distributed.step(device_state, batch)
        check_finite_metrics(metrics, step)
        speed.step()
        progress.step()
        if step % log_every == 0 or step == total_steps:
            _log_train_row(run, step, total_steps, metrics, speed, progress)
        if eval_every and (step % eval_every == 0 or step == total_steps):
            summary = _evaluate(run, distributed.to_host(device_state).params, step)
            last_eval_step = step
            scores = ", ".join(
                f"{k}={v:.4g}" for k, v in summary.items() if not k.endswith(_DETAIL)
            )
            progress.message(f"step {step}: {scores}")
        if stop.signum is not None:
            run.checkpointer.save(distributed.to_host(device_state), run.config_json, force=True)
            run.checkpointer.wait()
            raise TrainingInterrupted(stop.signum, step)
        if checkpoint_every and step % checkpoint_every == 0 and step != total_steps:
            run.checkpointer.save(distributed.to_host(device_state), run.config_json)
        if max_seconds and run.wall_s() > max_seconds and step < total_steps:
            logger.warning("stopping at step %d: max_train_seconds=%s reached", step, max_seconds)
            progress.message(f"time budget reached: stopping at step {step} of {total_steps}")
            return device_state, step, summary, last_eval_step
    return device_state, total_steps, summary, last_eval_step


def _write_final_outputs(run: _Run, summary: Mapping) -> None:
    """training_curve.png and final_metrics.json (process 0)."""
    if run.config.get("snapshots", True):
        _save_curve(run)
    with open(os.path.join(run.workdir, "final_metrics.json"), "w") as handle:
        json.dump(summary, handle, indent=2)


def train_and_evaluate(config, workdir: str, data=None, return_state: bool = False):
    """Train (resuming from ``workdir`` when it holds a checkpoint) and evaluate.

    ``data``: optional (train BatchSource or dataset, list of held-out batches); default built
    from ``config.data`` by :func:`jax3dmmstn.training.datasets.build_data`.
    Returns the final summary dict (also written to ``workdir/final_metrics.json``), and the
    final host :class:`TrainState` too when ``return_state``.
    """
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    start_time = time.time()
    morphable_model = builders.build_morphable_model(config)
    model = builders.build_model(config, morphable_model)
    tx = optim.make_optimizer(config.optim, int(config.total_steps))  # bad options fail early
    mode = parallel.choose_parallelism(config)
    if data is None:
        data = datasets.build_data(config, morphable_model)
    train_source, eval_batches = data
    state = initial_state(config, model, morphable_model, tx, train_source)
    is_chief = jax.process_index() == 0
    run = _Run(
        config=config,
        workdir=workdir,
        start_time=start_time,
        is_chief=is_chief,
        morphable_model=morphable_model,
        model=model,
        eval_batches=eval_batches,
        checkpointer=Checkpointer(workdir, max_to_keep=int(config.get("keep_checkpoints", 3))),
        metrics=MetricsWriter(os.path.join(workdir, "metrics.jsonl"), enabled=is_chief),
        tensorboard=TensorBoardLog(workdir, config.get("tensorboard", "auto"), enabled=is_chief),
        predict=heldout.make_eval_fn(model, _flip_test_permutation(config, morphable_model)),
        benchmark=aflw2000_stn.make_benchmark(config, model, morphable_model),
        config_json=config_to_dict(config),
    )
    state = _resume(run, state)
    start_step = int(state.step)
    summary, final_state, total_steps = _train_and_save(run, state, train_source, tx, mode)
    summary = dict(summary, step=total_steps, wall_s=run.wall_s(), resumed_from=start_step)
    if is_chief:
        _write_final_outputs(run, summary)
    return (summary, final_state) if return_state else summary


def _train_and_save(run: _Run, state: TrainState, train_source, tx, mode: str):
    """Train from ``state``, save the final checkpoint, evaluate the final parameters.

    Returns (summary, final host state, last step).
    """
    config = run.config
    start_step = int(state.step)
    axis_name = parallel.AXIS_NAME if parallel.uses_axis(mode) else None
    step_fn = make_train_step(run.model.apply, tx, config.loss, axis_name=axis_name)
    distributed = parallel.distribute(step_fn, state, mode)
    iterator = _batch_iterator(run, train_source, state, mode)
    progress = make_progress(config, int(config.total_steps), start_step, run.is_chief)
    try:
        with StopRequests() as stop:
            device_state, total_steps, summary, last_eval_step = _train_steps(
                run, distributed, iterator, start_step, progress, stop
            )
        final_state = distributed.to_host(device_state)
        run.checkpointer.save(final_state, run.config_json, force=True)
        run.checkpointer.wait()
        if config.get("final_eval", True) and (last_eval_step != total_steps or not summary):
            summary = _evaluate(run, final_state.params, total_steps)
    finally:
        progress.close()
        iterator.close()
        run.checkpointer.close()
        run.tensorboard.close()
    return summary, final_state, total_steps
