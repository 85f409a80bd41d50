"""Quantizing a Llama-style decoder: optkit's W8A8 recipes and int4 weights against ONNX Runtime's
and torchao's dynamic int8 paths, by held-out perplexity.

    OMP_NUM_THREADS=1 python benchmarks/bench_quant_llm.py [--size tiny] [--batch 8] [--windows 344] \
        [--repeats 5] [--outlier-gain 40] [--tvm] [--no-docs]

The model is `zoo:textlm` (`optkit/zoo/textlm.py`: RMSNorm, RoPE, SwiGLU, causal attention; a
byte-level LM trained on the Python reference manual that ships with CPython). Every variant is
scored by perplexity per byte on the held-out test text (`--windows` non-overlapping windows
of 128 bytes, scoring each window's next bytes), the same windows for all. Calibration is the
zoo Workload's: windows of training text.

optkit's variants run `ptq` (+ `dce`) on the captured Program and are scored in eager, with the
int8 kernels they hold (`optkit.quant.ops.int8_matmul`):
- W8A8 static (the defaults: one calibrated scale per layer input), with SmoothQuant 0.5 on
  every layer, per-token dynamic scales, and `recipe="auto"` (the choice by output SQNR);
- W8A16 (int8 weights, float activations);
- W4A16 group 64, round-to-nearest and GPTQ (GPTQ from the calibration data, which `ptq`
  extends to 16 rows per input channel, and from the example batch alone to show why);
- W4A8 group 64 GPTQ with per-token activations.

Peers, same windows: ONNX Runtime's `quantize_dynamic` of the float ONNX export (its defaults,
and per-channel), ONNX Runtime's static QDQ quantization (calibrated on the same batches),
torchao's `Int8DynamicActivationInt8WeightConfig` (per-token int8 activations, per-channel
int8 weights), `Int8WeightOnlyConfig`, `IntxWeightOnlyConfig` (int4, group 64) and
`Int8DynamicActivationIntxWeightConfig` (int8 per-token activations, int4 group-64 weights).

The tiny model has no outlier channels to speak of (the table says how many), unlike pretrained
LLMs, whose Linear inputs carry a few channels 100x the others. `--outlier-gain G` (default 40)
repeats every row on a copy that computes the same function with such channels: every
RMSNorm's gain is multiplied by G on 2 channels and the weight columns that read them are
divided by G (SmoothQuant's migration run backwards), so float perplexity is unchanged and
only the quantizers see the outliers.

With `--tvm`, the float Program and the optkit variants named in `TVM_ROWS` are also lowered
through TVM (`optkit.backends.lower`, 1 core) and scored and timed as compiled artifacts.

Latency: one batch (`--batch` windows) per call, 1 thread, median of `--repeats` interleaved
rounds (`optkit.timing`), every row timed in the same rounds.
Goals (issue 15): W8A8 perplexity within 5% of float; W4 group-wise within 15%.
Writes docs/benchmarks.md (section bench_quant_llm).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _docs import cpu_name, write_section  # noqa: E402
from peers import (  # noqa: E402
    OrtDenoiser,
    onnx_weight_bytes,
    ort_quantize_dynamic,
    ort_quantize_static,
    tensor_bytes,
    torchao_quantized,
)

from optkit.ir.capture import capture  # noqa: E402
from optkit.ir.flops import parameter_bytes  # noqa: E402
from optkit.ir.onnx_io import export_onnx, flat_outputs  # noqa: E402
from optkit.ir.program import Program  # noqa: E402
from optkit.pipeline import PassManager, build_passes  # noqa: E402
from optkit.quant.calibration import calibration_batches  # noqa: E402
from optkit.report import Table  # noqa: E402
from optkit.timing import interleaved_latency_ms  # noqa: E402
from optkit.zoo.data import reference_text  # noqa: E402
from optkit.zoo.registry import get_model  # noqa: E402
from optkit.zoo.textlm import scoring_windows, windows_perplexity  # noqa: E402

W8A8_GOAL = 1.05
W4_GOAL = 1.15
G64 = {"granularity": "group", "group_size": 64}

# (label, ptq options, goal it is held to: "W8A8", "W4" or "")
OPTKIT: list[tuple[str, dict[str, Any], str]] = [
    ("W8A8 static (defaults)", {}, "W8A8"),
    ("W8A8 static + SmoothQuant 0.5", {"smoothquant": 0.5, "smooth_threshold": 0.0}, "W8A8"),
    (
        "W8A8 static + SmoothQuant searched per layer",
        {"smoothquant_search": (0.25, 0.5, 0.75), "smooth_threshold": 0.0},
        "W8A8",
    ),
    ("W8A8 per-token", {"activations": "per-token"}, "W8A8"),
    ('W8A8 recipe="auto"', {"recipe": "auto"}, "W8A8"),
    ("W8A16", {"abits": 16}, ""),
    ("W4A16 g64 RTN", {"wbits": 4, "abits": 16, **G64}, "W4"),
    ("W4A16 g64 GPTQ", {"wbits": 4, "abits": 16, "method": "gptq", **G64}, "W4"),
    (
        "W4A16 g64 GPTQ, example batch only",
        {"wbits": 4, "abits": 16, "method": "gptq", "calibration": "example", **G64},
        "",
    ),
    ("W4A8 g64 GPTQ per-token", {"wbits": 4, "method": "gptq", "activations": "per-token", **G64}, "W4"),
]
# (label, torchao config, options, goal)
TORCHAO: list[tuple[str, str, dict[str, Any], str]] = [
    ("int8 dynamic act + int8 weight", "Int8DynamicActivationInt8WeightConfig", {}, "W8A8"),
    ("int8 weight-only", "Int8WeightOnlyConfig", {}, ""),
    (
        "int4 weight-only g64",
        "IntxWeightOnlyConfig",
        {"weight_dtype": torch.int4, "group_size": 64},
        "W4",
    ),
    (
        "int8 dynamic act + int4 g64",
        "Int8DynamicActivationIntxWeightConfig",
        {"weight_dtype": torch.int4, "group_size": 64},
        "W4",
    ),
]

OUTLIER_CHANNELS = (7, 100)
OUTLIER_TITLE = "the same function with outlier channels (x{gain:g} on 2 of 192 channels after every RMSNorm)"
TVM_ROWS = ("float32", 'W8A8 recipe="auto"', "W4A16 g64 GPTQ")

Logits = Callable[[torch.Tensor], torch.Tensor]


def program_logits(program: Program) -> Logits:
    return lambda ids: flat_outputs(program.graph_module(ids))[0]


class Results:
    """The table's rows, each with the callable that times it (one call on one batch)."""

    def __init__(self, float_ppl: float) -> None:
        self.float_ppl = float_ppl
        self.rows: list[list[Any]] = []
        self.calls: dict[int, Callable[[], Any]] = {}

    def add(
        self,
        who: str,
        label: str,
        size: float,
        ppl: float,
        goal: str = "",
        note: str = "",
        call: Callable[[], Any] | None = None,
    ) -> None:
        ratio = ppl / self.float_ppl
        limit = {"W8A8": W8A8_GOAL, "W4": W4_GOAL}.get(goal)
        verdict = (
            ""
            if limit is None
            else ("met" if ratio <= limit else f"**missed** by {100 * (ratio - limit):.1f} pts")
        )
        if call is not None:
            self.calls[len(self.rows)] = call
        cell = f"<= {limit:.2f}x: {verdict}" if limit is not None and not math.isnan(ppl) else goal
        self.rows.append([who, label, size / 1024, ppl, ratio, cell, math.nan, note])

    def time(self, repeats: int) -> None:
        latency = interleaved_latency_ms({str(i): fn for i, fn in self.calls.items()}, repeats=repeats)
        for key, stats in latency.items():
            self.rows[int(key)][6] = stats["median"]


