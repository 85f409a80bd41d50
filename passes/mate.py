"""`mate`: replace self-attention with LinGen's MATE block (or a linear baseline), distilled.

From LinGen (Wang et al., CVPR 2025) for the block, MambaInLlama (Wang et al., NeurIPS 2024)
for starting a Mamba from attention weights and keeping some attention layers, and LoLCATs
(Zhang et al., ICLR 2025) for the two-stage distillation:

1. Sites: every self-attention found on the graph (`optkit.ir.attention`: fused SDPA,
   `nn.MultiheadAttention`, spelled-out softmax(QK^T)V) with its Q/K/V/O projections;
   cross-attention and masked attention are left alone. The token layout is the `grid` option
   (1 to 3 sizes: N, (H, W) or (T, H, W)), else inferred from the first input: a video
   (B, C, T, H, W) or image (B, C, H, W) cut into cubic / square patches, else one row of N.
2. Calibration: the site inputs and outputs along the Workload's sampler trajectory (every
   step, with guidance), or the workload's calibration data. No sampler and no data: an error.
3. Init: the new block's projections are fitted by least squares to the attention's Q, K, V
   and output-projection activations (equal to copying the weights when Q/K/V are plain
   Linears; the best linear stand-in when RoPE rotates them). MATE's TE branch (windowed
   attention) takes Q/K/V/O; its Mamba2s take MambaInLlama's map C<-Q, B<-K, x<-V, out<-O
   (head 0 of Q/K for the shared B/C, since ngroups = 1; out <- O scaled by `MA_OUT_SCALE`),
   with an identity causal conv.
4. Stage 1 (attention transfer): each block alone, trained to match its attention's output
   (relative MSE) on the calibration activations.
5. Hybrid: `keep` the k sites with the highest stage-1 loss as attention.
6. Rewrite: each replaced site's subgraph becomes the new block's ATen ops
   (`optkit.ir.splice`), so the Program exports to ONNX and lowers through TVM.
7. Stage 2: a short end-to-end fine-tune of the new blocks' weights against the teacher's
   output on the calibration batches (kept only if it lowers the loss on them).

Budget: `steps` per site (stage 1) and `finetune_steps` (stage 2), optionally capped by
`minutes` for the whole pass (stage 1 gets 70% of it). Seeded. With `checkpoint_dir`, every
trained block (stage 1) and the stage-2 state (every 25 steps) are saved, and an interrupted run
with the same settings resumes from them. Run after capture, before `ptq` and `cache`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from optkit.distill import (
    DistillBudget,
    ProgressFn,
    finetune,
    load_checkpoint,
    relative_error,
    save_checkpoint,
    sqnr_from_relative,
    train_block,
)
from optkit.errors import ConfigError
from optkit.ir.attention import AttentionSite, find_attention_sites
from optkit.ir.flops import total_flops
from optkit.ir.onnx_io import flat_outputs
from optkit.ir.program import Program, eliminate_dead_code, remove_unused_attributes
from optkit.ir.splice import splice_module
from optkit.ir.subgraph import with_outputs
from optkit.nn.linear_attention import HedgehogSWA, ReLULinearAttention
from optkit.nn.mate import MATE, MateConfig
from optkit.pipeline import Pass, PassConfig, PassResult, Tolerance, register_pass
from optkit.quant.calibration import calibration_batches, resolve_mode
from optkit.report import Figure

log = logging.getLogger(__name__)

Kind = Literal["mate", "hedgehog-swa", "relu-linear"]
FIT_BATCHES = 4  # calibration batches the least-squares init reads
STAGE1_SHARE = 0.7  # of `minutes`
DATA_BATCHES = 16  # calibration batches read when the workload gives data instead of a sampler
# out <- O is scaled down so that the block starts close to its TE branch (the windowed copy of
# the attention). Stage-1 SQNR of zoo:moviegen tiny's 4 blocks after 100 steps, mean: 12.2 dB at
# 0.5 (the two Mamba directions sharing O), 13.4 dB at 0.1, 13.5 dB at 0 (which drops the map).
MA_OUT_SCALE = 0.1


@dataclass(frozen=True)
class MateReplaceConfig(PassConfig):
    """Settings of the `mate` pass (see the module docstring)."""

    kind: Kind = "mate"
    grid: tuple[int, ...] = ()
    keep: int = 0
    skip: tuple[str, ...] = ()
    steps: int = 200
    finetune_steps: int = 50
    minutes: float = 0.0
    lr: float = 2e-3
    finetune_lr: float = 2e-4
    batch: int = 4
    calibration_seeds: int = 2
    calibration_steps: int = 0
    d_state: int = 0
    chunk_size: int = 64
    review_tokens: int = 2
    window: tuple[int, int, int] = (4, 4, 4)
    swa_window: int = 64
    checkpoint_dir: str = ""
    min_sqnr_db: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.grid) > 3 or any(g <= 0 for g in self.grid):
            raise ConfigError(f"grid must be 1 to 3 positive sizes (N, (H, W) or (T, H, W)), got {self.grid}")
        if self.keep < 0:
            raise ConfigError(f"keep (attention layers kept) must be >= 0, got {self.keep}")
        if self.steps < 1:
            raise ConfigError(f"steps (stage-1 budget per site) must be >= 1, got {self.steps}")
        if self.finetune_steps < 0:
            raise ConfigError(f"finetune_steps must be >= 0 (0 = no stage 2), got {self.finetune_steps}")
        if not (math.isfinite(self.minutes) and self.minutes >= 0):
            raise ConfigError(f"minutes must be >= 0 (0 = steps only), got {self.minutes}")
        if not (self.lr > 0 and self.finetune_lr > 0):
            raise ConfigError(f"lr and finetune_lr must be positive, got {self.lr}, {self.finetune_lr}")
        if self.batch < 1 or self.calibration_seeds < 1 or self.calibration_steps < 0:
            raise ConfigError(
                f"need batch >= 1, calibration_seeds >= 1, calibration_steps >= 0; got "
                f"{self.batch}, {self.calibration_seeds}, {self.calibration_steps}"
            )
        if self.d_state < 0 or self.chunk_size < 1 or self.review_tokens < 0 or self.swa_window < 1:
            raise ConfigError(
                f"need d_state >= 0 (0 = head size), chunk_size >= 1, review_tokens >= 0, swa_window >= 1; "
                f"got {self.d_state}, {self.chunk_size}, {self.review_tokens}, {self.swa_window}"
            )
        if len(self.window) != 3 or min(self.window) < 1:
            raise ConfigError(f"window must be three positive sizes (wt, wh, ww), got {self.window}")


def token_grid(program: Program, tokens: int, grid: tuple[int, ...] = ()) -> tuple[int, int, int]:
    """The (T, H, W) layout of `tokens` tokens: `grid` when given (N, (H, W) or (T, H, W)), else
    inferred from the first input (see the module docstring). Raises when they disagree."""
    if grid:
        full = (1,) * (3 - len(grid)) + tuple(grid)
        if math.prod(full) != tokens:
            raise ConfigError(
                f"grid {tuple(grid)} holds {math.prod(full)} tokens, but the attention sees {tokens}; "
                f"give sizes whose product is {tokens}"
            )
        return full[0], full[1], full[2]
    shape = tuple(program.example_inputs[0].shape) if program.example_inputs else ()
    spatial = shape[2:] if len(shape) in (4, 5) else ()
    if spatial and math.prod(spatial) % tokens == 0:
        patch = round((math.prod(spatial) // tokens) ** (1 / len(spatial)))
        if (
            patch >= 1
            and patch ** len(spatial) * tokens == math.prod(spatial)
            and all(s % patch == 0 for s in spatial)
        ):
            sizes = tuple(s // patch for s in spatial)
            full = (1,) * (3 - len(sizes)) + sizes
            return full[0], full[1], full[2]
    return 1, 1, tokens


def _divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def build_block(
    kind: str, site: AttentionSite, grid: tuple[int, int, int], layer: int, cfg: MateReplaceConfig
) -> nn.Module:
    """The replacement for `site`: MATE on `grid`, or a baseline with the site's head layout."""
    if kind == "relu-linear":
        return ReLULinearAttention(site.dim_in, site.dim_out, site.heads, site.head_dim)
    if kind == "hedgehog-swa":
        swa = _divisor_at_most(site.tokens, cfg.swa_window)
        return HedgehogSWA(site.dim_in, site.dim_out, site.heads, site.head_dim, swa)
    window = (
        _divisor_at_most(grid[0], cfg.window[0]),
        _divisor_at_most(grid[1], cfg.window[1]),
        _divisor_at_most(grid[2], cfg.window[2]),
    )
    mate = MateConfig(
        d_state=cfg.d_state or site.head_dim,
        expand=1,
        headdim=site.head_dim,
        chunk_size=cfg.chunk_size,
        review_tokens=cfg.review_tokens,
        window=window,
    )
    return MATE(site.dim_in, site.heads, grid, layer, mate)


