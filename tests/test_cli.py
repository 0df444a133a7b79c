"""The ``jax3dmmstn`` command line: sub-commands, help, config overrides, and a wheel install."""

import json
import os
import shutil
import site
import subprocess
import sys
import textwrap

import pytest

from jax3dmmstn import cli
from jax3dmmstn.configs import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_COMMANDS = ("train", "fit", "predict", "evaluate", "verify", "prepare-model", "benchmark")

# A training run small enough for a test (a few seconds of steps on a CPU).
TINY_TRAIN = [
    "--config.morphable_model.resolution=16",
    "--config.data.image_size=64,64",
    "--config.data.train_size=8",
    "--config.data.eval_size=4",
    "--config.data.eval_batch_size=4",
    "--config.data.prefetch=0",
    "--config.model.localiser_input_size=(32, 32)",
    "--config.model.localiser_kwargs",
    "{'widths': (4, 8), 'convs_per_stage': 1, 'hidden': 16}",
    "--config.batch_size=4",
    "--config.total_steps=2",
    "--config.parallel=jit",
    "--config.eval_every=0",
    "--config.checkpoint_every=0",
    "--config.snapshots=false",
    "--config.progress_bar=False",
]


def test_top_level_help_lists_every_command(capsys):
    assert set(cli.COMMANDS) == set(ALL_COMMANDS)
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ALL_COMMANDS:
        assert f"\n    {name} " in out or f"\n    {name}\n" in out, name


@pytest.mark.parametrize("name", ALL_COMMANDS)
def test_every_command_has_help(name, capsys):
    assert cli.main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: jax3dmmstn {name}"), out[:200]


