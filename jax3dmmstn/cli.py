"""The command line: ``jax3dmmstn COMMAND [ARGS...]`` (or ``python -m jax3dmmstn ...``).

    jax3dmmstn train --config synthetic --workdir runs/synthetic --config.total_steps=500
    jax3dmmstn fit --model synthetic --data demodata.mat --out fit_out
    jax3dmmstn predict --checkpoint runs/synthetic --images face.png --out pred
    jax3dmmstn evaluate --checkpoint runs/synthetic
    jax3dmmstn evaluate --fit fit_out/fit.json --aflw2000 AFLW2000
    jax3dmmstn verify ref.mat
    jax3dmmstn prepare-model --bfm 01_MorphableModel.mat --uv BFM_UV.mat --out model.npz
    jax3dmmstn benchmark sampler --quick

Every command takes GNU-style long options and ``--help``. A command's module is imported
only when that command runs, so ``jax3dmmstn fit`` does not import Flax or Orbax.
``train`` and ``evaluate`` are defined here; the others live next to the code they run.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple


class Command(NamedTuple):
    module: str
    function: str
    summary: str


COMMANDS = {
    "train": Command("jax3dmmstn.cli", "train_main", "Train the 3DMM-STN (resumes in --workdir)."),
    "fit": Command("jax3dmmstn.fitting.cli", "fit_main", "Fit theta to 2D landmarks of images."),
    "predict": Command("jax3dmmstn.predict", "main", "Run a trained network on images."),
    "evaluate": Command(
        "jax3dmmstn.cli",
        "evaluate_main",
        "Held-out evaluation of a checkpoint; a checkpoint or fit on AFLW2000-3D.",
    ),
    "verify": Command(
        "jax3dmmstn.matconvnet.verify", "main", "Compare the layers with a MatConvNet dump."
    ),
    "prepare-model": Command(
        "jax3dmmstn.facemodel.prepare", "main", "Build a grid face model from the Basel Face Model."
    ),
    "benchmark": Command("jax3dmmstn.benchmarks", "main", "Run one of the speed benchmarks."),
}


def _top_parser() -> argparse.ArgumentParser:
    from jax3dmmstn import __version__

    parser = argparse.ArgumentParser(
        prog="jax3dmmstn",
        description="3D Morphable Models as Spatial Transformer Networks in JAX.",
        epilog="'jax3dmmstn COMMAND --help' gives the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"jax3dmmstn {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for name, command in COMMANDS.items():
        commands.add_parser(name, help=command.summary, add_help=False)
    return parser


def _exit_status(code) -> int:
    """SystemExit's code as an exit status (printing a message given instead of a number)."""
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    An error a user can fix (a missing or unreadable file, a bad value) ends the command with
    one line naming it and exit status 2; ``--debug`` (anywhere on the line) shows the
    traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    if not argv or argv[0] not in COMMANDS:
        parser = _top_parser()
        if not argv:
            parser.print_help()
            return 2
        try:
            parser.parse_args(argv[:1])  # --help, --version or an unknown command
        except SystemExit as exit_:
            return _exit_status(exit_.code)
    command = COMMANDS[argv[0]]
    entry: Callable = getattr(importlib.import_module(command.module), command.function)
    try:
        return int(entry(argv[1:]) or 0)
    except SystemExit as exit_:  # argparse's --help and usage errors
        return _exit_status(exit_.code)
    except KeyboardInterrupt:
        print(f"jax3dmmstn {argv[0]}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001  (one line for the user; --debug re-raises)
        if debug:
            raise
        print(f"jax3dmmstn {argv[0]}: error: {_one_line(error)}", file=sys.stderr)
        return 2


def _one_line(error: BaseException) -> str:
    """The error's message on one line (its type when it has none), and how to see more."""
    text = " ".join(str(error).split()) or type(error).__name__
    if not isinstance(error, (ValueError, OSError, KeyError, LookupError)):
        text = f"{type(error).__name__}: {text}"
    return f"{text} (--debug shows the traceback)"


# --------------------------------------------------------------------------------------
# train


class ConfigOverrideError(ValueError):
    """A ``--config.FIELD=VALUE`` that names no field or whose value has the wrong type."""


def split_config_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separates ``--config.a.b=V`` and ``--config.a.b V`` from the other arguments."""
    rest, overrides = [], []
    args = iter(argv)
    for arg in args:
        if not arg.startswith("--config."):
            rest.append(arg)
            continue
        key, sep, value = arg[len("--config.") :].partition("=")
        if not sep:
            value = next(args, None)
            if value is None:
                raise ConfigOverrideError(f"{arg} needs a value")
        overrides.append((key, value))
    return rest, overrides


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _typed_value(key: str, current, text: str):
    """``text`` converted to the type of the field's current value."""
    import ml_collections

    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
    elif isinstance(current, (int, float)):
        try:
            return type(current)(text)
        except ValueError:
            pass
    elif isinstance(current, str):
        return text
    elif isinstance(current, (tuple, list)):
        value = _literal(text)
        if isinstance(value, (tuple, list)):
            return type(current)(value)
    elif isinstance(current, ml_collections.ConfigDict):
        value = _literal(text)
        if isinstance(value, dict):
            return ml_collections.ConfigDict(value)
    else:  # None or another type: whatever the text reads as
        return _literal(text)
    kind = "a dict" if isinstance(current, ml_collections.ConfigDict) else type(current).__name__
    raise ConfigOverrideError(f"--config.{key}={text}: expected {kind} like {current!r}")


def apply_config_overrides(config, overrides: Sequence[tuple[str, str]]) -> None:
    """Sets each dotted field of ``config`` (a ConfigDict) to its value, typed as the field."""
    import ml_collections

    for key, text in overrides:
        parts = key.split(".")
        node = config
        for depth, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise ConfigOverrideError(
                    f"unknown config field {'.'.join(parts[: depth + 1])!r} (--config.{key})"
                    + _did_you_mean(config, key)
                )
            if depth < len(parts) - 1:
                node = node[part]
        try:
            node[parts[-1]] = _typed_value(key, node[parts[-1]], text)
        except TypeError as error:  # ConfigDict's own type check
            raise ConfigOverrideError(f"--config.{key}={text}: {error}") from None


def _config_keys(node, prefix: str = "") -> list[str]:
    """Every dotted field name of a ConfigDict."""
    import ml_collections

    keys = []
    for name, value in node.items():
        keys.append(prefix + name)
        if isinstance(value, ml_collections.ConfigDict):
            keys += _config_keys(value, f"{prefix}{name}.")
    return keys


def _did_you_mean(config, key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, _config_keys(config), n=1, cutoff=0.6)
    return f"; did you mean --config.{close[0]}?" if close else ""


def _train_parser() -> argparse.ArgumentParser:
    from jax3dmmstn import configs

    parser = argparse.ArgumentParser(
        prog="jax3dmmstn train",
        description="Train the 3DMM-STN. A run resumes from the latest checkpoint in --workdir; "
        "it writes checkpoints/, metrics.jsonl, snapshots/, training_curve.png and "
        "final_metrics.json there. Override any config field with --config.FIELD=VALUE "
        "(e.g. --config.total_steps=500 --config.data.image_size=64,64).",
    )
    parser.add_argument(
        "--config",
        default="synthetic",
        help=f"packaged config ({', '.join(configs.available())}) or the path of a .py file "
        "with get_config() (default synthetic)",
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="run folder; give an existing one to resume it (default: a fresh "
        "runs/CONFIG-YYYYmmdd-HHMMSS, so that two runs never share one by accident)",
    )
    parser.add_argument(
        "--distributed",
        choices=("env", "auto", "off"),
        default="env",
        help="env: jax.distributed.initialize when a coordinator address is given by flag or "
        "environment; auto: always (cluster auto-detection: SLURM, Cloud TPU...); off: never",
    )
    multi = parser.add_argument_group(
        "several processes",
        "give all three to every process (or set JAX_COORDINATOR_ADDRESS, "
        "JAX_NUM_PROCESSES, JAX_PROCESS_ID)",
    )
    multi.add_argument(
        "--coordinator-address", "--coordinator_address", help="host:port of process 0"
    )
    multi.add_argument("--num-processes", "--num_processes", type=int, help="number of processes")
    multi.add_argument("--process-id", "--process_id", type=int, help="this process's index")
    parser.add_argument(
        "--cpu-collectives",
        "--cpu_collectives",
        default="gloo",
        help="collectives of multi-process CPU runs ('gloo' or 'mpi'); ignored on accelerators",
    )
    parser.add_argument(
        "--host-device-count",
        "--host_device_count",
        type=int,
        default=0,
        help="split the CPU into this many XLA devices (to try pmap on a CPU); 0: XLA's default",
    )
    parser.add_argument(
        "--verbosity",
        type=int,
        default=None,
        help="absl verbosity of JAX and Orbax (0 = INFO; default: warnings only)",
    )
    return parser


def _config_name(spec: str) -> str:
    """``configs/NAME.py`` of the source tree (now inside the package) -> ``NAME``."""
    from jax3dmmstn import configs

    name = os.path.splitext(os.path.basename(spec))[0]
    if spec.endswith(".py") and not os.path.exists(spec) and name in configs.available():
        return name
    return spec


def _setup_logging(verbosity: int | None) -> None:
    from absl import logging as absl_logging

    logging.basicConfig(format="%(levelname).1s %(asctime)s %(name)s] %(message)s")
    # Orbax and JAX log every checkpoint step at INFO; --verbosity 0 brings them back.
    absl_logging.set_verbosity(absl_logging.WARNING if verbosity is None else verbosity)
    logging.getLogger("jax3dmmstn").setLevel(logging.INFO)


def _format_summary(summary: dict) -> str:
    return ", ".join(
        f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()
    )


def train_main(argv: Sequence[str] | None = None) -> int:
    parser = _train_parser()
    try:
        rest, overrides = split_config_overrides(list(argv or []))
    except ConfigOverrideError as error:
        parser.error(str(error))
    args = parser.parse_args(rest)
    from jax3dmmstn import configs

    try:
        config = configs.load_config(_config_name(args.config))
        apply_config_overrides(config, overrides)
    except (ValueError, FileNotFoundError) as error:  # ConfigOverrideError included
        print(f"jax3dmmstn train: error: {error}", file=sys.stderr)
        return 2
    config.lock()
    if args.workdir is None and _several_processes(args):
        print("jax3dmmstn train: error: several processes need the same --workdir", file=sys.stderr)
        return 2
    if args.host_device_count:  # before JAX starts its backends
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={args.host_device_count}"
        )
    _setup_logging(args.verbosity)
    from jax3dmmstn.training import parallel

    try:
        parallel.initialize_distributed(
            args.distributed,
            coordinator_address=args.coordinator_address,
            num_processes=args.num_processes,
            process_id=args.process_id,
            cpu_collectives=args.cpu_collectives,
        )
    except ValueError as error:
        print(f"jax3dmmstn train: error: {error}", file=sys.stderr)
        return 2
    return _train(config, args.workdir or _fresh_workdir(config))


