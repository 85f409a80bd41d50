"""SVDQuant's low-rank branch (`ptq` option `lowrank`) on the zoo's diffusion models: W4A8 with
and without the branch, RTN and GPTQ weights, final-sample SQNR against the float model and size.

    OMP_NUM_THREADS=1 python benchmarks/bench_quant_lowrank.py [--models dit,ldm] [--ranks 16,32] \
        [--samples 32] [--steps 20] [--fractions 1.0] [--also-float dit=final_layer.linear] \
        [--smoothquant 0.5] [--save run.json] [--render run1.json run2.json]

The models, weights, sampling and SQNR are bench_quant.py's (`load`, `setup_diffusion`, `run_ptq`,
`call_sqnr`): all-step calibration, int4 weights in groups of 32, int8 activations, the same
held-out seeds for every variant; W8A8 (per-channel int8 weights) is the size reference. A
Linear whose branch would hold as many values as its weight gets none (`lowrank_skip`, said in
the table). `--also-float NAME=PATTERN` repeats NAME's GPTQ rows with PATTERN kept float;
`--smoothquant A` repeats them with every layer smoothed (SVDQuant's order: smooth, then split),
`--smoothquant search` with each layer's alpha searched (`ptq`'s `smoothquant_search`);
`--smoothquant-only` runs those rows alone. `--w4a4` runs W4A4 rows alone (`ptq abits=4`: 4-bit
activations per group of input channels, SVDQuant's recipe), each with and without the branch:
GPTQ weights, then SmoothQuant 0.5 with the output layer kept float, at activation groups of 64
(the paper's) and 32.
Writes docs/benchmarks.md (section bench_quant_lowrank); `--save` / `--render` merge runs made
in separate processes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _docs import cpu_name, write_section  # noqa: E402
from bench_quant import GROUP, _first, call_sqnr, load, run_models, run_ptq, setup_diffusion  # noqa: E402

from optkit.ir.flops import parameter_bytes  # noqa: E402
from optkit.metrics import sqnr_db  # noqa: E402
from optkit.quant.sites import find_sites  # noqa: E402
from optkit.report import Table  # noqa: E402

SEARCH_ALPHAS = (0.25, 0.5, 0.75)  # `--smoothquant search`: ptq's smoothquant_search
W4A8 = {"wbits": 4, "granularity": "group", "group_size": GROUP}
# Every row keeps the time embeddings and the input layer float and quantizes the output layer,
# with the percentile observer (`ptq`'s defaults until 2026-11-30, when `output-layer` joined the
# treatments and all-step calibration moved to the MSE observer), unless its note says otherwise.
TREATMENTS = ("time-embedding", "input-layer")
PINNED = {"treatments": TREATMENTS, "observer": "percentile"}
SMOOTH_OUT = {"smoothquant": 0.5, "smooth_threshold": 0.0, "treatments": (*TREATMENTS, "output-layer")}
NAN = float("nan")

# (precision, weight rounding, rank, fraction, extra ptq options, what the extra options are called)
Variant = tuple[str, str, int, float, dict[str, Any], str]


def narrow_layers(setup: Any, rank: int) -> tuple[str, ...]:
    """Module paths of the Linears (N, K) whose rank-R branch would hold at least as many values
    as the weight itself, R (N + K) >= N K (this includes every R > min(N, K), which `ptq`
    refuses): a float layer in disguise, so they go without a branch."""
    sites, _ = find_sites(setup.program)
    n_k = [(s.path, *(int(d) for d in s.weight.shape)) for s in sites if s.kind == "linear"]
    return tuple(path for path, n, k in n_k if rank * (n + k) >= n * k)


W4A4_BLOCKS: list[tuple[str, dict[str, Any]]] = [
    ("activations per group of 64", {"act_group_size": 64}),
    (
        "activations per group of 64; SmoothQuant 0.5; output layer float",
        {"act_group_size": 64, **SMOOTH_OUT},
    ),
    (
        "activations per group of 32; SmoothQuant 0.5; output layer float",
        {"act_group_size": 32, **SMOOTH_OUT},
    ),
    (
        "activations per token; SmoothQuant 0.5; output layer float",
        {"activations": "per-token", **SMOOTH_OUT},
    ),
]


def variants_for(name: str, args: Any) -> list[Variant]:
    ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    fractions = [float(f) for f in args.fractions.split(",") if f.strip()]
    if args.w4a4:
        return [
            ("W4A4", "gptq", r, f, extra, what)
            for what, extra in W4A4_BLOCKS
            for r, f in [(0, 1.0), *((r, f) for r in ranks for f in fractions)]
        ]
    blocks: list[tuple[str, dict[str, Any], list[str]]] = [("", {}, args.methods.split(","))]
    floats = [p for m, p in (w.split("=", 1) for w in args.also_float) if m == name]
    if floats:
        blocks.append((f"float: {', '.join(floats)}", {"skip": tuple(floats)}, ["gptq"]))
    if args.smoothquant == "search":
        search = {"smoothquant_search": SEARCH_ALPHAS, "smooth_threshold": 0.0}
        blocks.append(("SmoothQuant alpha searched per layer, every layer", search, ["gptq"]))
    elif args.smoothquant:
        smooth = {"smoothquant": float(args.smoothquant), "smooth_threshold": 0.0}
        blocks.append((f"SmoothQuant {float(args.smoothquant):g}, every layer", smooth, ["gptq"]))
    if args.smoothquant_only:
        blocks = [b for b in blocks if b[0].startswith("SmoothQuant")]
    variants: list[Variant] = [] if args.smoothquant_only else [("W8A8", "rtn", 0, 1.0, {}, "")]
    for what, extra, methods in blocks:
        for method in methods:
            variants.append(("W4A8", method, 0, 1.0, extra, what))
            variants += [("W4A8", method, r, f, extra, what) for r in ranks for f in fractions]
    return variants


def measure_model(name: str, args: Any, weight_files: dict[str, str]) -> tuple[list[list[Any]], str]:
    """The table rows of one model, and its note line."""
    loaded = load(name, args.train_steps, weight_files)
    if loaded is None:
        return [], f"- `{name}`: not in the zoo, skipped."
    entry, model, weights = loaded
    start_model = time.perf_counter()
    setup = setup_diffusion(name, entry, model, weights, args)
    setup.call_refs = [_first(setup.program.run(*c)) for c in setup.calls]
    ref_quality = setup.quality(setup.reference)
    size = parameter_bytes(setup.program) / 1024
    rows: list[list[Any]] = [
        [name, "float", "", "", "", NAN, NAN, NAN, ref_quality["acc"], ref_quality["fd"], size, NAN, NAN, ""]
    ]
    base: dict[str, float] = {}
    for precision, method, rank, fraction, extra, what in variants_for(name, args):
        options: dict[str, Any] = {"method": method, **PINNED}
        if precision != "W8A8":
            options.update(W4A8)
        if precision == "W4A4":
            options["abits"] = 4
        options.update(extra)
        note = [what] if what else []
        if rank:
            skip = narrow_layers(setup, rank)
            options.update({"lowrank": rank, "lowrank_fraction": fraction, "lowrank_skip": skip})
            if skip:
                note.append(f"no branch: {', '.join(skip)} (branch >= weight)")
        start = time.perf_counter()
        program, _cal_s, figures = run_ptq(setup, options)
        ptq_s = time.perf_counter() - start
        samples = setup.produce(program.run_chunked)
        out_sqnr = sqnr_db(setup.reference, samples)
        quality = setup.quality(samples)
        key = f"{precision} {method} {what}"
        base.setdefault(key, out_sqnr)
        branch = figures.get("lowrank_bytes")
        row = [
            name,
            precision,
            method.upper(),
            rank or "",
            fraction if rank else "",
            out_sqnr,
            out_sqnr - base[key] if rank else NAN,
            call_sqnr(setup, program.run_chunked),
            quality["acc"],
            quality["fd"],
            parameter_bytes(program) / 1024,
            branch.value / 1024 if branch is not None else NAN,
            ptq_s,
            "; ".join(note),
        ]
        rows.append(row)
        print(row, f"({time.perf_counter() - start:.0f} s)", flush=True)
    return rows, f"- `{name}` (tiny): {weights}; {time.perf_counter() - start_model:.0f} s in this run."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="dit,ldm")
    parser.add_argument("--ranks", default="16,32", help="lowrank values to compare")
    parser.add_argument("--fractions", default="1.0", help="lowrank_fraction values (per rank)")
    parser.add_argument("--methods", default="rtn,gptq", help="weight rounding: rtn, gptq")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16, help="captured batch (CFG calls run two chunks)")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--weights", action="append", default=[], help="NAME=PATH (safetensors)")
    parser.add_argument(
        "--also-float", action="append", default=[], help="NAME=PATTERN: GPTQ rows again, PATTERN kept float"
    )
    parser.add_argument(
        "--smoothquant", default="", help="GPTQ rows again, smoothed: an alpha, or 'search' (per layer)"
    )
    parser.add_argument(
        "--smoothquant-only", action="store_true", help="only the smoothed rows (with --smoothquant)"
    )
    parser.add_argument("--w4a4", action="store_true", help="only W4A4 rows (4-bit activations per group)")
    parser.add_argument("--save", help="also write this run's rows to a JSON file")
    parser.add_argument("--render", nargs="+", help="write the docs from JSON files of earlier runs")
    args = parser.parse_args()
    if args.render:
        write_outputs([json.loads(Path(p).read_text()) for p in args.render])
        return
    torch.set_num_threads(1)
    weight_files = dict(w.split("=", 1) for w in args.weights)
    run = run_models("bench_quant_lowrank.py", args, lambda name: measure_model(name, args, weight_files))
    write_outputs([run])


def goal_lines(rows: list[list[Any]]) -> list[str]:
    """Issue 15's W4A8 goal (>= 3 dB above 8-bit at equal or smaller size) on these rows: per
    model, the best branch row within W8A8's size and the best at any size."""
    lines = []
    for name in dict.fromkeys(r[0] for r in rows):
        w8 = next((r for r in rows if r[0] == name and r[1] == "W8A8"), None)
        branch = [r for r in rows if r[0] == name and r[1] == "W4A8" and r[3] != ""]
        if w8 is None or not branch:
            continue
        within = [r for r in branch if r[10] <= w8[10]]
        for label, pool in (("within W8A8's size", within), ("at any size", branch)):
            if not pool:
                lines.append(f"- `{name}` {label}: no branch row.")
                continue
            best = max(pool, key=lambda r: r[5])
            margin = best[5] - w8[5]
            verdict = "met" if margin >= 3.0 and best[10] <= w8[10] else "missed"
            what = f"{best[2]} rank {best[3]}" + (f" ({best[13]})" if best[13] else "")
            lines.append(
                f"- `{name}` {label}: best W4A8 + branch is {what}, {best[5]:.1f} dB on final samples at "
                f"{best[10]:.0f} KiB against W8A8's {w8[5]:.1f} dB at {w8[10]:.0f} KiB: {margin:+.1f} dB "
                f"(goal +3 dB at equal or smaller size: {verdict})."
            )
    return lines + w4a4_goal_lines(rows)


