"""Lowering through TVM against PyTorch eager and ONNX Runtime, on the zoo's models.

    OMP_NUM_THREADS=1 python benchmarks/bench_lower.py [--models dit ldm moviegen efficientsam recsys] \
        [--sizes tiny small] [--precisions float int8 int7] [--tune-trials 64] [--tuner optkit|metaschedule] \
        [--repeats 10] [--threads 1]

For each zoo model present at run time (of `--models`), each size and each precision: capture
(`zoo:NAME:SIZE`, batch `--batch`), and for `int8` run the `ptq` pass (W8A8, per-channel
weights, calibration on the example inputs) and `dce` (`int7`: the same with `wbits=7`, 7-bit
weights, which AVX2 CPUs without VNNI run on `vpmaddubsw`, and ONNX Runtime's U8S8 kernels
exactly); then `optkit.benchmark.benchmark` times
eager, ONNX Runtime and TVM on the CPU along the default path (untuned schedules), and, with
`--tune-trials N > 0`, TVM again tuned with N trials of optkit's tile search (`--tuner optkit`)
or of MetaSchedule, kept per kernel where it beats optkit's schedule (`--tuner metaschedule`), in
a fresh database (so the tuned build time includes the whole search). Ratios are latency over latency (TVM/ORT > 1: TVM slower),
medians of `--repeats` runs in the same process. Every output is checked against eager; a target
that fails or disagrees is named below the table. Writes docs/benchmarks.md (section bench_lower)
and docs/bench_lower.png.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _docs import cpu_name, write_section  # noqa: E402

from optkit.benchmark import BenchConfig, BenchResult, TargetResult, benchmark  # noqa: E402
from optkit.errors import OptkitError  # noqa: E402
from optkit.ir.flops import total_flops  # noqa: E402
from optkit.pipeline import PassManager, build_passes  # noqa: E402
from optkit.refs import load_program_ref  # noqa: E402
from optkit.report import Table  # noqa: E402
from optkit.zoo.registry import list_models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("dit", "ldm", "moviegen", "efficientsam", "recsys")
LABELS = {"eager": "eager", "ort": "ORT", "tvm-cpu": "TVM"}


def _ms(r: TargetResult | None) -> float:
    return r.median_ms if r is not None and r.median_ms is not None else float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if a and b and not (math.isnan(a) or math.isnan(b)) else float("nan")


def _problems(results: list[TargetResult | None], label: str = "") -> list[str]:
    return [
        f"{r.target}{label} {r.status}: {r.reason}" for r in results if r is not None and r.status != "ok"
    ]


def wake_zero_layers(program, seed: int = 0) -> int:
    """Fill all-zero float parameters with N(0, 0.02) when the model's output is exactly zero.

    Zero-initialized heads (DiT's adaLN-Zero, final projections) make an untrained model output
    zeros, and then no output check can fail. Latency does not depend on the values.
    """
    from optkit.ir.onnx_io import flat_outputs

    if any(t.abs().max() > 0 for t in flat_outputs(program.run()) if t.numel()):
        return 0
    gen = torch.Generator().manual_seed(seed)
    filled = 0
    with torch.no_grad():
        for p in program.graph_module.parameters():
            if p.is_floating_point() and p.numel() and not p.abs().max() > 0:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
                filled += 1
    return filled


def run_one(program, precision: str, args: argparse.Namespace) -> dict:
    """Measure one (model, size, precision): eager, ORT and untuned TVM timed in interleaved
    rounds; then, if asked, eager, ORT and tuned TVM in a second interleaved run, whose ratios
    use that run's own eager and ORT figures."""
    common = {"repeats": args.repeats, "warmup": args.warmup, "threads": args.threads}
    targets = ("eager", "ort", "tvm-cpu")
    base: BenchResult = benchmark(program, BenchConfig(targets=targets, **common), progress=_say)
    eager, ort, tvm = (base.get(t) for t in targets)
    row = {
        "flops": base.flops,
        "eager": _ms(eager),
        "ort": _ms(ort),
        "tvm": _ms(tvm),
        "tvm/ort": _ratio(_ms(tvm), _ms(ort)),
        "tvm/eager": _ratio(_ms(tvm), _ms(eager)),
        "tvm_build": tvm.build_s if tvm.build_s is not None else float("nan"),
        "tvm_rel_error": tvm.rel_error if tvm.rel_error is not None else float("nan"),
        "ort_rel_error": ort.rel_error if ort.rel_error is not None else float("nan"),
        "problems": _problems([eager, ort, tvm]),
        "issues": [f"{LABELS[r.target]} {r.status}" for r in (eager, ort, tvm) if r.status != "ok"],
        "tvm_tuned": float("nan"),
        "tuned/ort": float("nan"),
        "tuned/eager": float("nan"),
        "tuned_build": float("nan"),
    }
    if args.tune_trials > 0:
        again = benchmark(
            program,
            BenchConfig(targets=targets, tune_trials=args.tune_trials, tuner=args.tuner, **common),
            progress=_say,
        )
        e2, o2, tuned = (again.get(t) for t in targets)
        row.update(
            {
                "tvm_tuned": _ms(tuned),
                "tuned/ort": _ratio(_ms(tuned), _ms(o2)),
                "tuned/eager": _ratio(_ms(tuned), _ms(e2)),
                "tuned_build": tuned.build_s if tuned.build_s is not None else float("nan"),
                "tuned_rel_error": tuned.rel_error,
            }
        )
        row["problems"] += _problems([tuned], " tuned")
        row["issues"] += [f"tuned TVM {tuned.status}"] if tuned.status != "ok" else []
    return row


def _say(msg: str) -> None:
    print(f"    {msg}", flush=True)


WBITS = {"int8": 8, "int7": 7}  # the quantized `--precisions`: `ptq`'s weight bits


def int8_program(program, wbits: int = 8):
    """The `ptq` W8A8 Program (per-channel int8 weights, calibrated on the example inputs), or
    with `wbits` 7 its 7-bit-weight variant."""
    return PassManager(build_passes(["ptq", "dce"], {"ptq": {"wbits": wbits}})).run(program).program


def plot(rows: list[list], path: Path, tuned: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [f"{r[0]}:{r[1]}\n{r[2]}" for r in rows]
    series = [("eager", 4, "#777777"), ("ONNX Runtime", 5, "#3a7bd5"), ("TVM untuned", 6, "#e67e22")]
    if tuned:
        series.append(("TVM tuned", 7, "#27ae60"))
    width = 0.8 / len(series)
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows) + 2), 4.5))
    for i, (name, col, color) in enumerate(series):
        values = [r[col] if isinstance(r[col], float) and not math.isnan(r[col]) else 0.0 for r in rows]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name, color=color)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("latency per call (ms, median, log scale)")
    ax.set_title("Zoo models on the CPU: eager vs ONNX Runtime vs TVM (missing bar: failed)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--sizes", nargs="*", default=["tiny", "small"])
    parser.add_argument("--precisions", nargs="*", default=["float", "int8"], choices=["float", *WBITS])
    parser.add_argument("--tune-trials", type=int, default=64, help="0: skip the tuned TVM run")
    parser.add_argument(
        "--tuner",
        default="optkit",
        choices=["optkit", "metaschedule"],
        help="who spends the trials of the tuned run (metaschedule: kept per kernel where faster)",
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument(
        "--no-docs", action="store_true", help="print the table; write neither docs/benchmarks.md nor the PNG"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    present = {e.name for e in list_models()}
    rows, notes = [], []
    for name in args.models:
        if name not in present:
            notes.append(f"- `{name}`: not in the zoo in this run, skipped.")
            continue
        for size in args.sizes:
            print(f"{name}:{size}: capture", flush=True)
            try:
                program = load_program_ref(f"zoo:{name}:{size}", batch=args.batch)
            except OptkitError as err:
                notes.append(f"- `{name}:{size}`: capture failed: {err}")
                continue
            filled = wake_zero_layers(program)
            if filled:
                notes.append(
                    f"- `{name}:{size}`: untrained output was exactly zero; {filled} zero-initialized "
                    "parameter tensors filled with N(0, 0.02) so that the output checks mean something."
                )
            # W8A8 does the float graph's multiply-adds; optkit.ir.flops does not count int8 convs
            # (their weights are get_attr nodes without shapes), so every row uses the float count.
            flops = total_flops(program)
            for precision in args.precisions:
                print(f"{name}:{size}:{precision}", flush=True)
                try:
                    prog = int8_program(program, WBITS[precision]) if precision in WBITS else program
                except OptkitError as err:
                    notes.append(f"- `{name}:{size}` {precision}: the ptq pass failed: {err}")
                    continue
                r = run_one(prog, precision, args)
                rows.append(
                    [
                        name,
                        size,
                        precision,
                        flops,
                        r["eager"],
                        r["ort"],
                        r["tvm"],
                        r["tvm_tuned"],
                        r["tvm/ort"],
                        r["tvm/eager"],
                        r["tuned/ort"],
                        r["tuned/eager"],
                        r["tvm_build"],
                        r["tuned_build"],
                        r["tvm_rel_error"],
                        ", ".join(r["issues"]),
                    ]
                )
                notes += [f"- `{name}:{size}` {precision}: {p}" for p in r["problems"]]
                print("  " + ", ".join(f"{k}={v}" for k, v in r.items()), flush=True)
    columns = [
        "model",
        "size",
        "precision",
        "FLOPs (float graph)",
        "eager",
        "ORT",
        "TVM",
        "TVM tuned",
        "TVM/ORT",
        "TVM/eager",
        "tuned TVM/ORT",
        "tuned TVM/eager",
        "TVM build",
        "tuned build",
        "TVM rel error",
        "issues (see notes)",
    ]
    units = {
        "FLOPs (float graph)": "FLOPs",
        "eager": "ms",
        "ORT": "ms",
        "TVM": "ms",
        "TVM tuned": "ms",
        "TVM/ORT": "x",
        "TVM/eager": "x",
        "tuned TVM/ORT": "x",
        "tuned TVM/eager": "x",
        "TVM build": "s",
        "tuned build": "s",
    }
    if not args.tune_trials:
        drop = {"TVM tuned", "tuned TVM/ORT", "tuned TVM/eager", "tuned build"}
        keep = [i for i, c in enumerate(columns) if c not in drop]
        columns = [columns[i] for i in keep]
        plot_rows = rows
        rows = [[row[i] for i in keep] for row in rows]
    else:
        plot_rows = rows
    tvm_runs = (
        f"untuned and tuned with {args.tune_trials} {args.tuner} trials"
        if args.tune_trials
        else "untuned (default path)"
    )
    table = Table(
        f"Latency per call (median of {args.repeats} interleaved rounds after {args.warmup} warm-up, "
        f"{args.threads} thread(s), batch {args.batch}); TVM {tvm_runs}",
        columns,
        rows,
        units,
    )
    plot_path = ROOT / "docs" / "bench_lower.png"
    if plot_rows and not args.no_docs:
        plot(plot_rows, plot_path, bool(args.tune_trials))
    command = f"OMP_NUM_THREADS={args.threads} python benchmarks/bench_lower.py " + " ".join(sys.argv[1:])
    import onnxruntime
    import tvm

    markdown = "\n".join(
        [
            f"`{command.strip()}` on {cpu_name()} ({len(os.sched_getaffinity(0))} CPU(s) for the process, "
            "compare ratios within a row rather than figures across runs), "
            f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, TVM {tvm.__version__}, "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}. Ratios are latency / latency (> 1: TVM slower), "
            "each from one run in which the targets were timed in interleaved rounds (the tuned ratios "
            "from a second such run with its own eager and ORT figures; the eager and ORT columns are "
            "from the first). "
            "TVM: the default path (weights packed, fast math, optkit's schedules, no BLAS callback). "
            "TVM rel error: max abs error against eager over max |eager output|. Tuned build: lowering "
            "with tuning in a fresh database, search included. `int8` is the `ptq` "
            "W8A8 Program (per-channel weights, calibrated on the example inputs), `int7` the same with "
            "7-bit weights (`wbits=7`); eager and ORT run the same quantized graph (ORT: the ONNX export, "
            "int8 weights as uint8 on CPUs without VNNI unless they fit 7 bits). Weights: the zoo's "
            "shipped checkpoint where there is one, "
            "otherwise random (latency does not depend on them).",
            "",
            table.to_markdown(),
            "",
            *notes,
            "",
            "![latency per model and runtime](bench_lower.png)" if plot_rows else "",
        ]
    )
    print(markdown)
    if not args.no_docs:
        write_section("bench_lower", markdown)


if __name__ == "__main__":
    main()
