"""`python -m jax3dmmstn verify` on dumps written here with the native functions.

The dumps follow tools/matconvnet/dump_reference.m's key scheme and MATLAB's
habit of dropping trailing singleton dimensions, so the tests exercise the same
loading, shape restoration, call order and comparison as a real dump; the
perturbation tests show that the comparison fails when it should.
"""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
import scipy.io

from jax3dmmstn import matconvnet as M
from jax3dmmstn.matconvnet import verify as V

REPO = pathlib.Path(__file__).resolve().parents[1]
EPS32 = float(np.finfo(np.float32).eps)


def _matlab_saved(a):
    """What a MATLAB -v7 save/load round trip does to the shape: drops trailing 1s."""
    a = np.asarray(a)
    while a.ndim > 2 and a.shape[-1] == 1:
        a = a[..., 0]
    return a


def _f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _add_case(store, layer, case, inputs, dzdy=None, original_backward=False):
    """Run one case through the native function and record it like dump_reference.m."""
    spec = V.LAYERS[layer]
    prefix = f"{layer}__{case}__"
    for name, value in inputs.items():
        store[prefix + "in_" + name] = _matlab_saved(value)
    args = V.case_arguments(layer, {"in_" + k: v for k, v in inputs.items()})
    fn = getattr(M, layer)
    outputs = fn(*args)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    for name, value in zip(spec.outputs, outputs):
        store[prefix + "out_" + name] = _matlab_saved(np.asarray(value, np.float32))
    if not spec.grads:
        return
    dzdy = dzdy if isinstance(dzdy, tuple) else (dzdy,)
    if len(spec.outputs) == 1:
        store[prefix + "dzdy"] = _matlab_saved(np.asarray(dzdy[0], np.float32))
    else:
        for name, value in zip(spec.outputs, dzdy):
            store[prefix + "dzdy_" + name] = _matlab_saved(value)
    kwargs = {"original_backward": True} if original_backward else {}
    grads = fn(*args, *dzdy, **kwargs)
    grads = grads if isinstance(grads, tuple) else (grads,)
    for name, value in zip(spec.grads, grads):
        store[prefix + "out_" + name] = _matlab_saved(np.asarray(value, np.float32))


def _native_dump():
    """A small dump: several layers, batch sizes 1 and more, all native outputs."""
    rng = np.random.default_rng(3)
    store = {"meta__format": V.DUMP_FORMAT, "meta__platform": "pytest"}
    r = _f32(rng, 1, 1, 3, 3, scale=0.5)
    r[..., 1] = 0  # the identity special case
    _add_case(store, "vl_nnr2R", "b3", {"r": r}, _f32(rng, 1, 3, 3, 3))
    _add_case(
        store,
        "vl_nnscale2D",
        "b1",
        {"X": _f32(rng, 1, 2, 7, 1, scale=50), "S": np.full((1, 1, 1, 1), 0.8, np.float32)},
        _f32(rng, 1, 2, 7, 1),
    )
    _add_case(
        store,
        "vl_nnselection",
        "b2",
        {"X": _f32(rng, 1, 2, 9, 2), "idx": np.array([[3.0, 1.0, 9.0]])},
        _f32(rng, 1, 2, 3, 2),
    )
    _add_case(
        store,
        "vl_nnsplit",
        "b2",
        {"X": _f32(rng, 1, 1, 16, 2)},
        (
            _f32(rng, 1, 1, 10, 2),
            _f32(rng, 1, 1, 3, 2),
            _f32(rng, 1, 2, 1, 2),
            _f32(rng, 1, 1, 1, 2),
        ),
    )
    grid = rng.uniform(-1.3, 1.3, (2, 3, 4, 2)).astype(np.float32)
    _add_case(
        store,
        "vl_nnbilinearsampler",
        "multigrid",
        {"X": _f32(rng, 5, 6, 2, 1), "grid": grid},
        _f32(rng, 3, 4, 2, 2),
    )
    texture = _f32(rng, 4, 6, 3, 2) * (rng.uniform(size=(4, 6, 3, 2)) > 0.3)
    _add_case(
        store, "vl_nnsymmetry", "h4w6", {"x": texture}, np.float32(0.7), original_backward=True
    )
    return store


