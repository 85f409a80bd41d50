from dataclasses import dataclass
from typing import Literal

import pytest
import torch

from optkit.errors import ConfigError, PassError, UnknownNameError
from optkit.pipeline import (
    Pass,
    PassConfig,
    PassManager,
    PassResult,
    Tolerance,
    build_passes,
    expand,
    get_pass,
    register_pass,
)


@dataclass(frozen=True)
class ScaleConfig(PassConfig):
    factor: float = 1.0
    mode: Literal["weights", "none"] = "weights"
    skip: tuple[str, ...] = ()


@register_pass("test-scale-weights", ScaleConfig)
class ScaleWeights(Pass):
    """Multiplies every parameter by `factor` (a test pass that can break numerics)."""

    tolerance = Tolerance(min_sqnr_db=30.0)

    def run(self, program):
        for p in program.graph_module.parameters():
            p.data.mul_(self.config.factor)
        return PassResult(program, modified=self.config.factor != 1.0)


@dataclass(frozen=True)
class NoConfig(PassConfig):
    pass


@register_pass("test-break-graph", NoConfig)
class BreakGraph(Pass):
    """Erases the output node's producer without rewiring: the graph no longer lints."""

    def run(self, program):
        out = next(n for n in program.graph.nodes if n.op == "output")
        producer = out.all_input_nodes[0]
        for node in list(program.graph.nodes):
            if node is producer:
                node.args = (node.args[0], "not a tensor")
        return PassResult(program, modified=True)


@register_pass("test-needs-blocks", NoConfig)
class NeedsManyBlocks(Pass):
    """Refuses programs with fewer than 10 blocks."""

    def requires(self, program):
        n = len(program.block_paths())
        return None if n >= 10 else f"needs at least 10 blocks, the model has {n}"

    def run(self, program):
        return PassResult(program, modified=False)


@register_pass("test-rebind-weights", NoConfig)
class RebindWeights(Pass):
    """Points every weight read at a fresh copy, leaving the original attributes dead."""

    def run(self, program):
        gm = program.graph_module
        for node in [n for n in program.graph.nodes if n.op == "get_attr"]:
            target = str(node.target)
            name = target.replace(".", "_") + "_copy"
            gm.register_buffer(
                name,
                getattr(gm.get_submodule(target.rpartition(".")[0]), target.rpartition(".")[2])
                .detach()
                .clone(),
            )
            with program.graph.inserting_after(node):
                node.replace_all_uses_with(program.graph.get_attr(name))
        gm.recompile()
        return PassResult(program, modified=True)


def test_unknown_pass_lists_known_ones():
    with pytest.raises(UnknownNameError) as err:
        get_pass("ptqq")
    assert "unknown pass 'ptqq'" in str(err.value)
    assert "dce" in str(err.value) and "cleanup (pipeline)" in str(err.value)


def test_pipelines_expand():
    assert expand(["cleanup", "dce"]) == ["fold-constants", "fold-batchnorm", "dce", "dce"]


def test_config_from_dict_checks_keys_and_values():
    assert ScaleConfig.from_dict({"factor": 2, "skip": ["a"]}) == ScaleConfig(factor=2.0, skip=("a",))
    with pytest.raises(ConfigError, match="unknown option.*factr.*allowed: factor, mode, skip"):
        ScaleConfig.from_dict({"factr": 2})
    with pytest.raises(ConfigError, match="factor must be float"):
        ScaleConfig.from_dict({"factor": "big"})
    with pytest.raises(ConfigError, match="mode must be one of 'weights', 'none'"):
        ScaleConfig.from_dict({"mode": "all"})


def test_build_passes_rejects_options_for_absent_passes():
    with pytest.raises(ConfigError, match="options given for pass.*dce"):
        build_passes(["fold-constants"], {"dce": {}})
    with pytest.raises(ConfigError, match="no passes"):
        build_passes([])


def test_manager_records_and_checks(conv_program):
    result = PassManager(
        build_passes(["test-scale-weights", "cleanup"], {"test-scale-weights": {"factor": 1.0}})
    ).run(conv_program)
    names = ["test-scale-weights", "fold-constants", "fold-batchnorm", "dce"]
    assert [r.name for r in result.records] == names
    assert result.program.annotations.history == names
    assert all(r.check["max_abs_error"] == 0.0 for r in result.records)


def test_numeric_failure_names_pass_and_predecessors_and_keeps_input(conv_program):
    before = [p.clone() for p in conv_program.graph_module.parameters()]
    passes = build_passes(["dce", "test-scale-weights"], {"test-scale-weights": {"factor": 0.5}})
    with pytest.raises(
        PassError,
        match=r"pass 'test-scale-weights' \(after dce\) degraded the outputs to .* dB SQNR, below its 30 dB floor",
    ):
        PassManager(passes).run(conv_program)
    assert all(torch.equal(a, b) for a, b in zip(before, conv_program.graph_module.parameters(), strict=True))
    assert conv_program.annotations.history == []


def test_broken_graph_is_reported(conv_program):
    with pytest.raises(
        PassError,
        match=r"pass 'test-break-graph' \(first pass\) (left a broken graph|produced a graph that does not run)",
    ):
        PassManager(build_passes(["test-break-graph"])).run(conv_program)


def test_requires_refusal(conv_program):
    with pytest.raises(PassError, match="cannot run: needs at least 10 blocks, the model has 2"):
        PassManager(build_passes(["test-needs-blocks"])).run(conv_program)


def test_wrong_config_type():
    with pytest.raises(ConfigError, match="takes a ScaleConfig"):
        ScaleWeights(NoConfig())


def test_manager_drops_weights_a_pass_left_unread(conv_program):
    before = {n for n, _ in conv_program.graph_module.named_parameters()}
    assert before
    result = PassManager(build_passes(["test-rebind-weights"])).run(conv_program)
    gm = result.program.graph_module
    assert not any(n in before for n, _ in gm.named_parameters())
    assert {n for n, _ in gm.named_buffers()} >= {n.replace(".", "_") + "_copy" for n in before}
    assert result.records[0].check["max_abs_error"] == 0.0
