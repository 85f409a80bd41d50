"""`groupwise`: group-wise weight-only quantization (int4 / int8), as in PTQ for diffusion
transformers: one scale (and zero point, when asymmetric) per `group_size` input channels of
each output channel. int4 weights are stored packed two per byte.

Rounding is round-to-nearest (`method = "rtn"`) or GPTQ's error-compensating rounding
(`method = "gptq"`), which needs calibration inputs to build each layer's Hessian. Linear layers
only (convolutions keep float weights here; `ptq` quantizes them). Layers whose input channels
the group size does not divide, or whose output channels are odd at 4 bits, are skipped and
listed in the figures. Run after capture and `fold-constants`; follow with `dce` to drop the
float weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch

from optkit.errors import ConfigError
from optkit.ir.program import Program
from optkit.pipeline import Pass, PassConfig, PassResult, Tolerance, register_pass
from optkit.quant.calibration import CalibrationMode, calibration_batches, watch_inputs
from optkit.quant.numerics import QuantSpec
from optkit.quant.sites import QuantSite, find_sites, replace_site
from optkit.quant.weights import pack_weight, quantize_gptq, quantize_rtn
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
    calibration: Literal["example", "single-step", "all-steps"] = "example"
    calibration_batches: int = 4
    skip: tuple[str, ...] = ()

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


def hessians(
    program: Program, sites: list[QuantSite], mode: CalibrationMode, batches: int
) -> dict[str, torch.Tensor]:
    """H = 2 X^T X of each site's inputs over the calibration batches."""
    acc = {s.node.name: torch.zeros(s.in_features, s.in_features, dtype=torch.float64) for s in sites}

    def add(name: str):  # type: ignore[no-untyped-def]
        def fn(x: torch.Tensor) -> None:
            x2 = x.reshape(-1, x.shape[-1]).double()
            acc[name] += 2.0 * x2.t() @ x2

        return fn

    data = calibration_batches(program, mode, num_batches=batches)
    watch_inputs(program, data, {name: add(name) for name in acc})
    return acc


@register_pass("groupwise", GroupwiseConfig)
class GroupwiseWeights(Pass):
    """Quantize Linear weights group-wise to packed int4 or int8. Run after capture, before lowering."""

    tolerance = Tolerance(min_sqnr_db=10.0)

    def run(self, program: Program) -> PassResult:
        cfg: GroupwiseConfig = self.config  # type: ignore[assignment]
        sites, skipped = find_sites(program, cfg.skip)
        kept = []
        for site in sites:
            k, n = site.weight.shape[1], site.weight.shape[0]
            if site.kind != "linear":
                skipped.append(
                    (site.path, "convolution: groupwise quantizes Linear layers; use ptq for convs")
                )
            elif k % cfg.group_size:
                skipped.append(
                    (site.path, f"group_size {cfg.group_size} does not divide its {k} input channels")
                )
            elif cfg.bits == 4 and n % 2:
                skipped.append((site.path, f"int4 packing needs an even number of output channels, has {n}"))
            else:
                kept.append(site)
        spec = QuantSpec(cfg.bits, cfg.symmetric, "group", cfg.group_size)
        hess = (
            hessians(program, kept, cfg.calibration, cfg.calibration_batches)
            if cfg.method == "gptq" and kept
            else {}
        )
        float_bytes = quant_bytes = 0
        for site in kept:
            w_kn = site.weight.t().float()
            qw = (
                quantize_gptq(w_kn, hess[site.node.name], spec, cfg.damp)
                if cfg.method == "gptq"
                else quantize_rtn(w_kn, spec)
            )
            buffers = pack_weight(qw)
            bias = site.bias if site.bias is not None else torch.zeros(w_kn.shape[1])
            replace_site(
                program,
                site,
                torch.ops.optkit.linear_wq.default,
                {**buffers, "bias": bias},
                (cfg.bits, cfg.group_size, cfg.symmetric),
            )
            program.annotations.precision[site.path] = (
                f"w{cfg.bits}g{cfg.group_size}{'' if cfg.symmetric else 'a'}"
            )
            float_bytes += site.weight.numel() * 4
            quant_bytes += sum(t.numel() * t.element_size() for t in buffers.values())
        program.graph_module.recompile()
        figures = {
            "layers_quantized": Figure(len(kept), "layers"),
            "layers_skipped": Figure(len(skipped), "layers"),
            "weight_bytes_before": Figure(float_bytes, "bytes"),
            "weight_bytes_after": Figure(quant_bytes, "bytes"),
        }
        if skipped:
            figures["skipped"] = Figure("; ".join(f"{p}: {why}" for p, why in skipped))
        return PassResult(program, modified=bool(kept), figures=figures)
