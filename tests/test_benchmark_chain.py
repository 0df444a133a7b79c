"""The benchmarks' PyTorch chain computes what ours does; the chain benchmark's figures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax3dmmstn.benchmarks import chain, timing
from jax3dmmstn.facemodel.synthetic import synthetic_face_model


@pytest.fixture(scope="module")
def model():
    return synthetic_face_model(resolution=24)


def test_torch_chain_equals_ours(model):
    torch = pytest.importorskip("torch")
    from jax3dmmstn.benchmarks import torch_reference

    inputs = chain.make_inputs(model, 4)
    args = [jnp.asarray(inputs[k]) for k in ("theta", "image", "target", "visible")]
    (total, (parts, texture, mask)), grad = jax.value_and_grad(chain.jax_chain(model), has_aux=True)(
        *args
    )
    ours = dict(total=total, parts=parts, texture=texture, mask=mask, grad=grad)
    torch_chain = torch_reference.make_chain(
        torch, model.mean, model.basis, model.faces, model.landmarks["aflw21"], (224, 224),
        accumulate=True,
    )
    theta = torch.tensor(inputs["theta"], requires_grad=True)
    image = torch.tensor(inputs["image"]).permute(0, 3, 1, 2).contiguous()
    t_total, t_out = torch_chain(
        theta, image, torch.tensor(inputs["target"]), torch.tensor(inputs["visible"])
    )
    (t_grad,) = torch.autograd.grad(t_total, theta)
    assert 0.3 < float(ours["mask"].mean()) < 1.0  # some texels hidden
    np.testing.assert_array_equal(t_out["mask"].numpy()[:, 0], np.asarray(ours["mask"])[..., 0])
    np.testing.assert_allclose(
        t_out["texture"].detach().permute(0, 2, 3, 1).numpy(), ours["texture"], atol=2e-2  # 0-255
    )
    np.testing.assert_allclose(t_out["losses"].detach().numpy(), ours["parts"], rtol=1e-4)
    np.testing.assert_allclose(t_grad.numpy(), ours["grad"], rtol=2e-3, atol=1e-3)


def test_chain_benchmark_reports_time_and_memory(model):
    torch = timing.import_torch()
    row = chain.measure(model, 2, repeats=2, warmup=1, torch=torch)
    assert row["jax_s"] > 0 and row["jax_mask_s"] > 0
    assert row["memory"]["peak_bytes"] >= row["memory"]["argument_size_in_bytes"] > 2 * 224 * 224 * 3
    if torch is not None:
        assert row["ratio"] == pytest.approx(row["jax_s"] / row["torch_s"])
        assert set(row["torch_s_by_threads"]) >= {1}
    text = chain.table([row])
    assert text.splitlines()[2].startswith("| 2 | ")


def test_interleaved_alternates_and_takes_medians():
    calls = []
    times = timing.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, 1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert set(times) == {"a", "b"} and times["a"]["repeats"] == 3
    summary = timing.torch_summary(
        {"torch_1": dict(median_s=2.0), "torch_2": dict(median_s=4.0)}, jax_s=1.0
    )
    assert summary["torch_threads"] == 1 and summary["ratio"] == 0.5