def test_unknown_command_and_benchmark_are_usage_errors(capsys):
    assert cli.main(["nope"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert cli.main(["benchmark", "nope"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert cli.main(["benchmark", "fit", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: jax3dmmstn benchmark fit")


def test_the_sampler_benchmark_names_the_missing_torch(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    assert cli.main(["benchmark", "sampler", "--quick"]) == 1
    assert "torch is not installed" in capsys.readouterr().err


def test_python_dash_m_and_lazy_imports():
    """``python -m jax3dmmstn`` runs the same main; ``fit --help`` imports neither Flax nor Orbax."""
    code = textwrap.dedent(
        """
        import sys
        from jax3dmmstn import cli
        status = cli.main(["fit", "--help"])
        heavy = sorted({m.split(".")[0] for m in sys.modules} & {"flax", "orbax"})
        print("HEAVY", heavy, status)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert "HEAVY [] 0" in result.stdout, result.stdout + result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "jax3dmmstn", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "prepare-model" in result.stdout, result.stderr


def test_a_bad_override_is_a_one_line_error_naming_the_field(capsys):
    assert cli.main(["train", "--config.nonexistent=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nonexistent" in err, err
    assert cli.main(["train", "--config.data.nonexistent", "3"]) == 2
    assert "'data.nonexistent'" in capsys.readouterr().err
    assert cli.main(["train", "--config.total_steps=many"]) == 2
    assert "total_steps" in capsys.readouterr().err
    assert cli.main(["train", "--config", "no_such_config"]) == 2
    assert "no_such_config" in capsys.readouterr().err


def test_overrides_take_the_fields_types():
    rest, overrides = cli.split_config_overrides(
        ["--workdir", "w", "--config.total_steps=7", "--config.optim.learning_rate", "0.5"]
        + TINY_TRAIN[1:2]
        + ["--config.snapshots=false", "--config.model.landmarks=ibug68"]
        + ["--config.model.localiser_kwargs={'hidden': 4}", "--config.optim.warmup_steps", "3"]
    )
    assert rest == ["--workdir", "w"]
    config = load_config("synthetic")
    cli.apply_config_overrides(config, overrides)
    assert config.total_steps == 7 and isinstance(config.total_steps, int)
    assert config.optim.learning_rate == 0.5
    assert config.data.image_size == (64, 64)
    assert config.snapshots is False
    assert config.model.landmarks == "ibug68"
    assert dict(config.model.localiser_kwargs) == {"hidden": 4}
    assert config.optim.warmup_steps == 3
    with pytest.raises(cli.ConfigOverrideError, match="expected bool"):
        cli.apply_config_overrides(config, [("snapshots", "maybe")])
    with pytest.raises(cli.ConfigOverrideError, match="needs a value"):
        cli.split_config_overrides(["--config.total_steps"])


def test_train_accepts_the_old_flag_spellings():
    parser = cli._train_parser()
    args = parser.parse_args(
        ["--coordinator_address", "h:1", "--num_processes=2", "--process_id", "1"]
        + ["--cpu_collectives=mpi", "--host_device_count", "4", "--distributed=auto"]
    )
    assert (args.coordinator_address, args.num_processes, args.process_id) == ("h:1", 2, 1)
    assert (args.cpu_collectives, args.host_device_count, args.distributed) == ("mpi", 4, "auto")
    assert cli._config_name("configs/synthetic.py") == "synthetic"  # the old source-tree path


def test_train_without_workdir_gets_a_fresh_one_and_several_processes_must_name_one(
    monkeypatch, capsys
):
    seen = []
    monkeypatch.setattr(cli, "_train", lambda config, workdir: seen.append(workdir) or 0)
    monkeypatch.delenv("JAX_NUM_PROCESSES", raising=False)
    assert cli.main(["train", "--config", "synthetic"]) == 0
    assert cli.main(["train", "--workdir", "mine"]) == 0
    assert os.path.dirname(seen[0]) == "runs" and seen[1] == "mine"
    assert os.path.basename(seen[0]).startswith("synthetic-")
    stamp = os.path.basename(seen[0])[len("synthetic-") :]
    assert len(stamp) == len("20261206-031500") and stamp.replace("-", "").isdigit()
    assert cli.main(["train", "--num-processes", "2", "--process-id", "0"]) == 2
    assert "--workdir" in capsys.readouterr().err
    assert len(seen) == 2


def test_evaluate_and_predict_name_a_missing_workdir(tmp_path, capsys):
    missing = str(tmp_path / "nothing")
    assert cli.main(["evaluate", "--checkpoint", missing]) == 2
    assert "nothing" in capsys.readouterr().err
    photo = tmp_path / "x.png"
    photo.write_bytes(b"")  # the photos are listed first: this one only has to exist
    argv = ["predict", "--checkpoint", missing, "--images", str(photo), "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    assert "nothing" in capsys.readouterr().err


def _build_wheel(tmp_path) -> str:
    """A wheel of the working tree, built from a copy (the repository stays untouched)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), source / name)
    shutil.copytree(
        os.path.join(REPO, "jax3dmmstn"),
        source / "jax3dmmstn",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(wheels), str(source)],
        check=True,
        timeout=600,
    )
    (wheel,) = wheels.glob("jax3dmmstn-*.whl")
    return str(wheel)


def _venv_with(tmp_path, wheel: str) -> str:
    """A fresh venv that sees this venv's packages but has its own jax3dmmstn from ``wheel``."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        timeout=300,
    )
    python = str(venv / "bin" / "python")
    own = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # A venv made from a venv only sees the base interpreter's packages: add this venv's
    # directories as plain paths, after the new venv's own (their .pth files, among them the
    # editable jax3dmmstn's finder, are not run).
    with open(os.path.join(own, "parent_venv.pth"), "w") as handle:
        handle.write("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps"]
        + ["--force-reinstall", wheel],
        check=True,
        timeout=600,
    )
    return str(venv)


@pytest.mark.slow
def test_a_wheel_install_trains_from_outside_the_repository(tmp_path):
    venv = _venv_with(tmp_path, _build_wheel(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run(
        [
            os.path.join(venv, "bin", "python"),
            "-c",
            "import jax3dmmstn; print(jax3dmmstn.__file__)",
        ],
        cwd=elsewhere,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert where.startswith(os.path.join(venv, "lib")) and "site-packages" in where, where
    help_text = subprocess.run(
        [os.path.join(venv, "bin", "jax3dmmstn"), "--help"],
        cwd=elsewhere,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert all(name in help_text for name in ALL_COMMANDS), help_text
    result = subprocess.run(
        [os.path.join(venv, "bin", "jax3dmmstn"), "train", "--config", "synthetic"]
        + ["--workdir", "W", "--host-device-count", "2", *TINY_TRAIN],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # --host-device-count reached XLA before it started (two CPU devices, jit uses one).
    assert "devices: 2 (cpu)" in result.stdout, result.stdout
    assert "final: " in result.stdout
    with open(elsewhere / "W" / "final_metrics.json") as handle:
        assert json.load(handle)


def test_errors_are_one_line_with_status_2_and_debug_shows_the_traceback(monkeypatch, capsys):
    assert cli.main(["train", "--config.optim.optimiser=adam"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean --config.optim.optimizer?" in err

    def broken(argv):
        raise ValueError(f"cannot read /data/x.mat:\n  not a MATLAB file ({argv})")

    monkeypatch.setattr(cli, "train_main", broken)
    assert cli.main(["train", "--workdir", "w"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/data/x.mat" in err and "Traceback" not in err
    assert err.startswith("jax3dmmstn train: error: cannot read /data/x.mat: not a MATLAB file")
    with pytest.raises(ValueError, match="x.mat"):
        cli.main(["train", "--debug", "--workdir", "w"])


def test_the_install_without_extras_pulls_neither_torch_nor_tensorflow():
    """The closure of jax3dmmstn's own requirements (no extra), over the installed
    distributions' metadata: what ``pip install jax3dmmstn`` brings in."""
    from importlib import metadata

    from packaging.requirements import Requirement

    def requirements(name, extras=()):
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(
                marker.evaluate({"extra": extra}) for extra in (extras or ("",))
            ):
                yield requirement

    seen, todo = set(), [("jax3dmmstn", ())]
    while todo:
        name, extras = todo.pop()
        for requirement in requirements(name, extras):
            key = requirement.name.lower().replace("_", "-")
            if key not in seen:
                seen.add(key)
                todo.append((requirement.name, tuple(requirement.extras)))
    assert {"jax", "flax", "optax", "orbax-checkpoint", "h5py"} <= seen
    assert not {n for n in seen if n.startswith(("torch", "tensorflow", "tf-"))}, sorted(seen)
