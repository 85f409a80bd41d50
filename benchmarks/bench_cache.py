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
hook (said in the table), else random. Then, with the zoo's own metric (`evaluate(sample_fn=...)`:
FD-digits and class accuracy, video figures) on 100 samples: the uncached sampler, the threshold
with the largest speed-up at PSNR >= 30 dB, and each baseline at that threshold's compute.
Writes docs/benchmarks.md (section bench_cache) and docs/bench_cache.png.

    OMP_NUM_THREADS=1 python benchmarks/bench_cache.py --forecast-only [--models dit ldm] \
        [--samplers ddim] [--thresholds 0.1 0.2 0.3] [--repeats 3]

`--forecast-only` measures the newer options instead (section bench_cache_forecast): the
threshold policy with plain reuse against TaylorSeer forecasting (orders 1 and 2), the TeaCache
gate at the same fraction of block evaluations (with and without forecasting), uniform reuse
with and without forecasting and, for UNets, the DeepCache unit (`mode = "deep"`); every row
against fewer sampler steps at the same FLOPs. The expected speed-up is from FLOPs, the
measured one from wall-clock (median of `repeats` rounds interleaved with the uncached sampler;
on a shared machine, the table names the 1-minute load average before and after).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _docs import write_section  # noqa: E402
from optkit.passes.cache import unit_flops, variant_speedup  # noqa: E402

