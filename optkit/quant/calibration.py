"""Calibration: which inputs to run, and watching the values that reach chosen nodes.

For a diffusion denoiser captured from the zoo (`program.meta["sampler"]` set), calibration
follows the sampler:

- `single-step`: one denoiser call at the noisiest step (x_T ~ N(0, I) and the first timestep
  of the schedule), as the SQNR-PTQ and PTQ4DiT papers propose — no sampling at all;
- `all-steps`: every denoiser call of a full sampling run (the Program itself is the denoiser).

When the zoo entry samples with classifier-free guidance (`extra["guidance_scale"] > 1`), half
of every denoiser call at sampling time sees the null condition; calibration does the same:
single-step adds the noisiest-step call with the null condition, and all-steps samples with
guidance and keeps both halves of each call (as batches of the captured size).

Other Programs calibrate on their example inputs (`example`), or on batches the caller gives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.fx as fx

from optkit.errors import ConfigError
from optkit.ir.program import Program

log = logging.getLogger(__name__)

CalibrationMode = Literal["example", "single-step", "all-steps"]
Batch = tuple[torch.Tensor, ...]


def calibration_batches(
    program: Program, mode: CalibrationMode = "example", num_batches: int = 1, steps: int = 20, seed: int = 0
) -> list[Batch]:
    """Input tuples to calibrate `program` on (see the module docstring for the modes)."""
    if num_batches < 1 or steps < 1:
        raise ConfigError(f"calibration needs num_batches >= 1 and steps >= 1, got {num_batches}, {steps}")
    if mode == "example":
        return [program.example_inputs]
    sampler = program.meta.get("sampler")
    if not sampler:
        raise ConfigError(
            f"calibration mode {mode!r} needs a diffusion model driven by a zoo sampler; {program.name} has none "
            "(use calibration = 'example')"
        )
    from optkit.zoo import samplers

    if mode not in ("single-step", "all-steps"):
        raise ConfigError(f"calibration must be example, single-step or all-steps, got {mode!r}")
    x_example, _t, *cond_list = program.example_inputs
    cond = tuple(cond_list)
    guidance, uncond = guidance_of(program, cond)
    size = x_example.shape[0]
    batches: list[Batch] = []
    for b in range(num_batches):
        gen = torch.Generator().manual_seed(seed + b)
        if mode == "single-step":
            noise = torch.randn(x_example.shape, generator=gen)
            t_first = torch.full((size,), float(samplers.timesteps(sampler, steps)[0]))
            batches.append((noise, t_first, *cond))
            if uncond is not None:
                batches.append((noise, t_first, *uncond))
            continue
        seen: list[Batch] = []

        def record(
            _i: int, _t: torch.Tensor, inputs: Batch, _out: torch.Tensor, seen: list[Batch] = seen
        ) -> None:
            # Under guidance the call holds [conditional; unconditional]: one batch per half.
            for start in range(0, inputs[0].shape[0], size):
                seen.append(tuple(t[start : start + size].detach().clone() for t in inputs))

        samplers.sample(
            program.run_chunked,
            tuple(x_example.shape),
            sampler=sampler,
            steps=steps,
            seed=seed + b,
            cond=cond,
            uncond=uncond,
            guidance_scale=guidance,
            observer=record,
        )
        batches.extend(seen)
    return batches


def guidance_of(program: Program, cond: Batch) -> tuple[float, Batch | None]:
    """The classifier-free guidance scale the zoo samples `program` with, and the null
    condition for `cond` (the entry's `extra["null_cond"]`, else all-zero conditions, the zoo's
    convention for text tokens); (1.0, None) without guidance."""
    name = program.meta.get("zoo")
    if not name or not cond:
        return 1.0, None
    from optkit.zoo.registry import get_model

    extra = get_model(name).extra
    scale = float(extra.get("guidance_scale", 1.0))
    if scale <= 1.0:
        return 1.0, None
    make = extra.get("null_cond")
    uncond = tuple(make(cond)) if callable(make) else tuple(torch.zeros_like(c) for c in cond)
    return scale, uncond


class _Watcher(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, watch: dict[str, Callable[[torch.Tensor], None]]) -> None:
        super().__init__(gm)
        self.watch = watch

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.name in self.watch:
            x = self.env[n.args[0]] if isinstance(n.args[0], fx.Node) else None
            if isinstance(x, torch.Tensor):
                self.watch[n.name](x)
        return result


def watch_inputs(
    program: Program, batches: Sequence[Batch], watch: dict[str, Callable[[torch.Tensor], None]]
) -> None:
    """Run `batches` through the graph, calling `watch[node.name](first input)` at each watched node."""
    interp = _Watcher(program.graph_module, watch)
    with torch.no_grad():
        for batch in batches:
            interp.run(*batch)


def output_of(program: Program, batches: Sequence[Batch]) -> list[torch.Tensor]:
    """The first output tensor of the Program on each batch (references for SQNR)."""
    from optkit.ir.onnx_io import flat_outputs

    with torch.no_grad():
        return [flat_outputs(program.graph_module(*b))[0] for b in batches]
