"""`ptq`: post-training quantization of weights and activations, with mixed precision.

From the SQNR-based PTQ of latent diffusion models and PTQ for diffusion transformers:

- precisions W8A8 (int8 GEMM), W4A8 (group-wise int4 weights, int8 activations), W4A4 (4-bit
  activations too: SVDQuant's per-group scales by default, see below), W4A16 / W8A16
  (weight-only), per-tensor, per-channel or per-group weight scales, RTN or GPTQ rounding;
  `wbits=7` keeps W8A8's int8 storage and kernels with weights on half the grid ([-64, 63], convs
  too): on x86 CPUs without VNNI the int8 GEMM then runs on `vpmaddubsw`, which is exact only
  for such weights and faster than the 8-bit weights' `vpmaddwd` (`backends/vnni.py`, `U8S7`),
  and ONNX Runtime's U8S8 kernels run the export exactly (docs/passes.md has the trade measured);
- calibration read from the model's Workload: the example inputs, the workload's calibration
  data (`--calib`: batches, images or tokens; the default when given), or — for models the
  workload samples — single-step calibration at the noisiest step, or all sampler steps;
  min-max, percentile or MSE-optimal observers (`auto`: min-max after single-step calibration —
  a range clipped to one timestep's percentile clips the wider activations of later steps,
  measured 34.0 against 29.8 dB one-call SQNR over the trajectory on the zoo's DiT at W8A8 —
  MSE-optimal after all-step calibration — W8A8 final samples on the zoo's dit / ldm /
  moviegen 34.6 / 38.1 / 33.8 dB against percentile's 30.7 / 31.8 / 31.9 and min-max's
  34.5 / 36.5 / 34.0 — and percentile otherwise);
  activations use asymmetric (zero-point) grids, which suit post-softmax and post-GELU/SiLU
  values that are (almost) one-signed;
- local treatments: SmoothQuant rebalancing of layers whose input has channel outliers, and
  the named `treatments` (`optkit.quant.treatments`), each keeping a kind of layer in float:
  `time-embedding` (timestep embedding MLPs), `input-layer`, `output-layer` (the layer whose
  output is the model's: a denoiser's final projection), `softmax-input` (the Q/K projections
  feeding attention scores) and `skip-connections` (layers reading a UNet's skip concatenation);
  the default is `("time-embedding", "input-layer", "output-layer")`.
  The older flags still work: `keep_input_layer=false` switches `input-layer` off, and
  `time-embedding` is `keep_float`'s default patterns (`TIME_MODULES`), so a `keep_float` without
  them quantizes the time embeddings as before and leaving `time-embedding` out of `treatments`
  drops them from `keep_float`. `input-layer` and `output-layer` act on diffusion models only.
  `output-layer` pays at no size cost (zoo dit / ldm, final samples: W4A8 GPTQ +3.3 / +1.9 dB,
  W8A8 +0.2 / +3.4 dB, at +0.2-0.3% size; docs/passes.md), so it joined the default. The
  input layer reads x_t, and at the last sampler steps the noise left in x_t
  (sqrt(1 - alpha-bar) x eps, ~0.01 at t = 0) is smaller than an int8 step of x_t's range,
  while it is exactly what an eps-prediction model has to read — int8 there erases the signal
  of the final steps (measured on the zoo's DiT: one-call SQNR at W8A8 17 -> 41 dB with
  all-step calibration; the layer holds < 1% of the weights); and a
  language model's output head kept in float unless `quantize_head` (found by
  `optkit.quant.sites.output_head`: tied to the input embedding, or 1000+ logits from a 4x
  narrower input; when it is tied and quantized, the embedding keeps reading the float table);
- global mixed precision (`average_bits`): blocks start at 8-bit weights and the least
  sensitive blocks (highest output SQNR when only they are at 4 bits) drop to 4 bits until the
  parameter-weighted average meets the budget.

For diffusion models, `timestep_groups = G > 1` gives every quantized layer G activation
scales and zero points instead of one: the calibration steps are split by timestep into G
contiguous ranges of equal step counts, each calibrated on its own, and the graph picks each
sample's row from its timestep input with plain tensor ops (`optkit.quant.timestep_groups`), so
the Program still exports to ONNX and lowers through TVM (PTQ4DiT / ViT-Q's grouped scales).

`lowrank = R > 0` adds SVDQuant's low-rank branch (`optkit.quant.lowrank`): each chosen Linear's
weight, after SmoothQuant if it ran, is split into its rank-R SVD part, kept in float16 and run as
two plain `linear` nodes on the unquantized input, and the residual, which alone is quantized;
the branch's output is added to the quantized kernel's. `lowrank_fraction` gives the branch only
to the layers whose weight error it lowers most; `lowrank_skip` names layers that go without.

`smoothquant_search = (alphas...)` picks SmoothQuant's migration strength per layer, by the SQNR
of the layer's output with its input and weight quantized on sampled calibration rows
(`optkit.quant.smoothing.search_alpha`; PTQ4DiT's per-layer channel balancing, searched).

`activations = "per-token"` quantizes each Linear's input per row (token) at run time, with
the scale `max|x_row| / 127` computed in the graph (`optkit.quant.activations`): the W8A8 recipe
of LLMs, whose activations carry a few huge outlier channels in a few tokens. `"per-group"`
gives each `act_group_size` input channels of a row their own scale (SVDQuant's W4A4 recipe, the
`auto` choice at `abits = 4`; at 8 bits it runs the float GEMM on int8-grid values instead of
the int8 GEMM). Convolutions keep calibrated int8 activations at any `abits`. `recipe = "auto"`
picks the activation handling for the model: it quantizes a copy with each of static and
per-token scales, each without SmoothQuant and with it at every alpha of `recipe_alphas` (an
alpha is skipped when no layer's input passes `smooth_threshold`, as it would change nothing), scores
each copy by output SQNR against the float model on the calibration batches, keeps the best and
reports every candidate's score (`recipe_sqnr`).

Inference BatchNorms are folded into the conv / Linear before them first (`fold-batchnorm`;
`fold_batchnorm=false` keeps them), so that the quantized weights are the ones that run and no
BatchNorm is left between a quantized conv and the next quantizer. With `abits=8`, the inputs of
residual adds after quantized convs go on the int8 grid too (`quantize_residuals`,
`optkit.quant.residuals`), so that a CNN's ONNX export is int8 from conv to conv; by default
("auto") only for models without a sampler, whose errors do not feed back step after step.

Run after `fold-constants`; follow with `dce`. The PassManager checks the output SQNR against
`min_sqnr_db`; below it, the error names the layers that lose most and the options that help.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from optkit.passes.fold_batchnorm import fold_batchnorm

from optkit.errors import ConfigError, UnknownNameError
from optkit.ir.onnx_io import flat_outputs
from optkit.ir.program import Program
from optkit.metrics import sqnr_db
from optkit.pipeline import Pass, PassConfig, PassResult, Tolerance, register_pass
from optkit.quant.activations import ACT_BITS, ACT_MODES, ActMode, layer_mode
from optkit.quant.advice import sqnr_floor_hint, worst_layers
from optkit.quant.calibration import calibration_batches, resolve_mode
from optkit.quant.lowrank import LowRankSplit, choose_branches, insert_lowrank_branch, lowrank_sites
from optkit.quant.numerics import QuantSpec
from optkit.quant.observers import ObserverKind
from optkit.quant.residuals import quantize_residual_adds
from optkit.quant.rewrite import (
    ActStats,
    LayerPlan,
    collect_act_stats,
    effective_plan,
    gptq_hessians,
    quantize_site,
    short_group_note,
)
from optkit.quant.sensitivity import allocate_bits, block_candidates, measure
from optkit.quant.sites import QuantSite, find_sites, split_output_heads
from optkit.quant.smoothing import (
    insert_smoothing,
    outlier_ratio,
    sample_input_rows,
    search_alpha,
    smoothing_factors,
)
from optkit.quant.timestep_groups import GroupedActScales, collect_group_stats, split_timesteps
from optkit.quant.treatments import DEFAULT_TREATMENTS, TIME_MODULES, TREATMENTS, treated_sites
from optkit.report import Figure

log = logging.getLogger(__name__)

SENSITIVITY_BATCHES = 8  # calibration batches the mixed-precision ranking evaluates
RECIPE_BATCHES = 4  # calibration batches `recipe = "auto"` scores its candidates on


def _spread(batches: list, n: int) -> list:  # type: ignore[type-arg]
    """At most `n` of `batches`, evenly spaced (first and last included)."""
    if len(batches) <= n:
        return list(batches)
    return [batches[round(i * (len(batches) - 1) / (n - 1))] for i in range(n)]


@dataclass(frozen=True)
class PTQConfig(PassConfig):
    """Post-training quantization settings (see the module docstring)."""

    wbits: Literal[4, 7, 8] = 8  # 7: int8 storage of values in [-64, 63] (module docstring)
    abits: Literal[4, 8, 16] = 8  # 16: float activations (weight-only)
    granularity: Literal["tensor", "channel", "group"] = "channel"
    group_size: int = 64
    symmetric: bool = True
    method: Literal["rtn", "gptq"] = "rtn"
    observer: Literal["auto", "minmax", "percentile", "mse"] = "auto"
    percentile: float = 99.99
    calibration: Literal["auto", "example", "data", "single-step", "all-steps"] = "auto"
    calibration_batches: int = 4
    calibration_steps: int = 0  # sampler steps; 0 = the workload's
    smoothquant: float = 0.0
    # SmoothQuant alphas tried per layer, by the layer's output SQNR (overrides smoothquant)
    smoothquant_search: tuple[float, ...] = ()
    smooth_threshold: float = 8.0
    average_bits: float = 0.0
    treatments: tuple[str, ...] = DEFAULT_TREATMENTS  # layers kept float by kind (module docstring)
    keep_float: tuple[str, ...] = TIME_MODULES  # = `time-embedding`, plus any paths kept float
    keep_input_layer: bool = True  # false: `input-layer` off
    quantize_head: bool = False
    skip: tuple[str, ...] = ()
    min_sqnr_db: float = 10.0
    seed: int = 0
    fold_batchnorm: bool = True
    quantize_residuals: Literal["auto", True, False] = "auto"
    timestep_groups: int = 1  # activation scales per timestep range (diffusion; 1 = one scale)
    lowrank: int = 0  # SVDQuant: rank of a float16 low-rank branch beside each quantized Linear; 0 = off
    lowrank_fraction: float = 1.0  # share of eligible Linears that get it (largest weight-error gain first)
    lowrank_skip: tuple[str, ...] = ()  # module paths or globs that get no branch (still quantized)
    # Linear activation scales: calibrated ("static"), or at run time per row ("per-token") or
    # per `act_group_size` input channels of a row ("per-group"); auto: per-group at abits=4
    activations: Literal["auto", "static", "per-token", "per-group"] = "auto"
    act_group_size: int = 64
    recipe: Literal["given", "auto"] = "given"  # auto: activations and smoothquant chosen by output SQNR
    recipe_alphas: tuple[float, ...] = (0.5, 0.8)  # SmoothQuant alphas recipe "auto" tries besides 0

    def __post_init__(self) -> None:
        if isinstance(self.treatments, str):
            raise ConfigError(
                f"treatments must be a list of names, got the string {self.treatments!r}; known: "
                f"{', '.join(TREATMENTS)}"
            )
        for name in self.treatments:
            if name not in TREATMENTS:
                raise UnknownNameError("ptq treatment", name, tuple(TREATMENTS))
        if isinstance(self.lowrank, bool) or not isinstance(self.lowrank, int) or self.lowrank < 0:
            raise ConfigError(
                f"lowrank (the branch's rank) must be an integer >= 0 (0 = off), got {self.lowrank!r}"
            )
        if not 0.0 < self.lowrank_fraction <= 1.0:
            raise ConfigError(
                f"lowrank_fraction must be in (0, 1] (the share of Linear layers given a branch), "
                f"got {self.lowrank_fraction}"
            )
        if isinstance(self.timestep_groups, bool) or not isinstance(self.timestep_groups, int):
            raise ConfigError(f"timestep_groups must be an integer >= 1, got {self.timestep_groups!r}")
        if self.timestep_groups < 1:
            raise ConfigError(
                f"timestep_groups must be >= 1 (1 = one activation scale per layer), got {self.timestep_groups}"
            )
        if self.timestep_groups > 1 and self.abits != 8:
            raise ConfigError(
                f"timestep_groups > 1 groups activation scales and needs abits=8, got abits={self.abits}"
            )
        if self.activations not in ("auto", *ACT_MODES):
            raise UnknownNameError("ptq activations", str(self.activations), ("auto", *ACT_MODES))
        if isinstance(self.act_group_size, bool) or not isinstance(self.act_group_size, int):
            raise ConfigError(f"act_group_size must be an integer >= 2, got {self.act_group_size!r}")
        if self.act_group_size < 2:
            raise ConfigError(
                f"act_group_size (input channels per activation scale) must be >= 2, got {self.act_group_size}"
            )
        if self.recipe not in ("given", "auto"):
            raise UnknownNameError("ptq recipe", str(self.recipe), ("given", "auto"))
        dynamic = self.activations in ("per-token", "per-group")
        if dynamic and self.abits not in ACT_BITS:
            raise ConfigError(
                f"activations={self.activations!r} quantizes activations and needs abits=4 or 8, got "
                f"abits={self.abits}"
            )
        if (dynamic or self.abits == 4) and self.timestep_groups > 1:
            raise ConfigError(
                f"activations={self.act_mode()!r} at abits={self.abits} computes scales at run time or on a "
                "4-bit grid; timestep_groups > 1 picks calibrated int8 scales by timestep: choose one"
            )
        if self.recipe == "auto":
            if self.abits != 8:
                raise ConfigError(
                    f"recipe='auto' chooses how activations are quantized and needs abits=8, got {self.abits}"
                )
            if any(not 0.0 <= a <= 1.0 for a in self.recipe_alphas):
                raise ConfigError(
                    f"recipe_alphas must be SmoothQuant alphas in [0, 1] (0 = off), got {list(self.recipe_alphas)}"
                )
        if self.granularity == "group" and (self.group_size <= 0 or self.group_size % 8):
            raise ConfigError(f"group_size must be a positive multiple of 8, got {self.group_size}")
        if isinstance(self.smoothquant_search, (int, float)) or any(
            not 0.0 <= a <= 1.0 for a in self.smoothquant_search
        ):
            raise ConfigError(
                f"smoothquant_search must be a list of SmoothQuant alphas in [0, 1], got {self.smoothquant_search!r}"
            )
        if self.smoothquant_search and self.abits not in ACT_BITS:
            raise ConfigError(
                f"smoothquant_search scores alphas with quantized activations and needs abits=4 or 8, got "
                f"{self.abits}"
            )
        if not 0.0 <= self.smoothquant <= 1.0:
            raise ConfigError(f"smoothquant (alpha) must be in [0, 1] (0 = off), got {self.smoothquant}")
        if self.average_bits and not 4.0 <= self.average_bits <= 8.0:
            raise ConfigError(f"average_bits must be 0 (off) or in [4, 8], got {self.average_bits}")
        if self.average_bits and self.wbits == 7:
            raise ConfigError(
                "average_bits mixes 8-bit and 4-bit weights and ignores wbits; wbits=7 (7-bit weights "
                "everywhere) cannot be combined with it"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.calibration_batches < 1 or self.calibration_steps < 0:
            raise ConfigError(
                f"calibration_batches must be >= 1 and calibration_steps >= 0 (0 = the workload's), got "
                f"{self.calibration_batches}, {self.calibration_steps}"
            )

    def active_treatments(self) -> tuple[str, ...]:
        """The structural treatments `optkit.quant.treatments.treated_sites` applies: `treatments`
        less `time-embedding` (kept float by name, `float_patterns`) and less `input-layer` when
        `keep_input_layer` is false."""
        off = {"time-embedding"} | (set() if self.keep_input_layer else {"input-layer"})
        return tuple(t for t in dict.fromkeys(self.treatments) if t not in off)

    def float_patterns(self) -> tuple[str, ...]:
        """Module paths and globs kept float by name: `skip` and `keep_float`, less the time
        patterns (`TIME_MODULES`) when `time-embedding` is not among the treatments."""
        keep = (
            self.keep_float
            if "time-embedding" in self.treatments
            else (p for p in self.keep_float if p not in TIME_MODULES)
        )
        return tuple(self.skip) + tuple(keep)

    def observer_kind(self, program: Program) -> ObserverKind:
        """The observer `auto` stands for with this calibration of `program` (module docstring)."""
        if self.observer != "auto":
            return self.observer
        mode = resolve_mode(program, self.calibration)
        return {"single-step": "minmax", "all-steps": "mse"}.get(mode, "percentile")  # type: ignore[return-value]

    def act_mode(self) -> ActMode:
        """The activation mode `auto` stands for: `per-group` at 4 bits (SVDQuant's W4A4), where
        one calibrated scale per tensor leaves too few steps for the row's bulk, else `static`."""
        if self.activations != "auto":
            return self.activations
        return "per-group" if self.abits == 4 else "static"

    def plan(self, bits: int | None = None) -> LayerPlan:
        bits = bits or self.wbits
        granularity = self.granularity
        if self.average_bits and bits == 8 and granularity == "group" and self.symmetric:
            # The 8-bit layers of a mixed plan run the int8 GEMM (per-channel scales): as
            # accurate as int8 groups at these widths, and no float GEMM.
            granularity = "channel"
        return LayerPlan(QuantSpec(bits, self.symmetric, granularity, self.group_size), self.abits)


@register_pass("ptq", PTQConfig)
class PostTrainingQuantization(Pass):
    """Quantize weights and activations (W8A8 / W4A8 / W4A16, mixed precision). After capture, before lowering."""

    shares_weights = True  # registers new tensors; never writes its input's

    @property
    def tolerance(self) -> Tolerance:  # type: ignore[override]
        return Tolerance(min_sqnr_db=self.config.min_sqnr_db)  # type: ignore[attr-defined]

    def run(self, program: Program) -> PassResult:
        cfg: PTQConfig = self.config  # type: ignore[assignment]
        if cfg.recipe == "auto":
            return self._auto_recipe(program)
        bn_folded = fold_batchnorm(program.graph_module) if cfg.fold_batchnorm else 0
        sites, skipped = find_sites(program, cfg.float_patterns())
        sites, treated = treated_sites(program, sites, cfg.active_treatments())
        skipped += treated
        if not cfg.quantize_head:
            sites, heads = split_output_heads(program, sites)
            skipped += heads
        if cfg.abits == 16:
            skipped += [
                (s.path, "convolution: weight-only kernels cover Linear layers")
                for s in sites
                if s.kind == "conv"
            ]
            sites = [s for s in sites if s.kind != "conv"]
        if cfg.lowrank:  # fail before calibrating when the rank does not fit a layer
            lowrank_sites(sites, cfg.lowrank, cfg.lowrank_skip)
        if cfg.timestep_groups > 1 and program.workload.diffusion is None:
            raise ConfigError(
                f"timestep_groups={cfg.timestep_groups} needs a diffusion model sampled by its workload, but "
                f"{program.name}'s workload has no [diffusion] sampler (use timestep_groups=1, or give "
                "--workload FILE.toml)"
            )
        start = time.perf_counter()
        batches = calibration_batches(
            program, cfg.calibration, cfg.calibration_batches, cfg.calibration_steps, cfg.seed
        )
        stats = (
            collect_act_stats(program, sites, batches, cfg.observer_kind(program), cfg.percentile)
            if cfg.abits in ACT_BITS or cfg.smoothquant or cfg.smoothquant_search
            else {}
        )
        figures: dict[str, Figure] = {"batchnorms_folded": Figure(bn_folded, "layers")}
        weights: dict[str, torch.Tensor] = {}
        if cfg.smoothquant or cfg.smoothquant_search:
            smoothed = self._smooth(program, sites, stats, batches, weights, figures)
            program.graph_module.recompile()
            figures["layers_smoothed"] = Figure(smoothed, "layers")
            if smoothed and cfg.abits in ACT_BITS:  # re-observe the rebalanced activations
                sites = [
                    s
                    for s in find_sites(program, cfg.float_patterns())[0]
                    if s.node.name in {x.node.name for x in sites}
                ]
                stats = collect_act_stats(program, sites, batches, cfg.observer_kind(program), cfg.percentile)
        hessians: dict[str, torch.Tensor] = {}
        if cfg.method == "gptq":
            more = None
            if resolve_mode(program, cfg.calibration) == "data":

                def more(n: int) -> list:  # type: ignore[type-arg]
                    return calibration_batches(program, "data", n)

            hessians, gptq_rows = gptq_hessians(program, sites, batches, more)
            figures["gptq_rows"] = Figure(gptq_rows, "rows")
        grouped = None
        if cfg.timestep_groups > 1:
            groups = split_timesteps(batches, cfg.timestep_groups)
            group_stats = collect_group_stats(
                program, sites, batches, groups, cfg.observer_kind(program), cfg.percentile
            )
            grouped = GroupedActScales(program, groups, group_stats)
            figures["timestep_group_boundaries"] = Figure(groups.describe())
        calibration_s = time.perf_counter() - start
        bits_by_site = (
            self._mixed_precision(program, sites, stats, batches, figures) if cfg.average_bits else {}
        )
        for site in sites:
            w = weights.get(site.node.name)
            if w is not None:
                site.weight = w.t().contiguous()
        splits = self._lowrank_splits(sites, stats, bits_by_site, figures) if cfg.lowrank else {}
        stored = float_bytes = branch_bytes = 0
        fallback = []  # per-group Linears whose input channels the group does not divide
        for site in sites:
            plan = effective_plan(site, cfg.plan(bits_by_site.get(site.node.name)))
            mode = layer_mode(site, cfg.act_mode(), cfg.act_group_size)
            if mode != cfg.act_mode() and site.kind == "linear":
                fallback.append(site.path)
            split = splits.get(site.node.name)
            if split is not None:
                branch_bytes += insert_lowrank_branch(program, site, split)
            stored += quantize_site(
                program,
                site,
                plan,
                stats.get(site.node.name),
                hessians.get(site.node.name),
                grouped=grouped if plan.abits == 8 else None,
                act_mode=mode,
                act_group=cfg.act_group_size,
            )
            float_bytes += site.weight.numel() * 4
            label = plan.label() + (f"+lr{split.rank}" if split is not None else "")
            program.annotations.precision[site.path] = label
        program.graph_module.recompile()
        stored += branch_bytes
        if cfg.lowrank:
            figures["lowrank_bytes"] = Figure(branch_bytes, "bytes")
        if cfg.abits in ACT_BITS:
            figures["activations"] = Figure(cfg.act_mode())
        if fallback:
            figures["per_token_fallback"] = Figure(
                f"{', '.join(fallback)} (input channels not a multiple of {cfg.act_group_size})"
            )
        # A sampled model adds every step's error to the next step's input: on zoo:ldm int8
        # residual adds took the samples from 24.8 to 7.3 dB PSNR against float, so "auto"
        # puts them on the int8 grid only for models that are not sampled (the CNN case).
        residuals_on = (
            program.workload.diffusion is None if cfg.quantize_residuals == "auto" else cfg.quantize_residuals
        )
        if cfg.abits == 8 and residuals_on:
            residuals = quantize_residual_adds(program, batches, cfg.observer_kind(program), cfg.percentile)
            figures["int8_edges_added"] = Figure(residuals, "tensors")
        figures.update(
            {
                "layers_quantized": Figure(len(sites), "layers"),
                "layers_kept_float": Figure(len(skipped), "layers"),
                "calibration_batches": Figure(len(batches), "batches"),
                "calibration_time": Figure(calibration_s, "s"),
                "weight_bytes_before": Figure(float_bytes, "bytes"),
                "weight_bytes_after": Figure(stored, "bytes"),
            }
        )
        if skipped:
            figures["kept_float"] = Figure("; ".join(f"{p}: {why}" for p, why in skipped))
        plans = {s.path: effective_plan(s, cfg.plan(bits_by_site.get(s.node.name))) for s in sites}
        short = [f"{s.path}: {note}" for s in sites if (note := short_group_note(s, plans[s.path]))]
        if short:
            figures["short_groups"] = Figure("; ".join(short))
        hint = self._hint(plans, _spread(batches, 4))
        return PassResult(program, modified=bool(sites), figures=figures, hint=hint)

    def _smooth(
        self,
        program: Program,
        sites: list[QuantSite],
        stats: dict[str, ActStats],
        batches: list,  # type: ignore[type-arg]
        weights: dict[str, torch.Tensor],
        figures: dict[str, Figure],
    ) -> int:
        """SmoothQuant on the Linear sites whose input passes `smooth_threshold`, at `smoothquant`
        or at the alpha `search_alpha` picks per layer from `smoothquant_search`; fills `weights`
        (node name -> rebalanced (K, N) weight) and returns how many layers were smoothed."""
        cfg: PTQConfig = self.config  # type: ignore[assignment]
        linear = [
            s
            for s in sites
            if s.kind == "linear"
            and (st := stats.get(s.node.name)) is not None
            and st.channel_absmax is not None
            and not (cfg.smooth_threshold and outlier_ratio(st.channel_absmax) < cfg.smooth_threshold)
        ]
        rows = sample_input_rows(program, linear, batches, seed=cfg.seed) if cfg.smoothquant_search else {}
        chosen: dict[float, int] = {}
        for site in linear:
            absmax = stats[site.node.name].channel_absmax
            assert absmax is not None
            alpha = cfg.smoothquant
            if cfg.smoothquant_search:
                alpha, _ = search_alpha(
                    site,
                    rows[site.node.name],
                    absmax,
                    effective_plan(site, cfg.plan()).weight,
                    cfg.smoothquant_search,
                    act_mode=layer_mode(site, cfg.act_mode(), cfg.act_group_size),
                    observer=cfg.observer_kind(program),
                    percentile=cfg.percentile,
                    abits=cfg.abits,
                    act_group=cfg.act_group_size,
                )
                chosen[alpha] = chosen.get(alpha, 0) + 1
                if not alpha:
                    continue
            s = smoothing_factors(absmax, site.weight.t().float(), alpha)
            weights[site.node.name] = insert_smoothing(program.graph_module, site, s)
        if cfg.smoothquant_search:
            figures["smooth_alphas"] = Figure(
                ", ".join(f"{a:g}: {n}" for a, n in sorted(chosen.items())), "layers"
            )
        return len(weights)

    def _auto_recipe(self, program: Program) -> PassResult:
        """`recipe = "auto"`: quantize a copy per candidate (static / per-token activations x
        `recipe_alphas`), keep the one whose outputs are closest to the float model's."""
        cfg: PTQConfig = self.config  # type: ignore[assignment]
        batches = _spread(
            calibration_batches(
                program, cfg.calibration, cfg.calibration_batches, cfg.calibration_steps, cfg.seed
            ),
            RECIPE_BATCHES,
        )
        with torch.no_grad():
            reference = torch.cat(
                [flat_outputs(program.graph_module(*b))[0].float().flatten() for b in batches]
            )
        best: tuple[float, str, PassResult] | None = None
        scores = []
        smoothing_applies = True  # false once an alpha smoothed no layer (none passes smooth_threshold)
        for activations in ("static", "per-token"):
            for alpha in dict.fromkeys((0.0, *cfg.recipe_alphas)):  # 0 (off) always competes
                if alpha and not smoothing_applies:
                    continue  # the same Program as alpha 0
                candidate = dataclasses.replace(
                    cfg, recipe="given", activations=activations, smoothquant=alpha
                )
                result = PostTrainingQuantization(candidate).run(program.clone(share_weights=True))
                if alpha and result.figures["layers_smoothed"].value == 0:
                    smoothing_applies = False
                    scores.append(
                        f"smoothquant: no layer's input passes smooth_threshold {cfg.smooth_threshold:g}"
                    )
                    continue
                gm = result.program.graph_module
                with torch.no_grad():
                    out = torch.cat([flat_outputs(gm(*b))[0].float().flatten() for b in batches])
                label = f"{activations}, smoothquant {alpha:g}"
                db = sqnr_db(reference, out)
                scores.append(f"{label}: {db:.1f}")
                log.info("ptq recipe %s: output SQNR %.2f dB", label, db)
                if best is None or db > best[0]:
                    best = (db, label, result)
        assert best is not None
        db, label, result = best
        result.figures["recipe"] = Figure(label)
        result.figures["recipe_sqnr"] = Figure("; ".join(scores), "dB")
        return result

    def _lowrank_splits(
        self,
        sites: list[QuantSite],
        stats: dict[str, ActStats],
        bits_by_site: dict[str, int],
        figures: dict[str, Figure],
    ) -> dict[str, LowRankSplit]:
        """SVDQuant splits of the chosen Linear sites (`optkit.quant.lowrank`), with figures."""
        cfg: PTQConfig = self.config  # type: ignore[assignment]

        def spec_of(site: QuantSite) -> QuantSpec:
            return effective_plan(site, cfg.plan(bits_by_site.get(site.node.name))).weight

        def absmax(site: QuantSite) -> torch.Tensor | None:
            st = stats.get(site.node.name)
            return None if st is None else st.channel_absmax

        splits, gains = choose_branches(
            sites, cfg.lowrank, cfg.lowrank_fraction, cfg.lowrank_skip, spec_of, absmax
        )
        figures["lowrank_layers"] = Figure(len(splits), "layers")
        if gains:
            figures["lowrank_gain"] = Figure(", ".join(f"{p}: {g:.1f}" for p, g in gains.items()), "dB")
        return splits

    def _hint(self, plans: dict[str, LayerPlan], batches: list) -> Callable[[Program], str]:  # type: ignore[type-arg]
        """What to try when the output misses `min_sqnr_db` (a `PassResult.hint`)."""
        cfg: PTQConfig = self.config  # type: ignore[assignment]

        def hint(before: Program) -> str:
            worst = worst_layers(before, plans, batches, 3, cfg.observer_kind(before), cfg.percentile)
            options = []
            if cfg.abits == 8 and cfg.recipe == "given":
                options.append('recipe="auto" (per-token scales and SmoothQuant, chosen by SQNR)')
            if cfg.abits in ACT_BITS and not cfg.smoothquant:
                options.append("smoothquant=0.5 (activation outliers)")
            if cfg.abits == 4 and cfg.act_mode() != "per-group":
                options.append(f'activations="per-group" (a scale per {cfg.act_group_size} input channels)')
            if cfg.abits in ACT_BITS:
                options.append(f"abits={16 if cfg.abits == 8 else 8}")
            if cfg.wbits == 4:
                options.append("wbits=8")
                if not cfg.lowrank:
                    options.append("lowrank=16 (weight outliers)")
            options.append(f"keep_float={list(cfg.keep_float) + [p for p, _ in worst]}")
            options.append(f"min_sqnr_db below {cfg.min_sqnr_db:g}")
            return sqnr_floor_hint(worst, options)

        return hint

    def _mixed_precision(
        self, program: Program, sites: list[QuantSite], stats, batches, figures
    ) -> dict[str, int]:  # type: ignore[no-untyped-def]
        cfg: PTQConfig = self.config  # type: ignore[assignment]
        linear = [s for s in sites if s.kind == "linear"]  # conv weights stay int8 (no int4 conv kernel)
        candidates = block_candidates(program, linear)
        if not candidates:
            raise ConfigError(
                "average_bits needs Linear layers to lower to 4 bits; the model has none to quantize"
            )
        # Ranking keeps every block input of every batch in memory: all-step calibration of a
        # video model (160 batches) needed 24 GB. Rank on batches spread over the trajectory.
        ranked = _spread(batches, SENSITIVITY_BATCHES)
        result = measure(program, candidates, lambda s: cfg.plan(4), stats, ranked)
        params = {
            b: sum(s.weight.numel() for s in linear if s.node.name in names)
            for b, names in candidates.items()
        }
        fixed = sum(s.weight.numel() for s in sites if s.kind != "linear")
        movable = sum(params.values()) or 1
        # Budget over every quantized weight; the int8 conv weights use part of it.
        target = (cfg.average_bits * (movable + fixed) - 8 * fixed) / movable
        block_bits = allocate_bits(result.sqnr, params, target)
        bits = {name: block_bits[b] for b, names in candidates.items() for name in names}
        bits.update({s.node.name: 8 for s in sites if s.kind != "linear"})
        total = sum(s.weight.numel() for s in sites) or 1
        average = sum(bits[s.node.name] * s.weight.numel() for s in sites) / total
        figures["mixed_precision"] = Figure(", ".join(f"{b}: w{v}" for b, v in block_bits.items()))
        figures["block_sqnr_at_4bit"] = Figure(
            ", ".join(f"{b}: {v:.1f}" for b, v in result.sqnr.items()), "dB"
        )
        figures["sensitivity_time"] = Figure(result.seconds, "s")
        figures["average_weight_bits"] = Figure(average, "bits")
        if average > cfg.average_bits + 1e-6:
            figures["budget_missed"] = Figure(f"{average:.2f} bits even with every Linear at 4 bits")
        return bits
