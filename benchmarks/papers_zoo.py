"""One zoo model through each pass that applies to it, scored with the model's own metric.

`bench_papers.py` calls `zoo_after(name, ...)` for every zoo model: the float model in eager,
then `ptq`, `groupwise` and (models with a sampler) `cache`, each as `optkit optimize` runs it
with its defaults (cache with a 30 dB quality floor), then the deployed form: `ptq` (+ `cache`)
lowered to the CPU by `lower_pipeline`, as `optimize --target cpu` does. Each variant is scored
by the zoo entry's `evaluate` on the same seeds; the compiled form is also timed against the
float model in eager, interleaved, on the same threads (one sampling run of the workload's
sampler, or one call).
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from optkit.backends.pipeline import Pipeline, lower_pipeline

from optkit.api import optimize
from optkit.caching import cached_runner
from optkit.endtoend import same_threads
from optkit.errors import OptkitError
from optkit.ir.onnx_io import flat_outputs
from optkit.ir.program import Program
from optkit.quality import sampler_for
from optkit.refs import load_program_ref
from optkit.timing import interleaved_latency_ms
from optkit.zoo.registry import EvalSettings, get_model

CACHE_FLOOR_DB = 30.0  # the cache pass's quality floor here (`-O cache.min_psnr=30`)

# name -> (metric, direction, tolerance): the figure of `evaluate` that says what the model is
# worth, and how far an optimized variant may move it ("abs": points, "rel": fraction, "db").
TOLERANCES: dict[str, list[tuple[str, str, str, float]]] = {
    "dit": [("class_accuracy", "higher", "abs", 0.03), ("fd_digits", "lower", "rel", 0.15)],
    "ldm": [("class_accuracy", "higher", "abs", 0.03), ("fd_digits", "lower", "rel", 0.15)],
    "moviegen": [("frame_class_accuracy", "higher", "abs", 0.03), ("fd_frame_mean", "lower", "rel", 0.15)],
    "lingen": [("frame_class_accuracy", "higher", "abs", 0.03), ("fd_frame_mean", "lower", "rel", 0.15)],
    "scenetextgen": [("char_accuracy", "higher", "abs", 0.03), ("fd_digits_cells", "lower", "rel", 0.15)],
    "lego": [("psnr_db", "higher", "db", 0.5), ("identity_accuracy", "higher", "abs", 0.03)],
    "instamanip": [("psnr_db", "higher", "db", 0.5), ("identity_accuracy", "higher", "abs", 0.03)],
    "efficientsam": [("miou_box", "higher", "abs", 0.01), ("miou_point", "higher", "abs", 0.01)],
    "recsys": [("auc", "higher", "abs", 0.002)],
}


@dataclass
class Variant:
    """One form of the model and what it scored."""

    label: str
    passes: str
    figures: dict[str, float] = field(default_factory=dict)
    note: str = ""


@dataclass
class ZooResult:
    name: str
    variants: list[Variant]
    latency_ms: dict[str, float]  # float eager / compiled / compiled float medians
    speedup: float
    lowering_s: float
    threads: int
    checks: list[str]  # the tolerance checks that failed, said in words
    seconds: float

    @property
    def within_tolerance(self) -> bool:
        return not self.checks


def as_module(float_module: torch.nn.Module, run: Callable[..., Any], example: Sequence[torch.Tensor]) -> Any:
    """`float_module` as the zoo's `evaluate` sees a model, with its forward answered by `run`
    (a captured graph or a compiled library, both fixed to the example's batch): the batch is
    cut into chunks of the captured size, the last one padded, inputs cast to the example's
    dtypes. Everything else (config, autoencoder, buffers) is the float module's own."""
    clone = copy.copy(float_module)
    size = int(example[0].shape[0])

    def forward(*inputs: torch.Tensor) -> Any:
        inputs = tuple(v.to(e.dtype) for v, e in zip(inputs, example, strict=True))
        total = int(inputs[0].shape[0])
        parts = []
        for start in range(0, total, size):
            chunk = [v[start : start + size] for v in inputs]
            short = size - chunk[0].shape[0]
            if short:
                chunk = [torch.cat([v, v[-1:].expand(short, *v.shape[1:])]) for v in chunk]
            with torch.no_grad():
                outs = flat_outputs(run(*chunk))
            parts.append([o[: size - short] for o in outs])
        joined = [torch.cat([p[k] for p in parts]) for k in range(len(parts[0]))]
        return joined[0] if len(joined) == 1 else tuple(joined)

    clone.forward = forward  # type: ignore[method-assign]
    return clone


def runner_sample_fn(program: Program) -> Callable[..., torch.Tensor]:
    """The signature of `optkit.sampling.sample`, answered by `program`'s block-cached sampler."""
    runner = cached_runner(program)

    def draw(
        _model: Any, shape: Sequence[int], *, sampler: Any, steps: int, seed: int, **kw: Any
    ) -> torch.Tensor:
        return runner.sample(
            tuple(shape),
            sampler=sampler,
            seed=seed,
            cond=kw.get("cond", ()),
            uncond=kw.get("uncond"),
            guidance_scale=kw.get("guidance_scale", 1.0),
        )

    return draw


def pipeline_sample_fn(pipeline: Pipeline) -> Callable[..., torch.Tensor]:
    """The signature of `optkit.sampling.sample`, answered by the compiled pipeline (its
    sampler, steps and null condition are the workload's, which the zoo's evaluation uses)."""

    def draw(
        _model: Any, shape: Sequence[int], *, cond: tuple[torch.Tensor, ...], seed: int, **kw: Any
    ) -> torch.Tensor:
        return pipeline.sample(seed, cond=cond, guidance_scale=kw.get("guidance_scale"))

    return draw


def _evaluate(
    entry: Any, model: Any, settings: EvalSettings, sample_fn: Callable[..., Any] | None
) -> dict[str, float]:
    if sample_fn is not None:
        if "sample_fn" not in inspect.signature(entry.evaluate).parameters:
            raise OptkitError(f"{entry.name}'s evaluate takes no sample_fn")
        return entry.evaluate(model, settings, sample_fn=sample_fn)
    return entry.evaluate(model, settings)


def zoo_after(
    name: str,
    samples: int,
    batch: int,
    threads: int,
    repeats: int,
    say: Callable[[str], None] = print,
) -> ZooResult:
    """Every pass that applies to zoo model `name`, then its compiled form; see the module doc."""
    start = time.perf_counter()
    entry = get_model(name)
    module = entry.create()
    program = load_program_ref(f"zoo:{name}", batch=batch)
    example = program.example_inputs
    diffusion = program.workload.diffusion
    steps = diffusion.steps if diffusion is not None else 0
    settings = EvalSettings(num_samples=samples, steps=steps or 50, seed=1000, batch_size=batch)
    variants = [Variant("float, eager", "", _evaluate(entry, module, settings, None))]
    say(f"{name}: float {variants[0].figures}")

    quantized: Program | None = None
    for label, names in (("ptq (W8A8)", ["ptq"]), ("groupwise (W4, g64)", ["groupwise"])):
        try:
            result = optimize(program, names)
        except OptkitError as err:
            variants.append(Variant(label, names[0], note=f"refused: {str(err).splitlines()[0][:160]}"))
            say(f"{name}: {label} refused: {err}")
            continue
        if names == ["ptq"]:
            quantized = result.program
        sqnr = result.records[-1].check.get("min_sqnr_db", float("nan"))
        figs = _evaluate(entry, as_module(module, result.program.run, example), settings, None)
        variants.append(Variant(label, names[0], figs, f"one-call output SQNR {sqnr:.1f} dB"))
        say(f"{name}: {label} {figs}")

    # The deployed form: ptq, then (models with a sampler) cache on the quantized graph, as
    # `optimize --passes ptq,cache` runs them; in eager, then lowered to the CPU in one library.
    deployed = quantized
    if quantized is not None and diffusion is not None:
        label = f"ptq + cache (floor {CACHE_FLOOR_DB:g} dB), eager"
        try:
            result = optimize(quantized, ["cache"], {"cache": {"min_psnr": CACHE_FLOOR_DB}})
        except OptkitError as err:
            variants.append(Variant(label, "cache", note=f"refused: {str(err).splitlines()[0][:160]}"))
            deployed = None
        else:
            deployed = result.program
            figs = _evaluate(entry, module, settings, runner_sample_fn(deployed))
            f = {k: v.value for k, v in result.records[-1].figures.items()}
            note = f"{f['expected_speedup']:.2f}x fewer FLOPs, {f['psnr_vs_uncached']:.1f} dB vs uncached"
            variants.append(Variant(label, "cache", figs, note))
            say(f"{name}: {label} {figs}")
    label = f"ptq{' + cache' if diffusion is not None else ''}, compiled (TVM, CPU)"
    latency: dict[str, float] = {}
    ratio = float("nan")
    lowering_s = float("nan")
    pipeline = None
    if deployed is not None:
        try:
            t0 = time.perf_counter()
            pipeline = lower_pipeline(deployed, "cpu")
            lowering_s = time.perf_counter() - t0
        except OptkitError as err:
            variants.append(Variant(label, "lower", note=f"refused: {str(err).splitlines()[0][:160]}"))
    if pipeline is not None:
        with same_threads(threads, pipeline):
            if diffusion is not None:
                figs = _evaluate(entry, module, settings, pipeline_sample_fn(pipeline))
            else:
                figs = _evaluate(entry, as_module(module, pipeline.main.run_torch, example), settings, None)
            variants.append(Variant(label, "lower", figs, f"lowered in {lowering_s:.0f} s"))
            say(f"{name}: {label} {figs}")
            fns = _timed_pair(program, module, pipeline)
            # Float compiled too: it says whether a slow compiled model is slow for its kernels
            # (TVM behind PyTorch on these shapes) or for what the passes added.
            float_pipeline = lower_pipeline(program, "cpu")
            fns["compiled float"] = _timed_pair(program, module, float_pipeline)["compiled"]
            timed = interleaved_latency_ms(fns, warmup=1, repeats=repeats, settle=threads > 1)
        latency = {k: v["median"] for k, v in timed.items()}
        ratio = latency["float eager"] / latency["compiled"]
        say(f"{name}: latency {latency} -> {ratio:.2f}x")
    checks = tolerance_failures(name, variants)
    return ZooResult(name, variants, latency, ratio, lowering_s, threads, checks, time.perf_counter() - start)


def _timed_pair(
    program: Program, module: torch.nn.Module, pipeline: Pipeline
) -> dict[str, Callable[[], Any]]:
    """Float eager against the compiled pipeline: one sampling run (seed 0) or one call."""
    if program.workload.diffusion is not None:

        def eager(x: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return flat_outputs(module(x, t, *cond))[0]

        float_sample = sampler_for(program, denoise=eager)
        return {"float eager": lambda: float_sample(0), "compiled": lambda: pipeline.sample(0)}
    inputs = program.example_inputs

    def call() -> Any:
        with torch.no_grad():
            return module(*inputs)

    return {"float eager": call, "compiled": lambda: pipeline.main.run_torch(*inputs)}


def tolerance_failures(name: str, variants: list[Variant]) -> list[str]:
    """Each optimized variant's metric against the float one, by the model's stated tolerance."""
    base = variants[0].figures
    failures = []
    for v in variants[1:]:
        if not v.figures:
            failures.append(f"{v.label}: {v.note or 'not run'}")
            continue
        for metric, direction, kind, tol in TOLERANCES.get(name, []):
            if metric not in base or metric not in v.figures:
                continue
            ref, got = base[metric], v.figures[metric]
            if kind == "rel":
                limit = ref * (1 + tol) if direction == "lower" else ref * (1 - tol)
            else:
                limit = ref + tol if direction == "lower" else ref - tol
            worse = got > limit if direction == "lower" else got < limit
            if worse:
                failures.append(
                    f"{v.label}: {metric} {got:.4g} against float {ref:.4g} (allowed: {tolerance_text(kind, tol)} {'more' if direction == 'lower' else 'less'})"
                )
    return failures


def tolerance_text(kind: str, tol: float) -> str:
    return {"abs": f"{tol:g}", "rel": f"{100 * tol:g}%", "db": f"{tol:g} dB"}[kind]


def tolerance_line(name: str) -> str:
    """The model's tolerance in words, for the docs."""
    parts = [
        f"{m} {'at most' if d == 'lower' else 'at least'} float {'+' if d == 'lower' else '−'} {tolerance_text(k, t)}"
        for m, d, k, t in TOLERANCES.get(name, [])
    ]
    return "; ".join(parts)