def _fresh_workdir(config) -> str:
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{config.get('name', 'run')}-{stamp}")


def _several_processes(args) -> bool:
    count = args.num_processes or os.environ.get("JAX_NUM_PROCESSES") or 1
    return args.distributed == "auto" or int(count) > 1


def _train(config, workdir: str) -> int:
    import jax

    from jax3dmmstn import training

    if jax.process_index() == 0:
        print(
            f"devices: {jax.device_count()} ({jax.devices()[0].platform}), processes: "
            f"{jax.process_count()}; workdir: {os.path.abspath(workdir)}",
            flush=True,
        )
    try:
        summary = training.train_and_evaluate(config, workdir)
    except training.TrainingInterrupted as stop:
        print(
            f"jax3dmmstn train: {stop} in {os.path.abspath(workdir)}; the same command resumes it",
            file=sys.stderr,
        )
        return 128 + stop.signum
    if jax.process_index() == 0:
        print("final: " + _format_summary(summary), flush=True)
    return 0


# --------------------------------------------------------------------------------------
# evaluate


def _evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jax3dmmstn evaluate",
        description="Evaluate the latest checkpoint of a training run on its held-out set, or "
        "a checkpoint or a fit.json on AFLW2000-3D (--aflw2000: 3DDFA's NME-68 and NME-21 "
        "by yaw bin, yaw/pitch/roll MAE on the images within +-99 degrees). Writes "
        "per_image.csv and summary.json, and prints the summary.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="training workdir (has checkpoints/)")
    source.add_argument("--fit", help="fit.json of 'jax3dmmstn fit' on the --aflw2000 folder")
    parser.add_argument("--aflw2000", help="AFLW2000-3D folder (imageNNNNN.jpg + .mat) to score on")
    parser.add_argument(
        "--crops",
        default=None,
        help="--checkpoint --aflw2000: read 3DDFA's crops of the images from this folder "
        "(AFLW_GT_crop/ + AFLW_GT_*.npy; default: the run's data.root when it trained on "
        "them, else squares around the ground-truth 68 points)",
    )
    parser.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="--aflw2000: stop at a bad pair (fail) or leave it out (skip)",
    )
    parser.add_argument(
        "--flip-test",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--checkpoint --aflw2000: average each prediction with the mirrored crop's "
        "(evaluation.flip_test; default: as the run's eval.flip_test)",
    )
    parser.add_argument("--out", default=None, help="output folder (default: in the workdir)")
    parser.add_argument("--verbosity", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    parser = _evaluate_parser()
    args = parser.parse_args(argv)
    if not (args.checkpoint or args.fit):
        parser.error("give --checkpoint WORKDIR or --fit FIT.json")
    if args.fit and not args.aflw2000:
        parser.error("--fit needs --aflw2000 ROOT (the folder that was fitted)")
    _setup_logging(args.verbosity)
    try:
        if args.aflw2000:
            return _evaluate_aflw2000(args)
        from jax3dmmstn.evaluation import run

        summary = run.evaluate_checkpoint(args.checkpoint, out_dir=args.out)
    except (ValueError, FileNotFoundError) as error:
        print(f"jax3dmmstn evaluate: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1, default=str))
    where = args.out or os.path.join(os.path.abspath(args.checkpoint), "evaluation")
    print(f"wrote per-image metrics and the summary to {where}", file=sys.stderr)
    return 0


def _evaluate_aflw2000(args) -> int:
    """``evaluate --aflw2000``: score a fit.json or a checkpoint; write CSV + JSON."""
    from jax3dmmstn.evaluation import aflw2000

    if not os.path.isdir(args.aflw2000):
        raise FileNotFoundError(f"--aflw2000 {args.aflw2000}: no such folder")
    if args.fit:
        fits = aflw2000.read_fit(args.fit)  # first: a bad fit.json fails before the reading
        labels = aflw2000.label_arrays(aflw2000.read_examples(args.aflw2000, args.on_error))
        rows, summary = aflw2000.score_fit(fits, labels)
        out_dir = args.out or os.path.join(os.path.dirname(os.path.abspath(args.fit)), "aflw2000")
    else:
        from jax3dmmstn.evaluation import aflw2000_stn

        rows, summary = aflw2000_stn.evaluate_checkpoint(
            args.checkpoint, args.aflw2000, args.crops, args.on_error, args.flip_test
        )
        out_dir = args.out or os.path.join(os.path.abspath(args.checkpoint), "aflw2000")
    csv_path, json_path = aflw2000.write_outputs(out_dir, rows, summary)
    print(aflw2000.format_summary(summary))
    print(f"wrote {csv_path} and {json_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
