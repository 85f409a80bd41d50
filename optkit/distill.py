"""Layer-wise distillation loops shared by passes that replace a block and recover its quality.

LoLCATs' two stages (Zhang et al., ICLR 2025): `train_block` fits one new block alone to the
output of the block it replaces (attention transfer), `finetune` trains the new blocks' weights
inside the rewritten graph against the teacher's output. Both minimise the relative MSE
(squared error over the target's mean square, so SQNR = -10 log10 of it), use Adam with a
cosine decay and gradient clipping, are seeded, stop at a wall-clock deadline, and report
progress through a callback. `finetune` checkpoints every `CHECKPOINT_EVERY` steps and resumes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optkit.fsutil import atomic_file
from optkit.ir.onnx_io import flat_outputs
from optkit.ir.program import Program

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 25  # stage-2 steps between checkpoints
ProgressFn = Callable[[str, int, int, float], None]


@dataclass(frozen=True)
class DistillBudget:
    """Steps, learning rates, batch (pairs per stage-1 step) and seed of both stages."""

    steps: int
    finetune_steps: int
    lr: float
    finetune_lr: float
    batch: int
    seed: int


def relative_error(block: nn.Module, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> float:
    """Sum of squared errors over sum of squared targets of `block` on all pairs (SQNR = -10 log10)."""
    noise = signal = 0.0
    with torch.no_grad():
        for x, y in zip(xs, ys, strict=True):
            noise += float((block(x) - y).pow(2).sum())
            signal += float(y.pow(2).sum())
    return noise / max(signal, 1e-30)


def sqnr_from_relative(rel: float) -> float:
    """SQNR (dB) of a relative squared error."""
    return -10 * math.log10(rel) if rel > 0 else math.inf


def _cosine_lr(opt: torch.optim.Optimizer, base: float, step: int, total: int) -> None:
    for group in opt.param_groups:
        group["lr"] = base * 0.5 * (1 + math.cos(math.pi * step / total))


def train_block(
    block: nn.Module, xs: list[torch.Tensor], ys: list[torch.Tensor], cfg: DistillBudget,
    index: int, deadline: float, report: ProgressFn,
) -> int:  # fmt: skip
    """Stage 1: train `block` alone on pairs (`xs[j]` -> `ys[j]`), `cfg.batch` random pairs per
    step, until `cfg.steps` or the `deadline` (perf_counter seconds); returns the steps run."""
    gen = torch.Generator().manual_seed(cfg.seed + 1000 + index)
    opt = torch.optim.Adam(block.parameters(), lr=cfg.lr)
    block.train()
    step = 0
    for step in range(1, cfg.steps + 1):
        pick = torch.randint(0, len(xs), (min(cfg.batch, len(xs)),), generator=gen).tolist()
        x, y = torch.cat([xs[j] for j in pick]), torch.cat([ys[j] for j in pick])
        loss = (block(x) - y).pow(2).mean() / y.pow(2).mean().clamp_min(1e-12)
        if not torch.isfinite(loss):
            log.warning("stage 1, block %d: non-finite loss at step %d; step skipped", index, step)
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(block.parameters(), 1.0)
        _cosine_lr(opt, cfg.lr, step, cfg.steps)
        opt.step()
        report(f"stage1[{index}]", step, cfg.steps, float(loss.detach()))
        if time.perf_counter() > deadline:
            log.info("stage 1, block %d: time budget reached after %d of %d steps", index, step, cfg.steps)
            break
    block.eval()
    return step


def finetune(
    program: Program, prefixes: list[str], batches: list[tuple[torch.Tensor, ...]],
    teacher: list[torch.Tensor], cfg: DistillBudget, key: str, ckpt: Path | None,
    deadline: float, report: ProgressFn,
) -> tuple[float, float]:  # fmt: skip
    """Stage 2: train the parameters of `program`'s GraphModule named `{prefix}_*` end to end,
    relative MSE of its first output to `teacher[j]` on `batches[j]`; other weights stay frozen.
    Resumes from and writes `ckpt/stage2.pt` (keyed by `key`); keeps the starting weights when
    the budget did not lower the mean loss. Returns the mean loss before and after."""
    gm = program.graph_module
    params = {n: p for n, p in gm.named_parameters() if any(n.startswith(pre + "_") for pre in prefixes)}
    flags = {n: p.requires_grad for n, p in gm.named_parameters()}
    for n, p in gm.named_parameters():
        p.requires_grad_(n in params)
    opt = torch.optim.Adam(params.values(), lr=cfg.finetune_lr)

    def loss_on(j: int) -> torch.Tensor:
        out = flat_outputs(gm(*batches[j]))[0]
        return (out - teacher[j]).pow(2).mean() / teacher[j].pow(2).mean().clamp_min(1e-12)

    def mean_loss() -> float:
        with torch.no_grad():
            return sum(float(loss_on(j)) for j in range(len(batches))) / len(batches)

    # The stage-1 weights and their loss, before any checkpoint is loaded: a resumed run
    # compares against the same starting point.
    before = mean_loss()
    start_state = {n: p.detach().clone() for n, p in params.items()}
    path = ckpt / "stage2.pt" if ckpt else None
    saved = load_checkpoint(path, key)
    first = 0
    if saved is not None:
        with torch.no_grad():
            for n, t in saved["params"].items():
                params[n].copy_(t)
        opt.load_state_dict(saved["opt"])
        first = int(saved["step"])

    gen = torch.Generator().manual_seed(cfg.seed + 2000)
    try:
        for step in range(1, cfg.finetune_steps + 1):
            j = int(torch.randint(0, len(batches), (1,), generator=gen))
            if step <= first:
                continue  # replay the generator so a resumed run sees the same batches
            loss = loss_on(j)
            if not torch.isfinite(loss):
                log.warning("stage 2: non-finite loss at step %d; step skipped", step)
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
            _cosine_lr(opt, cfg.finetune_lr, step, cfg.finetune_steps)
            opt.step()
            report("stage2", step, cfg.finetune_steps, float(loss.detach()))
            if path is not None and (step % CHECKPOINT_EVERY == 0 or step == cfg.finetune_steps):
                state = {n: p.detach().clone() for n, p in params.items()}
                save_checkpoint(path, {"key": key, "params": state, "opt": opt.state_dict(), "step": step})
            if time.perf_counter() > deadline:
                log.info("stage 2: time budget reached after %d of %d steps", step, cfg.finetune_steps)
                break
        after = mean_loss()
        if not after <= before:  # worse (or NaN): a budget too short to help must not hurt
            log.info("stage 2: loss %.4g > %.4g before it; keeping the stage-1 weights", after, before)
            with torch.no_grad():
                for n, t in start_state.items():
                    params[n].copy_(t)
            after = before
    finally:
        for n, p in gm.named_parameters():
            p.requires_grad_(flags[n])
    return before, after


def load_checkpoint(path: Path | None, key: str) -> dict[str, Any] | None:
    """The checkpoint at `path` when it exists and was written under the same `key`, else None."""
    if path is None or not path.exists():
        return None
    data = torch.load(path, weights_only=True)
    if data.get("key") != key:
        log.warning("ignoring checkpoint %s written with other settings", path)
        return None
    log.info("resuming from %s", path)
    return data


def save_checkpoint(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path` atomically (an interrupted write never leaves a broken file)."""
    with atomic_file(path) as tmp:
        torch.save(data, tmp)
