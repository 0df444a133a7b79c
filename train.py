"""Train the 3DMM-STN.

    python train.py                                   # configs/synthetic.py, ./workdir
    python train.py --config=configs/matconvnet.py --config.data.path=/data/imdb.mat \
        --config.model.vggface_path=/data/vgg-face.mat --workdir=/runs/original
    python train.py --config.total_steps=500 --config.optim.learning_rate=3e-4 --workdir=...

A run resumes automatically from the latest checkpoint in --workdir. Outputs in --workdir:
checkpoints/ (Orbax), metrics.jsonl, snapshots/*.png, training_curve.png, final_metrics.json.

Several processes (multi-host): pass --coordinator_address, --num_processes and --process_id
to every process (or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or
--distributed=auto on a cluster jax.distributed detects by itself (SLURM, Cloud TPU, ...).
Each process then reads its own slice of every global batch; gradients are averaged over all
devices of all processes.
"""

from __future__ import annotations

import logging
import os

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))

config_flags.DEFINE_config_file(
    "config",
    os.path.join(_HERE, "jax3dmmstn", "configs", "synthetic.py"),
    "Python config file (configs/NAME.py); override fields with --config.key=value.",
    lock_config=True,
)
flags.DEFINE_string(
    "workdir",
    "workdir",
    "Directory for checkpoints, metrics and pictures; "
    "a run resumes from the latest checkpoint found here.",
)
flags.DEFINE_enum(
    "distributed",
    "env",
    ["env", "auto", "off"],
    "env: jax.distributed.initialize when a coordinator address is given by flag "
    "or environment; auto: always call it (cluster auto-detection); off: never.",
)
flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (env JAX_COORDINATOR_ADDRESS)."
)
flags.DEFINE_integer("num_processes", None, "Number of processes (env JAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "This process's index (env JAX_PROCESS_ID).")
flags.DEFINE_string(
    "cpu_collectives",
    "gloo",
    "CPU collectives for multi-process CPU runs ('gloo' or 'mpi'); ignored on accelerators.",
)
flags.DEFINE_integer(
    "host_device_count",
    0,
    "Split the CPU into this many XLA devices (to try pmap on a CPU); 0 leaves XLA's default.",
)

FLAGS = flags.FLAGS


def _env_int(name: str):
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def initialize_distributed() -> None:
    """jax.distributed.initialize from flags, then environment, as --distributed says."""
    import jax

    address = FLAGS.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num_processes = (
        FLAGS.num_processes if FLAGS.num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    )
    process_id = FLAGS.process_id if FLAGS.process_id is not None else _env_int("JAX_PROCESS_ID")
    if FLAGS.distributed == "off" or (FLAGS.distributed == "env" and not address):
        return
    if address and (num_processes is None or process_id is None):
        raise app.UsageError(
            "--coordinator_address needs --num_processes and --process_id "
            "(or JAX_NUM_PROCESSES and JAX_PROCESS_ID)"
        )
    # Only used when the processes compute on CPUs; harmless on accelerators.
    jax.config.update("jax_cpu_collectives_implementation", FLAGS.cpu_collectives)
    kwargs = {}
    if address:
        kwargs = dict(
            coordinator_address=address, num_processes=num_processes, process_id=process_id
        )
    jax.distributed.initialize(**kwargs)
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.host_device_count:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count="
            f"{FLAGS.host_device_count}"
        )
    if not FLAGS["verbosity"].present:
        # Orbax and JAX log every checkpoint step at INFO; --verbosity=0 brings them back.
        absl_logging.set_verbosity(absl_logging.WARNING)
    initialize_distributed()
    import jax

    from jax3dmmstn import training

    logging.getLogger("jax3dmmstn").setLevel(logging.INFO)
    config = FLAGS.config
    if jax.process_index() == 0:
        print(
            f"devices: {jax.device_count()} ({jax.devices()[0].platform}), processes: "
            f"{jax.process_count()}; workdir: {os.path.abspath(FLAGS.workdir)}",
            flush=True,
        )
    summary = training.train_and_evaluate(config, FLAGS.workdir)
    if jax.process_index() == 0:
        print(
            "final: "
            + ", ".join(
                f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()
            ),
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