@pytest.fixture(scope="module")
def native_dump():
    return _native_dump()


def _write(tmp_path, store, name="dump.mat"):
    path = tmp_path / name
    scipy.io.savemat(path, store, format="5")
    return str(path)


def _rows(report, layer, output=None):
    return [r for r in report.rows if r.layer == layer and (output is None or r.output == output)]


def test_native_dump_passes_with_every_output_compared(native_dump, tmp_path, capsys):
    path = _write(tmp_path, native_dump)
    assert V.main([path]) == 0
    text = capsys.readouterr().out
    report = V.verify_dump(V.load_dump(path))
    # 1 + 1 for r2R, 1 + 2 for scale2D, 1 + 1 selection, 4 + 1 split, 1 + 2 sampler, 1 + 1 symmetry.
    assert len(report.rows) == 17 and report.passed
    assert {(r.layer, r.output) for r in report.rows} >= {
        ("vl_nnr2R", "dr"),
        ("vl_nnscale2D", "dS"),
        ("vl_nnsplit", "t"),
        ("vl_nnbilinearsampler", "dGrid"),
        ("vl_nnsymmetry", "dx"),
    }
    for layer in (
        "vl_nnr2R",
        "vl_nnscale2D",
        "vl_nnselection",
        "vl_nnsplit",
        "vl_nnbilinearsampler",
        "vl_nnsymmetry",
    ):
        assert layer in text
    assert "17 outputs compared, 0 failed: PASS" in text
    # The symmetry loss is compared with the original's backward; the default
    # (true derivative) is reported as an intended difference, not a failure.
    note = [n for n in report.notes if n.layer == "vl_nnsymmetry"]
    assert note and note[0].note == "true_derivative" and note[0].detail == "differs"
    assert "Intended differences" in text


def test_perturbed_backward_output_fails(native_dump, tmp_path, capsys):
    store = dict(native_dump)
    key = "vl_nnscale2D__b1__out_dS"
    store[key] = store[key] * np.float32(1 + 1e-3)
    assert V.main([_write(tmp_path, store)]) == 1
    text = capsys.readouterr().out
    failing = [line for line in text.splitlines() if "FAIL" in line]
    assert any("dS" in line for line in failing)
    assert "1 failed: FAIL" in text


def test_perturbed_forward_output_of_one_element_fails(native_dump, tmp_path):
    store = dict(native_dump)
    key = "vl_nnbilinearsampler__multigrid__out_y"
    y = store[key].copy()
    y.flat[5] += np.float32(1e-3) * np.abs(y).max()
    store[key] = y
    report = V.verify_dump(V.load_dump(_write(tmp_path, store)))
    bad = [r for r in report.rows if not r.passed]
    assert [(r.layer, r.output) for r in bad] == [("vl_nnbilinearsampler", "y")]
    assert bad[0].detail == "1 of 48 elements out of tolerance"
    np.testing.assert_allclose(bad[0].max_rel, 1e-3, rtol=1e-3)


def test_tolerance_is_relative_to_the_array_magnitude():
    ref = np.array([1000.0, -2000.0, 0.5])
    # atol scales with max|ref| = 2000: 0.019 absolute is below 1e-5 * 2000 = 0.02.
    assert V.errors(ref + [0, 0, 0.019], ref, rtol=0.0, atol=1e-5)[2]
    assert not V.errors(ref + [0, 0, 0.021], ref, rtol=0.0, atol=1e-5)[2]
    max_abs, max_rel, ok, detail = V.errors(ref + [0, 0, 0.04], ref, rtol=1e-5, atol=1e-5)
    assert not ok and detail == "1 of 3 elements out of tolerance"
    assert max_abs == pytest.approx(0.04) and max_rel == pytest.approx(2e-5)
    # rtol is per element: 1e-5 * 2000 on the big entry on top of atol * 2000.
    assert V.errors(ref + [0, 0.039, 0], ref, rtol=1e-5, atol=1e-5)[2]
    # Trailing singleton dimensions are ignored, other shape differences fail.
    assert V.errors(ref.reshape(3, 1, 1), ref, 1e-5, 1e-5)[2]
    assert V.errors(ref[:2], ref[:2].reshape(1, 2), 1e-5, 1e-5)[3].startswith("shape")
    # NaN matches only NaN.
    assert V.errors([np.nan, 1.0], [np.nan, 1.0], 1e-5, 1e-5)[2]
    assert not V.errors([np.nan, 1.0], [0.0, 1.0], 1e-5, 1e-5)[2]