def w4a4_goal_lines(rows: list[list[Any]]) -> list[str]:
    """Issue 15's W4A4 goal on dit (final samples >= 25 dB, class accuracy unchanged): per model
    with W4A4 rows, the best row at any size and the best within W8A8's size."""
    lines = []
    for name in dict.fromkeys(r[0] for r in rows if r[1] == "W4A4"):
        ref = next((r for r in rows if r[0] == name and r[1] == "float"), None)
        w8 = next((r for r in rows if r[0] == name and r[1] == "W8A8"), None)
        w4a4 = [r for r in rows if r[0] == name and r[1] == "W4A4"]
        pools = [("at any size", w4a4)]
        if w8 is not None:
            pools.append((f"within W8A8's {w8[10]:.0f} KiB", [r for r in w4a4 if r[10] <= w8[10]]))
        for label, pool in pools:
            if not pool:
                lines.append(f"- `{name}` W4A4 {label}: no row.")
                continue
            best = max(pool, key=lambda r: r[5])
            acc_same = ref is not None and best[8] >= ref[8]
            verdict = "met" if best[5] >= 25.0 and acc_same else "missed"
            rank = f", rank {best[3]}" if best[3] != "" else ", no branch"
            lines.append(
                f"- `{name}` W4A4 {label}: best is {best[2]}{rank} ({best[13]}), {best[5]:.1f} dB on final "
                f"samples, class accuracy {best[8]:.3g} (float {ref[8] if ref else NAN:.3g}), {best[10]:.0f} KiB "
                f"(goal >= 25 dB with unchanged class accuracy: {verdict})."
            )
    return lines


