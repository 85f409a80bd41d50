import torch
from torch import nn

from optkit.ir import flops
from optkit.ir.capture import capture


def test_linear_and_conv_flops_exact():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(4 * 5 * 5, 7))
    p = capture(model, (torch.randn(2, 3, 5, 5),))
    costs = {c.op: c for c in flops.node_costs(p)}
    assert costs["conv2d"].flops == 2 * (2 * 4 * 5 * 5) * (3 * 3 * 3)
    assert costs["linear"].flops == 2 * 2 * 7 * 100 + 2 * 7  # multiply-adds + bias
    assert costs["linear"].bytes == 4 * (2 * 100 + 7 * 100 + 7 + 2 * 7)


def test_sdpa_flops():
    class M(nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    q = torch.randn(1, 2, 4, 8)
    p = capture(M(), (q, q, q))
    (cost,) = [c for c in flops.node_costs(p) if c.flops]
    assert cost.flops == 2 * (2 * 4 * 4 * 8 * 2 + 5 * 4 * 4)


def test_einsum_flops():
    class M(nn.Module):
        def forward(self, a, b):
            return torch.einsum("bij,bjk->bik", a, b)

    p = capture(M(), (torch.randn(3, 4, 5), torch.randn(3, 5, 6)))
    assert flops.total_flops(p) == 2 * 3 * 4 * 5 * 6


def test_by_block_sums_to_total(transformer_program):
    by_block = flops.flops_by_block(transformer_program)
    assert sum(by_block.values()) == flops.total_flops(transformer_program)
    assert by_block["blocks.0"] == by_block["blocks.1"] > 0


def test_parameters_and_activation_memory(conv_program):
    n = sum(p.numel() for p in conv_program.graph_module.parameters())
    assert flops.parameter_count(conv_program) == n
    assert flops.parameter_bytes(conv_program) == 4 * n
    # At least the input and the first conv output are alive together.
    assert flops.peak_activation_bytes(conv_program) >= 4 * (2 * 3 * 64 + 2 * 8 * 64)


def test_quantized_kernels_count_like_their_float_ops():
    from optkit.ir.ops import op_name
    from optkit.pipeline import PassManager, build_passes
    from tests.models import conv_net

    model, inputs = conv_net()
    program = capture(model, inputs)
    quantized = PassManager(build_passes(["ptq"])).run(program).program
    assert any(op_name(n) == "conv2d_w8a8" for n in quantized.graph.nodes)
    assert flops.total_flops(quantized) == flops.total_flops(program)


def test_tied_weights_count_once():
    from tests.passes.tiny_lm import TinyLM, lm_program

    tied, untied = lm_program(tied=True), lm_program(tied=False)
    table = 1024 * 96
    assert flops.parameter_count(tied) == flops.parameter_count(untied) - table
    assert flops.parameter_bytes(tied) == flops.parameter_bytes(untied) - 4 * table
    # Two Parameters over one storage (a tie made by sharing `.data`) are one tensor too.
    model = TinyLM(tied=False)
    model.lm_head.weight = nn.Parameter(model.embed.weight.detach())
    shared = capture(model, (torch.randint(0, 1024, (2, 8)),))
    names = set(shared.parameters())
    assert {"embed.weight", "lm_head.weight"} <= names
    unique = flops.unique_parameters(shared)
    assert len(unique) == len(names) - 1 and len({"embed.weight", "lm_head.weight"} & set(unique)) == 1
    assert flops.parameter_count(shared) == flops.parameter_count(tied)
