"""Samplers for the zoo's diffusion models: DDIM, DPM-Solver++(2M) and flow-matching Euler.

All three call a denoiser `denoiser(x, t, *cond)` — an `nn.Module` or a captured Program — once
per step (twice in one batched call with classifier-free guidance), with fixed seeds, and report
every call to an `observer(step_index, t, inputs, output)` hook that calibration, sensitivity
and caching use.

Timesteps: eps-prediction models are trained with the DDPM linear schedule (beta 1e-4..0.02,
1000 steps) and take the discrete index t in [0, 1000) as a float; flow-matching velocity
models take t = 1000 s with x_s = (1 - s) x0 + s noise and velocity = noise - x0, integrated
from s = 1 to s = 0.

References: Song et al., "Denoising Diffusion Implicit Models" (2021), eta = 0; Lu et al.,
"DPM-Solver++" (2022), multistep second order in data-prediction form; Lipman et al., "Flow
Matching for Generative Modeling" (2023), Euler steps; Ho & Salimans, "Classifier-Free
Diffusion Guidance" (2022).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from optkit.errors import ConfigError, UnknownNameError

Denoiser = Callable[..., torch.Tensor]
Observer = Callable[[int, torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor], None]
# Anything called like `sample` below (a cached or quantized runner's sampler, for instance).
SampleFn = Callable[..., torch.Tensor]

SAMPLERS = ("ddim", "dpm++2m", "flow-euler")
TRAIN_STEPS = 1000


def alphas_cumprod(
    num_steps: int = TRAIN_STEPS, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """alpha-bar_t of the DDPM linear beta schedule, float64 (num_steps,)."""
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def timesteps(sampler: str, steps: int) -> list[float]:
    """The model-time values the sampler visits, noisiest first (`steps` denoiser calls)."""
    _check(sampler, steps)
    if sampler == "flow-euler":
        return [1000.0 * (1.0 - i / steps) for i in range(steps)]
    # Evenly spaced ("trailing") discrete indices, ending at the least noisy step 0.
    return [float(round((TRAIN_STEPS - 1) * (1.0 - i / steps))) for i in range(steps)]


def _check(sampler: str, steps: int) -> None:
    if sampler not in SAMPLERS:
        raise UnknownNameError("sampler", sampler, SAMPLERS)
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")


def _guided(
    denoiser: Denoiser,
    x: torch.Tensor,
    t: float,
    cond: tuple[torch.Tensor, ...],
    uncond: tuple[torch.Tensor, ...] | None,
    scale: float,
    step: int,
    observer: Observer | None,
) -> torch.Tensor:
    batch = x.shape[0]
    if uncond is None or scale == 1.0:
        inputs = (x, torch.full((batch,), t, dtype=torch.float32), *cond)
        with torch.no_grad():
            out = denoiser(*inputs)
        if observer:
            observer(step, inputs[1], inputs, out)
        return out
    # One batched call: conditional half first, unconditional half second.
    both = tuple(torch.cat([c, u]) for c, u in zip(cond, uncond, strict=True))
    inputs = (torch.cat([x, x]), torch.full((2 * batch,), t, dtype=torch.float32), *both)
    with torch.no_grad():
        out = denoiser(*inputs)
    if observer:
        observer(step, inputs[1], inputs, out)
    c, u = out[:batch], out[batch:]
    return u + scale * (c - u)


def sample(
    denoiser: Denoiser,
    shape: Sequence[int],
    *,
    sampler: str,
    steps: int,
    seed: int,
    cond: tuple[torch.Tensor, ...] = (),
    uncond: tuple[torch.Tensor, ...] | None = None,
    guidance_scale: float = 1.0,
    observer: Observer | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw samples of `shape` (batch first) from `denoiser` with the named sampler.

    `cond`/`uncond` are the extra denoiser inputs (labels, text tokens) for the conditional and
    unconditional branch of classifier-free guidance; `uncond=None` or `guidance_scale=1` runs
    the conditional branch only. `noise` overrides the seeded initial noise.
    """
    _check(sampler, steps)
    if uncond is not None and len(uncond) != len(cond):
        raise ConfigError(f"uncond has {len(uncond)} tensors, cond {len(cond)}")
    gen = torch.Generator().manual_seed(seed)
    x = noise.clone() if noise is not None else torch.randn(tuple(shape), generator=gen)
    ts = timesteps(sampler, steps)
    if sampler == "flow-euler":
        return _flow_euler(denoiser, x, ts, cond, uncond, guidance_scale, observer)
    abar = alphas_cumprod()
    if sampler == "ddim":
        return _ddim(denoiser, x, ts, abar, cond, uncond, guidance_scale, observer)
    return _dpm_pp_2m(denoiser, x, ts, abar, cond, uncond, guidance_scale, observer)


def _ddim(denoiser, x, ts, abar, cond, uncond, scale, observer):  # type: ignore[no-untyped-def]
    for i, t in enumerate(ts):
        a_t = abar[int(t)].item()
        a_prev = abar[int(ts[i + 1])].item() if i + 1 < len(ts) else 1.0
        eps = _guided(denoiser, x, t, cond, uncond, scale, i, observer).double()
        x0 = (x.double() - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        # 1. DDIM (eta = 0): move to the previous noise level along the predicted direction.
        x = (a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps).float()
    return x


def _dpm_pp_2m(denoiser, x, ts, abar, cond, uncond, scale, observer):  # type: ignore[no-untyped-def]
    def lam(a: float) -> float:  # half log-SNR
        return 0.5 * (torch.log(torch.tensor(a)) - torch.log(torch.tensor(1 - a))).item()

    x0_prev = None
    h_prev = None
    for i, t in enumerate(ts):
        a_t = abar[int(t)].item()
        eps = _guided(denoiser, x, t, cond, uncond, scale, i, observer).double()
        x0 = (x.double() - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        if i + 1 == len(ts):
            # Last step to noise level 0: the data prediction itself (lower-order final step).
            return x0.float()
        a_next = abar[int(ts[i + 1])].item()
        h = lam(a_next) - lam(a_t)
        sigma_t, sigma_next = (1 - a_t) ** 0.5, (1 - a_next) ** 0.5
        # 1. Second-order multistep correction of the data prediction (first step: first order).
        if x0_prev is None or h_prev is None:
            d = x0
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        # 2. Exponential-integrator update in data-prediction form.
        x = (
            sigma_next / sigma_t * x.double() - a_next**0.5 * (torch.expm1(torch.tensor(-h)).item()) * d
        ).float()
        x0_prev, h_prev = x0, h
    return x


def _flow_euler(denoiser, x, ts, cond, uncond, scale, observer):  # type: ignore[no-untyped-def]
    for i, t in enumerate(ts):
        s, s_next = t / 1000.0, (ts[i + 1] / 1000.0 if i + 1 < len(ts) else 0.0)
        v = _guided(denoiser, x, t, cond, uncond, scale, i, observer)
        # 1. Euler step of dx/ds = v from s to s_next (< s).
        x = x + (s_next - s) * v
    return x
