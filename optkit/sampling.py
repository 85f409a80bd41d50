"""Diffusion samplers: DDIM, DPM-Solver++(2M), flow-matching Euler, or a diffusers scheduler.

Every sampler calls a denoiser `denoiser(x, t, *cond)` — an `nn.Module`, a captured Program or a
cached runner — once per step (twice in one batched call with classifier-free guidance), with
fixed seeds, and reports every call to an `observer(step_index, t, inputs, output)` hook that
calibration, sensitivity and caching use. Which sampler, and with which noise schedule, is a
`SamplerSpec`: a small serializable value that a `Workload` carries.

Native samplers (no dependency): eps-prediction models trained with a DDPM beta schedule
(`linear` from `beta_start` to `beta_end` over `train_steps`, or Stable Diffusion's
`scaled_linear`) take the discrete index t in [0, train_steps) as a float; flow-matching
velocity models take t = 1000 s with x_s = (1 - s) x0 + s noise and velocity = noise - x0,
integrated from s = 1 to s = 0. The defaults are the conventions the zoo trains with.

`diffusers` samplers drive a diffusers scheduler built from its saved configuration
(`scheduler_config.json`: `_class_name` plus its settings) through `set_timesteps`,
`scale_model_input` and `step`, so a user's diffusers pipeline is sampled exactly as diffusers
samples it. diffusers is imported only then (the `optkit[hf]` extra).

References: Song et al., "Denoising Diffusion Implicit Models" (2021), eta = 0; Lu et al.,
"DPM-Solver++" (2022), multistep second order in data-prediction form; Lipman et al., "Flow
Matching for Generative Modeling" (2023), Euler steps; Ho & Salimans, "Classifier-Free
Diffusion Guidance" (2022).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from optkit.errors import ConfigError

Denoiser = Callable[..., torch.Tensor]
Observer = Callable[[int, torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor], None]
# Anything called like `sample` below (a cached or quantized runner's sampler, for instance).
SampleFn = Callable[..., torch.Tensor]

NATIVE_SAMPLERS = ("ddim", "dpm++2m", "flow-euler")
SAMPLERS = (*NATIVE_SAMPLERS, "diffusers")
BETA_SCHEDULES = ("linear", "scaled_linear")
TRAIN_STEPS = 1000


@dataclass(frozen=True)
class SamplerSpec:
    """Which sampler drives a denoiser, and the noise schedule the model was trained with.

    `name` is one of `SAMPLERS`. The beta fields apply to `ddim` and `dpm++2m`; `scheduler`
    is the diffusers scheduler configuration (with `_class_name`) for `diffusers`.
    """

    name: str
    train_steps: int = TRAIN_STEPS
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    scheduler: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.name!r}; known: {', '.join(SAMPLERS)}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(
                f"unknown beta schedule {self.beta_schedule!r}; known: {', '.join(BETA_SCHEDULES)}"
            )
        if self.train_steps < 2 or not 0 < self.beta_start < self.beta_end < 1:
            raise ConfigError(
                f"sampler {self.name}: need train_steps >= 2 and 0 < beta_start < beta_end < 1, got "
                f"{self.train_steps}, {self.beta_start}, {self.beta_end}"
            )
        if self.name == "diffusers":
            cls = self.scheduler.get("_class_name")
            if not isinstance(cls, str) or not cls:
                raise ConfigError("a diffusers sampler needs its scheduler config with `_class_name`")
        elif self.scheduler:
            raise ConfigError(f"sampler {self.name} takes no diffusers scheduler config")

    @property
    def label(self) -> str:
        """A short human name: `ddim`, or `diffusers:DDIMScheduler`."""
        return f"diffusers:{self.scheduler['_class_name']}" if self.name == "diffusers" else self.name

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name}
        if self.name == "diffusers":
            data["scheduler"] = dict(self.scheduler)
        elif self.name != "flow-euler":
            data.update(
                train_steps=self.train_steps,
                beta_start=self.beta_start,
                beta_end=self.beta_end,
                beta_schedule=self.beta_schedule,
            )
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | str) -> SamplerSpec:
        """From `to_dict` output, a TOML table, or a bare sampler name."""
        if isinstance(data, str):
            return cls(data)
        known = {"name", "train_steps", "beta_start", "beta_end", "beta_schedule", "scheduler"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"sampler: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
            )
        if "name" not in data:
            raise ConfigError(f"sampler needs a `name` ({', '.join(SAMPLERS)})")
        values = dict(data)
        for key in ("beta_start", "beta_end"):
            if key in values:
                values[key] = float(values[key])
        return cls(**values)


def as_spec(sampler: str | SamplerSpec) -> SamplerSpec:
    """`sampler` as a SamplerSpec (a bare name gets the zoo's default schedule)."""
    return sampler if isinstance(sampler, SamplerSpec) else SamplerSpec(sampler)


def alphas_cumprod(
    num_steps: int = TRAIN_STEPS, beta_start: float = 1e-4, beta_end: float = 0.02, schedule: str = "linear"
) -> torch.Tensor:
    """alpha-bar_t of a DDPM beta schedule, float64 (num_steps,)."""
    if schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    else:
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def _abar(spec: SamplerSpec) -> torch.Tensor:
    return alphas_cumprod(spec.train_steps, spec.beta_start, spec.beta_end, spec.beta_schedule)


def timesteps(sampler: str | SamplerSpec, steps: int) -> list[float]:
    """The model-time values the sampler visits, noisiest first (`steps` denoiser calls)."""
    spec = as_spec(sampler)
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if spec.name == "diffusers":
        scheduler = diffusers_scheduler(spec)
        scheduler.set_timesteps(steps)
        return [float(t) for t in scheduler.timesteps]
    if spec.name == "flow-euler":
        return [1000.0 * (1.0 - i / steps) for i in range(steps)]
    # Evenly spaced ("trailing") discrete indices, ending at the least noisy step 0.
    last = spec.train_steps - 1
    return [float(round(last * (1.0 - i / steps))) for i in range(steps)]


def diffusers_scheduler(spec: SamplerSpec) -> Any:
    """A fresh diffusers scheduler object built from `spec.scheduler`."""
    try:
        diffusers = importlib.import_module("diffusers")
    except ImportError as err:
        raise ConfigError(
            f"sampler {spec.label} needs diffusers; install the extra: pip install 'optkit[hf]'"
        ) from err
    name = spec.scheduler["_class_name"]
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ConfigError(f"diffusers has no scheduler class {name!r}")
    config = {k: v for k, v in spec.scheduler.items() if not k.startswith("_")}
    return cls.from_config(config)


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
    sampler: str | SamplerSpec,
    steps: int,
    seed: int,
    cond: tuple[torch.Tensor, ...] = (),
    uncond: tuple[torch.Tensor, ...] | None = None,
    guidance_scale: float = 1.0,
    observer: Observer | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw samples of `shape` (batch first) from `denoiser` with the given sampler.

    `cond`/`uncond` are the extra denoiser inputs (labels, text tokens) for the conditional and
    unconditional branch of classifier-free guidance; `uncond=None` or `guidance_scale=1` runs
    the conditional branch only. `noise` overrides the seeded initial noise.
    """
    spec = as_spec(sampler)
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if uncond is not None and len(uncond) != len(cond):
        raise ConfigError(f"uncond has {len(uncond)} tensors, cond {len(cond)}")
    gen = torch.Generator().manual_seed(seed)
    x = noise.clone() if noise is not None else torch.randn(tuple(shape), generator=gen)
    if spec.name == "diffusers":
        return _diffusers(denoiser, x, spec, steps, cond, uncond, guidance_scale, observer, gen)
    ts = timesteps(spec, steps)
    if spec.name == "flow-euler":
        return _flow_euler(denoiser, x, ts, cond, uncond, guidance_scale, observer)
    abar = _abar(spec)
    if spec.name == "ddim":
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


def _diffusers(denoiser, x, spec, steps, cond, uncond, scale, observer, gen):  # type: ignore[no-untyped-def]
    scheduler = diffusers_scheduler(spec)
    try:
        scheduler.set_timesteps(steps)
    except Exception as err:  # e.g. a dynamic-shift flow scheduler that needs `mu`
        raise ConfigError(f"optkit cannot drive {spec.label}: set_timesteps({steps}) failed: {err}") from err
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    # Flow-matching schedulers start from unit noise and feed x as it is (no such methods).
    x = x * getattr(scheduler, "init_noise_sigma", 1.0)
    scale_input = getattr(scheduler, "scale_model_input", lambda sample, _t: sample)
    for i, t in enumerate(scheduler.timesteps):
        model_in = scale_input(x, t)
        out = _guided(denoiser, model_in, float(t), cond, uncond, scale, i, observer)
        extra = {"generator": gen} if takes_generator else {}
        x = scheduler.step(out, t, x, return_dict=False, **extra)[0]
    return x
