"""PIM target and `pim` pass: modeled latency, throughput and energy of host-only, greedy and
optkit placements on every preset; the host model's accuracy against measured TVM latencies;
the gap to the exhaustive optimum; the RecNMP check; device numerics on the trained recsys.

    OMP_NUM_THREADS=1 TVM_NUM_THREADS=1 python benchmarks/bench_pim.py [--quick] [--no-docs]

Writes the "pim" section of docs/benchmarks.md and docs/bench_pim.png (a Gantt chart of one
Criteo-shaped inference on HBM-PIM).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optkit.backends.pim import calibrate as cal  # noqa: E402
from optkit.backends.pim.cost import HostModel, pim_cost, zipf_hit_rate  # noqa: E402
from optkit.backends.pim.ops import PimOp, program_ops  # noqa: E402
from optkit.backends.pim.placement import (  # noqa: E402
    CostTable,
    exhaustive_placement,
    optimal_placement,
    sinks_of,  # noqa: E402
)
from optkit.backends.pim.plots import gantt_png  # noqa: E402
from optkit.backends.pim.presets import PRESETS, HostSpec, resolve_preset  # noqa: E402
from optkit.backends.pim.simulate import schedule  # noqa: E402
from optkit.passes.pim import PimConfig, PimPartition  # noqa: E402

from benchmarks._docs import cpu_name, write_section  # noqa: E402
from optkit.ir.capture import capture  # noqa: E402
from optkit.testing.pim_graphs import random_op_graph  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"


def host_model_section(model: HostModel, quick: bool) -> tuple[str, float]:
    """Per-kind leave-one-out error, and whole models: predicted vs measured TVM latency."""
    from optkit.backends.lowering import lower

    from optkit.refs import load_program_ref
    from optkit.zoo.criteo import criteo_dlrm, example_inputs

    cases = [
        ("zoo:recsys (batch 2)", load_program_ref("zoo:recsys")),
        ("zoo:recsys:small (batch 2)", load_program_ref("zoo:recsys:small")),
        ("zoo:recsys (batch 32)", load_program_ref("zoo:recsys", batch=32)),
    ]
    if not quick:
        torch.manual_seed(0)
        for tables, batch in ((8, 16), (26, 16)):
            m = criteo_dlrm(scale=1000, tables=tables)
            cases.append(
                (
                    f"Criteo DLRM / 1000, {tables} tables (batch {batch})",
                    capture(m, example_inputs(m, batch, 4), name="criteo"),
                )
            )
    rows, errors = [], []
    for label, program in cases:
        artifact = lower(program, "cpu")
        measured = artifact.latency_ms(*program.example_inputs, warmup=5, repeats=50)["median"] * 1e3
        predicted = model.call_us + sum(model.latency_us(op) for op in program_ops(program))
        err = abs(predicted - measured) / measured * 100
        errors.append(err)
        rows.append(f"| {label} | {measured:.1f} | {predicted:.1f} | {err:.0f}% |")
    mape = float(np.mean(errors))
    kinds = ", ".join(f"{k} {v:.0f}%" for k, v in sorted(model.mape.items()))
    text = (
        "Host model (fitted to TVM CPU kernels measured on this machine; leave-one-out error per "
        f"kernel kind: {kinds}; call overhead {model.call_us:.1f} us; random-row reads from a table "
        f"beyond the {model.llc_bytes >> 20} MiB last-level cache: {model.gather_gbps:.2f} GB/s). "
        "Whole models, one thread, TVM-compiled:\n\n"
        "| model | measured (us) | predicted (us) | error |\n|---|---:|---:|---:|\n"
        + "\n".join(rows)
        + f"\n\nMean absolute percentage error: **{mape:.0f}%** (goal <= 15%).\n"
    )
    return text, mape


def criteo_rows(pooling: int, calibration: str) -> tuple[list[str], dict[str, dict]]:
    from optkit.zoo.criteo import criteo_dlrm, example_inputs

    with torch.device("meta"):
        model = criteo_dlrm()
    program = capture(model, example_inputs(model, 256, pooling, device="meta"), name="criteo-dlrm")
    rows, results = [], {}
    for name in PRESETS:
        fig = PimPartition(PimConfig(preset=name, calibration=calibration)).run(program.clone()).figures
        results[name] = {k: v.value for k, v in fig.items()}
        r = results[name]
        rows.append(
            f"| {pooling} | {name} | {r['latency_host_only'] / 1e3:.2f} | {r['latency_greedy'] / 1e3:.2f} | "
            f"{r['latency_pim'] / 1e3:.2f} | **{r['speedup_vs_host']:.2f}x** | **{r['speedup_vs_greedy']:.2f}x** | "
            f"{r['throughput_pim']:.0f} | {r['energy_host_only'] / 1e3:.2f} | {r['energy_pim'] / 1e3:.2f} | "
            f"**{r['energy_saving']:.2f}x** | {r['bytes_moved'] / 2**20:.2f} | {r['pim_resident_bytes'] / 2**30:.2f} | "
            f"{r['pim_ops']} | {r['partition_seconds'] * 1e3:.0f} |"
        )
    return rows, results


def exhaustive_gaps(model: HostModel, graphs: int) -> str:
    lines = []
    for name in PRESETS:
        gaps, times = [], []
        for seed in range(graphs):
            ops, sinks = random_op_graph(seed, 18)
            preset = resolve_preset(name)
            tight = dataclasses.replace(
                preset, capacity_gib=preset.capacity_gib * 1e-3, unit_capacity_mib=0.0
            )
            for device in (preset, tight):  # capacity free and binding
                table = CostTable(ops, model, device, {"x": 4096})
                start = time.perf_counter()
                chosen = table.evaluate(optimal_placement(table, sinks), sinks).latency_us
                times.append(time.perf_counter() - start)
                best = table.evaluate(exhaustive_placement(table, sinks), sinks).latency_us
                gaps.append(100 * (chosen - best) / best)
        lines.append(
            f"| {name} | {2 * graphs} | {max(gaps):.2f}% | {np.mean(gaps):.3f}% | {max(times) * 1e3:.1f} |"
        )
    return (
        "Gap to the exhaustive optimum on random 18-op graphs (gathers, GEMMs, elementwise, reductions, "
        "host-only layout ops), with the capacity free and with it binding (1/1000 of the device):\n\n"
        "| preset | graphs | worst gap | mean gap | slowest placement (ms) |\n|---|---:|---:|---:|---:|\n"
        + "\n".join(lines)
        + "\n"
    )


def recnmp_check() -> str:
    recnmp = resolve_preset("recnmp")
    rows, dim, lookups = 1_000_000, 64, 256 * 80
    op = PimOp(
        "g",
        "t:embedding:0",
        "embedding",
        "gather",
        0,
        lookups * 8,
        256 * dim * 4,
        weight_bytes=rows * dim * 4,
        rows=rows,
        row_bytes=dim * 4,
        lookups=lookups,
    )
    host_us = op.lookups * max(op.row_bytes, 64) / (HostSpec().dram_gbps * 1e3)
    plain = host_us / pim_cost(op, dataclasses.replace(recnmp, cache_kib=0.0)).us
    cached = host_us / pim_cost(op, recnmp).us
    hit = zipf_hit_rate(rows, int(recnmp.cache_kib * 1024 * recnmp.units // op.row_bytes))
    return (
        "RecNMP check (Ke et al., ISCA 2020: up to 9.8x memory-latency speed-up of the embedding stage; "
        "configured like the paper: 8 DDR4-2400 ranks on one channel, 64-dim fp32 rows, pooling 80, "
        "batch 256, a 1M-row table; host reads over the same channel): rank parallelism alone "
        f"**{plain:.1f}x** ({(plain / 9.8 - 1) * 100:+.0f}% of 9.8x, inside +-20%); with the 128 KB "
        f"RankCache per rank under Zipf(1.05) ids the model's hit rate is {hit:.0%} and the gain "
        f"{cached:.1f}x ({(cached / 9.8 - 1) * 100:+.0f}%): synthetic Zipf ids over one table are far "
        "more cacheable than the paper's production traces, so the cache term is optimistic.\n"
    )


def numerics_rows(calibration: str) -> str:
    from optkit.refs import load_program_ref

    program = load_program_ref("zoo:recsys", batch=256)
    lines = []
    for name in PRESETS:
        result = PimPartition(PimConfig(preset=name, placement="greedy", calibration=calibration)).run(
            program.clone()
        )
        fig = result.figures
        sq = fig.get("device_output_sqnr")
        lines.append(
            f"| {name} | {resolve_preset(name).numerics} | {fig['pim_ops'].value} | "
            f"{'n/a' if sq is None else f'{sq.value:.1f}'} |"
        )
    return (
        "Device numerics on the trained `zoo:recsys` (batch 256; embeddings on PIM, the greedy rule): "
        "click logits of the partitioned model against the host's float32 run:\n\n"
        "| preset | numerics | ops on PIM | logits SQNR (dB) |\n|---|---|---:|---:|\n"
        + "\n".join(lines)
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="quick host calibration, fewer graphs")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    calibration = "quick" if args.quick else "full"
    model = cal.calibrate(
        cal.QUICK if args.quick else cal.FULL,
        cal.BIG_TABLE_QUICK if args.quick else cal.BIG_TABLE_FULL,
        repeats=30,
        progress=lambda m: print(m, file=sys.stderr),
    )
    path = cal.cache_path(args.quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)  # the passes below use this calibration
    host_text, mape = host_model_section(model, args.quick)
    rows, results = [], {}
    for pooling in (1, 80):
        r, res = criteo_rows(pooling, calibration)
        rows += r
        results[pooling] = res
    table = (
        "| pooling | preset | host only (ms) | greedy (ms) | optkit (ms) | vs host | vs greedy | samples/s | "
        "energy host (mJ) | energy optkit (mJ) | energy saving | moved (MiB) | on PIM (GiB) | PIM ops | "
        "placement (ms) |\n|" + "---:|" * 15 + "\n" + "\n".join(rows)
    )
    gaps = exhaustive_gaps(model, 5 if args.quick else 20)
    # Gantt chart of one inference, pooling 80, HBM-PIM
    from optkit.passes.pim import cost_table

    from optkit.zoo.criteo import criteo_dlrm, example_inputs

    with torch.device("meta"):
        dlrm = criteo_dlrm()
    program = capture(dlrm, example_inputs(dlrm, 256, 80, device="meta"), name="criteo-dlrm")
    ctable = cost_table(program, "hbm-pim", calibration)
    placed = optimal_placement(ctable, sinks_of(program))
    trace = schedule(ctable, placed, sinks_of(program))
    if not args.no_docs:
        gantt_png(
            trace,
            DOCS / "bench_pim.png",
            title="Criteo-shaped DLRM, batch 256, pooling 80, on HBM-PIM (modeled)",
        )
    goals = []
    for pooling, res in results.items():
        fast = [n for n, r in res.items() if r["speedup_vs_host"] >= 3 and r["speedup_vs_greedy"] >= 1.3]
        green = [n for n, r in res.items() if r["energy_saving"] >= 2]
        goals.append(
            f"pooling {pooling}: >= 3x over host and >= 1.3x over greedy on {', '.join(fast) or 'none'}; "
            f">= 2x less energy on {', '.join(green) or 'none'}"
        )
    markdown = f"""## PIM target and the `pim` pass

