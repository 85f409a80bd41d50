"""Block caching figures: speed-up and quality of cached sampling against the uncached sampler,
as a curve over the threshold, with the baselines at equal compute.

    OMP_NUM_THREADS=1 python benchmarks/bench_cache.py [--models moviegen] [--steps 20] \
        [--repeats 3] [--train-steps 300]

For every zoo diffusion model present (`dit`, `ldm`, `moviegen`) and each sampler it can use
(eps models: ddim and dpm++2m; flow models: flow-euler), with classifier-free guidance when the
zoo entry names a `guidance_scale`: profile on calibration seeds 0-1, then sample held-out seeds
100-101 with the paper's threshold schedule (several thresholds, scale-shift on) and with the
baselines at the same fraction of block evaluations (uniform interval reuse, first-block gating,
fewer steps). Speed-up is wall-clock against the uncached sampler in the same run (median of
`repeats`); PSNR is against the uncached samples on the same seeds. Weights: the shipped
checkpoint when optkit/zoo/checkpoints has one, else `--train-steps` steps of the zoo's `train`
hook (said in the table), else random. Writes docs/benchmarks.md (section bench_cache) and
docs/bench_cache.png.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _docs import write_section  # noqa: E402
from optkit.passes.cache import null_condition  # noqa: E402

from optkit.caching import (  # noqa: E402
    CachedSampler,
    block_change_profile,
    cache_units,
    fewer_steps_schedule,
    first_block_budget_schedule,
    fit_alignment,
    threshold_schedule,
    uncached_sample,
    uniform_schedule,
)
from optkit.errors import UnknownNameError  # noqa: E402
from optkit.ir.capture import capture  # noqa: E402
from optkit.metrics import psnr_db  # noqa: E402
from optkit.report import Table  # noqa: E402
from optkit.zoo.registry import TrainSettings, get_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CAL_SEEDS = (0, 1)
EVAL_SEEDS = (100, 101)
SAMPLE_FN: list = [None]
THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8)


def fallback_sample(
    denoiser, shape, *, sampler, steps, seed, cond=(), uncond=None, guidance_scale=1.0, observer=None
):
    """DDIM / flow-Euler with the zoo's `sample` signature, used only while optkit.zoo.samplers is absent."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)

    def predict(x: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((x.shape[0],), float(t))
        if uncond is None or guidance_scale == 1.0:
            return denoiser(x, tt, *cond)
        both = denoiser(
            torch.cat([x, x]), torch.cat([tt, tt]), *(torch.cat(p) for p in zip(cond, uncond, strict=True))
        )
        c, u = both.chunk(2)
        return u + guidance_scale * (c - u)

    if sampler == "flow-euler":
        s = torch.linspace(1.0, 0.0, steps + 1)
        for i in range(steps):
            x = x + (s[i + 1] - s[i]) * predict(x, 1000.0 * float(s[i]))
        return x
    alphas = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
    ts = torch.linspace(999, 0, steps).round().long()
    for i, t in enumerate(ts):
        a = alphas[t]
        a_prev = alphas[ts[i + 1]] if i + 1 < steps else torch.tensor(1.0)
        eps = predict(x, float(t))
        x = a_prev.sqrt() * (x - (1 - a).sqrt() * eps) / a.sqrt() + (1 - a_prev).sqrt() * eps
    return x


def zoo_sampler():
    """The zoo's `sample` and a label, or the fallback above."""
    try:
        from optkit.zoo.samplers import sample
    except ModuleNotFoundError:
        return fallback_sample, "bench fallback DDIM/flow-Euler (optkit.zoo.samplers absent)"
    return sample, "optkit.zoo.samplers"


def quick_train_moviegen(model: torch.nn.Module, steps: int) -> None:
    """Flow-matching training on moving digits (10% null prompts), used only while optkit.zoo.training is absent."""
    from optkit.zoo.data import moving_digits
    from optkit.zoo.moviegen import digit_prompt

    cfg = model.config
    videos, labels = moving_digits(512, frames=cfg.frames, resolution=cfg.resolution, seed=0)
    prompts = digit_prompt(labels, cfg.text_len)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, videos.shape[0], (16,), generator=gen)
        x0, text = videos[idx], prompts[idx].clone()
        text[torch.rand(16, generator=gen) < 0.1] = 0
        s = torch.rand(16, generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        xs = (1 - s.view(-1, 1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1, 1) * noise
        loss = (model(xs, 1000 * s, text) - (noise - x0)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def load(name: str, train_steps: int) -> tuple[object, str] | None:
    """The zoo model `name` (tiny) and how its weights were obtained, or None when absent."""
    try:
        entry = get_model(name)
    except UnknownNameError:
        return None
    if entry.checkpoint_path("tiny").exists():
        return entry.create("tiny"), f"checkpoint {entry.checkpoint_path('tiny').name}"
    torch.manual_seed(0)  # the weights' initialization, so that runs repeat
    model = entry.create("tiny", pretrained=False)
    if train_steps and entry.train is not None:
        try:
            entry.train(model.train(), TrainSettings(steps=train_steps, batch_size=16, lr=1e-3))
            return model.eval(), f"trained here for {train_steps} steps (no checkpoint)"
        except ModuleNotFoundError as err:
            if name != "moviegen":
                print(f"{name}: cannot train ({err}); random weights")
            else:
                quick_train_moviegen(model, train_steps)
                return (
                    model.eval(),
                    f"trained here for {train_steps} flow-matching steps by the bench's own loop",
                )
    return model.eval(), "random init (no checkpoint)"


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def evaluate(program, units, schedule, alignment, ctx, refs, base_s, repeats) -> dict[str, float]:
    runner = CachedSampler(program, schedule, units, alignment)

    def run_all() -> list[torch.Tensor]:
        return [runner.sample(ctx["shape"], seed=s, **ctx["kw"]) for s in EVAL_SEEDS]

    outs = run_all()
    seconds = median_seconds(run_all, repeats)
    return {
        "fraction": schedule.evaluation_fraction(ctx["steps"]),
        "speedup": base_s / seconds,
        "psnr": psnr_db(torch.cat(refs), torch.cat(outs)),
    }


def bench_model(
    name: str, sampler: str, steps: int, repeats: int, train_steps: int, loaded
) -> tuple[list, dict]:
    model, weights = loaded
    entry = get_model(name)
    inputs = entry.example_inputs(model, 2, 0)
    program = capture(model, inputs, name=f"{name}-tiny")
    program.meta = {"zoo": name, "size": "tiny", "task": entry.task, "sampler": entry.sampler}
    units = cache_units(program)
    x, _t, *cond = program.example_inputs
    guidance = float(entry.extra.get("guidance_scale", 1.0))
    kw = {
        "sampler": sampler,
        "cond": tuple(cond),
        "uncond": null_condition(program, tuple(cond)) if guidance > 1 else None,
        "guidance_scale": guidance,
        "sample_fn": SAMPLE_FN[0],
    }
    ctx = {"shape": tuple(x.shape), "kw": kw, "steps": steps}
    profile = block_change_profile(program, units, steps=steps, seeds=CAL_SEEDS, shape=x.shape, **kw)

    def uncached(n_steps: int) -> list[torch.Tensor]:
        return [uncached_sample(program, x.shape, steps=n_steps, seed=s, **kw) for s in EVAL_SEEDS]

    refs = uncached(steps)
    base_s = median_seconds(lambda: uncached(steps), repeats)
    rows, curves = [], {"threshold": [], "uniform": [], "first-block": [], "fewer-steps": []}
    label = f"{name} / {sampler}" + (f" / CFG {guidance:g}" if guidance > 1 else "")
    for delta in THRESHOLDS:
        schedule = threshold_schedule(profile.change, delta)
        fit = evaluate(
            program, units, schedule, fit_alignment(profile.values, schedule), ctx, refs, base_s, repeats
        )
        plain = evaluate(program, units, schedule, None, ctx, refs, base_s, 1)
        budget = max(schedule.evaluation_fraction(), 1.0 / steps)
        fb = first_block_budget_schedule(profile.change, budget)
        fb_fit = evaluate(program, units, fb, None, ctx, refs, base_s, 1)
        fewer = fewer_steps_schedule(profile.blocks, steps, budget)
        fewer_outs = uncached(fewer.steps)
        fewer_psnr = psnr_db(torch.cat(refs), torch.cat(fewer_outs))
        rows.append(
            [
                label,
                f"{delta:g}",
                100 * (1 - fit["fraction"]),
                fit["speedup"],
                fit["psnr"],
                plain["psnr"],
                fb_fit["psnr"],
                fewer_psnr,
            ]
        )
        curves["threshold"].append((fit["fraction"], fit["psnr"]))
        curves["first-block"].append((fb_fit["fraction"], fb_fit["psnr"]))
        curves["fewer-steps"].append((fewer.steps / steps, fewer_psnr))
    for interval in (2, 3, 4):
        u = evaluate(
            program, units, uniform_schedule(profile.blocks, steps, interval), None, ctx, refs, base_s, 1
        )
        curves["uniform"].append((u["fraction"], u["psnr"]))
        rows.append(
            [
                label,
                f"uniform k={interval}",
                100 * (1 - u["fraction"]),
                u["speedup"],
                float("nan"),
                u["psnr"],
                float("nan"),
                float("nan"),
            ]
        )
    return rows, {"label": f"{label} ({weights})", "curves": curves}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        for policy, points in result["curves"].items():
            points = sorted(points)
            name = "threshold + scale-shift" if policy == "threshold" else policy
            ax.plot([100 * (1 - f) for f, _ in points], [min(p, 80) for _, p in points], "o-", label=name)
        ax.set_xlabel("block evaluations saved (%)")
        ax.set_ylabel("PSNR vs uncached (dB, capped at 80)")
        ax.set_title(result["label"].replace(" (", "\n("), fontsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["dit", "ldm", "moviegen"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    SAMPLE_FN[0], sampler_label = zoo_sampler()
    rows, results, notes = [], [], []
    for name in args.models:
        loaded = load(name, args.train_steps)
        if loaded is None:
            notes.append(f"- `{name}`: not in the zoo in this run, skipped.")
            continue
        samplers = ("flow-euler",) if get_model(name).sampler == "flow-euler" else ("ddim", "dpm++2m")
        if SAMPLE_FN[0] is fallback_sample:
            samplers = tuple(s for s in samplers if s != "dpm++2m")
        for sampler in samplers:
            r, res = bench_model(name, sampler, args.steps, args.repeats, args.train_steps, loaded)
            rows += r
            results.append(res)
            notes.append(f"- {res['label']}")
            print(f"{res['label']}: done")
    table = Table(
        f"Block caching vs uncached sampling ({args.steps} steps, eval seeds {list(EVAL_SEEDS)}, "
        f"calibration seeds {list(CAL_SEEDS)})",
        [
            "model / sampler",
            "threshold",
            "evaluations saved",
            "measured speed-up",
            "PSNR (scale-shift)",
            "PSNR (no scale-shift)",
            "PSNR first-block, same compute",
            "PSNR fewer steps, same compute",
        ],
        rows,
        {
            "evaluations saved": "%",
            "measured speed-up": "x",
            "PSNR (scale-shift)": "dB",
            "PSNR (no scale-shift)": "dB",
            "PSNR first-block, same compute": "dB",
            "PSNR fewer steps, same compute": "dB",
        },
    )
    plot_path = ROOT / "docs" / "bench_cache.png"
    if results:
        plot(results, plot_path)
    command = "OMP_NUM_THREADS=1 python benchmarks/bench_cache.py " + " ".join(sys.argv[1:])
    markdown = "\n".join(
        [
            "## Block caching (`bench_cache`)",
            "",
            f"`{command.strip()}` — sampler implementation: {sampler_label}; models and weights:",
            *notes,
            "",
            table.to_markdown() if hasattr(table, "to_markdown") else str(table),
            "",
            "![PSNR against block evaluations saved](bench_cache.png)",
        ]
    )
    print(markdown)
    write_section("bench_cache", markdown)


if __name__ == "__main__":
    main()
