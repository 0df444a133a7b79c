"""Training (jax3dmmstn.training): optimiser, losses, NaN guard, checkpoints, pmap, multi-host.

The device-count tests run the real training loop (``train_and_evaluate``) in subprocesses:
8 host CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8) and two processes
joined by jax.distributed over gloo, each with pmap and with jit of shard_map ('shard'), each
compared with one device; and a
``train.py`` run that is SIGKILLed from outside mid-way and resumed, compared with an
uninterrupted run.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jax3dmmstn.core import losses as loss_lib
from jax3dmmstn.core import pose
from jax3dmmstn.core import theta as theta_lib
from jax3dmmstn import training
from jax3dmmstn.configs import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_config(name):
    return load_config(name)


def _toy_params():
    return {
        "localiser": {"conv": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), 2.0)}},
        "theta_head": {"dense": {"kernel": jnp.full((3, 4), 2.0), "bias": jnp.full((4,), 2.0)}},
    }


def _optim(**kwargs):
    base = dict(
        optimizer="sgd",
        learning_rate=0.1,
        momentum=0.0,
        weight_decay=0.0,
        head_lr_multipliers=(4.0, 8.0),
        schedule="constant",
    )
    base.update(kwargs)
    return ml_collections.ConfigDict(base)


# ------------------------------------------------------------------------ optimiser
def test_sgd_honours_lr_multipliers_and_spares_the_head_bias_from_weight_decay():
    params = _toy_params()
    grads = jax.tree.map(jnp.ones_like, params)
    tx = training.make_optimizer(_optim(weight_decay=0.01), total_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    # MatConvNet: w -= lr * mult * (g + wd * w) with wd on everything but the theta bias.
    expect = lambda mult, decay: -0.1 * mult * (1.0 + decay * 2.0)
    np.testing.assert_allclose(updates["localiser"]["conv"]["kernel"], expect(1, 0.01))
    np.testing.assert_allclose(updates["localiser"]["conv"]["bias"], expect(1, 0.01))
    np.testing.assert_allclose(updates["theta_head"]["dense"]["kernel"], expect(4, 0.01))
    np.testing.assert_allclose(updates["theta_head"]["dense"]["bias"], expect(8, 0.0))


def test_sgd_momentum_is_matconvnets():
    """m <- 0.9 m - g; w <- w + lr * mult * m (cnn_train_dag's default solver)."""
    params = _toy_params()
    tx = training.make_optimizer(_optim(momentum=0.9), total_steps=10)
    state = tx.init(params)
    g1 = jax.tree.map(jnp.ones_like, params)
    g2 = jax.tree.map(lambda x: 3.0 * jnp.ones_like(x), params)
    u1, state = tx.update(g1, state, params)
    u2, state = tx.update(g2, state, params)
    m2 = 0.9 * -1.0 - 3.0
    np.testing.assert_allclose(u2["theta_head"]["dense"]["bias"], 0.1 * 8 * m2, rtol=1e-6)
    np.testing.assert_allclose(u2["localiser"]["conv"]["kernel"], 0.1 * 1 * m2, rtol=1e-6)


def test_adam_first_step_scales_with_the_multipliers():
    params = _toy_params()
    grads = jax.tree.map(lambda x: 0.37 * jnp.ones_like(x), params)
    tx = training.make_optimizer(
        _optim(optimizer="adam", learning_rate=1e-3, eps=0.0), total_steps=10
    )
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["localiser"]["conv"]["kernel"], -1e-3, rtol=1e-5)
    np.testing.assert_allclose(updates["theta_head"]["dense"]["kernel"], -4e-3, rtol=1e-5)
    np.testing.assert_allclose(updates["theta_head"]["dense"]["bias"], -8e-3, rtol=1e-5)


def test_warmup_cosine_schedule_and_bad_names():
    lr = training.make_learning_rate(
        _optim(schedule="warmup_cosine", warmup_steps=10, final_lr_fraction=0.1), total_steps=110
    )
    assert float(lr(0)) == pytest.approx(0.0)
    assert float(lr(10)) == pytest.approx(0.1)
    assert float(lr(110)) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="unknown optimizer"):
        training.make_optimizer(_optim(optimizer="lbfgs"), 10)
    with pytest.raises(ValueError, match="unknown schedule"):
        training.make_learning_rate(_optim(schedule="step"), 10)