def optkit_note(figures: dict[str, Any]) -> str:
    parts = []
    for key in ("recipe", "layers_smoothed", "smooth_alphas", "gptq_rows", "layers_kept_float"):
        fig = figures.get(key)
        if fig is not None:
            value = fig.value if isinstance(fig.value, str) else f"{fig.value:g}"
            parts.append(f"{key.replace('_', ' ')}: {value}")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--batch", type=int, default=8, help="windows per call (the graphs' static batch)")
    parser.add_argument(
        "--windows", type=int, default=344, help="test windows scored (at most 351 at 128 bytes)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--tvm", action="store_true", help="also lower the TVM_ROWS variants through TVM")
    parser.add_argument(
        "--outlier-gain",
        type=float,
        default=40.0,
        help="also measure a copy with LLM-like outlier channels of this gain (0 = off)",
    )
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # every runtime at 1 thread (ONNX Runtime sessions and TVM too)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()

    entry = get_model("textlm")
    model = entry.create(args.size)
    sections = [("the trained checkpoint", *measure(model, args))]
    if args.outlier_gain:
        stressed = with_outlier_channels(model, OUTLIER_CHANNELS, args.outlier_gain)
        sections.append((OUTLIER_TITLE.format(gain=args.outlier_gain), *measure(stressed, args)))
    render(args, sections, load_before, time.perf_counter() - started)


def with_outlier_channels(model: nn.Module, channels: tuple[int, ...], gain: float) -> nn.Module:
    """A copy of `model` computing the same function with LLM-like outlier channels: every
    RMSNorm's gain is multiplied by `gain` on `channels`, and the weight columns of the Linears
    that read that norm divided by it (the reverse of SmoothQuant's migration)."""
    stressed = copy.deepcopy(model)
    readers = [
        (layer.input_layernorm, [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj])
        for layer in stressed.layers
    ]
    readers += [
        (layer.post_attention_layernorm, [layer.mlp.gate_proj, layer.mlp.up_proj])
        for layer in stressed.layers
    ]
    readers.append((stressed.norm, [stressed.lm_head]))
    idx = torch.tensor(channels)
    with torch.no_grad():
        for norm, linears in readers:
            norm.weight[idx] *= gain
            for linear in linears:
                linear.weight[:, idx] /= gain
    return stressed


def measure(model: nn.Module, args: Any) -> tuple[list[list[Any]], str]:
    """The table rows for one model (every variant and peer) and its outlier summary."""
    entry = get_model("textlm")
    context = model.cfg.context
    program = capture(model, entry.example_inputs(model, args.batch, 0), name=f"textlm-{args.size}")
    program = program.with_workload(entry.workload(model=model))
    rows_test = scoring_windows(reference_text("test"), context, args.windows, args.batch)
    float_ppl = windows_perplexity(program_logits(program), rows_test, args.batch)
    float_bytes = parameter_bytes(program)
    print(f"float: perplexity {float_ppl:.3f} on {rows_test.shape[0]} windows, {float_bytes / 1024:.0f} KiB")
    sample_ids = rows_test[: args.batch, :-1]
    outliers = outlier_summary(program)
    print(outliers)

    results = Results(float_ppl)
    results.add("eager", "float32", float_bytes, float_ppl, call=lambda: program.graph_module(sample_ids))
    to_lower: list[tuple[str, Program, float, str, str]] = [("float32", program, float_bytes, "", "")]
    for label, opts, goal in OPTKIT:
        start = time.perf_counter()
        out = PassManager(build_passes(["ptq", "dce"], {"ptq": {"min_sqnr_db": 0.0, **opts}})).run(program)
        seconds = time.perf_counter() - start
        figures = out.records[0].figures
        ppl = windows_perplexity(program_logits(out.program), rows_test, args.batch)
        note = optkit_note(figures) + f"; pass {seconds:.0f} s"
        gm = out.program.graph_module
        size = figures["weight_bytes_after"].value + (float_bytes - figures["weight_bytes_before"].value)
        results.add("optkit (eager)", label, size, ppl, goal, note, lambda gm=gm: gm(sample_ids))
        to_lower.append((label, out.program, size, goal, note))
        print(f"optkit {label}: perplexity {ppl:.3f} ({note})")

    if args.tvm:
        from optkit.backends import lower

        for label, lowered_from, size, goal, _ in to_lower:
            if label not in TVM_ROWS:
                continue
            start = time.perf_counter()
            artifact = lower(lowered_from, "cpu", num_cores=1)
            seconds = time.perf_counter() - start

            def run(ids: torch.Tensor, artifact: Any = artifact) -> torch.Tensor:
                return torch.as_tensor(artifact.run(ids)[0])

            ppl = windows_perplexity(run, rows_test, args.batch)
            note = f"lowered in {seconds:.0f} s"
            results.add("optkit (TVM)", label, size, ppl, goal, note, lambda run=run: run(sample_ids))
            print(f"TVM {label}: perplexity {ppl:.3f} ({note})")

    for label, config, options, goal in TORCHAO:
        quantized, reason = torchao_quantized(model, config, **options)
        if quantized is None:
            results.add("torchao", label, math.nan, math.nan, goal, reason)
            continue
        ppl = windows_perplexity(quantized, rows_test, args.batch)
        results.add(
            "torchao", label, tensor_bytes(quantized), ppl, goal, call=lambda m=quantized: m(sample_ids)
        )
        print(f"torchao {label}: perplexity {ppl:.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        float_onnx = Path(tmp) / "float.onnx"
        export_onnx(program, float_onnx)
        calib = calibration_batches(program, "data", 4)
        peers: list[tuple[str, Callable[[Path], Path] | None, str]] = [
            ("float32", None, ""),
            ("dynamic (defaults)", lambda out: ort_quantize_dynamic(float_onnx, out), "W8A8"),
            (
                "dynamic, per-channel",
                lambda out: ort_quantize_dynamic(float_onnx, out, per_channel=True),
                "W8A8",
            ),
            ("static QDQ", lambda out: ort_quantize_static(float_onnx, calib, out), "W8A8"),
        ]
        for i, (label, make, goal) in enumerate(peers):
            path = float_onnx if make is None else make(Path(tmp) / f"peer{i}.onnx")
            session = OrtDenoiser(path)
            ppl = windows_perplexity(session, rows_test, args.batch)
            results.add(
                "ONNX Runtime",
                label,
                onnx_weight_bytes(path),
                ppl,
                goal,
                call=lambda s=session: s(sample_ids),
            )
            print(f"ONNX Runtime {label}: perplexity {ppl:.3f}")
        results.time(args.repeats)
    return results.rows, outliers


def outlier_summary(program: Program) -> str:
    """How outlier-heavy the Linear inputs are on the calibration text: per layer, the largest
    input channel's abs-max over the median channel's (SmoothQuant's `outlier_ratio`), and the
    largest token's abs-max over the median token's."""
    from optkit.quant.calibration import watch_inputs
    from optkit.quant.sites import find_sites
    from optkit.quant.smoothing import outlier_ratio

    sites, _ = find_sites(program)
    channel: dict[str, torch.Tensor] = {}
    token: dict[str, list[torch.Tensor]] = {}

    def watcher(name: str) -> Callable[[torch.Tensor], None]:
        def fn(x: torch.Tensor) -> None:
            rows = x.detach().abs().reshape(-1, x.shape[-1])
            amax = rows.amax(0)
            channel[name] = amax if name not in channel else torch.maximum(channel[name], amax)
            token.setdefault(name, []).append(rows.amax(1))

        return fn

    watch_inputs(
        program, calibration_batches(program, "data", 4), {s.node.name: watcher(s.node.name) for s in sites}
    )
    ch = sorted(outlier_ratio(v) for v in channel.values())
    tok = sorted(float(t.max() / t.median()) for t in (torch.cat(v) for v in token.values()))
    passing = sum(r >= 8.0 for r in ch)
    return (
        f"Activation outliers of the float model's {len(ch)} Linear inputs on calibration text: max/median "
        f"channel abs-max {ch[len(ch) // 2]:.1f} at the median layer, {ch[-1]:.1f} at most "
        f"({passing} of {len(ch)} layers reach SmoothQuant's default threshold of 8); max/median token "
        f"abs-max {tok[len(tok) // 2]:.1f} at the median layer, {tok[-1]:.1f} at most."
    )


def render(
    args: Any, sections: list[tuple[str, list[list[Any]], str]], load_before: float, seconds: float
) -> None:
    columns = ["runtime", "variant", "weights", "perplexity", "x float", "goal", "latency", "notes"]
    lines = [
        f"CPU: {cpu_name()}, 1 thread. Command: `OMP_NUM_THREADS=1 python benchmarks/bench_quant_llm.py "
        + " ".join(sys.argv[1:])
        + f"` ({seconds / 60:.1f} min; 1-min load average {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after). Perplexity per byte on {args.windows} held-out windows of 128 bytes. "
        f"Latency: one call on {args.batch} windows, median of {args.repeats} interleaved rounds, each row in "
        "its own runtime (eager PyTorch, TVM, torchao or ONNX Runtime), all at 1 thread.",
    ]
    for title, results, outliers in sections:
        table = Table(
            f"zoo:textlm ({args.size}): {title}", columns, results, {"weights": "KiB", "latency": "ms"}
        )
        ours = [r for r in results if r[0].startswith("optkit")]
        best_w8 = min((r for r in ours if r[1].startswith("W8A8")), key=lambda r: r[3])
        best_w4 = min(
            (r for r in ours if r[1].startswith("W4") and "example" not in r[1]), key=lambda r: r[3]
        )
        lines += [
            "",
            table.to_markdown(),
            "",
            outliers,
            "",
            f"- Goal W8A8 within 5% of float: best optkit W8A8 `{best_w8[1]}` ({best_w8[0]}) at {best_w8[4]:.3f}x "
            f"({'met' if best_w8[4] <= W8A8_GOAL else 'missed'}).",
            f"- Goal W4 group-wise within 15%: best optkit W4 `{best_w4[1]}` ({best_w4[0]}) at {best_w4[4]:.3f}x "
            f"({'met' if best_w4[4] <= W4_GOAL else 'missed'}).",
        ]
    text = "\n".join(lines)
    print(text)
    if not args.no_docs:
        write_section("bench_quant_llm", "## Quantizing a Llama-style decoder (bench_quant_llm)\n\n" + text)


if __name__ == "__main__":
    main()
