"""Registered statistics: each accumulator against a direct computation on all the data."""

import pytest
import torch

from prunelab import arch
from prunelab.engine import gather_gradients
from prunelab.methods.statistics import STATISTICS, Accumulator, accumulator, register_statistic
from prunelab.testing import tiny_model


def _batches(width=12, sizes=(7, 1, 30, 0, 5), offset=50.0):
    # A large common offset: a naive Σx² − (Σx)²/N variance would lose its digits to it.
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(n, width, generator=gen) * torch.linspace(0.1, 3, width) + offset
            for n in sizes]


def _accumulate(name, batches):
    acc = accumulator(name)(batches[0].shape[1], "cpu")
    for x in batches:
        acc.update(x)
    return acc.result()


def test_builtin_statistics_are_registered_with_what_they_read():
    reads = {name: cls.reads for name, cls in STATISTICS.items()}
    assert reads["input_sq_sum"] == reads["hessian"] == reads["input_mean_var"] == "input"
    assert reads["output_sq_sum"] == "output" and reads["grad_sq_sum"] == "weight_grad"
    with pytest.raises(ValueError, match="no statistic 'nope'"):
        accumulator("nope")


def test_input_sq_sum_and_hessian_equal_their_definitions():
    batches = _batches(offset=0.0)
    x = torch.cat(batches)
    torch.testing.assert_close(_accumulate("input_sq_sum", batches), (x * x).sum(0))
    torch.testing.assert_close(_accumulate("hessian", batches), 2 * x.t() @ x / x.shape[0])
    torch.testing.assert_close(_accumulate("output_sq_sum", batches), (x * x).sum(0))


def test_mean_and_variance_equal_torch_on_the_concatenated_inputs():
    batches = _batches()
    x = torch.cat(batches).double()
    mean, var = _accumulate("input_mean_var", batches)
    torch.testing.assert_close(mean.double(), x.mean(0), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(var.double(), x.var(0), rtol=1e-4, atol=1e-6)


def test_statistics_of_no_tokens_are_zero():
    empty = [torch.zeros(0, 4)]
    assert not _accumulate("hessian", empty).any()
    assert not _accumulate("input_mean_var", empty).var.any()


def test_a_new_statistic_is_one_small_class():
    @register_statistic
    class InputAbsMax(Accumulator):
        name = "test_input_abs_max"

        def __init__(self, width, device):
            super().__init__(width, device)
            self.value = torch.zeros(width)

        def update(self, x):
            if len(x):
                torch.maximum(self.value, x.abs().amax(0), out=self.value)

        def result(self):
            return self.value

    try:
        batches = _batches(offset=0.0)
        assert torch.equal(_accumulate("test_input_abs_max", batches),
                           torch.cat(batches).abs().amax(0))
    finally:
        del STATISTICS["test_input_abs_max"]
    with pytest.raises(ValueError, match="reads"):
        register_statistic(type("Bad", (Accumulator,), {"name": "bad", "reads": "weights"}))


def test_gradients_equal_per_window_backward_passes():
    model = tiny_model("llama")
    windows = torch.randint(4, 260, (3, 16), generator=torch.Generator().manual_seed(2))
    model.model.embed_tokens.weight.requires_grad_(False)  # the user's choice is restored after
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    got = gather_gradients(model, windows, ["grad_sq_sum"])

    layers = arch.named_prunable_layers(model)
    assert set(got) == set(layers)
    expected = {name: torch.zeros_like(m.weight) for name, m in layers.items()}
    for window in windows:
        model.zero_grad()
        model(input_ids=window[None], labels=window[None], use_cache=False).loss.backward()
        for name, m in layers.items():
            expected[name] += m.weight.grad ** 2
    model.zero_grad(set_to_none=True)
    for name in layers:
        assert got[name].n_tokens == windows.numel()
        torch.testing.assert_close(got[name]["grad_sq_sum"], expected[name])
        assert got[name]["grad_sq_sum"].abs().sum() > 0

    # Nothing was trained, and the requires_grad flags are as they were.
    for n, p in model.named_parameters():
        assert torch.equal(p, weights[n]), n
        assert p.requires_grad == (n != "model.embed_tokens.weight"), n