# ------------------------------------------------------------------------ losses
def _outputs_and_batch(batch=4, landmarks=3, res=4, seed=0):
    rng = np.random.default_rng(seed)
    predicted = rng.normal(100, 10, (batch, landmarks, 2)).astype(np.float32)
    offset = np.array([3.0, 4.0], np.float32)  # 5 pixels for every landmark
    visible = np.ones((batch, landmarks), np.float32)
    visible[0, 1] = 0.0
    target = predicted + offset
    target[0, 1] = [0.0, 0.0]  # missing
    texture = rng.uniform(0, 255, (batch, res, res, 3)).astype(np.float32)
    mask = (rng.uniform(size=(batch, res, res, 1)) > 0.3).astype(np.float32)
    outputs = dict(
        landmarks=jnp.asarray(predicted),
        alpha=jnp.full((batch, 2), 0.5),
        theta=jnp.zeros((batch, 8)),
        texture=jnp.asarray(texture),
        mask=jnp.asarray(mask),
        masked_texture=jnp.asarray(texture * mask),
    )
    return outputs, dict(landmarks=jnp.asarray(target), landmark_visible=jnp.asarray(visible))


def test_loss_composition_sum_and_mean():
    outputs, batch = _outputs_and_batch()
    weights = dict(landmark=0.8998, prior=0.1, siamese=1e-4, symmetry=1e-4)
    sums = training.compute_losses(
        outputs, batch, ml_collections.ConfigDict(dict(reduction="sum", weights=weights))
    )
    n_visible = 4 * 3 - 1
    assert float(sums["landmark"]) == pytest.approx(25.0 * n_visible, rel=1e-5)
    assert float(sums["prior"]) == pytest.approx(4 * 2 * 0.25)
    means = training.compute_losses(
        outputs, batch, ml_collections.ConfigDict(dict(reduction="mean", weights=weights))
    )
    assert float(means["landmark"]) == pytest.approx(25.0, rel=1e-5)
    assert float(means["prior"]) == pytest.approx(0.5)
    distances = training.compute_losses(
        outputs,
        batch,
        ml_collections.ConfigDict(
            {"reduction": "mean", "landmark_distance": "euclidean", "weights": weights}
        ),
    )
    assert float(distances["landmark"]) == pytest.approx(5.0, rel=1e-5)  # every error is 5 px
    # Texture terms: core.losses' mean reduction (sum / count of visible values).
    texture, mask = outputs["texture"], outputs["mask"]
    expected_siamese = loss_lib.siamese_loss(texture, mask, reduction="mean")
    expected_symmetry = loss_lib.symmetry_loss(texture, mask, reduction="mean")
    for terms in (sums, means):
        assert float(terms["siamese"]) == pytest.approx(float(expected_siamese), rel=1e-5)
        assert float(terms["symmetry"]) == pytest.approx(float(expected_symmetry), rel=1e-5)
    total = sum(weights[k] * float(sums[k]) for k in weights)
    assert float(sums["total"]) == pytest.approx(total, rel=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        training.compute_losses(
            outputs, batch, ml_collections.ConfigDict(dict(reduction="median", weights=weights))
        )


def test_sharded_losses_average_to_the_global_loss():
    """Per-shard terms under pmap(pmean) equal the terms of the whole batch."""
    outputs, batch = _outputs_and_batch(batch=8)
    for reduction in ("sum", "mean"):
        cfg = ml_collections.ConfigDict(
            dict(
                reduction=reduction,
                weights=dict(landmark=1.0, prior=1.0, siamese=1.0, symmetry=1.0),
            )
        )
        whole = training.compute_losses(outputs, batch, cfg)
        split = lambda x: x.reshape((2, x.shape[0] // 2) + x.shape[1:])
        sharded = jax.vmap(
            lambda o, b: jax.tree.map(
                lambda v: jax.lax.pmean(v, "d"), training.compute_losses(o, b, cfg, axis_name="d")
            ),
            axis_name="d",
        )(jax.tree.map(split, outputs), jax.tree.map(split, batch))
        for name in ("landmark", "prior", "siamese", "symmetry", "total"):
            np.testing.assert_allclose(sharded[name][0], whole[name], rtol=1e-5, err_msg=name)


# ------------------------------------------------------------------------ NaN guard
def _linear_problem():
    """A tiny 'STN': landmarks = x @ W + b, with the STN's output keys."""

    def apply_fn(variables, images):
        p = variables["params"]
        x = images.reshape(images.shape[0], -1)
        theta = x @ p["theta_head"]["dense"]["kernel"] + p["theta_head"]["dense"]["bias"]
        return dict(theta=theta, alpha=theta[:, :2], landmarks=theta.reshape(-1, 2, 2))

    params = {"theta_head": {"dense": {"kernel": jnp.zeros((6, 4)), "bias": jnp.zeros(4)}}}
    loss_config = ml_collections.ConfigDict(
        dict(reduction="mean", weights=dict(landmark=1.0, prior=0.1, siamese=0.0, symmetry=0.0))
    )
    batch = dict(
        image=jnp.ones((2, 1, 2, 3)),
        landmarks=jnp.ones((2, 2, 2)),
        landmark_visible=jnp.ones((2, 2)),
    )
    return apply_fn, params, loss_config, batch


def test_nan_guard_keeps_parameters_and_names_step_and_term():
    apply_fn, params, loss_config, batch = _linear_problem()
    tx = training.make_optimizer(_optim(), 10)
    step = jax.jit(training.make_train_step(apply_fn, tx, loss_config))
    state = training.create_train_state(params, tx, seed=0)
    state, metrics = step(state, batch)
    training.check_finite_metrics(metrics, step=1)  # finite: no error
    assert float(jnp.abs(state.params["theta_head"]["dense"]["bias"]).sum()) > 0
    bad = dict(batch, image=batch["image"].at[0, 0, 0, 0].set(jnp.nan))
    new_state, metrics = step(state, bad)
    for new, old in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(new, old)  # nothing non-finite reached the params
    with pytest.raises(training.NonFiniteError, match=r"step 7.*landmark|landmark.*step 7"):
        training.check_finite_metrics(metrics, step=7)
    # A finite loss whose update overflows is caught too.
    huge = training.make_optimizer(_optim(learning_rate=3e38), 10)
    step = jax.jit(training.make_train_step(apply_fn, huge, loss_config))
    new_state, metrics = step(training.create_train_state(params, huge, seed=0), batch)
    with pytest.raises(training.NonFiniteError, match="step 3"):
        training.check_finite_metrics(metrics, step=3)
    np.testing.assert_array_equal(new_state.params["theta_head"]["dense"]["bias"], 0.0)


# ------------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip_and_keep_last_k(tmp_path):
    apply_fn, params, loss_config, batch = _linear_problem()
    tx = training.make_optimizer(_optim(optimizer="adam", learning_rate=1e-2), 10)
    step = jax.jit(training.make_train_step(apply_fn, tx, loss_config))
    state = training.create_train_state(params, tx, seed=3)
    checkpointer = training.Checkpointer(str(tmp_path), max_to_keep=2)
    for _ in range(4):
        state, _ = step(state, batch)
        checkpointer.save(state, {"name": "toy", "step": int(state.step)})
    checkpointer.wait()
    assert checkpointer.manager.all_steps() == [3, 4]
    template = training.create_train_state(params, tx, seed=0)
    restored, config = checkpointer.restore(template)
    checkpointer.close()
    assert config == {"name": "toy", "step": 4}
    assert int(restored.step) == 4 and int(restored.data_position) == 4
    np.testing.assert_array_equal(restored.rng, state.rng)
    for got, want in zip(jax.tree.leaves(restored.to_tree()), jax.tree.leaves(state.to_tree())):
        np.testing.assert_array_equal(got, want)
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(state.opt_state)
    # Training on from the restored state continues exactly.
    a, _ = step(state, batch)
    b, _ = step(restored, batch)
    np.testing.assert_array_equal(
        a.params["theta_head"]["dense"]["kernel"], b.params["theta_head"]["dense"]["kernel"]
    )
    # An empty directory restores nothing.
    assert training.Checkpointer(str(tmp_path / "empty")).restore(template) is None


# ------------------------------------------------------------------------ real loop, devices
_WORKER = textwrap.dedent('''
    import os, sys, json
    mode, workdir = sys.argv[1], sys.argv[2]
    if mode.startswith("dist"):
        process_id, port = int(sys.argv[3]), sys.argv[4]
        import jax
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                   process_id=process_id)
    import importlib.util
    import numpy as np
    import jax
    from jax3dmmstn import training
    from jax3dmmstn.core import geometry
    from jax3dmmstn.facemodel.synthetic import synthetic_face_model

    spec = importlib.util.spec_from_file_location("cfg", sys.argv[-1])
    cfg_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cfg_module)
    config = cfg_module.get_config()
    config.morphable_model.resolution = 16
    config.data.image_size = (64, 64)
    config.model.localiser_input_size = (16, 16)
    config.model.localiser_kwargs = dict(widths=(4, 8), convs_per_stage=1, hidden=16)
    config.model.landmarks = "aflw21"
    config.optim.optimizer = "sgd"
    config.optim.learning_rate = 2e-6
    config.optim.schedule = "constant"
    config.optim.weight_decay = 5e-4
    config.loss.weights.siamese = 0.01
    config.loss.weights.symmetry = 0.01
    config.batch_size = 8
    config.total_steps = 6
    config.checkpoint_every = 2
    config.eval_every = 0
    config.final_eval = False
    config.snapshots = False
    config.progress_bar = False
    config.log_every = 1
    config.data.prefetch = 0
    # 'dist' / 'dist_shard': the same modes across two processes.
    config.parallel = {"single": "jit", "pmap": "pmap", "shard": "shard",
                       "dist": "pmap", "dist_shard": "shard"}[mode]

    model = synthetic_face_model(16)

    class Faces:
        """Endless toy stream: random images, landmarks of a random theta (pure in index)."""
        num_examples = None

        def load_batch(self, indices, positions):
            images, landmarks, visible = [], [], []
            for index in indices:
                rng = np.random.default_rng([7, int(index)])
                theta = np.zeros((1, 16), np.float32)
                theta[0, :3] = rng.normal(0, 0.2, 3)
                theta[0, 3:5] = 32 + rng.normal(0, 3, 2)
                theta[0, 5] = 180 + rng.normal(0, 5)
                theta[0, 6:] = rng.normal(0, 1, 10)
                points = geometry.project_theta(theta, model.mean, model.basis).points2d
                landmarks.append(np.asarray(points)[0, model.landmarks["aflw21"]])
                # Smooth images: the texture losses' gradients stay smooth too.
                rows, cols = np.mgrid[0:64, 0:64] / 64.0
                phase = rng.uniform(0, 2 * np.pi, (1, 1, 3))
                waves = np.sin(3 * rows[..., None] + 2 * cols[..., None] + phase)
                images.append((128 + 100 * waves).astype(np.float32))
                visible.append((rng.uniform(size=21) > 0.2).astype(np.float32))
            return dict(image=np.stack(images), landmarks=np.stack(landmarks),
                        landmark_visible=np.stack(visible))

    eval_batches = [Faces().load_batch(np.arange(1000, 1004), None)]
    _, state = training.train_and_evaluate(config, workdir, data=(Faces(), eval_batches),
                                           return_state=True)
    if jax.process_index() == 0:
        leaves = jax.tree_util.tree_leaves_with_path(state.params)
        np.savez(os.path.join(workdir, "final_params.npz"),
                 **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
        print("STEP", int(state.step), "DEVICES", jax.device_count())
''')


def _run_worker(tmp_path, mode, workdir, extra_env=None, extra_args=(), check=True):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = dict(os.environ)
    env.setdefault("XLA_FLAGS", "")
    env.update(extra_env or {})
    return subprocess.run(
        [
            sys.executable,
            str(script),
            mode,
            str(workdir),
            *extra_args,
            os.path.join(REPO, "jax3dmmstn", "configs", "synthetic.py"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _final_params(workdir):
    with np.load(os.path.join(workdir, "final_params.npz")) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    result = _run_worker(tmp, "single", tmp / "work")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "STEP 6 DEVICES 1" in result.stdout
    return _final_params(tmp / "work")


def _assert_same_params(got, want, atol):
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=atol, err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pmap", "shard"])
def test_eight_devices_equal_one_device(tmp_path, single_device_run, mode):
    """pmap, and jit of shard_map over a mesh (batch sharded, state replicated)."""
    flags = "--xla_force_host_platform_device_count=8"
    result = _run_worker(tmp_path, mode, tmp_path / "work", {"XLA_FLAGS": flags})
    assert result.returncode == 0, result.stderr[-4000:]
    assert "STEP 6 DEVICES 8" in result.stdout
    got = _final_params(tmp_path / "work")
    _assert_same_params(got, single_device_run, atol=1e-5)
    # The run moved the parameters well beyond the tolerance.
    moved = max(np.abs(got[k] - v).max() for k, v in _initial_params().items())
    assert moved > 1e-3


def _initial_params():
    from jax3dmmstn.facemodel.synthetic import synthetic_face_model

    config = _load_config("synthetic")
    config.morphable_model.resolution = 16
    config.data.image_size = (64, 64)
    config.model.localiser_input_size = (16, 16)
    config.model.localiser_kwargs = dict(widths=(4, 8), convs_per_stage=1, hidden=16)
    model = training.build_model(config, synthetic_face_model(16))
    params = training.init_params(model, config, jax.random.PRNGKey(config.seed))
    return {
        jax.tree_util.keystr(k): np.asarray(v)
        for k, v in jax.tree_util.tree_leaves_with_path(params)
    }


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dist", "dist_shard"])
def test_two_processes_with_jax_distributed_equal_one_device(tmp_path, single_device_run, mode):
    """pmap and shard_map, each process loading its half of every global batch."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    port = str(_free_port())
    workdir = tmp_path / "work"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                mode,
                str(workdir),
                str(i),
                port,
                os.path.join(REPO, "jax3dmmstn", "configs", "synthetic.py"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
    assert "STEP 6 DEVICES 4" in outputs[0][0]  # 2 processes x 2 devices
    _assert_same_params(_final_params(workdir), single_device_run, atol=1e-5)


# train.py on a tiny synthetic set-up: a checkpoint after every step (Orbax waits for the
# previous save before the next, so the run takes seconds: time to kill it mid-way).
_TRAIN_STEPS = 12
_TRAIN_FLAGS = (
    "--config.morphable_model.resolution=16",
    "--config.data.image_size=(64,64)",
    "--config.data.train_size=32",
    "--config.data.eval_size=4",
    "--config.data.eval_batch_size=4",
    "--config.data.prefetch=0",
    "--config.model.localiser_input_size=(16,16)",
    "--config.model.localiser_kwargs={'widths': (4, 8), 'convs_per_stage': 1, 'hidden': 16}",
    "--config.batch_size=4",
    f"--config.total_steps={_TRAIN_STEPS}",
    "--config.checkpoint_every=1",
    "--config.eval_every=0",
    "--config.log_every=1",
    "--config.snapshots=False",
    "--config.progress_bar=False",
    "--config.max_train_seconds=0",
    "--config.parallel=jit",
)


def _train_py(workdir, *extra_flags):
    """Starts ``python train.py`` (the synthetic config with _TRAIN_FLAGS, then extra_flags,
    which override them) in the background.

    Its output goes to files (a full pipe nobody reads would stall it): see :func:`_log`.
    """
    os.makedirs(workdir, exist_ok=True)
    command = [
        sys.executable,
        os.path.join(REPO, "train.py"),
        f"--config={os.path.join(REPO, 'jax3dmmstn', 'configs', 'synthetic.py')}",
        f"--workdir={workdir}",
        *_TRAIN_FLAGS,
        *extra_flags,
    ]
    env = dict(os.environ, XLA_FLAGS="")
    with open(_log(workdir), "a") as log:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _log(workdir):
    return f"{workdir}.log"


def _log_tail(workdir):
    with open(_log(workdir)) as handle:
        return handle.read()[-4000:]


def _checkpoint_steps(workdir):
    """Steps of the completed checkpoints (Orbax renames a checkpoint to its step when done)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _kill_after_checkpoint(process, workdir, step, timeout=300.0):
    """SIGKILLs ``process`` as soon as a checkpoint of ``step`` or later exists in workdir."""
    deadline = time.monotonic() + timeout
    while not any(s >= step for s in _checkpoint_steps(workdir)):
        if process.poll() is not None:
            pytest.fail(
                f"train.py exited (code {process.returncode}) before it saved the checkpoint "
                f"of step {step}, so it could not be killed mid-way:\n{_log_tail(workdir)}"
            )
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(
                f"no checkpoint of step {step} in {workdir} after {timeout:.0f} s "
                f"(have {_checkpoint_steps(workdir)}):\n{_log_tail(workdir)}"
            )
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    return process.wait(timeout=60)


def _finish(process, workdir, timeout=600):
    try:
        returncode = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"train.py ran over {timeout} s:\n{_log_tail(workdir)}")
    assert returncode == 0, _log_tail(workdir)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_parameters(tmp_path):
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    reference = _train_py(uninterrupted)  # runs alongside the one that gets killed
    returncode = _kill_after_checkpoint(_train_py(killed), killed, step=3)
    _finish(reference, uninterrupted)
    assert returncode == -signal.SIGKILL, "train.py finished before it could be killed"
    steps = _checkpoint_steps(killed)
    assert steps and 3 <= steps[-1] < _TRAIN_STEPS  # killed mid-way, after step 3's save
    assert not (killed / "final_metrics.json").exists()
    _finish(_train_py(killed), killed)  # resumes from the latest complete checkpoint
    summary = json.loads((killed / "final_metrics.json").read_text())
    assert summary["step"] == _TRAIN_STEPS and summary["resumed_from"] >= 3
    got, want = training.load_trained(str(killed)), training.load_trained(str(uninterrupted))
    assert got.step == want.step == _TRAIN_STEPS
    got_leaves = jax.tree_util.tree_leaves_with_path(got.params)
    want_leaves = jax.tree_util.tree_leaves_with_path(want.params)
    assert [k for k, _ in got_leaves] == [k for k, _ in want_leaves]
    for (key, a), (_, b) in zip(got_leaves, want_leaves):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(key))
    # The metrics log has each step once, as if the run had not been interrupted.
    steps_logged = [
        r["step"]
        for r in training.read_metrics(str(killed / "metrics.jsonl"))
        if r["split"] == "train"
    ]
    assert steps_logged == list(range(1, _TRAIN_STEPS + 1))


@pytest.mark.slow
def test_sigterm_saves_the_step_it_reached_and_a_run_can_be_watched(tmp_path):
    workdir = tmp_path / "run"
    watch = ("--config.eval_every=2", "--config.snapshots=True", "--config.tensorboard=True")
    process = _train_py(workdir, "--config.total_steps=500", "--config.checkpoint_every=0", *watch)
    _wait_for_eval_row(process, workdir)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM, _log_tail(workdir)
    log = _log_tail(workdir)
    stopped = re.search(r"stopped by SIGTERM at step (\d+)", log)
    assert stopped, log
    step = int(stopped.group(1))
    # checkpoint_every=0: the only checkpoint is the one SIGTERM saved, at the step reached.
    assert _checkpoint_steps(workdir) == [step]
    rows = training.read_metrics(str(workdir / "metrics.jsonl"))
    assert [r["step"] for r in rows if r["split"] == "train"][-1] == step
    assert not (workdir / "final_metrics.json").exists()
    # Watchable while running: the curve and snapshots of the last evaluation, TensorBoard
    # events, and plain log lines (the output is a file, not a terminal: no progress bar).
    assert (workdir / "training_curve.png").is_file()
    assert (workdir / "snapshots" / "latest_landmarks.png").is_file()
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert "\r" not in log and re.search(r"^step \d+/500: loss=", log, re.M), log
    # The same command (here with a close end) resumes from that checkpoint.
    _finish(_train_py(workdir, f"--config.total_steps={step + 2}", *watch), workdir)
    summary = json.loads((workdir / "final_metrics.json").read_text())
    assert summary["resumed_from"] == step and summary["step"] == step + 2


def _wait_for_eval_row(process, workdir, timeout=300.0):
    deadline = time.monotonic() + timeout
    path = str(workdir / "metrics.jsonl")
    while not any(r["split"] == "eval" for r in training.read_metrics(path)):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"train.py logged no evaluation:\n{_log_tail(workdir)}")
        time.sleep(0.05)


@pytest.mark.slow
def test_rows_of_a_run_killed_before_its_first_checkpoint_are_dropped(tmp_path):
    # A run that died before saving anything left metrics rows but no checkpoint: the
    # restarted run starts from step 0 and must not keep those rows.
    workdir = tmp_path / "work"
    workdir.mkdir()
    stale = [{"split": "train", "step": s, "stale": True} for s in (1, 2, 3)]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stale))
    result = _run_worker(tmp_path, "single", workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [
        r for r in training.read_metrics(str(workdir / "metrics.jsonl")) if r["split"] == "train"
    ]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert not any(r.get("stale") for r in rows)


# ------------------------------------------------------------------------ multi-host set-up
def test_initialize_distributed_modes(monkeypatch):
    from jax3dmmstn.training import parallel

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.config, "update", lambda *a: calls.append(a))
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    training.initialize_distributed()  # env mode, no address: a single process
    training.initialize_distributed("off", coordinator_address="h:1")
    assert calls == []
    with pytest.raises(ValueError, match="number of processes"):
        training.initialize_distributed(coordinator_address="h:1", num_processes=2)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "h:2")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    training.initialize_distributed(cpu_collectives="mpi")
    assert calls == [
        ("jax_cpu_collectives_implementation", "mpi"),
        dict(coordinator_address="h:2", num_processes=2, process_id=1),
    ]
    calls.clear()
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name)
    parallel.initialize_distributed("auto")  # cluster auto-detection: no arguments
    assert calls[-1] == {}
    with pytest.raises(ValueError, match="'env', 'auto' or 'off'"):
        training.initialize_distributed("yes")


