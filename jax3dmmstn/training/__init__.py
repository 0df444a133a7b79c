"""Training: the optimiser, the train state, the step, devices, checkpoints, the metrics log
and the loop behind ``train.py`` (:func:`train_and_evaluate`).

Modules, in the order a run uses them: ``builders`` (morphable model, STN, initial params),
``datasets`` (training source and held-out batches from ``config.data``), ``optim``,
``state``, ``step`` (loss composition, NaN guard), ``parallel`` (jit / pmap, multi-host
set-up), ``xla_options`` (the compiler options of the jitted step), ``checkpoint`` (Orbax;
:func:`load_trained` for a trained model), ``metrics`` (metrics.jsonl), ``loop``. The names
below are re-exported for ``training.NAME`` callers.
"""

from jax3dmmstn.training.builders import (
    build_model,
    build_morphable_model,
    fit_scale_translation,
    init_head_from_landmarks,
    init_params,
)
from jax3dmmstn.training.checkpoint import Checkpointer, TrainedModel, config_to_dict, load_trained
from jax3dmmstn.training.datasets import (
    InMemorySource,
    build_data,
    build_heldout,
    build_train_source,
    synthetic_render_config,
)
from jax3dmmstn.training.interrupt import TrainingInterrupted
from jax3dmmstn.training.loop import train_and_evaluate
from jax3dmmstn.training.metrics import MetricsWriter, read_metrics
from jax3dmmstn.training.optim import make_learning_rate, make_optimizer, param_labels
from jax3dmmstn.training.parallel import (
    choose_parallelism,
    initialize_distributed,
    replicate,
    unreplicate,
)
from jax3dmmstn.training.state import TrainState, create_train_state
from jax3dmmstn.training.step import (
    LOSS_TERMS,
    NonFiniteError,
    check_finite_metrics,
    compute_losses,
    make_train_step,
)

__all__ = [
    "LOSS_TERMS",
    "Checkpointer",
    "InMemorySource",
    "MetricsWriter",
    "NonFiniteError",
    "TrainState",
    "TrainedModel",
    "TrainingInterrupted",
    "build_data",
    "build_heldout",
    "build_model",
    "build_morphable_model",
    "build_train_source",
    "check_finite_metrics",
    "choose_parallelism",
    "compute_losses",
    "config_to_dict",
    "create_train_state",
    "fit_scale_translation",
    "init_head_from_landmarks",
    "init_params",
    "initialize_distributed",
    "load_trained",
    "make_learning_rate",
    "make_optimizer",
    "make_train_step",
    "param_labels",
    "read_metrics",
    "replicate",
    "synthetic_render_config",
    "train_and_evaluate",
    "unreplicate",
]
