"""`bench_mate.py --section distill`: zoo:moviegen tiny's attention replaced and distilled.

Every kind (and each hybrid of `--keep K`: MATE with the K hardest attention layers kept) gets
the same calibration data (2 seeds x 20 flow-Euler steps with guidance, both
halves of each call: 80 denoiser batches) and the same budget (`--steps` per site in stage 1,
`--finetune-steps` in stage 2). Quality: PSNR of the student's samples against the teacher
Program's samples on the same seeds (the workload's sampler: flow-Euler, 20 steps, guidance
2.0), and the zoo's own metrics (`optkit.zoo.moviegen.evaluate`: FD-digits per frame, frame
class accuracy) on `--samples` videos; zoo:lingen (MATE trained from scratch) beside them.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from _docs import cpu_name
from optkit.passes.mate import MateReplaceConfig, MateReplacement

from optkit.ir.flops import total_flops
from optkit.metrics import psnr_db
from optkit.quality import sampler_for
from optkit.quant.calibration import denoiser_of
from optkit.refs import load_program_ref
from optkit.sampling import sample
from optkit.zoo.registry import EvalSettings, get_model


def _zoo_metrics(model: torch.nn.Module, settings: EvalSettings, program=None) -> dict[str, float]:
    entry = get_model("moviegen")
    if program is None:
        return entry.evaluate(model, settings)
    denoise = denoiser_of(program)

    def draw(_model, shape, **kwargs):
        return sample(denoise, shape, **kwargs)

    return entry.evaluate(model, settings, sample_fn=draw)


def _with_weights(model: torch.nn.Module, path: str) -> torch.nn.Module:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(path))
    return model.eval()


def _zoo_program(model: torch.nn.Module):
    # What `load_program_ref("zoo:moviegen")` builds, around `model` (batch 2, seed 0).
    from optkit.ir.capture import capture

    entry = get_model("moviegen")
    program = capture(model, entry.example_inputs(model, 2, 0), name="moviegen-tiny")
    program.meta = {"zoo": entry.name, "size": "tiny", "task": entry.task}
    return program.with_workload(entry.workload(model=model))


def bench_distill(args: argparse.Namespace) -> dict:
    teacher_module = get_model("moviegen").create("tiny")
    if getattr(args, "teacher_checkpoint", None):  # other weights for the teacher (e.g. trained longer)
        teacher_module = _with_weights(teacher_module, args.teacher_checkpoint)
        teacher = _zoo_program(teacher_module)
    else:
        teacher = load_program_ref("zoo:moviegen")
    settings = EvalSettings(num_samples=args.samples, steps=20, seed=0, batch_size=10)
    seeds = range(args.psnr_seeds)
    draw_teacher = sampler_for(teacher)
    ref = torch.cat([draw_teacher(s) for s in seeds])
    results: dict[str, dict] = {}
    if not args.no_refs:
        results["moviegen (teacher, attention)"] = _zoo_metrics(teacher_module, settings)
        results["moviegen (teacher, attention)"]["flops"] = total_flops(teacher)
        lingen = get_model("lingen").create("tiny")
        results["lingen (MATE from scratch)"] = _zoo_metrics(lingen, settings)
        results["lingen (MATE from scratch)"]["flops"] = total_flops(load_program_ref("zoo:lingen"))
    runs = [(kind, 0) for kind in args.kinds] + [("mate", k) for k in getattr(args, "keep", [])]
    for kind, keep in runs:
        cfg = MateReplaceConfig(
            kind=kind,
            keep=keep,
            steps=args.steps,
            finetune_steps=args.finetune_steps,
            calibration_seeds=2,
            seed=0,
        )
        start = time.perf_counter()
        result = MateReplacement(cfg).run(teacher.clone())
        seconds = time.perf_counter() - start
        student = result.program
        out = torch.cat([sampler_for(student)(s) for s in seeds])
        finite = bool(torch.isfinite(out).all())
        data = student.annotations.figures["mate"]
        row = {
            "distill_s": seconds,
            "psnr_db": psnr_db(ref, out) if finite else math.nan,
            "flops": total_flops(student),
            "sites": data["sites"],
            "kept": data.get("kept", []),
            "stage1_mean_loss": sum(v["stage1_loss"] for v in data["sites"].values()) / len(data["sites"]),
            "finetune_loss_before": data["finetune_loss_before"],
            "finetune_loss_after": data["finetune_loss_after"],
        }
        if finite:
            row.update(_zoo_metrics(teacher_module, settings, student))
        results[f"moviegen -> {kind}" + (f" (keep {keep})" if keep else "")] = row
        print(kind, {k: v for k, v in row.items() if k != "sites"}, flush=True)
    return {"results": results, "cpu": cpu_name()}


def distill_markdown(data: dict, args: argparse.Namespace) -> str:
    results = data["results"]
    fd, acc = "fd_frame_mean", "frame_class_accuracy"
    lines = [
        "## `mate`: distilling zoo:moviegen's attention",
        "",
        f"CPU: {data.get('cpu', cpu_name())}, one thread. Teacher: zoo:moviegen tiny (4 blocks, dim 64, "
        "256 tokens on a (4, 8, 8) grid), shipped checkpoint. Every kind: the same calibration "
        "(2 seeds x 20 flow-Euler steps with guidance = 80 denoiser batches), "
        f"{args.steps} stage-1 steps per site (Adam, 4 batches per step), {args.finetune_steps} stage-2 steps. "
        f"PSNR: student samples against the teacher Program's samples, seeds 0-{args.psnr_seeds - 1}. "
        f"Zoo metrics on {args.samples} videos (20 steps, guidance 2.0).",
        "",
        "Command: `OMP_NUM_THREADS=1 TVM_NUM_THREADS=1 python benchmarks/bench_mate.py --section distill "
        f"--steps {args.steps} --finetune-steps {args.finetune_steps} --samples {args.samples} --psnr-seeds {args.psnr_seeds}`",
        "",
        *([args.note, ""] if getattr(args, "note", "") else []),
        "| model | mean stage-1 loss | stage-2 loss (before -> after) | sample PSNR vs teacher (dB) "
        "| FD-digits (frame mean) | frame class accuracy | GFLOPs / call | distillation s |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def f(v, spec=".3g"):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    for name, r in results.items():
        ft = (
            f"{f(r['finetune_loss_before'])} -> {f(r['finetune_loss_after'])}"
            if "finetune_loss_before" in r
            else "-"
        )
        lines.append(
            f"| {name} | {f(r.get('stage1_mean_loss'))} | {ft} | {f(r.get('psnr_db'), '.2f')} | "
            f"{f(r.get(fd), '.1f')} | {f(r.get(acc), '.3f')} | {f(r['flops'] / 1e9 if 'flops' in r else None)} "
            f"| {f(r.get('distill_s'), '.0f')} |"
        )
    lines += ["", *_goal_lines(results)]
    hybrids = [n for n in results if "(keep " in n]
    for name in hybrids:
        lines.append(f"- {name.split('-> ')[-1]} kept as attention: {', '.join(_kept(results[name], name))}.")
    kinds = [n for n in results if "sites" in results[n] and n not in hybrids]
    if kinds:
        paths = list(results[kinds[0]]["sites"])
        lines += ["", "Per-layer output SQNR (dB) of each new block against its attention, on the calibration "
                  "activations: at init (fitted Q/K/V/O) -> after stage 1.", ""]  # fmt: skip
        lines += ["| layer | " + " | ".join(k.split("-> ")[-1] for k in kinds) + " |"]
        lines += ["|---" * (len(kinds) + 1) + "|"]
        for p in paths:
            cells = [
                f"{results[k]['sites'][p]['init_sqnr_db']:.1f} -> {results[k]['sites'][p]['stage1_sqnr_db']:.1f}"
                for k in kinds
            ]
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _kept(row: dict, name: str) -> list[str]:
    # The sites a hybrid kept: recorded by the pass, else its rule (highest stage-1 loss first).
    if row.get("kept"):
        return list(row["kept"])
    k = int(name.split("(keep ")[1].rstrip(")"))
    return sorted(row["sites"], key=lambda p: -row["sites"][p]["stage1_loss"])[:k]


def _goal_lines(results: dict) -> list[str]:
    # The issue's distillation goals, met or not, with the numbers.
    mate = results.get("moviegen -> mate")
    if mate is None:
        return []
    lingen = results.get("lingen (MATE from scratch)", {})
    acc, ref_acc = mate.get("frame_class_accuracy", math.nan), lingen.get("frame_class_accuracy", math.nan)
    out = [
        'Goals for the distilled moviegen (`kind = "mate"`):',
        f"- final-sample PSNR >= 28 dB against the teacher: {mate['psnr_db']:.1f} dB"
        + "".join(
            f"; keeping {name.split('keep ')[1].rstrip(')')} attention layer(s): {r['psnr_db']:.1f} dB"
            for name, r in results.items()
            if name.startswith("moviegen -> mate (keep")
        )
        + ".",
        f"- frame class accuracy no lower than lingen from scratch: {acc:.3f} against {ref_acc:.3f}.",
    ]
    for base in ("hedgehog-swa", "relu-linear"):
        other = results.get(f"moviegen -> {base}")
        if other is not None:
            drop = 1 - mate["stage1_mean_loss"] / other["stage1_mean_loss"]
            out.append(f"- stage-1 loss >= 20% lower than {base}: {100 * drop:.0f}% lower.")
    out.append(f"- the whole pass <= 60 minutes on 2 cores: {mate['distill_s'] / 60:.1f} minutes.")
    return out