# ------------------------------------------------------------------------ configs, head init
@pytest.mark.parametrize("name", ["synthetic", "aflw", "matconvnet", "imdb", "tfds_300wlp"])
def test_configs_build_a_model_and_optimiser(name):
    from jax3dmmstn.facemodel.synthetic import synthetic_face_model

    config = _load_config(name)
    face_model = synthetic_face_model(16)  # stands in for model.mat: only shapes matter here
    model = training.build_model(config, face_model)
    height, width = config.data.image_size
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, height, width, 3)))
    params = shapes["params"]
    assert params["theta_head"]["dense"]["kernel"].shape[1] == 16
    tx = training.make_optimizer(config.optim, config.total_steps)
    jax.eval_shape(tx.init, params)
    if name == "matconvnet":  # the original recipe, field by field
        assert config.model.localiser == "vgg16"
        assert (
            config.optim.optimizer,
            config.optim.learning_rate,
            config.optim.momentum,
            config.optim.weight_decay,
        ) == ("sgd", 1e-10, 0.9, 5e-4)
        assert tuple(config.optim.head_lr_multipliers) == (4.0, 8.0)
        assert dict(config.loss.weights) == dict(
            landmark=0.8998, prior=0.1, siamese=1e-4, symmetry=1e-4
        )
        assert config.loss.reduction == "sum" and config.batch_size == 32
        assert config.data.mirror and config.model.scale_parametrisation == "matconvnet"
        assert not config.model.init_head_from_data
        assert params["localiser"]["fc6"]["kernel"].shape == (7, 7, 512, 4096)