def write_outputs(runs: list[dict[str, Any]]) -> None:
    """The Markdown section from one or more runs (each: one process)."""
    rows = [r for run in runs for r in run["rows"]]
    floats = set()  # every run measures its models' float row: keep one per model
    rows = [r for r in rows if r[1] != "float" or (r[0] not in floats and not floats.add(r[0]))]
    order = {name: i for i, name in enumerate(dict.fromkeys(r[0] for r in rows))}
    rows.sort(key=lambda r: order[r[0]])  # each model's rows together, in run order
    settings = "; ".join(sorted({run["settings"] for run in runs}))
    table = Table(
        f"W4A8 and W4A4 with SVDQuant's low-rank branch ({settings})",
        [
            "model",
            "precision",
            "weights",
            "rank",
            "fraction",
            "SQNR final samples",
            "vs no branch",
            "SQNR one call",
            "class acc",
            "FD-digits",
            "size",
            "branch",
            "ptq time",
            "note",
        ],
        rows,
        {
            "SQNR final samples": "dB",
            "vs no branch": "dB",
            "SQNR one call": "dB",
            "size": "KiB",
            "branch": "KiB",
            "ptq time": "s",
        },
    )
    runs_text = []
    for run in runs:
        runs_text += [f"`{run['command']}` ({run['load']}):", *run["notes"], ""]
    markdown = "\n".join(
        [
            "### SVDQuant low-rank branch (`bench_quant_lowrank`)",
            "",
            f"On {cpu_name()} (2 cores shared with other jobs), 1 thread; {len(runs)} run(s), merged by "
            "`--render` when more than one:",
            "",
            *runs_text,
            "SQNR against the float model's samples (same seeds); `vs no branch`: the final-sample "
            "SQNR's change against the row of the same precision, rounding and note without the branch. "
            f"W4A8: int4 weights in groups of {GROUP}, int8 activations (percentile observer after "
            "all-step calibration); the branch's factors are float16 and counted in *size* (stored "
            "tensors, int4 at half a byte) and in *branch*; *ptq time*: the whole pass (calibration, "
            "SVD, GPTQ). W4A4: the same int4 weights and 4-bit activations, on a grid per group of "
            "input channels of each token (its min and max, with a zero point) unless the note says per "
            "token. Time embeddings and the layer reading x_t stay float, the output layer is quantized "
            "unless the note says float (`ptq`'s default before 2026-11-30). A "
            "Linear whose branch would hold as many values as its weight (R (N + K) >= N K) gets none "
            "(`lowrank_skip`, said in the note). Final-sample SQNR compounds every step's error and "
            "moves between neighbouring rows by more than the one-call SQNR does: read both.",
            "",
            table.to_markdown().replace("### ", "#### ", 1),  # a subsection of the quantization one
            "",
            "Against W8A8 (issue 15's W4A8 goal, final samples):",
            "",
            *goal_lines(rows),
        ]
    )
    print(markdown)
    write_section("bench_quant_lowrank", markdown)


if __name__ == "__main__":
    main()