`OMP_NUM_THREADS=1 TVM_NUM_THREADS=1 python benchmarks/bench_pim.py{" --quick" if args.quick else ""}` on
{cpu_name()}, {time.strftime("%Y-%m-%d")}, {time.perf_counter() - start:.0f} s. Latency and energy of the
PIM side are the cost model's one-shot estimates (`backends/pim/cost.py`, presets with their sources in
`backends/pim/presets.py`); the host side is this machine's TVM CPU kernels, fitted. Host energy: busy
time x 6.25 W a core (Xeon Platinum 8480+: 350 W / 56 cores) + DRAM traffic x 20 pJ/bit.

### Criteo-shaped DLRM (26 Kaggle-sized tables, 33.8M rows, dim 64, 8.6 GB; bottom MLP 13-512-256-64, top 512-256-1; batch 256; Zipf ids)

Built on the `meta` device (`optkit/zoo/criteo.py`): shapes only. Pooling 1 is Criteo's one id per
feature; pooling 80 is the multi-hot lookups of production models that RecNMP evaluates.

{table}

Goals (issue 13): {"; ".join(goals)}.

![one inference on HBM-PIM](bench_pim.png)

{gaps}
{recnmp_check()}
{host_text}
{numerics_rows(calibration)}"""
    print(markdown)
    if not args.no_docs:
        write_section("pim", markdown)


if __name__ == "__main__":
    main()
