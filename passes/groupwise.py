"""`groupwise`: group-wise weight-only quantization (int4 / int8), as in PTQ for diffusion
transformers: one scale (and zero point, when asymmetric) per `group_size` input channels of
each output channel. int4 weights are stored packed two per byte.

Rounding is round-to-nearest (`method = "rtn"`) or GPTQ's error-compensating rounding
(`method = "gptq"`), which needs calibration inputs to build each layer's Hessian. Every Linear
layer is quantized whatever its width: when the group size does not divide its input channels
the last group is short (quantized as if zero-padded; the `short_groups` figure lists those
layers), and a layer with an odd number of outputs at 4 bits is stored as int8 per-channel
(`int8_layers`). A language model's output head stays float unless `quantize_head`
(`optkit.quant.sites.output_head` says how it is found; a head tied to the input embedding
would otherwise store a quantized copy next to the float table the embedding keeps reading).
Convolutions keep float weights here; `ptq` quantizes them. Run after capture and
`fold-constants`; follow with `dce` to drop the float weights. The PassManager checks the output
SQNR against `min_sqnr_db` and, below it, names the layers that lose most.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from optkit.errors import ConfigError
from optkit.ir.program import Program
from optkit.pipeline import Pass, PassConfig, PassResult, Tolerance, register_pass
from optkit.quant.advice import sqnr_floor_hint, worst_layers
from optkit.quant.calibration import CalibrationMode, calibration_batches, resolve_mode
from optkit.quant.numerics import QuantSpec
from optkit.quant.rewrite import LayerPlan, effective_plan, gptq_hessians, quantize_site, short_group_note
from optkit.quant.sites import find_sites, split_output_heads
from optkit.report import Figure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupwiseConfig(PassConfig):
    """Weight-only quantization with one scale per `group_size` input channels."""

    bits: Literal[4, 8] = 4
    group_size: int = 64
    symmetric: bool = True
    method: Literal["rtn", "gptq"] = "rtn"
    damp: float = 0.01
    calibration: Literal["auto", "example", "data", "single-step", "all-steps"] = "auto"
    calibration_batches: int = 4
    skip: tuple[str, ...] = ()
    quantize_head: bool = False
    min_sqnr_db: float = 10.0

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ConfigError(f"bits must be 4 or 8, got {self.bits}")
        if self.group_size <= 0 or self.group_size % 8:
            raise ConfigError(
                f"group_size must be a positive multiple of 8 (e.g. 32, 64, 128), got {self.group_size}"
            )
        if not 0.0 < self.damp < 1.0:
            raise ConfigError(f"damp must be in (0, 1), got {self.damp}")
        if self.calibration_batches < 1:
            raise ConfigError(f"calibration_batches must be >= 1, got {self.calibration_batches}")

    def plan(self) -> LayerPlan:
        return LayerPlan(QuantSpec(self.bits, self.symmetric, "group", self.group_size), abits=16)


def precision_label(plan: LayerPlan) -> str:
    """`w4g64` (symmetric groups), `w4g64a` (asymmetric), `w8c` (per-channel int8)."""
    spec = plan.weight
    grain = f"g{spec.group_size}" if spec.granularity == "group" else "c"
    return f"w{spec.bits}{grain}{'' if spec.symmetric else 'a'}"


@register_pass("groupwise", GroupwiseConfig)
class GroupwiseWeights(Pass):
    """Quantize Linear weights group-wise to packed int4 or int8. Run after capture, before lowering."""

    shares_weights = True  # registers new tensors; never writes its input's

    @property
    def tolerance(self) -> Tolerance:  # type: ignore[override]
        return Tolerance(min_sqnr_db=self.config.min_sqnr_db)  # type: ignore[attr-defined]

    def run(self, program: Program) -> PassResult:
        cfg: GroupwiseConfig = self.config  # type: ignore[assignment]
        sites, skipped = find_sites(program, cfg.skip)
        skipped += [
            (s.path, "convolution: groupwise quantizes Linear layers; use ptq for convs")
            for s in sites
            if s.kind != "linear"
        ]
        sites = [s for s in sites if s.kind == "linear"]
        if not cfg.quantize_head:
            sites, heads = split_output_heads(program, sites)
            skipped += heads
        hessians: dict[str, torch.Tensor] = {}
        gptq_rows = 0
        if cfg.method == "gptq" and sites:
            more = None
            if resolve_mode(program, cfg.calibration) == "data":

                def more(n: int) -> list:  # type: ignore[type-arg]
                    return calibration_batches(program, "data", n)

            hessians, gptq_rows = gptq_hessians(program, sites, self._batches(program), more)
        plans = {s.path: effective_plan(s, cfg.plan()) for s in sites}
        short = [f"{s.path}: {note}" for s in sites if (note := short_group_note(s, cfg.plan()))]
        int8 = [s.path for s in sites if plans[s.path].weight.bits != cfg.bits]
        float_bytes = quant_bytes = 0
        for site in sites:
            quant_bytes += quantize_site(
                program, site, plans[site.path], None, hessians.get(site.node.name), damp=cfg.damp
            )
            program.annotations.precision[site.path] = precision_label(plans[site.path])
            float_bytes += site.weight.numel() * 4
        program.graph_module.recompile()
        figures = {
            "layers_quantized": Figure(len(sites), "layers"),
            "layers_skipped": Figure(len(skipped), "layers"),
            "weight_bytes_before": Figure(float_bytes, "bytes"),
            "weight_bytes_after": Figure(quant_bytes, "bytes"),
        }
        if gptq_rows:
            figures["gptq_rows"] = Figure(gptq_rows, "rows")
        if short:
            figures["short_groups"] = Figure("; ".join(short))
        if int8:
            figures["int8_layers"] = Figure(
                "; ".join(f"{p}: odd output channels, stored as int8 per-channel" for p in int8)
            )
        if skipped:
            figures["skipped"] = Figure("; ".join(f"{p}: {why}" for p, why in skipped))
        return PassResult(program, modified=bool(sites), figures=figures, hint=self._hint(plans))

    def _batches(self, program: Program) -> list:  # type: ignore[type-arg]
        cfg: GroupwiseConfig = self.config  # type: ignore[assignment]
        mode: CalibrationMode = cfg.calibration
        return calibration_batches(program, mode, num_batches=cfg.calibration_batches)

    def _hint(self, plans: dict[str, LayerPlan]) -> Callable[[Program], str]:
        cfg: GroupwiseConfig = self.config  # type: ignore[assignment]

        def hint(before: Program) -> str:
            worst = worst_layers(before, plans, self._batches(before))
            options = [f"skip={list(cfg.skip) + [p for p, _ in worst]}"]
            if cfg.bits == 4:
                options.append("bits=8")
            if cfg.group_size > 32:
                options.append("group_size=32")
            if cfg.method == "rtn":
                options.append("method='gptq'")
            options.append(f"min_sqnr_db below {cfg.min_sqnr_db:g}")
            return sqnr_floor_hint(worst, options)

        return hint