from optkit.caching import (  # noqa: E402
    CachedSampler,
    block_change_profile,
    cache_units,
    fewer_steps_schedule,
    first_block_budget_schedule,
    fit_alignment,
    modulated_input,
    profile_gate,
    teacache_schedule,
    threshold_schedule,
    uncached_sample,
    uniform_schedule,
)
from optkit.errors import ConfigError, UnknownNameError  # noqa: E402
from optkit.ir.capture import capture  # noqa: E402
from optkit.metrics import psnr_db  # noqa: E402
from optkit.report import Table  # noqa: E402
from optkit.timing import interleaved_latency_ms  # noqa: E402
from optkit.zoo.registry import EvalSettings, TrainSettings, get_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CAL_SEEDS = (0, 1)
EVAL_SEEDS = (100, 101)
QUALITY_SAMPLES = 100
THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8)


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
        entry.train(model.train(), TrainSettings(steps=train_steps, batch_size=16, lr=1e-3))
        return model.eval(), f"trained here for {train_steps} steps (no checkpoint)"
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
    program.meta = {"zoo": name, "size": "tiny", "task": entry.task}
    program.with_workload(entry.workload(steps))
    units = cache_units(program)
    x, _t, *cond = program.example_inputs
    guidance, uncond = program.workload.diffusion.guidance(tuple(cond))
    kw = {
        "sampler": sampler,
        "cond": tuple(cond),
        "uncond": uncond,
        "guidance_scale": guidance,
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
    quality = quality_rows(
        entry, model, program, units, profile, sampler, steps, label, [r for r in rows if r[4] == r[4]]
    )
    return rows, {"label": f"{label} ({weights})", "curves": curves, "quality": quality}


def matching_gate_threshold(gate: list[float], blocks: list[str], fraction: float) -> float:
    """The TeaCache threshold whose schedule keeps the fraction of evaluations closest to
    `fraction` (the gate reuses whole steps, so the fractions are steps apart)."""
    candidates = sorted(
        {0.0, *(sum(gate[a:b]) for a in range(len(gate)) for b in range(a + 1, len(gate) + 1))}
    )
    return min(
        candidates,
        key=lambda d: (abs(teacache_schedule(blocks, gate, d).evaluation_fraction() - fraction), -d),
    )


def bench_forecast(
    name: str, sampler: str, steps: int, repeats: int, thresholds, loaded, intervals=(2, 3)
) -> list[list]:
    """Rows of the forecasting / TeaCache / DeepCache table for one model and sampler."""
    model, _weights = loaded
    entry = get_model(name)
    program = capture(model, entry.example_inputs(model, 2, 0), name=f"{name}-tiny")
    program.with_workload(entry.workload(steps))
    units = cache_units(program)
    x, _t, *cond = program.example_inputs
    guidance, uncond = program.workload.diffusion.guidance(tuple(cond))
    kw = {"sampler": sampler, "cond": tuple(cond), "uncond": uncond, "guidance_scale": guidance}
    probe = modulated_input(program, units[0])
    profile = block_change_profile(
        program, units, steps=steps, seeds=CAL_SEEDS, shape=x.shape, probes=[probe], **kw
    )
    label = f"{name} / {sampler}" + (f" / CFG {guidance:g}" if guidance > 1 else "")
    fewer_refs: dict[int, list[torch.Tensor]] = {}

    def uncached(n_steps: int) -> list[torch.Tensor]:
        if n_steps not in fewer_refs:
            fewer_refs[n_steps] = [
                uncached_sample(program, x.shape, steps=n_steps, seed=s, **kw) for s in EVAL_SEEDS
            ]
        return fewer_refs[n_steps]

    refs = torch.cat(uncached(steps))
    rows: list[list] = []

    def row(policy: str, knob: str, schedule, order: int, used_units, used_profile) -> None:
        alignment = fit_alignment(used_profile.values, schedule, order, used_profile.timesteps)
        runner = CachedSampler(program, schedule, used_units, alignment, forecast=order)

        def run_all() -> list[torch.Tensor]:
            return [runner.sample(x.shape, seed=s, **kw) for s in EVAL_SEEDS]

        outs = run_all()
        # Interleaved with the uncached sampler, so that a busy spell of the shared machine
        # falls on both.
        timing = interleaved_latency_ms(
            {
                "uncached": lambda: [
                    uncached_sample(program, x.shape, steps=steps, seed=s, **kw) for s in EVAL_SEEDS
                ],
                "cached": run_all,
            },
            warmup=0,
            repeats=repeats,
        )
        plain = CachedSampler(program, schedule, used_units, forecast=order)
        plain_outs = [plain.sample(x.shape, seed=s, **kw) for s in EVAL_SEEDS]
        speedup = variant_speedup(runner, total, steps)
        fewer = max(1, round(steps / speedup))
        rows.append(
            [
                label,
                policy,
                knob,
                100 * (1 - schedule.evaluation_fraction(steps)),
                speedup,
                timing["uncached"]["median"] / timing["cached"]["median"],
                psnr_db(refs, torch.cat(outs)),
                psnr_db(refs, torch.cat(plain_outs)),
                fewer,
                psnr_db(refs, torch.cat(uncached(fewer))),
            ]
        )
        print(rows[-1], flush=True)

    _flops, total = unit_flops(program, units)
    rescale, gate = profile_gate(profile)
    print(f"{label}: TeaCache indicator {probe}, rescale {rescale.coefficients}, R^2 {rescale.r2:.2f}")
    for delta in thresholds:
        schedule = threshold_schedule(profile.change, delta)
        for order in (0, 1, 2):
            row(f"threshold, forecast {order}", f"{delta:g}", schedule, order, units, profile)
        tea = matching_gate_threshold(gate, profile.blocks, schedule.evaluation_fraction())
        tea_schedule = teacache_schedule(profile.blocks, gate, tea)
        for order in (0, 1):
            row(f"teacache, forecast {order}", f"{tea:.3g}", tea_schedule, order, units, profile)
    for interval in intervals:
        schedule = uniform_schedule(profile.blocks, steps, interval)
        for order in (0, 1, 2):
            row(f"uniform, forecast {order}", f"k={interval}", schedule, order, units, profile)
    try:
        deep = cache_units(program, mode="deep")
    except ConfigError:
        return rows  # not a UNet
    deep_profile = block_change_profile(program, deep, steps=steps, seeds=CAL_SEEDS, shape=x.shape, **kw)
    for interval in (2, 3, 5):
        schedule = uniform_schedule(deep_profile.blocks, steps, interval)
        for order in (0, 1, 2):
            row(
                f"deep ({deep[0].path}), uniform, forecast {order}",
                f"k={interval}",
                schedule,
                order,
                deep,
                deep_profile,
            )
    return rows


def forecast_main(args) -> None:
    """The `--forecast-only` run: section bench_cache_forecast of docs/benchmarks.md."""
    from _docs import cpu_name

    load_before = os.getloadavg()[0]
    rows, notes = [], []
    for name in args.models:
        loaded = load(name, args.train_steps)
        if loaded is None:
            notes.append(f"- `{name}`: not in the zoo in this run, skipped.")
            continue
        samplers = ("flow-euler",) if get_model(name).sampler == "flow-euler" else tuple(args.samplers)
        for sampler in samplers:
            rows += bench_forecast(
                name, sampler, args.steps, args.repeats, args.thresholds, loaded, tuple(args.intervals)
            )
        notes.append(f"- {name}: {loaded[1]}")
    load_after = os.getloadavg()[0]
    table = Table(
        f"Forecasting, TeaCache gate and DeepCache unit ({args.steps} steps, eval seeds {list(EVAL_SEEDS)}, "
        f"calibration seeds {list(CAL_SEEDS)})",
        [
            "model / sampler",
            "policy",
            "knob",
            "evaluations saved",
            "expected speed-up (FLOPs)",
            "measured speed-up",
            "PSNR",
            "PSNR (no scale-shift)",
            "fewer steps, same FLOPs",
            "PSNR fewer steps",
        ],
        rows,
        {
            "evaluations saved": "%",
            "expected speed-up (FLOPs)": "x",
            "measured speed-up": "x",
            "PSNR": "dB",
            "PSNR (no scale-shift)": "dB",
            "PSNR fewer steps": "dB",
        },
    )
    command = "OMP_NUM_THREADS=1 python benchmarks/bench_cache.py " + " ".join(sys.argv[1:])
    markdown = "\n".join(
        [
            "## Block caching: forecasting, TeaCache, DeepCache (`bench_cache --forecast-only`)",
            "",
            f"`{command.strip()}` on {cpu_name()}, 1 thread; shared machine, 1-minute load average "
            f"{load_before:.2f} before and {load_after:.2f} after (measured speed-ups are noisy; the "
            "FLOP-based ones are not). PSNR against the uncached samples of the same seeds. Models and weights:",
            *notes,
            "",
            table.to_markdown(),
            "",
            "Issue 15's caching goals (PSNR >= 30 dB against uncached sampling; speed-up counted in FLOPs, "
            "which the measured column follows within the machine's noise):",
            "",
            *forecast_goal_lines(rows),
        ]
    )
    print(markdown)
    write_section("bench_cache_forecast", markdown)


CACHE_GOALS = {"dit": 3.0, "ldm": 2.0, "moviegen": 2.0}  # speed-up at PSNR >= 30 dB (issue 15)


def forecast_goal_lines(rows: list[list]) -> list[str]:
    """Per model and sampler: the fastest row (by FLOPs) at PSNR >= 30 dB against its goal, and
    whether it beats fewer sampler steps at the same FLOPs."""
    lines = []
    for label in dict.fromkeys(r[0] for r in rows):
        goal = CACHE_GOALS.get(label.split(" / ")[0])
        good = [r for r in rows if r[0] == label and r[6] >= 30.0]
        if not good:
            lines.append(f"- {label}: no row reaches 30 dB.")
            continue
        best = max(good, key=lambda r: r[4])
        speed = "no goal set" if goal is None else "met" if best[4] >= goal else "missed"
        steps = "better" if best[6] > best[9] else "not better"
        lines.append(
            f"- {label}: fastest at >= 30 dB is {best[1]} ({best[2]}), {best[4]:.2f}x in FLOPs ({best[5]:.2f}x "
            f"measured) at {best[6]:.1f} dB (goal {'-' if goal is None else f'{goal:g}x'}: {speed}); {best[8]} "
            f"steps at the same FLOPs give "
            f"{best[9]:.1f} dB ({steps})."
        )
    return lines


def pick_threshold(rows: list) -> float:
    """The threshold with the largest measured speed-up at PSNR >= 30 dB (else the smallest)."""
    good = [r for r in rows if r[4] >= 30.0]
    best = max(good, key=lambda r: r[3]) if good else min(rows, key=lambda r: float(r[1]))
    return float(best[1])


def quality_rows(entry, model, program, units, profile, sampler, steps, label, rows) -> list[list]:
    """Model-level quality (the zoo's own metric: FD-digits, class accuracy, ...) of the uncached
    sampler, the threshold schedule picked by `pick_threshold`, and each baseline at its compute."""
    if entry.evaluate is None or "sample_fn" not in inspect.signature(entry.evaluate).parameters:
        print(f"{entry.name}: its evaluate() takes no sample_fn; no quality figures")
        return []
    delta = pick_threshold(rows)
    schedule = threshold_schedule(profile.change, delta)
    budget = max(schedule.evaluation_fraction(), 1.0 / steps)
    interval = max(1, round(1 / budget))
    fewer = fewer_steps_schedule(profile.blocks, steps, budget)
    policies = [
        ("uncached", uniform_schedule([], steps, 1), None, []),
        (f"threshold {delta:g} + scale-shift", schedule, fit_alignment(profile.values, schedule), units),
        ("first-block, same compute", first_block_budget_schedule(profile.change, budget), None, units),
        (f"uniform k={interval}", uniform_schedule(profile.blocks, steps, interval), None, units),
        (f"fewer steps ({fewer.steps})", uniform_schedule([], fewer.steps, 1), None, []),
    ]
    batch = program.example_inputs[0].shape[0]
    settings = EvalSettings(num_samples=QUALITY_SAMPLES, steps=steps, seed=0, batch_size=10 * batch)
    extra = {"sampler": sampler} if "sampler" in inspect.signature(entry.evaluate).parameters else {}
    out = []
    for name, sched, alignment, used_units in policies:
        runner = CachedSampler(program, sched, used_units, alignment)

        def draw(
            _denoiser, shape, *, sampler, steps, seed, cond=(), uncond=None, guidance_scale=1.0, runner=runner
        ):
            return runner.sample(
                shape, sampler=sampler, seed=seed, cond=cond, uncond=uncond, guidance_scale=guidance_scale
            )

        figures = entry.evaluate(
            model, dataclasses.replace(settings, steps=sched.steps), sample_fn=draw, **extra
        )
        fraction = sched.evaluation_fraction(steps) if sched.recompute else sched.steps / steps
        out.append([label, name, 100 * fraction, *figures.values()])
        print(out[-1], flush=True)
    return [list(figures), out]


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


def quality_markdown(results: list[dict], steps: int) -> list[str]:
    lines = []
    for result in results:
        if not result["quality"]:
            continue
        metrics, rows = result["quality"]
        table = Table(
            f"Sample quality, {QUALITY_SAMPLES} samples ({steps}-step reference), zoo metric — {result['label']}",
            ["model / sampler", "policy", "block evaluations", *metrics],
            rows,
            {"block evaluations": "%"},
        )
        lines += [table.to_markdown(), ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["dit", "ldm", "moviegen"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument(
        "--forecast-only", action="store_true", help="the forecasting / TeaCache / DeepCache table"
    )
    parser.add_argument("--samplers", nargs="*", default=["ddim"], help="eps models, --forecast-only")
    parser.add_argument("--thresholds", nargs="*", type=float, default=[0.1, 0.2, 0.3])
    parser.add_argument(
        "--intervals", nargs="*", type=int, default=[2, 3], help="uniform reuse, --forecast-only"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.forecast_only:
        forecast_main(args)
        return
    rows, results, notes = [], [], []
    for name in args.models:
        loaded = load(name, args.train_steps)
        if loaded is None:
            notes.append(f"- `{name}`: not in the zoo in this run, skipped.")
            continue
        samplers = ("flow-euler",) if get_model(name).sampler == "flow-euler" else ("ddim", "dpm++2m")
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
            f"`{command.strip()}` — models and weights:",
            *notes,
            "",
            table.to_markdown() if hasattr(table, "to_markdown") else str(table),
            "",
            "![PSNR against block evaluations saved](bench_cache.png)",
            "",
            *quality_markdown(results, args.steps),
        ]
    )
    print(markdown)
    write_section("bench_cache", markdown)


if __name__ == "__main__":
    main()
