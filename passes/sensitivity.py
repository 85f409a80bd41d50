"""`sensitivity`: SQNR sensitivity analysis (SQNR-based PTQ of latent diffusion models).

For each quantizable layer and each block: the SQNR (dB) of the model's output when only that
layer / block is quantized at `wbits` / `abits`, against the float output. For diffusion
models (a Workload with a sampler) calibrated over the sampler's steps (`calibration =
"all-steps"`, what `auto` means for them) the block figures are kept per timestep, which shows
the time-sensitive blocks. Candidates reuse one float run's
intermediate values (see `optkit.quant.sensitivity`); the speed-up against the naive way is
reported.

An analysis pass: the graph is not changed. Results go to `annotations.figures["sensitivity"]`
(ranked layers, blocks, the block x step matrix) for reports, plots and `ptq`'s mixed precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from optkit.errors import ConfigError
from optkit.ir.program import Program
from optkit.pipeline import Pass, PassConfig, PassResult, register_pass
from optkit.quant.calibration import calibration_batches, resolve_mode
from optkit.quant.numerics import QuantSpec
from optkit.quant.rewrite import LayerPlan, collect_act_stats
from optkit.quant.sensitivity import block_candidates, measure
from optkit.quant.sites import find_sites
from optkit.report import Figure


@dataclass(frozen=True)
class SensitivityConfig(PassConfig):
    """Which precision to probe, on which calibration data, at which level."""

    wbits: Literal[4, 7, 8] = 8  # 7: `ptq`'s 7-bit weights
    abits: Literal[8, 16] = 8
    granularity: Literal["tensor", "channel", "group"] = "channel"
    group_size: int = 64
    observer: Literal["minmax", "percentile", "mse"] = "percentile"
    calibration: Literal["auto", "example", "data", "single-step", "all-steps"] = "auto"
    calibration_batches: int = 1
    calibration_steps: int = 0  # sampler steps; 0 = the workload's
    level: Literal["layer", "block", "both"] = "both"
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.granularity == "group" and (self.group_size <= 0 or self.group_size % 8):
            raise ConfigError(f"group_size must be a positive multiple of 8, got {self.group_size}")
        if self.calibration_batches < 1 or self.calibration_steps < 0:
            raise ConfigError(
                f"calibration_batches must be >= 1 and calibration_steps >= 0 (0 = the workload's), got "
                f"{self.calibration_batches}, {self.calibration_steps}"
            )


@register_pass("sensitivity", SensitivityConfig)
class Sensitivity(Pass):
    """Rank layers and blocks by output SQNR when quantized alone. Analysis only; run before ptq."""

    shares_weights = True  # registers new tensors; never writes its input's

    def run(self, program: Program) -> PassResult:
        cfg: SensitivityConfig = self.config  # type: ignore[assignment]
        sites, _skipped = find_sites(program, cfg.skip)
        if not sites:
            raise ConfigError(f"{program.name} has no Linear or Conv layers to analyze")
        plan = LayerPlan(QuantSpec(cfg.wbits, True, cfg.granularity, cfg.group_size), cfg.abits)
        batches = calibration_batches(
            program, cfg.calibration, cfg.calibration_batches, cfg.calibration_steps
        )
        stats = collect_act_stats(program, sites, batches, cfg.observer, 99.99) if cfg.abits == 8 else {}
        result_figures: dict[str, Figure] = {}
        data: dict[str, object] = {
            "wbits": cfg.wbits,
            "abits": cfg.abits,
            "calibration": resolve_mode(program, cfg.calibration),
        }
        seconds = naive = 0.0
        if cfg.level in ("layer", "both"):
            layers = measure(program, {s.path: [s.node.name] for s in sites}, lambda s: plan, stats, batches)
            data["layers"] = sorted(layers.sqnr.items(), key=lambda kv: kv[1])
            seconds, naive = seconds + layers.seconds, naive + layers.naive_seconds_estimate
            worst = data["layers"][0]  # type: ignore[index]
            result_figures["most_sensitive_layer"] = Figure(f"{worst[0]} ({worst[1]:.1f} dB)")
        if cfg.level in ("block", "both"):
            candidates = block_candidates(program, sites)
            blocks = measure(program, candidates, lambda s: plan, stats, batches)
            data["blocks"] = sorted(blocks.sqnr.items(), key=lambda kv: kv[1])
            diffusion = program.workload.diffusion
            all_steps = resolve_mode(program, cfg.calibration) == "all-steps" and diffusion is not None
            steps = (cfg.calibration_steps or diffusion.steps) if all_steps and diffusion else 1
            # (block, step) matrix: mean over seeds of the SQNR at each step.
            data["block_steps"] = {
                b: [
                    sum(v[s::steps][: cfg.calibration_batches]) / len(v[s::steps][: cfg.calibration_batches])
                    for s in range(steps)
                ]
                for b, v in blocks.per_batch.items()
            }
            seconds, naive = seconds + blocks.seconds, naive + blocks.naive_seconds_estimate
            worst = data["blocks"][0]  # type: ignore[index]
            result_figures["most_sensitive_block"] = Figure(f"{worst[0]} ({worst[1]:.1f} dB)")
        program.annotations.figures["sensitivity"] = data
        result_figures.update(
            {
                "layers_analyzed": Figure(len(sites), "layers"),
                "calibration_batches": Figure(len(batches), "batches"),
                "analysis_time": Figure(seconds, "s"),
                "naive_time_estimate": Figure(naive, "s"),
                "speedup_vs_naive": Figure(naive / seconds if seconds else float("nan"), "x"),
            }
        )
        return PassResult(program, modified=False, figures=result_figures)
