"""Quality of an optimized Program against its input, measured with the Workload's metric.

The metric is the workload's (`Workload.metric`), or by default PSNR of samples for a model the
workload samples and output SQNR otherwise:

| metric       | measured on                              | figure                                  |
|--------------|------------------------------------------|-----------------------------------------|
| `psnr`       | samples of the workload's sampler (same   | PSNR (dB) of the candidate's samples     |
|              | seeds; block-cached when the candidate    | against the reference's                  |
|              | has a cache schedule), or outputs         |                                         |
| `sqnr`       | outputs on the evaluation batches         | SQNR (dB) against the reference          |
| `top1`       | outputs on the evaluation batches         | % of rows whose arg-max class agrees     |
| `perplexity` | token batches (first input: ids)          | perplexity of next-token prediction, both |

Evaluation batches are the workload's calibration data when it names some (`data`), else the
example inputs: a figure measured on the data the model was calibrated on says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from optkit.caching.runner import cached_runner, cached_sample
from optkit.errors import ConfigError
from optkit.ir.onnx_io import flat_outputs
from optkit.ir.program import Program
from optkit.metrics import psnr_db, sqnr_db
from optkit.quant.calibration import Batch, calibration_batches, denoiser_of
from optkit.report import Figure
from optkit.sampling import sample

EVAL_BATCHES = 8  # data batches a quality figure reads at most


def metric_of(program: Program) -> str:
    """The metric quality is measured with: the workload's, else psnr (sampled) or sqnr."""
    if program.workload.metric:
        return program.workload.metric
    return "psnr" if program.workload.diffusion is not None else "sqnr"


def evaluation_batches(program: Program) -> list[Batch]:
    """The batches a quality figure reads (see the module docstring)."""
    if program.workload.calibration.source == "example":
        return calibration_batches(program, "example")
    return calibration_batches(program, "data", EVAL_BATCHES)


def compare(reference: Program, candidate: Program, seeds: Sequence[int] = (0,)) -> dict[str, Figure]:
    """Quality figures of `candidate` against `reference` (same inputs) with the reference's
    workload metric, keyed by their report names (`quality_psnr_db`, `quality_sqnr_db`,
    `quality_top1_pct`, `perplexity_before` and `perplexity_after`); each Figure's label says
    what was measured on what (`samples PSNR vs input (1 seed(s))`)."""
    metric = metric_of(reference)
    if metric == "psnr" and reference.workload.diffusion is not None:
        draw_ref, draw_out = sampler_for(reference), sampler_for(candidate)
        ref = torch.cat([draw_ref(s) for s in seeds])
        out = torch.cat([draw_out(s) for s in seeds])
        label = f"samples PSNR vs input ({len(seeds)} seed(s))"
        return {"quality_psnr_db": Figure(psnr_db(ref, out), "dB", label)}
    batches = evaluation_batches(reference)
    where = f"{len(batches)} batch(es)"
    if metric == "perplexity":
        before, after = (_perplexity(p, batches) for p in (reference, candidate))
        return {
            "perplexity_before": Figure(before, "", f"perplexity before ({where})"),
            "perplexity_after": Figure(after, "", f"perplexity after ({where})"),
        }
    ref, out = _outputs(reference, batches), _outputs(candidate, batches)
    if metric == "sqnr":
        return {"quality_sqnr_db": Figure(sqnr_db(ref, out), "dB", f"output SQNR vs input ({where})")}
    if metric == "psnr":
        span = float(ref.max() - ref.min()) or 1.0
        psnr = psnr_db(ref, out, data_range=span)
        return {"quality_psnr_db": Figure(psnr, "dB", f"output PSNR vs input ({where})")}
    agree = (ref.argmax(-1) == out.argmax(-1)).float().mean().item()
    return {"quality_top1_pct": Figure(100.0 * agree, "%", f"top-1 agreement with input ({where})")}


def sampler_for(
    program: Program, denoise: Callable[..., torch.Tensor] | None = None
) -> Callable[[int], torch.Tensor]:
    """`seed -> one batch of samples` from `program` with its workload's sampler, block-cached
    when the Program has a cache schedule (the runner, and its step variants, built once); with
    `denoise` (`onnx_denoiser`, `inductor_denoiser`), each denoiser call runs there instead."""
    diffusion = program.workload.diffusion
    if diffusion is None:
        raise ConfigError(f"{program.name}'s workload has no [diffusion] sampler to sample with")
    if denoise is None and program.annotations.cache_schedule:
        runner = cached_runner(program)
        return lambda seed: cached_sample(program, seed=seed, runner=runner)
    denoise = denoise or denoiser_of(program)
    x, _t, *cond = program.example_inputs
    guidance, uncond = diffusion.guidance(tuple(cond))
    return lambda seed: sample(
        denoise,
        x.shape,
        sampler=diffusion.sampler,
        steps=diffusion.steps,
        seed=seed,
        cond=tuple(cond),
        uncond=uncond,
        guidance_scale=guidance,
    )


def onnx_denoiser(program: Program, session: Any) -> Callable[..., torch.Tensor]:
    """`program` exported to ONNX (`session`) as a sampler's denoiser, in chunks of the
    captured batch (the graph's batch is static; a guided call doubles it)."""
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        feeds = {n: v.numpy() for n, v in zip(names, inputs, strict=True)}
        return torch.from_numpy(session.run(None, feeds)[0])

    return _chunked(program, run)


def inductor_denoiser(program: Program) -> Callable[..., torch.Tensor]:
    """`program`'s graph under `torch.compile` (inductor) as a sampler's denoiser, in chunks of
    the captured batch. The first call compiles (tens of seconds): warm it up before timing."""
    compiled = torch.compile(program.graph_module, backend="inductor")

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return flat_outputs(compiled(*inputs))[0]

    return _chunked(program, run)


def _chunked(program: Program, run: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    x_example, t_example = program.example_inputs[:2]
    size = x_example.shape[0]

    def denoise(x: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        inputs = (x, t.to(t_example.dtype), *cond)
        outs = [run(*(v[i : i + size] for v in inputs)) for i in range(0, x.shape[0], size)]
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    return denoise


def _outputs(program: Program, batches: Sequence[Batch]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([flat_outputs(program.graph_module(*b))[0].float() for b in batches])


def _perplexity(program: Program, batches: Sequence[Batch]) -> float:
    ids = batches[0][0]
    if ids.is_floating_point() or ids.dim() != 2:
        raise ConfigError(
            f"metric 'perplexity' needs token ids (N, T) as the first input; {program.name} takes {tuple(ids.shape)} {ids.dtype}"
        )
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            logits = flat_outputs(program.graph_module(*batch))[0].float()  # (B, T, V)
            if logits.dim() != 3 or logits.shape[:2] != batch[0].shape:
                raise ConfigError(
                    f"metric 'perplexity' needs logits (N, T, vocab) as the first output; got {tuple(logits.shape)}"
                )
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1), batch[0][:, 1:].flatten().long(), reduction="sum"
            )
            total, count = total + float(loss), count + batch[0][:, 1:].numel()
    return math.exp(total / count)
