"""Copy on write in the PassManager (issue 20): a pass's output shares the weights it did not
rewrite with its input, and a pass that says it shares but writes in place is caught."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from optkit.errors import PassError
from optkit.ir.program import weight_tensors
from optkit.pipeline import Pass, PassConfig, PassManager, PassResult, Tolerance, build_passes, register_pass


@dataclass(frozen=True)
class _NoConfig(PassConfig):
    pass


@register_pass("test-rewrite-first-weight", _NoConfig)
class RewriteFirstWeight(Pass):
    """Replaces the first conv's weight by a new tensor (x 1.0): the copy-on-write way."""

    shares_weights = True

    def run(self, program):
        gm = program.graph_module
        node = next(n for n in program.graph.nodes if n.op == "get_attr")
        owner, _, attr = str(node.target).rpartition(".")
        module = gm.get_submodule(owner)
        old = getattr(module, attr)
        setattr(module, attr, nn.Parameter(old.detach() * 1.0, requires_grad=False))
        return PassResult(program, modified=True)


@register_pass("test-share-but-write", _NoConfig)
class ShareButWrite(Pass):
    """Declares `shares_weights` but scales a weight in place: the manager must refuse it."""

    shares_weights = True
    tolerance = Tolerance(min_sqnr_db=-100.0)

    def run(self, program):
        with torch.no_grad():
            next(iter(program.graph_module.parameters())).mul_(1.0)
        return PassResult(program, modified=True)


def _storage(program):
    return {k: t.data_ptr() for k, t in weight_tensors(program.graph_module).items()}


def test_shared_clone_shares_tensors_and_deep_clone_does_not(conv_program):
    shared, deep = conv_program.clone(share_weights=True), conv_program.clone()
    assert shared.graph_module is not conv_program.graph_module
    assert shared.graph is not conv_program.graph
    assert _storage(shared) == _storage(conv_program)
    assert not set(_storage(deep).values()) & set(_storage(conv_program).values())


def test_output_shares_untouched_weights_with_input(conv_program):
    before = _storage(conv_program)
    result = PassManager(build_passes(["test-rewrite-first-weight", "dce"])).run(conv_program)
    after = _storage(result.program)
    first = next(str(n.target) for n in conv_program.graph.nodes if n.op == "get_attr")
    assert after[first] != before[first]  # the rewritten weight is a new tensor
    untouched = {k: v for k, v in before.items() if k != first}
    assert untouched and all(after[k] == v for k, v in untouched.items())  # the others: same storage
    assert _storage(conv_program) == before


def test_builtin_passes_share_weights():
    for p in build_passes(["cleanup", "ptq", "groupwise", "sensitivity"]):
        assert type(p).shares_weights, type(p).__name__


def test_ptq_keeps_input_weights_and_adds_only_quantized_ones(conv_program):
    before = {k: t.clone() for k, t in weight_tensors(conv_program.graph_module).items()}
    storage = _storage(conv_program)
    result = PassManager(build_passes(["ptq"])).run(conv_program)
    assert _storage(conv_program) == storage
    assert all(torch.equal(before[k], t) for k, t in weight_tensors(conv_program.graph_module).items())
    # No float copy of a weight the pass did not rewrite: whatever float tensor is left is the input's.
    inputs = set(storage.values())
    left = [t for t in weight_tensors(result.program.graph_module).values() if t.dtype == torch.float32]
    assert not [tuple(t.shape) for t in left if t.data_ptr() not in inputs and t.numel() > 1024]


def test_in_place_write_of_a_shared_weight_is_refused(conv_program):
    with pytest.raises(
        PassError, match=r"test-share-but-write.*wrote into 1 weight\(s\) of its input in place"
    ):
        PassManager(build_passes(["test-share-but-write"])).run(conv_program)