def test_head_init_from_landmarks_recovers_scale_and_translation():
    from jax3dmmstn.core import geometry
    from jax3dmmstn.facemodel.synthetic import synthetic_face_model

    face_model = synthetic_face_model(16)
    idx = face_model.landmarks["aflw21"]
    scale, translation = 0.8, np.array([100.0, 130.0])
    rng = np.random.default_rng(0)
    # Frontal faces at that similarity, jittered symmetrically (mean unchanged), some hidden.
    jitter = rng.normal(0, 2.0, (20, 1, 2))
    landmarks = scale * face_model.mean[idx, :2] + translation + np.concatenate([jitter, -jitter])
    visible = np.ones(landmarks.shape[:2])
    params = {
        "theta_head": {"dense": {"kernel": np.zeros((3, 16)), "bias": np.zeros(16, np.float32)}}
    }
    new = training.init_head_from_landmarks(params, face_model, idx, landmarks, visible)
    bias = new["theta_head"]["dense"]["bias"]
    parts = theta_lib.split(bias)
    np.testing.assert_allclose(parts.t, translation, atol=1e-3)
    np.testing.assert_allclose(0.99**parts.logs, scale, rtol=1e-5)
    np.testing.assert_array_equal(parts.alpha, 0.0)
    theta = theta_lib.merge(np.zeros(3), parts.t, parts.logs, np.zeros(10))[None]
    projected = geometry.project_theta(
        theta.astype(np.float32), face_model.mean, face_model.basis
    ).points2d
    np.testing.assert_allclose(np.asarray(projected)[0, idx], landmarks.mean(axis=0), atol=1e-3)
    with pytest.raises(ValueError, match="fewer than 2 landmarks"):
        training.init_head_from_landmarks(
            params, face_model, idx, landmarks, np.zeros_like(visible)
        )


