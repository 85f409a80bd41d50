"""Lowering through TVM on the CPU: numerics against the Program, schedules, unsupported ops."""

import re

import numpy as np
import pytest
import torch
from optkit.backends import lower
from optkit.backends.build import relax_pipeline
from optkit.backends.targets import resolve_target
from torch import nn

from optkit.errors import BackendError, UnknownNameError
from optkit.ir.capture import capture
from tests.backends.conftest import float_matmul_kernels, host_float_tiles, outputs_of, scheduled_funcs


@pytest.mark.parametrize("schedule", ["default", "blas"])
def test_mlp_matches_torch(mlp, schedule):
    artifact = lower(mlp, "cpu", schedule=schedule, num_cores=1)
    (got,) = artifact.run(*mlp.example_inputs)
    np.testing.assert_allclose(got, outputs_of(mlp)[0], rtol=1e-4, atol=1e-5)
    # Both Linear weights are constants: packed for optkit's kernels, so nothing is left for BLAS.
    assert float_matmul_kernels(artifact.info) == 2 and artifact.info["blas_matmuls"] == 0
    # the GELU: in the first GEMM's write-back on AVX-512, else a fast-math kernel
    assert artifact.info["fast_math_ops"] == (0 if host_float_tiles() is not None else 1)


def test_conv_net_matches_torch(conv_program):
    artifact = lower(conv_program, "cpu", num_cores=1)
    (got,) = artifact.run(*conv_program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(conv_program)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["default", "blas"])
def test_masked_attention_matches_torch(transformer_program, schedule):
    artifact = lower(transformer_program, "cpu", schedule=schedule, num_cores=1)
    assert [s.dtype for s in artifact.inputs] == ["float32", "bool"]
    (got,) = artifact.run(*transformer_program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(transformer_program)[0], rtol=1e-4, atol=1e-5)
    assert float_matmul_kernels(artifact.info) >= 2  # the projections
    # Scores and weighted values multiply two activations: BLAS under `blas`, TVM otherwise.
    blas = artifact.info["blas_matmuls"]
    assert blas >= 2 if schedule == "blas" else blas == 0


@pytest.mark.slow
def test_default_schedules_leave_no_kernel_unscheduled(mlp):
    import tvm

    # Every PrimFunc gets a schedule from DLight or optkit's CPU rules: no naive loop nest left,
    # with matmuls in TVM, with matmuls on BLAS, with packed weights, and for an odd-width conv.
    from optkit.backends.blas import offload_matmuls
    from optkit.backends.packing import pack_weights
    from optkit.backends.tvm_import import import_program

    spec = resolve_target("cpu", num_cores=1)
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Conv2d(5, 4, 3, padding=1)).eval()
    conv_program = capture(conv, (torch.randn(1, 3, 9, 9),))  # 7x7 outputs: no vector width divides 7
    mods = [
        import_program(mlp).mod,
        offload_matmuls(import_program(mlp).mod)[0],
        pack_weights(tvm.relax.transform.FoldConstant()(import_program(mlp).mod))[0],
        import_program(conv_program).mod,
        pack_weights(tvm.relax.transform.FoldConstant()(import_program(conv_program).mod))[0],
    ]
    for mod in mods:
        funcs = scheduled_funcs(mod, spec)
        assert funcs
        unscheduled = [n for n, f in funcs.items() if not (f.attrs and f.attrs.get("tirx.is_scheduled"))]
        assert not unscheduled
    (got,) = lower(conv_program, "cpu", num_cores=1).run(*conv_program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(conv_program)[0], rtol=1e-4, atol=1e-5)
    assert relax_pipeline(spec, "naive") is not None


class _Argmax(nn.Module):
    def forward(self, x):
        return x.argmax(-1)