def test_tolerance_options_change_the_verdict(native_dump, tmp_path, capsys):
    store = dict(native_dump)
    key = "vl_nnr2R__b3__out_y"
    store[key] = store[key] + np.float32(3e-4)  # R's entries are at most 1
    path = _write(tmp_path, store)
    assert V.main([path]) == 1
    assert V.main([path, "--atol", "1e-3"]) == 0
    assert V.main([path, "--rtol", "1e-3", "--atol", "0"]) == 1  # entries near 0 stay strict
    capsys.readouterr()
    with pytest.raises(SystemExit):
        V.main([path, "--atol", "-1"])


def test_sampler_cpu_border_quirk_is_recognised(tmp_path):
    """A dump from MatConvNet's CPU sampler: samples with floor = -1 give 0."""
    rng = np.random.default_rng(5)
    height, width = 5, 4
    X = _f32(rng, height, width, 2, 1)
    # Vertical: half a pixel before the first centre (CPU quirk), a centre, inside.
    vy = np.array([-1 - 0.5 * 2 / (height - 1), -1.0, 0.3], np.float32)
    vx = np.array([-0.2, 1.0, -1 - 0.3 * 2 / (width - 1)], np.float32)
    grid = np.stack(np.meshgrid(vy, vx, indexing="ij"))[..., None].astype(np.float32)
    quirk = V.sampler_cpu_quirk_mask(grid, height, width)
    assert quirk[..., 0].tolist() == [
        [True, True, True],
        [False, False, True],
        [False, False, True],
    ]
    cpu_grid = np.where(quirk[None], np.float32(-4), grid)
    dY = _f32(rng, 3, 3, 2, 1)
    store = {"meta__format": V.DUMP_FORMAT}
    _add_case(store, "vl_nnbilinearsampler", "border", {"X": X, "grid": cpu_grid}, dY)
    store["vl_nnbilinearsampler__border__in_grid"] = grid  # the grid the CPU code saw
    report = V.verify_dump(V.load_dump(_write(tmp_path, store)))
    assert report.passed
    assert all(r.note == "sampler_cpu_border" for r in report.rows)
    assert report.rows[0].detail == "5 samples in the CPU border strip"
    # Without the quirk those samples are non-zero: the CUDA semantics we follow.
    assert np.abs(M.vl_nnbilinearsampler(X, grid).transpose(0, 1, 3, 2)[quirk]).min() > 0
    # Any other difference is still a failure.
    store["vl_nnbilinearsampler__border__out_dX"] = store[
        "vl_nnbilinearsampler__border__out_dX"
    ] + np.float32(0.01)
    report = V.verify_dump(V.load_dump(_write(tmp_path, store, "bad.mat")))
    assert not report.passed
    assert [r.output for r in report.rows if not r.passed] == ["dX"]


def _r2R_store(r, dzdy, dr_original):
    store = {"meta__format": V.DUMP_FORMAT}
    _add_case(store, "vl_nnr2R", "case", {"r": r}, dzdy)
    store["vl_nnr2R__case__out_dr"] = dr_original
    return store


