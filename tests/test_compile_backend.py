"""`torch.compile(model, backend="optkit")`: numerics against eager, PTQ, graph breaks, fallbacks,
options checked at compile time."""

import logging

import pytest
import torch
from torch import nn
from torch._dynamo.exc import BackendCompilerFailed

from optkit.compile_backend import CompileOptions, backend
from optkit.errors import ConfigError, UnknownNameError
from optkit.metrics import sqnr_db
from tests import models

LOGGER = "optkit.compile_backend"


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class BranchOnValue(nn.Module):
    """A `.item()`-dependent branch: dynamo breaks the graph there and compiles each side."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(16, 16)
        self.up = nn.Linear(16, 8)
        self.down = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.inp(x))
        if h.sum().item() > 0:
            return self.up(h), h * 2
        return self.down(h), h


class UsesBessel(nn.Module):
    """`special_i1` has no TVM converter: that graph has to fall back."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.i1(self.fc(x))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compiled(model: nn.Module, *inputs: torch.Tensor, **compile_kwargs):
    """Eager and compiled outputs, the compiled model called twice (the second call hits dynamo's cache)."""
    model = model.eval()
    compiled = torch.compile(model, **compile_kwargs)
    with torch.no_grad():
        expected = model(*inputs)
        compiled(*inputs)
        return expected, compiled(*inputs)


def _compiled_graphs(caplog) -> int:
    return sum("compiled a graph" in r.getMessage() for r in caplog.records if r.name == LOGGER)


def test_backend_is_registered_under_its_name():
    assert "optkit" in torch._dynamo.list_backends()


def test_mlp_matches_eager(caplog):
    caplog.set_level(logging.INFO, LOGGER)
    x = torch.randn(4, 16)
    expected, got = _compiled(MLP(), x, backend="optkit")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert _compiled_graphs(caplog) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_conv_net_matches_eager(caplog):
    caplog.set_level(logging.INFO, LOGGER)
    model, (x,) = models.conv_net()
    expected, got = _compiled(model, x, backend="optkit")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert _compiled_graphs(caplog) == 1


def test_outputs_survive_the_next_call():
    model = MLP().eval()
    compiled = torch.compile(model, backend="optkit")
    a, b = torch.randn(4, 16), torch.randn(4, 16)
    with torch.no_grad():
        first = compiled(a)
        kept = first.clone()
        compiled(b)
        torch.testing.assert_close(first, kept, rtol=0, atol=0)
        torch.testing.assert_close(first, model(a), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "compile_kwargs",
    [
        {"backend": "optkit", "options": {"passes": ["ptq"], "pass_options": {"ptq": {"wbits": 8}}}},
        {"backend": backend(["ptq"])},
    ],
    ids=["options", "factory"],
)
def test_ptq_stays_close_to_eager(compile_kwargs, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    x = torch.randn(16, 16)
    expected, got = _compiled(MLP(), x, **compile_kwargs)
    assert _compiled_graphs(caplog) == 1
    assert not torch.equal(got, expected)  # quantized for real
    assert sqnr_db(expected, got) >= 25.0


def test_eager_target_runs_the_optimized_graph_in_pytorch(caplog):
    caplog.set_level(logging.INFO, LOGGER)
    x = torch.randn(4, 16)
    options = {"passes": ["cleanup"], "target": "eager"}
    expected, got = _compiled(MLP(), x, backend="optkit", options=options)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert any("for eager" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_graph_break_compiles_each_graph_and_matches(caplog):
    caplog.set_level(logging.INFO, LOGGER)
    x = torch.randn(4, 16)
    expected, got = _compiled(BranchOnValue(), x, backend="optkit")
    assert isinstance(got, tuple) and len(got) == 2
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    assert _compiled_graphs(caplog) >= 2  # the graph before .item() and the branch after it


def test_graph_tvm_cannot_lower_falls_back_naming_the_op(caplog):
    x = torch.randn(3, 4)
    with caplog.at_level(logging.WARNING, LOGGER):
        expected, got = _compiled(UsesBessel(), x, backend="optkit")
    torch.testing.assert_close(got, expected)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "bessel_i1" in warnings[0]


def test_fallback_false_raises_instead():
    compiled = torch.compile(UsesBessel().eval(), backend=backend(fallback=False))
    with pytest.raises(BackendCompilerFailed, match="bessel_i1"), torch.no_grad():
        compiled(torch.randn(3, 4))


def test_dynamic_shapes_fall_back_to_eager(caplog):
    model = MLP().eval()
    compiled = torch.compile(model, backend="optkit", dynamic=True)
    x = torch.randn(5, 16)
    with caplog.at_level(logging.WARNING, LOGGER), torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    assert any("dynamic=False" in r.getMessage() for r in caplog.records)


def test_inputs_needing_gradients_fall_back_to_eager(caplog):
    model = MLP()
    compiled = torch.compile(model, backend="optkit")
    x = torch.randn(4, 16)
    with caplog.at_level(logging.WARNING, LOGGER):
        out = compiled(x)
    out.sum().backward()  # still differentiable: the graph ran in PyTorch
    assert model.fc1.weight.grad is not None
    assert any("torch.no_grad()" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"passes": ["no-such-pass"]}, UnknownNameError, "unknown pass 'no-such-pass'; known: .*ptq"),
        ({"target": "tpu"}, UnknownNameError, "unknown target 'tpu'; known: cpu, cuda, eager"),
        ({"passes": ["ptq"], "pass_options": {"ptq": {"wbits": 3}}}, ConfigError, "wbits"),
        ({"pases": ["ptq"]}, ConfigError, "unknown optkit backend option.*pases.*allowed: passes"),
    ],
    ids=["pass", "target", "pass-option", "key"],
)
def test_bad_options_fail_at_compile_time(options, error, match):
    compiled = torch.compile(MLP().eval(), backend="optkit", options=options)
    with pytest.raises(BackendCompilerFailed) as caught, torch.no_grad():
        compiled(torch.randn(4, 16))
    assert isinstance(caught.value.inner_exception, error)
    assert caught.value.inner_exception.__class__.__name__ in str(caught.value)
    with pytest.raises(error, match=match):
        CompileOptions.from_dict(options)


def test_factory_checks_options_when_called():
    with pytest.raises(UnknownNameError, match="unknown pass 'nope'"):
        backend(["nope"])
    with pytest.raises(UnknownNameError, match="unknown target 'tpu'"):
        backend(target="tpu")
    with pytest.raises(ConfigError, match="list of pass names"):
        backend("ptq")


def test_inductor_mode_is_refused():
    compiled = torch.compile(MLP().eval(), backend="optkit", mode="max-autotune")
    with pytest.raises(BackendCompilerFailed, match="mode='max-autotune'"), torch.no_grad():
        compiled(torch.randn(4, 16))
