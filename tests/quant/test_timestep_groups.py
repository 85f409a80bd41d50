"""`ptq` with `timestep_groups`: activation scales per timestep range, picked in the graph."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optkit.errors import ConfigError, PassError
from optkit.ir.capture import capture
from optkit.ir.onnx_io import export_onnx
from optkit.pipeline import PassManager, build_passes
from optkit.quant.timestep_groups import TimestepGroups, rows_by_group, split_timesteps
from tests import models

T_EXAMPLE = torch.tensor([10.0, 900.0])  # two rows in different groups


class GrowingDenoiser(nn.Module):
    """A denoiser (x, t) whose layers after the first see inputs that grow with t (x_t is
    normalized per sample first: the untrained model's own trajectory would blow x_t up)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(2, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.body = nn.Linear(64, 32)
        self.out = nn.Linear(32, 32)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        grow = 1 + t[:, None, None, None] / 100  # (B, 1, 1, 1)
        x = x * torch.rsqrt(x.pow(2).mean((1, 2, 3), keepdim=True))
        h = torch.relu(self.conv_in(x)) * grow  # (B, 4, 4, 4)
        h = (self.conv(h) * grow).flatten(1)  # (B, 64)
        return self.out(torch.relu(self.body(h))).reshape(x.shape)


def _program():
    torch.manual_seed(0)
    program = capture(GrowingDenoiser().eval(), (torch.randn(2, 2, 4, 4), T_EXAMPLE), name="growing")
    return program.with_workload(models.diffusion_workload(steps=8))


def _quantize(program, groups, **opts):
    # The output layer is quantized too: four layers with tables.
    treatments = ("time-embedding", "input-layer")
    opts = {
        "timestep_groups": groups,
        "calibration_batches": 1,
        "min_sqnr_db": 0.0,
        "treatments": treatments,
        **opts,
    }
    return PassManager(build_passes(["ptq", "dce"], {"ptq": opts})).run(program)


@pytest.fixture(scope="module")
def grouped():
    return _quantize(_program(), 4).program


def _quantized_nodes(program):
    ops = (torch.ops.optkit.conv2d_w8a8.default, torch.ops.optkit.linear_w8a8.default)
    return [n for n in program.graph.nodes if n.target in ops]


def _table(program, node, arg):
    # arg 1 / 2 of a quantized op: reshape(index_select(get_attr(table), 0, index))
    select = node.args[arg].args[0]
    assert select.target == torch.ops.aten.index_select.default
    return getattr(program.graph_module, select.args[0].target)


def _buffer(program, node, arg):
    return getattr(program.graph_module, node.args[arg].target)


def test_split_timesteps_gives_equal_step_counts_and_rows_follow_their_timestep():
    batches = [(torch.zeros(1, 3), torch.tensor([float(t)])) for t in (700, 0, 100, 600, 300, 200, 500, 400)]
    groups = split_timesteps(batches, 4)
    assert groups.boundaries.tolist() == [150.0, 350.0, 550.0]
    assert groups.group_of(torch.tensor([0.0, 150.0, 349.0, 999.0])).tolist() == [0, 1, 1, 3]
    x = torch.arange(6.0).reshape(2, 3)
    rows = rows_by_group([(x, torch.tensor([20.0, 400.0]))], TimestepGroups(torch.tensor([300.0])))
    assert [len(r) for r in rows] == [1, 1]
    assert torch.equal(rows[0][0][0], x[:1]) and torch.equal(rows[1][0][0], x[1:])


def test_one_group_keeps_one_scale_per_layer():
    program = _quantize(_program(), 1).program
    assert "index_select" not in program.op_counts()
    for node in _quantized_nodes(program):
        assert _buffer(program, node, 1).dim() == 0


def test_tables_differ_across_groups_and_grow_with_t(grouped):
    nodes = _quantized_nodes(grouped)
    assert len(nodes) == 4  # conv_in reads x_t normalized, not x_t: it is quantized too
    assert grouped.op_counts()["index_select"] == 8  # a scale and a zero-point row per layer
    for node in nodes[1:3]:  # the inputs that the model scales by (1 + t / 100)
        scales = _table(grouped, node, 1)
        assert scales.shape == (4,)
        assert bool((scales[1:] > scales[:-1]).all()), scales
        assert float(scales[-1] / scales[0]) > 2.0


def _fake_quant(v, node, program, group):
    scale, zero = _table(program, node, 1)[group], _table(program, node, 2)[group].float()
    shape = (-1,) + (1,) * (v.dim() - 1)
    scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (torch.clamp(torch.round(v / scale) + zero, -128, 127) - zero) * scale


def _reference(program, x, t):
    """The quantized Program's arithmetic, written out with each row's group read in eager."""
    bounds = next(
        getattr(program.graph_module, n.target)
        for n in program.graph.nodes
        if "timestep_groups" in str(n.target)
    )
    group = TimestepGroups(bounds).group_of(t)
    conv_in, conv, body, out = _quantized_nodes(program)

    def conv2d(h, node):
        w = _buffer(program, node, 3).float() * _buffer(program, node, 4).reshape(-1, 1, 1, 1)
        return F.conv2d(_fake_quant(h, node, program, group), w, _buffer(program, node, 6), padding=1)

    grow = 1 + t[:, None, None, None] / 100
    h = torch.relu(conv2d(x * torch.rsqrt(x.pow(2).mean((1, 2, 3), keepdim=True)), conv_in)) * grow
    h = (conv2d(h, conv) * grow).flatten(1)
    for node in (body, out):
        w = _buffer(program, node, 3).float() * _buffer(program, node, 4)  # (K, N)
        h = _fake_quant(h, node, program, group) @ w + _buffer(program, node, 7)
        h = torch.relu(h) if node is body else h
    return h.reshape(x.shape)


@pytest.mark.parametrize("t", [[10.0, 900.0], [999.0, 0.0], [500.0, 500.0]])
def test_each_row_reads_the_scales_of_its_timestep_group(grouped, t):
    x = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(t)
    got = grouped.run(x, t)
    torch.testing.assert_close(got, _reference(grouped, x, t), rtol=1e-4, atol=1e-5)
    for i in range(2):  # a row's result does not depend on the other rows' timesteps
        alone = grouped.run(x[i : i + 1].expand(2, -1, -1, -1), t[i].expand(2))
        torch.testing.assert_close(got[i], alone[0], rtol=1e-5, atol=1e-6)


def test_onnx_export_runs_in_onnx_runtime_and_matches(tmp_path, grouped):
    figures = export_onnx(grouped, tmp_path / "grouped.onnx")
    assert figures["max_abs_error"] < 1e-5 * max(1.0, figures["output_abs_max"])


def test_lowers_through_tvm_and_matches(grouped):
    pytest.importorskip("tvm")
    from optkit.backends import lower

    artifact = lower(grouped, "cpu", num_cores=1)
    (got,) = artifact.run(*grouped.example_inputs)
    torch.testing.assert_close(torch.as_tensor(got), grouped.run(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"timestep_groups": 0}, "timestep_groups must be >= 1"),
        ({"timestep_groups": 2, "abits": 16}, "needs abits=8"),
    ],
)
def test_bad_timestep_groups(opts, match):
    with pytest.raises(ConfigError, match=match):
        build_passes(["ptq"], {"ptq": opts})


