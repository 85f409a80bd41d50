import pytest
import torch
from torch import nn

from optkit.ir.capture import capture


def mlp_program():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16)).eval()
    return capture(model, (torch.randn(4, 32),), name="mlp")


@pytest.fixture
def mlp():
    return mlp_program()


def outputs_of(program):
    out = program.run()
    return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]


def call_tir_names(mod, func="main"):
    """The names of the PrimFuncs Relax function `func` of `mod` calls, in call order."""
    from tvm import relax

    names = []
    relax.analysis.post_order_visit(
        mod[func],
        lambda e: (
            names.append(e.args[0].name_hint)
            if isinstance(e, relax.Call) and e.op.name == "relax.call_tir"
            else None
        ),
    )
    return names


def scheduled_funcs(mod, spec):
    """The PrimFuncs of `mod` after legalization, fusion and optkit's schedule pass, by name."""
    import tvm
    from optkit.backends.build import schedule_pass

    with spec.tvm_target():
        passes = [
            tvm.relax.transform.LegalizeOps(),
            tvm.relax.transform.AnnotateTIROpPattern(),
            tvm.relax.transform.FoldConstant(),
            tvm.relax.transform.FuseOps(),
            tvm.relax.transform.FuseTIR(),
            schedule_pass(spec),
        ]
        lowered = tvm.transform.Sequential(passes)(mod)
    return {g.name_hint: f for g, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def host_has_avx512():
    from optkit.backends.targets import resolve_target
    from optkit.backends.vnni import target_has_avx512

    return target_has_avx512(resolve_target("cpu", num_cores=1).tvm_target())


def float_matmul_kernels(info):
    """How many constant-weight float32 matmuls a lowering's report says went to the kernel
    this host uses for them: the FMA tile GEMM on AVX-512, else the scheduled panel kernel."""
    return info["fma_kernels" if host_has_avx512() else "packed_matmuls"]


@pytest.fixture
def scheduled_float_matmuls(monkeypatch):
    """Float32 matmuls on the scheduled panel kernel (`packing._packed_matmul`), as on a CPU
    without AVX-512, whatever the host has: what tuning searches over."""
    from optkit.backends import vnni

    monkeypatch.setattr(vnni, "target_has_avx512", lambda _target: False)
