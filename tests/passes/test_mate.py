"""The `mate` pass: site finding, the rewrite (structure), distillation (numbers), export, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from optkit.passes.mate import MateReplaceConfig, MateReplacement, token_grid
from torch import nn

from optkit.errors import ConfigError, PassError
from optkit.ir.attention import find_attention_sites
from optkit.ir.capture import capture
from optkit.ir.program import module_path
from optkit.pipeline import PassManager, get_pass
from optkit.workload import Calibration, Workload
from tests import models

FAST = {"steps": 40, "finetune_steps": 6, "calibration_seeds": 1, "calibration_steps": 4, "batch": 2}


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        q, k, v = self.qkv(self.norm(h)).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, Dh): self-attention
        h = h + self.proj(a.transpose(1, 2).reshape(b, n, d))
        q = self.q(h).reshape(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(c).reshape(b, c.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        h = h + F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)  # cross
        return h + self.mlp(h)


class TinyVideoDenoiser(nn.Module):
    """x (B, 1, 4, 8, 8), t (B,), label (B,) -> (B, 1, 4, 8, 8); 2x2x2 patches, a (2, 4, 4) grid."""

    def __init__(self, dim: int = 32, heads: int = 2, depth: int = 2) -> None:
        super().__init__()
        self.dim = dim
        self.embed = nn.Linear(8, dim)
        self.pos = nn.Parameter(torch.randn(32, dim) * 0.3)
        self.t_mlp = nn.Linear(2, dim)
        self.label = nn.Embedding(11, dim)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(depth))
        self.head = nn.Linear(dim, 8)

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        tokens = x.reshape(b, 2, 2, 4, 2, 4, 2).permute(0, 1, 3, 5, 2, 4, 6).reshape(b, 32, 8)
        h = self.embed(tokens) + self.pos  # (B, 32, D)
        tt = t[:, None] / 1000.0
        c = (self.t_mlp(torch.cat([tt.cos(), tt.sin()], -1)) + self.label(label))[:, None]  # (B, 1, D)
        for block in self.blocks:
            h = block(h, c)
        out = self.head(h).reshape(b, 2, 4, 4, 2, 2, 2).permute(0, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, 1, 4, 8, 8)


def tiny_program(workload: Workload | None = None):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(2, 1, 4, 8, 8, generator=gen),
        torch.rand(2, generator=gen) * 1000,
        torch.tensor([3, 7]),
    )
    program = capture(TinyVideoDenoiser().eval(), inputs, name="tiny-video")
    return program.with_workload(workload or models.diffusion_workload("flow-euler", steps=4))


@pytest.fixture(scope="module")
def program():
    return tiny_program()


@pytest.fixture(scope="module")
def mate_result(program):
    return MateReplacement(MateReplaceConfig.from_dict(FAST)).run(program.clone())


def _self_attention_paths(program) -> list[str]:
    return [s.path for s in find_attention_sites(program)[0]]


def test_pass_is_registered():
    assert get_pass("mate") is MateReplacement


def test_sites_self_attention_only(program):
    sites, skipped = find_attention_sites(program)
    assert [s.path for s in sites] == ["blocks.0", "blocks.1"]
    assert all((s.heads, s.head_dim, s.tokens, s.dim_in, s.dim_out) == (2, 16, 32, 32, 32) for s in sites)
    assert sum("cross-attention" in reason for _, reason in skipped) == 2
    assert token_grid(program, 32) == (2, 4, 4)
    assert token_grid(program, 32, (8, 4)) == (1, 8, 4)


def test_sites_multihead_and_spelled_out():
    class MHA(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.attn(x, x, x, need_weights=False)[0]

    class Spelled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(x).reshape(2, 8, 3, 2, 8).permute(2, 0, 3, 1, 4)
            a = (q @ k.transpose(-2, -1) * 8**-0.5).softmax(-1) @ v  # (B, 2, N, 8)
            return self.proj(a.transpose(1, 2).reshape(2, 8, 16))

    x = torch.randn(2, 8, 16)
    for model in (MHA(), Spelled()):
        p = capture(model, (x,))
        sites, _ = find_attention_sites(p)
        assert len(sites) == 1
        assert (sites[0].heads, sites[0].head_dim, sites[0].tokens) == (2, 8, 8)
        p.with_workload(
            Workload(calibration=Calibration.from_batches([(torch.randn(2, 8, 16),) for _ in range(2)]))
        )
        options = {"kind": "relu-linear", "steps": 3, "finetune_steps": 0}
        new = MateReplacement(MateReplaceConfig.from_dict(options)).run(p).program
        assert find_attention_sites(new)[0] == [] and new.run().shape == x.shape
    masked = capture(*models.transformer())
    assert [r for _, r in find_attention_sites(masked)[1]].count("masked attention") == 2


@pytest.mark.slow
def test_rewrite_replaces_self_attention_only(program, mate_result):
    p = mate_result.program
    assert mate_result.modified
    assert _self_attention_paths(p) == []  # no self-attention left
    sdpa = [module_path(n) for n in p.find(kind="attention")]
    assert len(sdpa) == 2 and all(
        not path.startswith("blocks.0.mate") for path in sdpa
    )  # cross-attention stays
    paths = {module_path(n) for n in p.compute_nodes()}
    assert {"blocks.0.mate_0.mamba.forward_scan", "blocks.1.mate_1.tesa"} <= paths
    assert any(name.startswith("mate_0_") for name in p.parameters())
    assert not any(
        name.startswith("blocks.0.qkv") or name == "blocks_0_qkv_weight" for name in p.parameters()
    )
    assert p.block_paths() == program.block_paths()
    assert p.run().shape == program.run().shape


def test_distillation_improves_on_init(mate_result):
    data = mate_result.program.annotations.figures["mate"]
    for site in data["sites"].values():
        assert site["stage1_sqnr_db"] > site["init_sqnr_db"] + 1.0
    assert data["finetune_loss_after"] <= data["finetune_loss_before"] < 0.1
    assert mate_result.figures["sites_replaced"].value == 2


@pytest.mark.parametrize("kind", ["relu-linear", "hedgehog-swa"])
def test_baselines(program, kind):
    result = MateReplacement(
        MateReplaceConfig.from_dict({**FAST, "kind": kind, "finetune_steps": 0, "swa_window": 8})
    ).run(program.clone())
    p = result.program
    assert _self_attention_paths(p) == []
    prefix = kind.replace("-", "_")
    assert {f"blocks.0.{prefix}_0", f"blocks.1.{prefix}_1"} <= {module_path(n) for n in p.compute_nodes()}
    for site in p.annotations.figures["mate"]["sites"].values():
        assert site["stage1_sqnr_db"] > site["init_sqnr_db"]


def test_keep_leaves_the_worst_site_as_attention(program):
    result = MateReplacement(MateReplaceConfig.from_dict({**FAST, "keep": 1, "finetune_steps": 0})).run(
        program.clone()
    )
    data = result.program.annotations.figures["mate"]
    assert len(data["kept"]) == 1 and len(data["replaced"]) == 1
    worst = max(data["sites"], key=lambda p: data["sites"][p]["stage1_loss"])
    assert data["kept"] == [worst] == _self_attention_paths(result.program)


def test_checkpoints_resume(program, tmp_path):
    options = {**FAST, "checkpoint_dir": str(tmp_path), "kind": "relu-linear"}
    first = MateReplacement(MateReplaceConfig.from_dict(options)).run(program.clone())
    assert {p.name for p in tmp_path.iterdir()} == {"stage1_0.pt", "stage1_1.pt", "stage2.pt"}
    again = MateReplacement(MateReplaceConfig.from_dict(options)).run(program.clone())
    torch.testing.assert_close(again.program.run(), first.program.run())


def test_pass_manager_checks_an_sqnr_floor(program):
    options = {**FAST, "kind": "relu-linear", "finetune_steps": 0}
    result = PassManager([MateReplacement(MateReplaceConfig.from_dict(options))]).run(program)
    assert result.records[0].check["min_sqnr_db"] >= MateReplaceConfig().min_sqnr_db
    assert MateReplacement().tolerance.min_sqnr_db == MateReplaceConfig().min_sqnr_db


def _onnx_roundtrip(program, path) -> None:
    pytest.importorskip("onnxruntime")
    from optkit.ir.onnx_io import export_onnx

    assert export_onnx(program, path)["max_abs_error"] < 1e-4  # checked in ONNX Runtime


@pytest.mark.slow
def test_onnx_linear_baseline(program, tmp_path):
    options = {**FAST, "kind": "relu-linear", "steps": 5, "finetune_steps": 0}
    _onnx_roundtrip(
        MateReplacement(MateReplaceConfig.from_dict(options)).run(program.clone()).program,
        tmp_path / "m.onnx",
    )


@pytest.mark.slow
def test_onnx_mate(mate_result, tmp_path):
    # The Mamba2 scan and TESA as plain ATen ops: the dynamo exporter takes ~15 s on this graph.
    _onnx_roundtrip(mate_result.program, tmp_path / "mate.onnx")


def test_bad_input(program):
    no_attention = capture(*models.conv_net())
    with pytest.raises(ConfigError, match="no self-attention"):
        MateReplacement().run(no_attention)
    with pytest.raises(ConfigError, match=r"grid \(3, 3\) holds 9 tokens.*sees 32"):
        MateReplacement(MateReplaceConfig(grid=(3, 3), **FAST)).run(program.clone())
    with pytest.raises(ConfigError, match="keep=3 but .* only 2"):
        MateReplacement(MateReplaceConfig(keep=3)).run(program.clone())
    with pytest.raises(ConfigError, match="steps .* must be >= 1, got 0"):
        MateReplaceConfig.from_dict({"steps": 0})
    with pytest.raises(ConfigError, match="no \\[diffusion\\] sampler and no calibration data"):
        MateReplacement().run(tiny_program(Workload()))
    with pytest.raises(PassError, match="pass 'mate' .*failed: keep=3"):
        PassManager([MateReplacement(MateReplaceConfig(keep=3))]).run(program)


def test_calibration_data_instead_of_sampler(program):
    batches = [tuple(t.clone() for t in program.example_inputs)] * 2
    p = tiny_program(Workload(calibration=Calibration.from_batches(batches)))
    result = MateReplacement(MateReplaceConfig.from_dict({**FAST, "kind": "relu-linear"})).run(p)
    assert result.program.annotations.figures["mate"]["calibration_batches"] == 2


@pytest.mark.slow
def test_lowers_through_tvm(mate_result):
    # The pure-PyTorch Mamba2 scan and TESA lower through TVM Relax (~40 s to compile here).
    pytest.importorskip("tvm")
    from optkit.backends.lowering import lower

    p = mate_result.program
    out = lower(p, "cpu").run(*p.example_inputs)[0]
    torch.testing.assert_close(torch.as_tensor(out), p.run(), atol=1e-4, rtol=1e-4)
