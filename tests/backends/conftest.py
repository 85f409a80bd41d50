import numpy as np
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


def _host_target():
    from optkit.backends.targets import resolve_target

    return resolve_target("cpu", num_cores=1).tvm_target()


def host_has_avx512():
    from optkit.backends.vnni import target_has_avx512

    return target_has_avx512(_host_target())


def host_float_tiles():
    """The float32 tile arithmetic lowering uses on this host (`vnni.float_arith`), or None."""
    from optkit.backends.vnni import float_arith

    return float_arith(_host_target())


def host_int8_ariths():
    """The int8 tile arithmetics this host runs: AVX2's `vpmaddwd` and, for 7-bit weights,
    `vpmaddubsw` (every AVX2 CPU, AVX-512 ones too) and, with AVX-512 VNNI, `vpdpbusd`."""
    from optkit.backends import vnni

    target = _host_target()
    ariths = [vnni.U8S8] if vnni.target_has_vnni(target) else []
    return ariths + ([vnni.U8S16, vnni.U8S7] if vnni.int8_arith(target) is not None else [])


def host_lowers_seven_bit_to_maddubs():
    """Whether `lower` puts 7-bit weights on AVX2's `vpmaddubsw` here: AVX2 without VNNI (with
    VNNI every int8 weight runs on `vpdpbusd`)."""
    from optkit.backends import vnni

    return vnni.int8_arith(_host_target()) == vnni.U8S16


def int8_weights(rng, shape, arith=None):
    """Random int8 weights over all that `arith` multiplies exactly (`Arith.weight_bound`; all of
    int8 by default), the extremes included."""
    bound = arith.weight_bound if arith is not None else 128
    return rng.integers(-bound, min(bound + 1, 128), shape).astype(np.int8)


def float_matmul_kernels(info):
    """How many constant-weight float32 matmuls a lowering's report says went to the kernel
    this host uses for them: the FMA tile GEMM on AVX-512 or AVX2, else the scheduled panel kernel."""
    return info["fma_kernels" if host_float_tiles() is not None else "packed_matmuls"]


@pytest.fixture
def scheduled_float_matmuls(monkeypatch):
    """Float32 matmuls and convs on the scheduled panel kernels (`packing._packed_matmul`,
    `_packed_conv`), as on a CPU without AVX2, whatever the host has: what tuning searches over."""
    from optkit.backends import vnni

    monkeypatch.setattr(vnni, "float_arith", lambda _target: None)