def test_timestep_groups_need_a_sampled_model(transformer_program):
    with pytest.raises(PassError, match="needs a diffusion model sampled by its workload") as err:
        _quantize(transformer_program, 2)
    assert isinstance(err.value.__cause__, ConfigError)


def test_timestep_groups_need_as_many_calibration_timesteps():
    with pytest.raises(PassError, match="needs at least 2 distinct calibration timesteps, got 1"):
        _quantize(_program(), 2, calibration="single-step")


def test_w4a8_activations_read_their_group_rows():
    result = _quantize(_program(), 2, wbits=4, granularity="group", group_size=16)
    program = result.program
    qdq = [n for n in program.graph.nodes if n.target == torch.ops.optkit.act_qdq.default]
    assert len(qdq) == 2  # body and out; the convs stay int8 (no int4 conv kernel)
    for node in qdq:
        assert _table(program, node, 1).shape == (2,)
    for node in _quantized_nodes(program):
        assert _table(program, node, 1).shape == (2,)
    x = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([5.0, 950.0])
    got = program.run(x, t)
    for i in range(2):
        alone = program.run(x[i : i + 1].expand(2, -1, -1, -1), t[i].expand(2))
        torch.testing.assert_close(got[i], alone[0], rtol=1e-5, atol=1e-6)
    assert result.records[0].figures["timestep_group_boundaries"].value
