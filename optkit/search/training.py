"""Training click-through-rate models: the weight-sharing supernet and subnets trained alone.

Moved here from `optkit.zoo.recsys` so the search (generic core) and the zoo share one loop:
`fit` minimizes binary cross-entropy with AdamW and a cosine schedule; `train_supernet` runs one
uniformly sampled subnet per step (NASRec's weight sharing); `train_alone` trains a plain
module from its own initialization, keeping the weights with the best validation log loss.
Data is a dict of tensors: `dense` (N, Nd) float, `sparse` (N, F) int64, `labels` (N,) float.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from optkit.errors import ConfigError
from optkit.metrics import log_loss, roc_auc
from optkit.nn.supernet import RecSupernet, sample_choice

Data = dict[str, torch.Tensor]
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def fit(
    params: list[nn.Parameter],
    forward: Forward,
    data: Data,
    steps: int,
    batch_size: int,
    lr: float,
    gen: torch.Generator,
    progress: Callable[[int, float], None] | None = None,
    weight_decay: float = 1e-5,
) -> float:
    """Minimize BCE of `forward(dense, sparse, gen)` logits on `data` with AdamW and cosine decay.

    Batches are drawn with replacement; returns the smoothed final loss.
    """
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(1, steps))) * 0.95 + 0.05
    )
    n = data["labels"].shape[0]
    ema = float("nan")
    for step in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        loss = F.binary_cross_entropy_with_logits(
            forward(data["dense"][idx], data["sparse"][idx], gen), data["labels"][idx]
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema = loss.item() if step == 0 else 0.98 * ema + 0.02 * loss.item()
        if progress:
            progress(step + 1, ema)
    return ema


def train_supernet(
    supernet: RecSupernet,
    data: Data,
    steps: int,
    batch_size: int,
    lr: float,
    gen: torch.Generator,
    progress: Callable[[int, float], None] | None = None,
) -> float:
    """Weight-sharing training: every step runs one uniformly sampled subnet."""
    rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=gen)))

    def forward(dense: torch.Tensor, sparse: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return supernet(dense, sparse, sample_choice(supernet.config, rng))

    supernet.train()
    loss = fit(list(supernet.parameters()), forward, data, steps, batch_size, lr, gen, progress)
    supernet.eval()
    return loss


@torch.no_grad()
def predict(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: Data,
    batch: int = 4096,
) -> torch.Tensor:
    """Click probabilities (N,) of `model(dense, sparse)` logits, in batches."""
    n = data["labels"].shape[0]
    out = [model(data["dense"][i : i + batch], data["sparse"][i : i + batch]) for i in range(0, n, batch)]
    return torch.sigmoid(torch.cat(out))


def train_alone(
    model: nn.Module,
    fit_data: Data,
    validation: Data,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    checks: int = 10,
) -> dict[str, float]:
    """Train `model` alone on `fit_data` for `steps`, validating `checks` times; keep the weights
    with the lowest validation log loss (ids overfit within a few epochs) and return their
    validation AUC and log loss."""
    if steps < 1 or batch_size < 1 or lr <= 0 or checks < 1:
        raise ConfigError(
            f"need positive steps, batch_size, lr and checks, got {steps}, {batch_size}, {lr}, {checks}"
        )
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    every = max(1, steps // checks)
    best: dict = {"log_loss": math.inf}

    def validate(step: int, _loss: float) -> None:
        if step % every and step != steps:
            return
        model.eval()
        probs = predict(model, validation)
        loss = log_loss(validation["labels"], probs)
        if loss < best["log_loss"]:
            best.update(
                log_loss=loss,
                auc=roc_auc(validation["labels"], probs),
                state=copy.deepcopy(model.state_dict()),
            )
        model.train()

    model.train()
    fit(list(model.parameters()), lambda d, s, g: model(d, s), fit_data, steps, batch_size, lr, gen, validate)
    model.load_state_dict(best["state"])
    model.eval()
    return {"validation_auc": float(best["auc"]), "validation_log_loss": float(best["log_loss"])}
