"""Timestep-grouped activation scales (`ptq` option `timestep_groups`) on the zoo's diffusion
models: final-sample and one-call SQNR against the float model with 1, 2 and 4 groups.

    OMP_NUM_THREADS=1 python benchmarks/bench_quant_timestep.py [--models dit,ldm] [--groups 1,2,4] \
        [--samples 32] [--steps 20] [--gptq] [--observers auto,minmax]

The models, weights, sampling and SQNR are bench_quant.py's (`load`, `setup_diffusion`,
`run_ptq`, `call_sqnr`): all-step calibration, the same held-out seeds for every variant.
`--gptq` adds W4A8 (int4 group-wise g32 GPTQ weights) to W8A8; `--observers` lists the
activation observers to compare (`auto`: percentile after all-step calibration). Writes docs/benchmarks.md
(section bench_quant_timestep).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _docs import cpu_name, write_section  # noqa: E402
from bench_quant import GROUP, _first, call_sqnr, load, run_ptq, setup_diffusion  # noqa: E402

from optkit.metrics import sqnr_db  # noqa: E402
from optkit.report import Table  # noqa: E402

PRECISIONS: dict[str, dict[str, Any]] = {
    "W8A8": {},
    "W4A8 g32 GPTQ": {"wbits": 4, "granularity": "group", "group_size": GROUP, "method": "gptq"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="dit,ldm")
    parser.add_argument("--groups", default="1,2,4", help="timestep_groups values to compare")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16, help="captured batch (CFG calls run two chunks)")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--weights", action="append", default=[], help="NAME=PATH (safetensors)")
    parser.add_argument("--gptq", action="store_true", help="also W4A8 with g32 GPTQ weights")
    parser.add_argument("--observers", default="auto", help="ptq observers to compare (auto, minmax, ...)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    groups = [int(g) for g in args.groups.split(",")]
    precisions = [p for p in PRECISIONS if args.gptq or p == "W8A8"]
    weight_files = dict(w.split("=", 1) for w in args.weights)
    load_before = os.getloadavg()[0]
    rows, notes = [], []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        loaded = load(name, args.train_steps, weight_files)
        if loaded is None:
            notes.append(f"- `{name}`: not in the zoo, skipped.")
            continue
        entry, model, weights = loaded
        setup = setup_diffusion(name, entry, model, weights, args)
        setup.call_refs = [_first(setup.program.run(*c)) for c in setup.calls]
        notes.append(f"- `{name}` (tiny): {weights}.")
        for precision, observer in [(p, o) for p in precisions for o in args.observers.split(",")]:
            base = None
            for g in groups:
                start = time.perf_counter()
                options = {**PRECISIONS[precision], "observer": observer, "timestep_groups": g}
                program, cal_s, figures = run_ptq(setup, options)
                out_sqnr = sqnr_db(setup.reference, setup.produce(program.run_chunked))
                one_call = call_sqnr(setup, program.run_chunked)
                base = out_sqnr if base is None else base
                bounds = figures.get("timestep_group_boundaries")
                row = [
                    name,
                    precision,
                    observer,
                    g,
                    bounds.value if bounds is not None else "",
                    out_sqnr,
                    out_sqnr - base,
                    one_call,
                    cal_s,
                ]
                rows.append(row)
                print(row, f"({time.perf_counter() - start:.0f} s)", flush=True)
    load_after = os.getloadavg()[0]
    table = Table(
        f"Timestep-grouped activation scales ({args.samples} samples, {args.steps} steps, all-step calibration)",
        [
            "model",
            "precision",
            "observer",
            "groups",
            "group boundaries (t)",
            "SQNR final samples",
            "vs 1 group",
            "SQNR one call",
            "calibration",
        ],
        rows,
        {"SQNR final samples": "dB", "vs 1 group": "dB", "SQNR one call": "dB", "calibration": "s"},
    )
    command = "OMP_NUM_THREADS=1 python benchmarks/bench_quant_timestep.py " + " ".join(sys.argv[1:])
    markdown = "\n".join(
        [
            "### Timestep-grouped activation scales (`bench_quant_timestep`)",
            "",
            f"`{command.strip()}` on {cpu_name()}, 1 thread; 1-min load average {load_before:.2f} "
            f"before, {load_after:.2f} after. SQNR against the float model's samples (same seeds); "
            "`vs 1 group`: the final-sample SQNR's change against one scale per layer (same "
            "precision and observer; `auto` is the percentile observer after all-step calibration).",
            "",
            *notes,
            "",
            table.to_markdown().replace("### ", "#### ", 1),  # a subsection of the quantization one
        ]
    )
    print(markdown)
    write_section("bench_quant_timestep", markdown)


if __name__ == "__main__":
    main()
