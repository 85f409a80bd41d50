"""Zoo figures: parameters, FLOPs per sample and latency of every model at each size, and the
cost of one Movie Gen (full attention) vs LinGen (MATE) block as the token count grows.

    python benchmarks/bench_zoo.py [--repeats 10] [--max-tokens 65536]

FLOPs are counted on the captured ATen graph (optkit.ir.flops); latency is PyTorch eager on
this machine's CPU, median of `repeats` runs after warm-up, batch 1. Writes its tables into
docs/benchmarks.md (section bench_zoo).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _docs import write_section  # noqa: E402

from optkit.ir.capture import capture  # noqa: E402
from optkit.ir.flops import parameter_count, total_flops  # noqa: E402
from optkit.report import Table  # noqa: E402
from optkit.timing import latency_ms  # noqa: E402
from optkit.zoo.registry import list_models  # noqa: E402


def model_table(repeats: int) -> Table:
    rows = []
    for entry in list_models():
        for size in entry.sizes:
            model = entry.create(size, pretrained=False)
            inputs = entry.example_inputs(model, 1, 0)
            program = capture(model, inputs, name=f"{entry.name}-{size}")
            with torch.no_grad():
                lat = latency_ms(lambda m=model, x=inputs: m(*x), warmup=2, repeats=repeats)
            rows.append(
                [
                    f"{entry.name}:{size}",
                    entry.task,
                    parameter_count(program),
                    total_flops(program),
                    lat["median"],
                ]
            )
            print(rows[-1], flush=True)
    return Table(
        "Zoo models (batch 1, PyTorch eager)",
        ["model", "task", "parameters", "FLOPs per sample", "latency"],
        rows,
        {"parameters": "params", "FLOPs per sample": "FLOPs", "latency": "ms"},
    )


GRIDS = [(16, 8, 8), (16, 16, 8), (16, 16, 16), (32, 16, 16), (32, 32, 16), (32, 32, 32), (64, 32, 32)]


def scaling_table(repeats: int, max_tokens: int, max_timed_attention: int) -> Table:
    from optkit.zoo.moviegen import video_block

    rows = []
    dim = 64
    for grid in GRIDS:
        tokens = grid[0] * grid[1] * grid[2]
        if tokens > max_tokens:
            break
        row: list[object] = [tokens]
        for kind in ("attention", "mate"):
            block = video_block(kind, dim, grid).eval()
            x = torch.randn(1, tokens, dim)
            row.append(total_flops(capture(block, (x,))))
            if kind == "attention" and tokens > max_timed_attention:
                row.append("not timed")
                continue
            with torch.no_grad():
                row.append(latency_ms(lambda b=block, v=x: b(v), warmup=1, repeats=repeats)["median"])
        rows.append(row)
        print(row, flush=True)
    return Table(
        f"One block, dim {dim}: Movie Gen full 3D attention vs LinGen MATE as tokens grow (batch 1, eager)",
        ["tokens", "attention FLOPs", "attention latency", "MATE FLOPs", "MATE latency"],
        rows,
        {"attention FLOPs": "FLOPs", "MATE FLOPs": "FLOPs", "attention latency": "ms", "MATE latency": "ms"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=65536)
    parser.add_argument(
        "--max-timed-attention", type=int, default=16384, help="Time full attention up to this many tokens."
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    tables = [
        model_table(args.repeats),
        scaling_table(max(2, args.repeats // 3), args.max_tokens, args.max_timed_attention),
    ]
    header = (
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}.  \n"
        f"Command: `python benchmarks/bench_zoo.py --repeats {args.repeats} --max-tokens {args.max_tokens} "
        f"--max-timed-attention {args.max_timed_attention}`"
    )
    write_section("bench_zoo", header + "\n\n" + "\n\n".join(t.to_markdown() for t in tables))


if __name__ == "__main__":
    main()
