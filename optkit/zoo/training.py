"""Training loops of the zoo: `run_steps`, the optimizer loop its models share, and
`train_denoiser` for the diffusion models (eps-prediction DDPM and flow matching).

Seeded (`torch.Generator`), AdamW with cosine decay and gradient clipping, condition dropout for
classifier-free guidance, and a progress callback per step. Returns measured figures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from optkit.errors import ConfigError
from optkit.sampling import TRAIN_STEPS, alphas_cumprod
from optkit.zoo.registry import TrainSettings

Batches = Callable[[torch.Generator, int], tuple[torch.Tensor, tuple[torch.Tensor, ...]]]
NullCond = Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]


def noised(
    x0: torch.Tensor, objective: str, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, target) for one training batch under `objective` ("eps" or "flow")."""
    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=gen)
    shape = (b,) + (1,) * (x0.dim() - 1)
    if objective == "eps":
        t = torch.randint(0, TRAIN_STEPS, (b,), generator=gen)
        abar = alphas_cumprod().float()[t].reshape(shape)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise, t.float(), noise
    s = torch.rand((b,), generator=gen)
    s_ = s.reshape(shape)
    return (1 - s_) * x0 + s_ * noise, 1000.0 * s, noise - x0


def train_denoiser(
    model: nn.Module,
    batches: Batches,
    settings: TrainSettings,
    objective: Literal["eps", "flow"],
    null_cond: NullCond | None = None,
    cond_dropout: float = 0.1,
) -> dict[str, float]:
    """Train `model(x_t, t, *cond)` to predict eps or the flow velocity; returns figures."""
    if objective not in ("eps", "flow"):
        raise ConfigError(f"objective must be eps or flow, got {objective!r}")
    if settings.steps < 1 or settings.batch_size < 1 or settings.lr <= 0:
        raise ConfigError(f"steps, batch_size and lr must be positive, got {settings}")
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    warmup = max(1, settings.steps // 50)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, settings.steps - warmup))) * 0.95 + 0.05

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)

    def loss_at(step: int) -> torch.Tensor:
        x0, cond = batches(gen, settings.batch_size)
        if null_cond is not None and cond_dropout > 0:
            drop = torch.rand((x0.shape[0],), generator=gen) < cond_dropout
            nulls = null_cond(cond)
            cond = tuple(
                torch.where(drop.reshape((-1,) + (1,) * (c.dim() - 1)), n, c)
                for c, n in zip(cond, nulls, strict=True)
            )
        xt, t, target = noised(x0, objective, gen)
        return F.mse_loss(model(xt, t, *cond), target)

    return run_steps(model, opt, sched, loss_at, settings)


def run_steps(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    loss_at: Callable[[int], torch.Tensor],
    settings: TrainSettings,
) -> dict[str, float]:
    """The zoo's optimizer loop: `settings.steps` steps of `loss_at(step)`, gradients clipped to
    norm 1, the scheduler stepped after each, an exponential moving average of the loss (0.98)
    reported to `settings.progress`; leaves `model` in eval mode and returns the figures
    (`final_loss`, the average at the end; `seconds`; `steps`)."""
    model.train()
    start, ema = time.perf_counter(), None
    for step in range(settings.steps):
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if settings.progress:
            settings.progress(step + 1, settings.steps, ema)
    model.eval()
    return {
        "final_loss": float(ema or 0.0),
        "seconds": time.perf_counter() - start,
        "steps": float(settings.steps),
    }
