import networkx as nx
import pytest
import torch

from optkit.errors import ConfigError
from optkit.ir.ops import op_kind
from optkit.ir.program import Annotations, module_path


def test_find_by_kind_and_module(transformer_program):
    p = transformer_program
    linears = p.find(kind="linear")
    assert {module_path(n) for n in linears} == {
        "blocks.0.attn.qkv",
        "blocks.0.attn.proj",
        "blocks.1.attn.qkv",
        "blocks.1.attn.proj",
        "out",
    }
    assert [module_path(n) for n in p.find(kind="linear", module="blocks.1")] == [
        "blocks.1.attn.qkv",
        "blocks.1.attn.proj",
    ]
    assert len(p.find(kind="linear", module="blocks.*.attn.qkv")) == 2
    assert len(p.find(kind="linear", skip=["blocks"])) == 1
    assert all(op_kind(n) == "norm" for n in p.find(kind="norm"))


def test_find_unknown_kind_lists_known(transformer_program):
    with pytest.raises(ConfigError, match="known: .*linear"):
        transformer_program.find(kind="lineer")


def test_blocks_have_inputs_and_outputs(transformer_program):
    blocks = transformer_program.blocks()
    assert [b.path for b in blocks] == ["blocks.0", "blocks.1"]
    first, second = blocks
    assert len(first.outputs) == 1 and len(second.inputs) >= 1
    # The second block reads the residual stream written after the first block.
    assert all(n not in second.nodes for n in second.inputs)
    assert any(op_kind(n) == "norm" for n in first.nodes)


def test_block_pattern(conv_program):
    assert conv_program.block_paths() == ["blocks.0", "blocks.1"]
    assert conv_program.block_paths(r"blocks\.\d+\.0") == ["blocks.0.0", "blocks.1.0"]
    with pytest.raises(ConfigError, match="not a valid regex"):
        conv_program.block_paths("(")


def test_attention_sites(transformer_program):
    sites = transformer_program.attention_sites()
    # Two explicit softmax attentions and one fused SDPA call.
    assert len(sites) == 3


def test_networkx_view(conv_program):
    g = conv_program.to_networkx()
    assert nx.is_directed_acyclic_graph(g)
    convs = [n for n, d in g.nodes(data=True) if d["kind"] == "conv"]
    assert len(convs) == 2
    assert g.nodes[convs[0]]["module"] == "blocks.0.0"


def test_clone_is_independent(conv_program):
    clone = conv_program.clone()
    next(clone.graph_module.parameters()).data.zero_()
    clone.annotations.precision["head"] = "w8a8"
    assert not torch.allclose(clone.run(), conv_program.run())
    assert conv_program.annotations.precision == {}


def test_annotations_round_trip_and_unknown_keys():
    a = Annotations(precision={"head": "w8a8"}, figures={"x": 1})
    assert Annotations.from_dict(a.to_dict()) == a
    with pytest.raises(ConfigError, match="unknown annotation keys"):
        Annotations.from_dict({"precison": {}})