def _fit(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Ridge least squares y ~ x W^T + b over rows; returns (W (out, in), b (out,)).
    xa = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1).double()
    gram = xa.T @ xa
    gram += 1e-6 * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    sol = torch.linalg.solve(gram, xa.T @ y.double())  # (in + 1, out)
    return sol[:-1].T.float().contiguous(), sol[-1].float().contiguous()


def _rows(t: torch.Tensor) -> torch.Tensor:
    # (B, h, N, Dh) -> (B*N, h*Dh), heads outermost in the channel axis.
    bsz, h, n, dh = t.shape
    return t.transpose(1, 2).reshape(bsz * n, h * dh)


def fitted_projections(
    site: AttentionSite, acts: dict[str, list[torch.Tensor]]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Q, K, V and O as (weight, bias) fitted to the site's activations (module docstring, step 3)."""
    x = torch.cat([a.reshape(-1, a.shape[-1]) for a in acts["source"][:FIT_BATCHES]])
    y = torch.cat([a.reshape(-1, a.shape[-1]) for a in acts["result"][:FIT_BATCHES]])
    keys = [k.transpose(-1, -2) if site.key_transposed else k for k in acts["key"]]
    out = {
        name: _fit(x, torch.cat([_rows(t) for t in values]))
        for name, values in (("q", acts["query"]), ("k", keys), ("v", acts["value"]))
    }
    out["o"] = _fit(torch.cat([_rows(t) for t in acts["attended"]]), y)
    return out


@torch.no_grad()
def init_from_attention(block: nn.Module, proj: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Start `block` from the attention's fitted Q/K/V/O where shapes allow (module docstring)."""
    (wq, bq), (wk, bk), (wv, bv), (wo, bo) = proj["q"], proj["k"], proj["v"], proj["o"]
    if isinstance(block, (HedgehogSWA, ReLULinearAttention)):
        for layer, (w, b) in zip(
            (block.q_proj, block.k_proj, block.v_proj, block.o_proj),
            (proj["q"], proj["k"], proj["v"], proj["o"]),
            strict=True,
        ):
            layer.weight.copy_(w)
            layer.bias.copy_(b)
        return
    if not isinstance(block, MATE):
        return
    tesa = block.tesa
    if tesa.qkv.weight.shape == (3 * wq.shape[0], wq.shape[1]):
        tesa.qkv.weight.copy_(torch.cat([wq, wk, wv]))
        tesa.qkv.bias.copy_(torch.cat([bq, bk, bv]))
    if tesa.proj.weight.shape == wo.shape:
        tesa.proj.weight.copy_(wo)
        tesa.proj.bias.copy_(bo)
    for scan in (block.mamba.forward_scan, block.mamba.backward_scan):
        c = scan.config
        if c.d_inner != wv.shape[0] or c.d_state > wq.shape[0]:
            continue
        rows = scan.in_proj.weight  # (z | x | B | C | dt, D)
        x0, b0, c0 = c.d_inner, 2 * c.d_inner, 2 * c.d_inner + c.d_state
        rows[x0:b0].copy_(wv)
        rows[b0:c0].copy_(wk[: c.d_state])
        rows[c0 : c0 + c.d_state].copy_(wq[: c.d_state])
        scan.conv1d.weight.zero_()
        scan.conv1d.weight[:, 0, -1] = 1.0  # identity causal conv
        if scan.conv1d.bias is not None:
            scan.conv1d.bias.zero_()
        if scan.out_proj.weight.shape == wo.shape:
            scan.out_proj.weight.copy_(MA_OUT_SCALE * wo)


@register_pass("mate", MateReplaceConfig)
class MateReplacement(Pass):
    """Replace self-attention by MATE (or `hedgehog-swa` / `relu-linear`), distilled from the
    attention. After capture, before `ptq` and `cache`. `progress(stage, step, total, loss)`
    can be set on the instance (the CLI draws bars with it); by default progress is logged."""

    shares_weights = True  # registers new tensors; never writes its input's

    progress: ProgressFn | None = None

    @property
    def tolerance(self) -> Tolerance:  # type: ignore[override]
        return Tolerance(min_sqnr_db=self.config.min_sqnr_db)  # type: ignore[attr-defined]

    def _report(self, stage: str, step: int, total: int, loss: float) -> None:
        if self.progress is not None:
            self.progress(stage, step, total, loss)
        elif step == total or step % max(1, total // 4) == 0:
            log.info("mate %s: step %d/%d, relative loss %.4g", stage, step, total, loss)

    def run(self, program: Program) -> PassResult:
        cfg: MateReplaceConfig = self.config  # type: ignore[assignment]
        start = time.perf_counter()
        found, skipped = find_attention_sites(program)
        sites = [s for s in found if not any(_matches(s.path, g) for g in cfg.skip)]
        if not sites:
            left = "; ".join(f"{p}: {r}" for p, r in skipped) or "no attention op at all"
            raise ConfigError(
                f"{program.name} has no self-attention to replace (found {len(found)} site(s), "
                f"{len(found) - len(sites)} skipped by `skip`; left alone: {left}). mate replaces fused SDPA, "
                "nn.MultiheadAttention and softmax(QK^T)V self-attention"
            )
        if cfg.keep > len(sites):
            raise ConfigError(
                f"keep={cfg.keep} but {program.name} has only {len(sites)} self-attention site(s)"
            )
        mode = resolve_mode(program, "auto")
        if mode == "example":
            raise ConfigError(
                f"mate distils on calibration activations, but {program.name}'s workload has no [diffusion] "
                "sampler and no calibration data: give --workload FILE.toml with a [diffusion] table, or --calib PATH"
            )
        grids = [token_grid(program, s.tokens, cfg.grid) for s in sites]
        if cfg.kind == "mate":
            for s in sites:
                if s.dim_in != s.dim_out or s.heads * s.head_dim != s.dim_in:
                    raise ConfigError(
                        f"MATE at {s.path} needs heads*head_dim == D_in == D_out, got {s.heads}*{s.head_dim}, "
                        f"{s.dim_in}, {s.dim_out}; use kind='relu-linear' or 'hedgehog-swa', or skip it"
                    )
        count = cfg.calibration_seeds if mode != "data" else DATA_BATCHES
        batches = calibration_batches(program, mode, count, cfg.calibration_steps, cfg.seed)  # type: ignore[arg-type]
        teacher_out, acts = _collect(program, sites, batches)
        budget = DistillBudget(cfg.steps, cfg.finetune_steps, cfg.lr, cfg.finetune_lr, cfg.batch, cfg.seed)
        seconds_allowed = cfg.minutes * 60.0
        key = _fingerprint(cfg, program, sites)
        ckpt = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
        if ckpt is not None:
            ckpt.mkdir(parents=True, exist_ok=True)

        # Stage 1: every block alone against its attention.
        blocks: list[nn.Module] = []
        per_site: dict[str, dict[str, float]] = {}
        stage1_deadline = start + STAGE1_SHARE * seconds_allowed if seconds_allowed else math.inf
        for i, (site, grid) in enumerate(zip(sites, grids, strict=True)):
            torch.manual_seed(cfg.seed + i)
            block = build_block(cfg.kind, site, grid, i, cfg)
            init_from_attention(block, fitted_projections(site, acts[i]))
            xs, ys = acts[i]["source"], acts[i]["result"]
            init_rel = relative_error(block, xs, ys)
            path = ckpt / f"stage1_{i}.pt" if ckpt else None
            saved = load_checkpoint(path, key)
            if saved is not None:
                block.load_state_dict(saved["state"])
                steps_done = int(saved["steps"])
            else:
                deadline = (
                    start + (stage1_deadline - start) * (i + 1) / len(sites) if seconds_allowed else math.inf
                )
                steps_done = train_block(block, xs, ys, budget, i, deadline, self._report)
                if path is not None:
                    save_checkpoint(path, {"key": key, "state": block.state_dict(), "steps": steps_done})
            rel = relative_error(block, xs, ys)
            per_site[site.path] = {
                "init_sqnr_db": sqnr_from_relative(init_rel), "stage1_sqnr_db": sqnr_from_relative(rel), "stage1_loss": rel,
                "steps": steps_done,
            }  # fmt: skip
            blocks.append(block.eval())
        stage1_s = time.perf_counter() - start

        # Hybrid: the k sites whose replacement costs most stay attention.
        ranked = sorted(range(len(sites)), key=lambda j: -per_site[sites[j].path]["stage1_loss"])
        kept = set(ranked[: cfg.keep])
        flops_before = total_flops(program)
        prefixes = []
        for i, (site, block) in enumerate(zip(sites, blocks, strict=True)):
            if i in kept:
                continue
            prefix = f"{cfg.kind.replace('-', '_')}_{i}"
            stack = dict(site.node.meta.get("nn_module_stack") or {})
            example = acts[i]["source"][0]
            new = splice_module(program, block, [site.source], [example], prefix, site.result, stack)
            site.result.replace_all_uses_with(new)
            prefixes.append(prefix)
        gm = program.graph_module
        eliminate_dead_code(gm)
        remove_unused_attributes(gm)
        program.lint()

        # Stage 2: the new blocks end to end against the teacher's output.
        ft_before = ft_after = math.nan
        if cfg.finetune_steps and prefixes:
            deadline = start + seconds_allowed if seconds_allowed else math.inf
            ft_before, ft_after = finetune(
                program, prefixes, batches, teacher_out, budget, key, ckpt, deadline, self._report
            )
        seconds = time.perf_counter() - start
        replaced = [s.path for i, s in enumerate(sites) if i not in kept]
        summary = {
            "kind": cfg.kind, "grid": list(grids[0]), "replaced": replaced,
            "kept": [sites[i].path for i in sorted(kept)], "skipped": [f"{p}: {r}" for p, r in skipped],
            "sites": per_site, "calibration_batches": len(batches),
            "stage1_seconds": stage1_s, "seconds": seconds,
            "finetune_loss_before": ft_before, "finetune_loss_after": ft_after,
        }  # fmt: skip
        program.annotations.figures["mate"] = summary
        stage1 = [v["stage1_sqnr_db"] for p, v in per_site.items() if p in replaced]
        figures = {
            "sites_replaced": Figure(len(replaced), "", f"self-attention sites replaced by {cfg.kind}"),
            "sites_kept": Figure(len(kept), "", "attention sites kept (highest stage-1 loss)"),
            "stage1_min_sqnr_db": Figure(min(stage1) if stage1 else math.nan, "dB", "worst block output SQNR after stage 1"),
            "stage1_mean_sqnr_db": Figure(sum(stage1) / len(stage1) if stage1 else math.nan, "dB", "mean block output SQNR after stage 1"),
            "finetune_sqnr_db": Figure(sqnr_from_relative(ft_after) if ft_after == ft_after else math.nan, "dB", "denoiser output SQNR after stage 2 (calibration batches)"),
            "flops_before": Figure(flops_before, "FLOPs", "one denoiser call, before"),
            "flops_after": Figure(total_flops(program), "FLOPs", "one denoiser call, after"),
            "distill_seconds": Figure(seconds, "s", "distillation time (stage 1 + stage 2)"),
        }  # fmt: skip
        worst = ", ".join(
            f"{p} {v['stage1_sqnr_db']:.1f} dB"
            for p, v in sorted(per_site.items(), key=lambda kv: kv[1]["stage1_sqnr_db"])[:3]
        )
        return PassResult(
            program, modified=bool(replaced), figures=figures,
            hint=lambda _p: f"Worst blocks after stage 1: {worst}. Raise steps / finetune_steps, or keep the worst layers (keep=N).",
        )  # fmt: skip


def _matches(path: str, pattern: str) -> bool:
    import fnmatch

    return path == pattern or path.startswith(pattern + ".") or fnmatch.fnmatchcase(path, pattern)


def _collect(
    program: Program, sites: list[AttentionSite], batches: list[tuple[torch.Tensor, ...]]
) -> tuple[list[torch.Tensor], list[dict[str, list[torch.Tensor]]]]:
    # The teacher's first output and every site's watched values on each calibration batch.
    names = ["source", "result", "query", "key", "value", "attended"]
    watched = [n.name for s in sites for n in s.watched()]
    probe = with_outputs(program, watched)
    n_out = len(flat_outputs(program.run()))
    teacher: list[torch.Tensor] = []
    acts: list[dict[str, list[torch.Tensor]]] = [{k: [] for k in names} for _ in sites]
    with torch.no_grad():
        for b, batch in enumerate(batches):
            outs = flat_outputs(probe.graph_module(*batch))
            teacher.append(outs[0].detach())
            extra = outs[n_out:]
            for i in range(len(sites)):
                for j, name in enumerate(names):
                    if j < 2 or b < FIT_BATCHES:
                        acts[i][name].append(extra[i * len(names) + j].detach().contiguous())
    return teacher, acts


def _fingerprint(cfg: MateReplaceConfig, program: Program, sites: list[AttentionSite]) -> str:
    # What a checkpoint must agree with to be resumed from: settings (not the time budget) and sites.
    settings = {k: v for k, v in cfg.to_dict().items() if k not in ("checkpoint_dir", "minutes")}
    return json.dumps(
        {"settings": settings, "model": program.name, "sites": [s.path for s in sites]},
        sort_keys=True,
        default=str,
    )