# ------------------------------------------------------------------------ metrics, pictures
def test_nme_pose_and_shape_errors_closed_form():
    from jax3dmmstn import evaluation

    target = np.array([[[0.0, 0.0], [100.0, 0.0], [100.0, 25.0], [50.0, 10.0]]])
    visible = np.array([[1.0, 1.0, 1.0, 0.0]])
    predicted = target + np.array([3.0, 4.0])  # 5 px everywhere ...
    predicted[0, 3] += 1000.0  # ... except a hidden landmark, which must not count
    # box 100 x 25 -> sqrt(w h) = 50; mean error 5 -> NME 0.1
    np.testing.assert_allclose(evaluation.landmark_nme(predicted, target, visible), [0.1])
    with pytest.raises(ValueError, match="no visible landmark"):
        evaluation.landmark_nme(predicted, target, np.zeros_like(visible))
    with pytest.raises(ValueError, match="zero-area"):
        evaluation.landmark_nme(predicted, np.zeros_like(target), visible)

    true_rotation = np.asarray(pose.pose_to_matrix(np.array([[20.0, -5.0, 3.0]])))
    pred_rotation = np.asarray(pose.pose_to_matrix(np.array([[26.0, -5.0, 3.0]])))
    errors = evaluation.pose_errors(pred_rotation, true_rotation)
    np.testing.assert_allclose(errors["yaw"], [6.0], atol=1e-3)
    np.testing.assert_allclose(errors["mae"], [2.0], atol=1e-3)
    assert 5.0 < float(errors["geodesic"][0]) < 7.0

    shape = np.zeros((1, 4, 3))
    moved = shape + np.array([0.0, 3.0, 4.0])
    np.testing.assert_allclose(evaluation.shape_error(moved, shape), [5.0])


