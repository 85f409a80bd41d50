"""Lowering through TVM on the CPU: numerics against the Program, schedules, unsupported ops."""

import numpy as np
import pytest
import torch
from optkit.backends import lower
from optkit.backends.build import relax_pipeline
from optkit.backends.targets import resolve_target
from torch import nn

from optkit.errors import BackendError, UnknownNameError
from optkit.ir.capture import capture
from tests.backends.conftest import outputs_of


@pytest.mark.parametrize("schedule", ["default", "tvm"])
def test_mlp_matches_torch(mlp, schedule):
    artifact = lower(mlp, "cpu", schedule=schedule, num_cores=1)
    (got,) = artifact.run(*mlp.example_inputs)
    np.testing.assert_allclose(got, outputs_of(mlp)[0], rtol=1e-4, atol=1e-5)
    assert artifact.info["blas_matmuls"] == (2 if schedule == "default" else 0)


def test_conv_net_matches_torch(conv_program):
    artifact = lower(conv_program, "cpu", num_cores=1)
    (got,) = artifact.run(*conv_program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(conv_program)[0], rtol=1e-4, atol=1e-5)


def test_masked_attention_matches_torch(transformer_program):
    artifact = lower(transformer_program, "cpu", num_cores=1)
    assert [s.dtype for s in artifact.inputs] == ["float32", "bool"]
    (got,) = artifact.run(*transformer_program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(transformer_program)[0], rtol=1e-4, atol=1e-5)
    assert artifact.info["blas_matmuls"] >= 4  # projections and the batched attention matmuls


def test_default_schedule_leaves_no_kernel_unscheduled(mlp):
    # Every PrimFunc gets a schedule from DLight or optkit's CPU rules (no naive loop nest left).
    import tvm
    from optkit.backends.blas import offload_matmuls
    from optkit.backends.tvm_import import import_program

    spec = resolve_target("cpu", num_cores=1)
    mod, _ = offload_matmuls(import_program(mlp).mod)
    # Keep matmuls in TVM too, so the matmul rule is exercised.
    for schedule_mod in (mod, import_program(mlp).mod):
        with spec.tvm_target():
            lowered = tvm.transform.Sequential(
                [
                    tvm.relax.transform.LegalizeOps(),
                    tvm.relax.transform.AnnotateTIROpPattern(),
                    tvm.relax.transform.FoldConstant(),
                    tvm.relax.transform.FuseOps(),
                    tvm.relax.transform.FuseTIR(),
                ]
            )(schedule_mod)
            from optkit.backends.build import schedule_pass

            scheduled = schedule_pass(spec)(lowered)
        funcs = [f for _, f in scheduled.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
        assert funcs
        assert all(f.attrs and f.attrs.get("tirx.is_scheduled") for f in funcs)
    assert relax_pipeline(spec, "naive") is not None


class _UsesBessel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.scan = _Scan()

    def forward(self, x):
        return self.scan(self.proj(x))


class _Scan(nn.Module):
    def forward(self, x):
        return torch.special.i1(x)


def test_unsupported_op_names_op_and_module_path():
    program = capture(_UsesBessel().eval(), (torch.randn(2, 4),))
    with pytest.raises(BackendError, match=r"bessel_i1.default in module 'scan'"):
        lower(program, "cpu")


def test_unknown_target_lists_allowed(mlp):
    with pytest.raises(UnknownNameError, match="cpu, cuda"):
        lower(mlp, "tpu")


def test_host_target_is_a_json_dict():
    spec = resolve_target("cpu", num_cores=2)
    assert spec.config["kind"] == "llvm" and spec.config["num-cores"] == 2
    assert isinstance(spec.config["mcpu"], str) and spec.config["mcpu"]
    assert spec.tvm_target().kind.name == "llvm"
