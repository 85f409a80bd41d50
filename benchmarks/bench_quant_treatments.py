"""Local treatments (`ptq` option `treatments`, `optkit.quant.treatments`) on the zoo's diffusion
models: each treatment switched on or off against the default, final-sample SQNR against the
float model and size, at W8A8 and W4A8 GPTQ.

    OMP_NUM_THREADS=1 python benchmarks/bench_quant_treatments.py [--models dit,ldm] [--samples 16] \
        [--steps 20] [--save run.json] [--render run1.json run2.json]

The models, weights, sampling and SQNR are bench_quant.py's (`load`, `setup_diffusion`, `run_ptq`,
`call_sqnr`): all-step calibration, the same held-out seeds for every variant; W4A8 is int4 GPTQ
weights in groups of 32 with int8 activations, W8A8 per-channel int8 RTN weights. A treatment
that keeps no layer of a model is not run. Writes docs/benchmarks.md (section
bench_quant_treatments); `--save` / `--render` merge runs made in separate processes.
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
from optkit.quant.treatments import DEFAULT_TREATMENTS, TREATMENTS, treated_sites  # noqa: E402
from optkit.report import Table  # noqa: E402

PRECISIONS: dict[str, dict[str, Any]] = {
    "W8A8": {},
    "W4A8 g32 GPTQ": {"wbits": 4, "granularity": "group", "group_size": GROUP, "method": "gptq"},
}
NAN = float("nan")


def variants(setup: Any) -> list[tuple[str, tuple[str, ...], str]]:
    """(label, treatments, layers kept) for the default, each treatment added to or removed from
    it, and every treatment; treatments that keep no layer of this model are left out."""
    sites, _ = find_sites(setup.program)
    total = sum(s.weight.numel() for s in sites) or 1

    def kept(names: tuple[str, ...]) -> str:
        _, reasons = treated_sites(setup.program, sites, names)
        paths = {p for p, _ in reasons}
        share = sum(s.weight.numel() for s in sites if s.path in paths) / total
        return f"{len(paths)} ({share:.1%} of weights)"

    found = {t: kept((t,)) for t in TREATMENTS}
    useful = [t for t in TREATMENTS if not found[t].startswith("0 ")]
    out = [("default", DEFAULT_TREATMENTS, kept(DEFAULT_TREATMENTS))]
    for t in useful:
        if t in DEFAULT_TREATMENTS:
            out.append((f"- {t}", tuple(x for x in DEFAULT_TREATMENTS if x != t), found[t]))
        else:
            out.append((f"+ {t}", (*DEFAULT_TREATMENTS, t), found[t]))
    every = tuple(useful)
    out.append(("all", every, kept(every)))
    return out


def measure_model(name: str, args: Any) -> tuple[list[list[Any]], str]:
    """The table rows of one model, and its note line."""
    loaded = load(name, args.train_steps, {})
    if loaded is None:
        return [], f"- `{name}`: not in the zoo, skipped."
    entry, model, weights = loaded
    start_model = time.perf_counter()
    setup = setup_diffusion(name, entry, model, weights, args)
    setup.call_refs = [_first(setup.program.run(*c)) for c in setup.calls]
    rows: list[list[Any]] = []
    chosen = variants(setup)
    # The default again, calibrated on other sampling seeds: how far final-sample SQNR moves
    # with no change to the method (the spread to read the other rows against).
    chosen.insert(1, ("default, calibration seed 1", DEFAULT_TREATMENTS, chosen[0][2]))
    for precision, options in PRECISIONS.items():
        base = NAN
        for label, treatments, kept in chosen:
            start = time.perf_counter()
            seed = 1 if "seed 1" in label else 0
            program, _cal_s, _figures = run_ptq(setup, {**options, "treatments": treatments, "seed": seed})
            out_sqnr = sqnr_db(setup.reference, setup.produce(program.run_chunked))
            base = out_sqnr if label == "default" else base
            row = [
                name,
                precision,
                label,
                kept,
                out_sqnr,
                out_sqnr - base if label != "default" else NAN,
                call_sqnr(setup, program.run_chunked),
                parameter_bytes(program) / 1024,
            ]
            rows.append(row)
            print(row, f"({time.perf_counter() - start:.0f} s)", flush=True)
    note = f"- `{name}` (tiny): {weights}; {time.perf_counter() - start_model:.0f} s in this run."
    return rows, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="dit,ldm")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16, help="captured batch (CFG calls run two chunks)")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--save", help="also write this run's rows to a JSON file")
    parser.add_argument("--render", nargs="+", help="write the docs from JSON files of earlier runs")
    args = parser.parse_args()
    if args.render:
        write_outputs([json.loads(Path(p).read_text()) for p in args.render])
        return
    torch.set_num_threads(1)
    run = run_models("bench_quant_treatments.py", args, lambda name: measure_model(name, args))
    write_outputs([run])


def summary_lines(rows: list[list[Any]]) -> list[str]:
    """Per variant: its final-sample SQNR change and size change against the default row of the
    same model and precision, over every model and precision measured."""
    default = {(r[0], r[1]): r for r in rows if r[2] == "default"}
    lines = []
    for label in dict.fromkeys(r[2] for r in rows if r[2] != "default"):
        parts = []
        for r in (r for r in rows if r[2] == label and (r[0], r[1]) in default):
            d = default[(r[0], r[1])]
            parts.append(
                f"{r[0]} {r[1].split()[0]} {r[4] - d[4]:+.1f} dB (one call {r[6] - d[6]:+.1f}), "
                f"size {100 * (r[7] / d[7] - 1):+.1f}%"
            )
        lines.append(f"- *{label}*: " + "; ".join(parts) + ".")
    return lines


def write_outputs(runs: list[dict[str, Any]]) -> None:
    """The Markdown section from one or more runs (each: one process)."""
    rows = [r for run in runs for r in run["rows"]]
    settings = "; ".join(sorted({run["settings"] for run in runs}))
    table = Table(
        f"Local treatments ({settings})",
        [
            "model",
            "precision",
            "treatments",
            "layers kept float",
            "SQNR final samples",
            "vs default",
            "SQNR one call",
            "size",
        ],
        rows,
        {"SQNR final samples": "dB", "vs default": "dB", "SQNR one call": "dB", "size": "KiB"},
    )
    runs_text = []
    for run in runs:
        runs_text += [f"`{run['command']}` ({run['load']}):", *run["notes"], ""]
    markdown = "\n".join(
        [
            "### Local treatments (`bench_quant_treatments`)",
            "",
            f"On {cpu_name()} (2 cores shared with other jobs), 1 thread; {len(runs)} run(s), merged by "
            "`--render` when more than one:",
            "",
            *runs_text,
            "SQNR against the float model's samples (same seeds). *default* is "
            f"`treatments = {list(DEFAULT_TREATMENTS)}`; `+ name` adds a treatment to it, `- name` "
            "removes one, *all* is every treatment that keeps a layer of the model; *default, calibration seed 1* "
            "is the default calibrated on other sampling seeds, the spread of final-sample SQNR with no "
            "change to the method. *layers kept "
            "float*: by that treatment alone (the default and *all* rows: together), with their "
            "share of the quantizable weights; *size*: stored tensors (int4 at half a byte, kept "
            "layers in float32). `vs default`: the final-sample SQNR's change against the default "
            "row of the same precision. Final-sample SQNR compounds every step's error and moves "
            "between neighbouring rows by more than the one-call SQNR does: read both.",
            "",
            table.to_markdown().replace("### ", "#### ", 1),  # a subsection of the quantization one
            "",
            "Against the default (final-sample SQNR, one-call SQNR, size):",
            "",
            *summary_lines(rows),
        ]
    )
    print(markdown)
    write_section("bench_quant_treatments", markdown)


if __name__ == "__main__":
    main()
