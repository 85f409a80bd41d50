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


def sqnr_db(got, want) -> float:
    return float(10 * np.log10((want**2).sum() / max(((got - want) ** 2).sum(), 1e-30)))


def attention_inputs(b, m, n, d, dv, masked, seed=0):
    """q [b, m, d], kt [b, d, n], v [b, n, dv] float32 and, if `masked`, a causal mask [1, m, n]
    under which query 3 sees no key (zeros, as PyTorch's SDPA gives)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, m, d)).astype(np.float32) * 1.5
    kt = rng.standard_normal((b, d, n)).astype(np.float32) * 1.5
    v = rng.standard_normal((b, n, dv)).astype(np.float32)
    mask = None
    if masked:
        mask = np.where(np.tril(np.ones((m, n))) > 0, 0.0, -np.inf).astype(np.float32)[None]
        mask[0, 3] = -np.inf
    return q, kt, v, mask


def attention_reference(q, kt, v, scale, keys, mask):
    """float64 `softmax(scale * q @ kt + mask) @ v` over the first `keys` keys."""
    scores = np.einsum("bmd,bdn->bmn", q.astype(np.float64), kt.astype(np.float64)) * scale
    if mask is not None:
        scores = scores + mask
    scores[..., keys:] = -np.inf
    top = scores.max(-1, keepdims=True)
    weights = np.exp(scores - np.where(np.isfinite(top), top, 0.0))
    sums = weights.sum(-1, keepdims=True)
    return np.where(sums > 0, (weights / np.where(sums > 0, sums, 1.0)) @ v, 0.0)


class AttentionBlock(nn.Module):
    """Projections around SDPA: what `ptq` quantizes, the attention left between them."""

    def __init__(self, dim: int = 64, heads: int = 2) -> None:
        super().__init__()
        self.qkv, self.out, self.heads = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, t, c))


def attention_block_program(quantized: bool):
    from optkit.pipeline import PassManager, build_passes

    torch.manual_seed(0)
    program = capture(AttentionBlock().eval(), (torch.randn(2, 160, 64),), name="block")
    if quantized:
        program = PassManager(build_passes(["ptq"], {"ptq": {}})).run(program).program
    return program


class SDPA(nn.Module):
    def __init__(self, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal

    def forward(self, q, k, v):
        return nn.functional.scaled_dot_product_attention(q, k, v, is_causal=self.causal)


def fused_attention_kernels(shape, causal, precision):
    """SDPA on q, k, v of `shape` through `fuse_attention(precision)`: (attentions fused, how
    many in `precision`, the attention kernels called, digits stripped)."""
    from optkit.backends.attention import fuse_attention
    from optkit.backends.tvm_import import import_program

    inputs = tuple(torch.randn(*shape) for _ in range(3))
    mod = import_program(capture(SDPA(causal).eval(), inputs, name="a")).mod
    mod, fused, reduced = fuse_attention(mod, precision)
    return fused, reduced, [name.rstrip("0123456789") for name in call_tir_names(mod) if "attention" in name]
