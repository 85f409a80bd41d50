"""Calibration: which inputs to run, and watching the values that reach chosen nodes.

Batches come from the Program's Workload (`program.workload`), never from knowledge of where
the model came from:

- `example`: the example inputs (one batch);
- `data`: the workload's calibration source (a file of batches, images, tokens, or batches
  given in Python; see `optkit.calib_data`), at most `num_batches` of them;
- `single-step`: for a diffusion workload, one denoiser call at the noisiest step (x_T ~ N(0, I)
  and the sampler's first timestep), as the SQNR-PTQ and PTQ4DiT papers propose, per seed;
- `all-steps`: every denoiser call of a full sampling run per seed (the Program is the denoiser);
- `auto`: `data` when the workload names a calibration source, else `all-steps` when the
  workload samples the model (activations differ across timesteps; every good figure in
  docs/benchmarks.md calibrates this way), else `example`.

With classifier-free guidance in the workload (`guidance_scale > 1`), half of every denoiser
call at sampling time sees the null condition; calibration does the same: single-step adds the
noisiest-step call with the null condition, and all-steps samples with guidance and keeps both
halves of each call (as batches of the captured size).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.fx as fx

from optkit import sampling
from optkit.calib_data import load_calibration
from optkit.errors import ConfigError
from optkit.ir.program import Program
from optkit.workload import Diffusion

log = logging.getLogger(__name__)

CalibrationMode = Literal["auto", "example", "data", "single-step", "all-steps"]
MODES = ("auto", "example", "data", "single-step", "all-steps")
Batch = tuple[torch.Tensor, ...]


def calibration_batches(
    program: Program, mode: CalibrationMode = "auto", num_batches: int = 1, steps: int = 0, seed: int = 0
) -> list[Batch]:
    """Input tuples to calibrate `program` on (see the module docstring for the modes).

    `num_batches` caps the data batches, or counts the sampling seeds of `single-step` /
    `all-steps`; `steps` is the sampler's step count (0 = the workload's).
    """
    if num_batches < 1 or steps < 0:
        raise ConfigError(f"calibration needs num_batches >= 1 and steps >= 0, got {num_batches}, {steps}")
    workload = program.workload
    resolved = resolve_mode(program, mode)
    if resolved == "example":
        return [program.example_inputs]
    if resolved == "data":
        if workload.calibration.source == "example":
            raise ConfigError(
                f"calibration = 'data' needs calibration data in {program.name}'s workload: give --calib PATH "
                "(a .npz/.safetensors of input batches, an image folder or a token file) or a [calibration] table"
            )
        return load_calibration(
            workload.calibration, program.input_names(), program.example_inputs, num_batches
        )
    diffusion = workload.diffusion
    if diffusion is None:
        raise ConfigError(
            f"calibration mode {resolved!r} samples a diffusion model, but {program.name}'s workload has no "
            "[diffusion] sampler (give --workload FILE.toml, or use calibration = 'example' or 'data')"
        )
    return trajectory_batches(program, diffusion, resolved, num_batches, steps or diffusion.steps, seed)


def resolve_mode(program: Program, mode: str) -> str:
    """The calibration mode `mode` stands for on `program` (`auto` resolved; see the module
    docstring)."""
    if mode not in MODES:
        raise ConfigError(f"calibration must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    if program.workload.calibration.source != "example":
        return "data"
    return "all-steps" if program.workload.diffusion is not None else "example"


def trajectory_batches(
    program: Program, diffusion: Diffusion, mode: str, seeds: int, steps: int, seed: int
) -> list[Batch]:
    """Denoiser inputs along the sampler's trajectory (`single-step` or `all-steps`), per seed."""
    x_example, t_example, *cond_list = program.example_inputs
    cond = tuple(cond_list)
    guidance, uncond = diffusion.guidance(cond)
    size = x_example.shape[0]
    batches: list[Batch] = []
    for b in range(seeds):
        gen = torch.Generator().manual_seed(seed + b)
        if mode == "single-step":
            noise = torch.randn(x_example.shape, generator=gen)
            first = sampling.timesteps(diffusion.sampler, steps)[0]
            t_first = torch.full((size,), float(first)).to(t_example.dtype)
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

        sampling.sample(
            denoiser_of(program),
            tuple(x_example.shape),
            sampler=diffusion.sampler,
            steps=steps,
            seed=seed + b,
            cond=cond,
            uncond=uncond,
            guidance_scale=guidance,
            observer=record,
        )
        t_dtype = t_example.dtype
        batches.extend(tuple(t.to(t_dtype) if i == 1 else t for i, t in enumerate(b_)) for b_ in seen)
    return batches


def denoiser_of(program: Program) -> Callable[..., torch.Tensor]:
    """`program` as a sampler's denoiser: any batch that is a multiple of the captured one, and
    the timestep cast to the dtype the graph was captured with (samplers pass float)."""
    t_dtype = program.example_inputs[1].dtype

    def denoise(x: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        return program.run_chunked(x, t.to(t_dtype), *cond)

    return denoise


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