def test_curves_and_snapshots_are_written(tmp_path):
    from PIL import Image

    from jax3dmmstn import evaluation

    rows = [dict(split="train", step=s, **{"loss/total": 100.0 / s}) for s in range(1, 50)]
    rows += [dict(split="eval", step=s, nme=0.1 / s) for s in (10, 20, 49)]
    path = evaluation.save_curves(str(tmp_path / "curve.png"), rows, title="t")
    two_panels = Image.open(path).size[0]
    assert two_panels > 500
    rows[-1].update(aflw2000_pose_mae_deg=7.0, aflw2000_nme68=5.0)  # a third panel appears
    path = evaluation.save_curves(str(tmp_path / "curve3.png"), rows, title="t")
    assert Image.open(path).size[0] > 1.3 * two_panels
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3)).astype(np.uint8)
    landmarks = np.full((3, 21, 2), 16.0)
    path = evaluation.save_landmark_snapshot(
        str(tmp_path / "lm.png"), images, landmarks, landmarks + 1, np.ones((3, 21))
    )
    assert Image.open(path).size[0] > 200
    path = evaluation.save_texture_snapshot(
        str(tmp_path / "tex.png"), images / 255.0, np.ones((3, 32, 32, 1)), images / 255.0
    )
    assert Image.open(path).size[1] > 200
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp.png")]
    (tmp_path / "m.jsonl").write_text('{"step": 1, "split": "train"}\n{"step": 2, "spl')
    assert training.read_metrics(str(tmp_path / "m.jsonl")) == [{"step": 1, "split": "train"}]