def test_row_kernel_ending_in_a_per_row_write_matches_torch():
    # argmax's kernel: a (value, index) row reduction, then a write per row. CPURowReduction once
    # vectorized the row loop itself, reduction included, and returned wrong indices.
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    program = capture(_Argmax().eval(), (x,))
    (got,) = lower(program, "cpu", num_cores=1).run(x)
    np.testing.assert_array_equal(got, x.argmax(-1).numpy())


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


def test_ops_the_importer_lacks_are_decomposed_first(mlp, monkeypatch):
    # Pretend TVM's importer has no GELU converter: PyTorch's decomposition of aten.gelu
    # (erf-based) is applied before import instead of failing.
    from optkit.backends import tvm_import

    real = tvm_import.supported_ops
    monkeypatch.setattr(tvm_import, "supported_ops", lambda conv: real(conv) - {"gelu.default"})
    artifact = lower(mlp, "cpu", num_cores=1)
    assert artifact.info["decomposed_ops"] == ["gelu.default"]
    (got,) = artifact.run(*mlp.example_inputs)
    np.testing.assert_allclose(got, outputs_of(mlp)[0], rtol=1e-4, atol=1e-5)


class _TinyRecommender(nn.Module):
    """DLRM-shaped: a sum-pooled embedding and a bottom MLP, concatenated, a top MLP to one logit."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(500, 8)
        self.bottom = nn.Sequential(nn.Linear(13, 8), nn.ReLU())
        self.top = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, dense, ids):
        pooled = self.table(ids).sum(dim=1)  # (B, 8)
        return self.top(torch.cat([self.bottom(dense), pooled], dim=1))  # (B, 1)


def _vector_widths(func) -> list[int]:
    # TVM 0.27's Python API has no TIR statement visitor: read the loops from the TVMScript.
    return [int(n) for n in re.findall(r"T\.vectorized\((?:T\.int64\()?(\d+)", func.script())]


@pytest.mark.slow
def test_width_one_layer_at_large_batch_compiles_and_matches_torch():
    # The last Linear (32 -> 1) is a GEMV that packing leaves alone. DLight's GEMV rule vectorized
    # its 256 rows 128 at a time around an unrolled reduction of strided gathers, and LLVM's
    # codegen ran for minutes from batch 128 on; `CPUGEMV` unrolls 16-row tiles instead.
    import tvm
    from optkit.backends.cpu_schedules import GEMV_ROWS
    from optkit.backends.packing import pack_weights
    from optkit.backends.tvm_import import import_program

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    inputs = (torch.randn(256, 13, generator=gen), torch.randint(0, 500, (256, 2), generator=gen))
    program = capture(_TinyRecommender().eval(), inputs)
    (got,) = lower(program, "cpu", num_cores=1).run(*inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-4, atol=1e-5)

    # Packing takes the two wider Linears; the 32 -> 1 one stays a plain matmul, DLight's GEMV.
    packed = pack_weights(tvm.relax.transform.FoldConstant()(import_program(program).mod))[0]
    funcs = scheduled_funcs(packed, resolve_target("cpu", num_cores=1))
    gemvs = [f for name, f in funcs.items() if "matmul" in name and "packed" not in name]
    assert len(gemvs) == 1
    script = gemvs[0].script()
    # 256 x 32 multiply-adds: below `parallel_loops`' threshold, so it runs on the calling thread
    assert _vector_widths(gemvs[0]) == [] and "T.parallel" not in script
    assert f"T.unroll({GEMV_ROWS})" in script or f"T.unroll(T.int64({GEMV_ROWS}))" in script


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_lowers_with_half_weights(dtype):
    # Issue 20: a model stored in half precision is lowered without widening its weights;
    # TVM's addmm converter outputs float32 whatever its inputs (aten rewrite `half_addmm`).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 128)).eval().to(dtype)
    x = torch.randn(4, 256).to(dtype)
    program = capture(model, (x,), name="half")
    artifact = lower(program, "cpu", num_cores=1)
    assert artifact.info["aten_rewrites"] == {"half_matmul": 2}
    assert artifact.outputs[0].dtype == str(dtype).removeprefix("torch.")
    assert artifact.info["weight_bytes"] == (256 * 512 + 512 * 128) * 2  # the matrices, in half
    (got,) = artifact.run_torch(x)
    want = model(x)
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)


class _Attention(nn.Module):
    def forward(self, q, k, v, mask=None):
        return nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def test_unmasked_attention_softmax_loses_its_all_masked_row_guard():
    # `plain_softmax`: without a mask no row of scores can be all -inf; with one the guard stays.
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    plain = lower(capture(_Attention(), (q, k, v), name="sdpa"), "cpu", num_cores=1)
    assert plain.info["aten_rewrites"] == {"plain_softmax": 1}
    np.testing.assert_allclose(plain.run(q, k, v)[0], _Attention()(q, k, v).numpy(), atol=1e-5)
    mask = torch.ones(16, 16, dtype=torch.bool).tril()
    mask[3] = False  # a row with nothing to attend to: the guarded softmax gives zeros, not NaN
    masked = lower(capture(_Attention(), (q, k, v, mask), name="masked"), "cpu", num_cores=1)
    assert "plain_softmax" not in masked.info["aten_rewrites"]
    want = _Attention()(q, k, v, mask).numpy()
    np.testing.assert_allclose(masked.run(q, k, v, mask.numpy())[0], want, atol=1e-5)


def test_bfloat16_norms_run_in_float32():
    # TVM's group_norm / layer_norm refuse bfloat16 (`bf16_norm`); the weights stay bfloat16.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 512, 3, padding=1), nn.GroupNorm(4, 512), nn.Flatten(2))
    model = nn.Sequential(model, nn.LayerNorm(36)).eval().to(torch.bfloat16)
    x = torch.randn(2, 8, 6, 6).to(torch.bfloat16)
    artifact = lower(capture(model, (x,), name="norms"), "cpu", num_cores=1)
    assert artifact.info["aten_rewrites"] == {"bf16_norm": 2, "half_matmul": 1}
    assert {str(w.dtype) for w in artifact.weights} == {"bfloat16"}
    (got,) = artifact.run_torch(x)
    torch.testing.assert_close(got.float(), model(x).float(), atol=5e-2, rtol=5e-2)


class _NoopSqueeze(nn.Module):
    """`squeeze(1)` of a (2, 16, 8) tensor leaves it as it is (PixArt's timestep embedding)."""

    def forward(self, x):
        return x.squeeze(1) * 2.0, x[:, :1].squeeze(1)


def test_squeeze_of_a_longer_dimension_is_a_view():
    # `noop_squeeze`: TVM's importer failed on it ("undefined bijective layout")
    x = torch.randn(2, 16, 8)
    artifact = lower(capture(_NoopSqueeze(), (x,), name="squeeze"), "cpu", num_cores=1)
    assert artifact.info["aten_rewrites"] == {"noop_squeeze": 1}
    for got, want in zip(artifact.run(x), _NoopSqueeze()(x), strict=True):
        np.testing.assert_array_equal(got, want.numpy())


class _LastAlong(nn.Module):
    def forward(self, x):
        return x[:, :, -1] * 2.0, x.select(0, -2)


def test_negative_select_reads_from_the_end():
    # `negative_select`: TVM's importer turns x[:, :, -1] into take(x, -1) in fast mode, which
    # read out of bounds (NaN in MATE's blocked state scan); the index now counts from the start.
    torch.manual_seed(0)
    x = torch.randn(3, 2, 16, 4, 5)
    artifact = lower(capture(_LastAlong(), (x,), name="select"), "cpu", num_cores=1)
    assert artifact.info["aten_rewrites"] == {"negative_select": 2}
    for got, want in zip(artifact.run(x), _LastAlong()(x), strict=True):
        np.testing.assert_array_equal(got, want.numpy())