def test_r2R_small_angle_precision_loss_is_recognised(tmp_path):
    """The original's closed form divides by |r|^2: at |r| = 1e-4 an error of
    2 eps max|dCdR| / |r| (2.4e-3 here) is its single-precision loss, not ours."""
    r = np.array([1e-4, 0.0, 0.0, 0.3, -0.2, 0.1], np.float32).reshape(1, 1, 3, 2, order="F")
    dzdy = np.zeros((1, 3, 3, 2), np.float32)
    dzdy[0, 1, 2, :] = 1.0  # picks dR23/dr, of order 1 for both entries
    exact = V.r2R_backward64(r, dzdy)
    np.testing.assert_allclose(exact[0, 0, 0, 0], -1.0, atol=1e-6)  # d(-sin r1)/dr1 at 0
    error = 2 * EPS32 / 1e-4
    imprecise = exact.astype(np.float32).copy()
    imprecise[0, 0, 0, 0] += error
    report = V.verify_dump(V.load_dump(_write(tmp_path, _r2R_store(r, dzdy, imprecise))))
    assert report.passed
    assert _rows(report, "vl_nnr2R", "dr")[0].note == "r2R_precision"
    # The same error on the entry with |r| = 0.37 is a real failure ...
    wrong = exact.astype(np.float32).copy()
    wrong[0, 0, 0, 1] += error
    report = V.verify_dump(V.load_dump(_write(tmp_path, _r2R_store(r, dzdy, wrong), "b.mat")))
    assert not report.passed
    # ... and so is an error beyond the closed form's cancellation bound at small |r|.
    too_wrong = exact.astype(np.float32).copy()
    too_wrong[0, 0, 0, 0] += 10 * error
    report = V.verify_dump(V.load_dump(_write(tmp_path, _r2R_store(r, dzdy, too_wrong), "c.mat")))
    assert not report.passed


def test_r2R_referee_matches_rodrigues_derivative():
    """The float64 referee against the closed form d(R)/dr at r = 0: [e_i]x."""
    dzdy = np.random.default_rng(1).standard_normal((1, 3, 3, 1))
    got = V.r2R_backward64(np.zeros((1, 1, 3, 1)), dzdy)
    generators = [
        np.array([[0, 0, 0], [0, 0, -1], [0, 1, 0]]),
        np.array([[0, 0, 1], [0, 0, 0], [-1, 0, 0]]),
        np.array([[0, -1, 0], [1, 0, 0], [0, 0, 0]]),
    ]
    want = [np.sum(dzdy[0, :, :, 0] * g) for g in generators]
    np.testing.assert_allclose(got[0, 0, :, 0], want, atol=1e-8)


def test_unusable_input_exits_2(tmp_path, capsys):
    assert V.main([str(tmp_path / "missing.mat")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "junk.mat").write_bytes(b"not a mat file")
    assert V.main([str(tmp_path / "junk.mat")]) == 2
    assert "cannot read" in capsys.readouterr().err
    path = _write(tmp_path, {"x": np.zeros(3)}, "other.mat")
    assert V.main([path]) == 2
    assert "meta__format" in capsys.readouterr().err
    path = _write(tmp_path, {"meta__format": V.DUMP_FORMAT, "vl_nnr2R__b1": np.zeros(3)}, "k.mat")
    assert V.main([path]) == 2
    assert "malformed key 'vl_nnr2R__b1'" in capsys.readouterr().err
    path = _write(
        tmp_path,
        {"meta__format": V.DUMP_FORMAT, "vl_nnr2R__b1__in_r": np.zeros((1, 1, 3))},
        "m.mat",
    )
    assert V.main([path]) == 2
    assert "missing out_y" in capsys.readouterr().err


def test_unknown_layers_are_listed_as_skipped(native_dump, tmp_path, capsys):
    store = dict(native_dump)
    store["vl_nnsomething__b1__in_X"] = np.zeros(3)
    assert V.main([_write(tmp_path, store)]) == 0
    assert "vl_nnsomething/b1 (no such layer" in capsys.readouterr().out


def test_dump_script_covers_every_layer_verify_knows():
    script = (REPO / "tools" / "matconvnet" / "dump_reference.m").read_text()
    start = script.index("needed = {")
    end = script.index("};", start)
    needed, body = script[start:end], script[end:]
    for layer in V.LAYERS:
        assert f"'{layer}'" in needed, layer
        assert f"'{layer}__" in body or f"'{layer}'" in body, layer


def test_command_line_entry_point(tmp_path):
    """`python -m jax3dmmstn verify` reaches verify.main (bad input: no jax import)."""
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"nope")
    result = subprocess.run(
        [sys.executable, "-m", "jax3dmmstn", "verify", str(junk)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "verify: error: cannot read" in result.stderr
