"""Model families users bring (random weights), float and W8A8, on every CPU runtime.

    OMP_NUM_THREADS=1 python benchmarks/bench_families.py [--families mobilenet_v2 resnet18 vit_tiny llama_64tok llama_512tok sd_unet] \
        [--batch 8] [--image 112] [--repeats 15] [--threads 1]
    OMP_NUM_THREADS=1 python benchmarks/bench_families.py --hf   # Hugging Face classes instead

For each family of `families.py`: capture, `cleanup` (constant folding, BatchNorm folding,
dce), then `ptq` (W8A8, per-channel weights, calibrated on the example batch) and `dce`. Rows:
eager (the cleaned float Program), ONNX Runtime on its float export, TVM float (default path,
untuned), eager W8A8, optkit's W8A8 ONNX in ONNX Runtime (int8 weights, then uint8 weights:
`optkit.ir.onnx_int8`, exact where ONNX Runtime's int8 kernels saturate), ONNX Runtime's own `quantize_static`
QDQ model of the float export (per-channel int8 weights, uint8 activations, calibrated on the
same batch; `peers.ort_quantize_static`), and TVM on the W8A8 Program where it lowers. W7A8
rows: `ptq` with `wbits=7` (7-bit weights in int8 storage, the one change), on TVM (on AVX2
without VNNI the exact `vpmaddubsw` GEMM, `backends/vnni.py`) and as optkit's ONNX in ONNX
Runtime (int8 weights, whose U8S8 kernels are exact on them), beside ONNX Runtime's own QDQ
model with `reduce_range` (its 7-bit weights). Every
runtime gets `--threads` threads (TVM's runtime pool too) and all rows of a family are timed
in interleaved rounds by `optkit.timing.interleaved_latency_ms` (median); above one thread each
call starts once the previous runtime's pool has gone idle and after one untimed call of its
own (`settle`, `optkit.timing.settle_before`). Writes
docs/benchmarks.md (section bench_families; `bench_families_Nt` for N > 1 threads) with the
goals of issue 17 checked. With `--hf`, the families are `families.HF_FAMILIES` (diffusers and
transformers classes built from configs: a VAE decoder, CLIP and T5 text encoders, BERT,
ConvNeXt, Swin, and the PixArt, Flux and Wan diffusion transformers) and the section
`bench_families_hf` (`bench_families_hf_Nt`). A runtime that cannot build a row's model
(ONNX Runtime's `quantize_static` on an unusual graph) leaves its cell empty with a note.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402
from _docs import cpu_name, write_section  # noqa: E402
from families import CNN_FAMILIES, FAMILIES, HF_FAMILIES, family  # noqa: E402

from optkit.ir.capture import capture  # noqa: E402
from optkit.ir.onnx_io import export_onnx, flat_outputs, onnx_session  # noqa: E402
from optkit.pipeline import PassManager, build_passes  # noqa: E402
from optkit.report import Table  # noqa: E402
from optkit.timing import interleaved_latency_ms  # noqa: E402

ROWS = (
    "eager",
    "ORT",
    "TVM",
    "eager W8A8",
    "optkit W8A8 ONNX (ORT)",
    "optkit W8A8 ONNX, u8 weights (ORT)",
    "ORT quantize_static QDQ (ORT)",
    "TVM W8A8",
    "optkit W7A8 ONNX (ORT)",
    "ORT QDQ, reduce_range (ORT)",
    "TVM W7A8",
)
RATIOS = (
    "TVM / ORT",
    "TVM W8A8 speed-up over TVM",
    "optkit W8A8 / ORT QDQ",
    "TVM W8A8 / ORT QDQ",
    "TVM W7A8 speed-up over TVM",
    "TVM W7A8 / ORT QDQ",
)


def ratio(row: list[Any], name: str) -> float:
    """A row's ratio column `name` (of `RATIOS`)."""
    return float(row[1 + len(ROWS) + RATIOS.index(name)])


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, (list, tuple)):
        value = value[0]
    return value.detach().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(((ref.astype(np.float64) - got) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((ref.astype(np.float64) ** 2).sum()) / noise)


def _ort(
    path: Path, inputs: tuple[torch.Tensor, ...], threads: int, notes: list[str]
) -> Callable[[], Any] | None:
    if not path.exists():  # its export or quantization failed (noted)
        return None
    try:
        session = onnx_session(path, threads)
    except Exception as err:  # a model ONNX Runtime refuses to load: noted, its cell left empty
        reason = str(err).splitlines()[0].split(" failed:", 1)[-1].strip()  # (without the temporary path)
        notes.append(f"{path.stem}: ONNX Runtime cannot load it: {reason[:200]}")
        return None
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}
    return lambda: session.run(None, feeds)


def _attempt(notes: list[str], label: str, step: Callable[[], Any]) -> None:
    """Run one export or quantization step; a failure becomes a note and an empty cell."""
    try:
        step()
    except Exception as err:  # report, keep measuring the other rows
        notes.append(f"{label}: failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}")


def _batchnorms(path: Path) -> int:
    import onnx

    return sum(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)


def _tvm(program, threads: int, notes: list[str], label: str) -> Callable[[], Any] | None:
    from optkit.backends import lower

    try:
        artifact = lower(program, "cpu", num_cores=threads)
    except Exception as err:  # report, keep measuring the other rows
        notes.append(f"{label}: TVM did not lower: {type(err).__name__}: {str(err).splitlines()[0][:160]}")
        return None
    x = program.example_inputs
    return lambda: artifact.run(*x)


def measure(name: str, args: argparse.Namespace, tmp: Path, notes: list[str]) -> list[Any]:
    from optkit.backends.threads import set_runtime_threads

    model, x = family(name, args.batch, args.image)
    program = PassManager(build_passes(["cleanup"])).run(capture(model, x, name=name)).program
    int8 = PassManager(build_passes(["ptq", "dce"])).run(program).program
    int7 = PassManager(build_passes(["ptq", "dce"], {"ptq": {"wbits": 7}})).run(program).program
    float_onnx, int8_onnx, u8_onnx, qdq_onnx, int7_onnx, reduced_onnx = (
        tmp / f"{name}.onnx",
        tmp / f"{name}-w8a8.onnx",
        tmp / f"{name}-w8a8-u8.onnx",
        tmp / f"{name}-qdq.onnx",
        tmp / f"{name}-w7a8.onnx",
        tmp / f"{name}-qdq-reduced.onnx",
    )
    steps = {
        "float ONNX": lambda: export_onnx(program, float_onnx, check=False),
        "W8A8 ONNX": lambda: export_onnx(int8, int8_onnx, check=False, int8_weights="s8"),  # as ORT's QDQ
        "W8A8 ONNX, u8 weights": lambda: export_onnx(int8, u8_onnx, check=False, int8_weights="u8"),
        "W7A8 ONNX": lambda: export_onnx(int7, int7_onnx, check=False, int8_weights="s8"),
        "ORT quantize_static": lambda: peers.ort_quantize_static(float_onnx, [x], qdq_onnx),
        "ORT quantize_static, reduce_range": lambda: peers.ort_quantize_static(
            float_onnx, [x], reduced_onnx, reduce_range=True
        ),
    }
    for label, step in steps.items():
        _attempt(notes, f"{name} {label}", step)
    set_runtime_threads(args.threads)
    fns: dict[str, Callable[[], Any] | None] = {
        "eager": lambda: program.graph_module(*x),
        "ORT": _ort(float_onnx, x, args.threads, notes),
        "TVM": _tvm(program, args.threads, notes, name),
        "eager W8A8": lambda: int8.graph_module(*x),
        "optkit W8A8 ONNX (ORT)": _ort(int8_onnx, x, args.threads, notes),
        "optkit W8A8 ONNX, u8 weights (ORT)": _ort(u8_onnx, x, args.threads, notes),
        "ORT quantize_static QDQ (ORT)": _ort(qdq_onnx, x, args.threads, notes),
        "TVM W8A8": _tvm(int8, args.threads, notes, f"{name} W8A8"),
        "optkit W7A8 ONNX (ORT)": _ort(int7_onnx, x, args.threads, notes),
        "ORT QDQ, reduce_range (ORT)": _ort(reduced_onnx, x, args.threads, notes),
        "TVM W7A8": _tvm(int7, args.threads, notes, f"{name} W7A8"),
    }
    live = {k: f for k, f in fns.items() if f is not None}
    with torch.no_grad():
        reference = _numpy(flat_outputs(program.run()))
        quality = {k: _sqnr_db(reference, _numpy(f())) for k, f in live.items()}
        lat = interleaved_latency_ms(live, warmup=args.warmup, repeats=args.repeats, settle=args.threads > 1)
    ms = {k: lat[k]["median"] if k in lat else float("nan") for k in ROWS}
    ort, qdq = ms["ORT"], ms["ORT quantize_static QDQ (ORT)"]
    print(f"{name}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()), flush=True)
    batchnorms = _batchnorms(int8_onnx) if int8_onnx.exists() else "-"
    notes.append(
        f"{name}: BatchNormalization nodes in optkit's W8A8 ONNX: {batchnorms}; "
        f"output SQNR against float eager (dB): "
        + ", ".join(f"{k} {v:.1f}" for k, v in quality.items() if k not in ("eager",))
    )
    return [
        name,
        *(ms[k] for k in ROWS),
        ms["TVM"] / ort,
        ms["TVM"] / ms["TVM W8A8"],
        ms["optkit W8A8 ONNX (ORT)"] / qdq,
        ms["TVM W8A8"] / qdq,
        ms["TVM"] / ms["TVM W7A8"],
        ms["TVM W7A8"] / qdq,
    ]


HISTORY = (
    "This table: an AMD EPYC Zen 4 (session 33, 2026-12-02: `znver4`, AVX-512 with VNNI and "
    "BF16, no AVX512-FP16, no AMX; `peaks.py` on one core: 115 GFLOP/s of fp32 FMAs, 463 GOP/s "
    "of `vpdpbusd`), once float32 3 x 3 convs at stride 1 ran as Winograd F(2 x 2) or F(4 x 4) "
    'transforms around batched FMA GEMMs (`backends/winograd.py`; docs/backends.md, "Winograd '
    "convolutions\"). Against session 32's table on the same CPU (TVM / ONNX Runtime in float "
    "0.88 / 1.02 / 0.87 / 0.90 / 0.89 / 0.81, geomean 0.89x; TVM W8A8 / ORT's QDQ model 0.82 / "
    "0.94 / 0.63 / 0.72 / 0.49 / 0.36, geomean 0.63x): in float ResNet-18 1.02 -> 0.50x and the "
    "UNet 0.81 -> 0.61x, geomean 0.89 -> 0.76x (goal met); TVM's float output SQNR against eager "
    "128.4 -> 127.8 dB (ResNet-18) and 113.4 -> 106.3 dB (the UNet: F(4 x 4)'s larger "
    "constants); TVM W8A8 over TVM float fell to 1.84x (ResNet-18) and 1.78x (the UNet), still "
    ">= 1.5x. The int8 rows changed by run-to-run noise only (ONNX Runtime's QDQ UNet took 127.0 "
    "ms then, 103.6 ms here; optkit's W8A8 ONNX against that QDQ model on MobileNetV2, 1.11x here, "
    "was 1.02x over 21 rounds right after: noise). Session 32's first run "
    "(the same command, before int16 attention): TVM / ONNX Runtime in float 0.94 / 1.00 / 0.87 "
    "/ 0.90 / 0.89 / 0.83 (geomean 0.90x), TVM W8A8 / ORT's QDQ model 0.84 / 0.94 / 0.70 / 0.71 "
    "/ 0.58 / 0.47 (geomean 0.69x), TVM W8A8 over TVM float 2.04-3.58x, >= 1.5x on every row. "
    "Per kernel (`kernel_profile`, 1 thread) ResNet-18's float convs ran at 104-111 GFLOP/s "
    "(90-97% of the FMA peak) and its W8A8 convs at 395-447 GOP/s (85-97% of the `vpdpbusd` "
    "peak): the CNN rows sit where ONNX Runtime's kernels, at the same peaks, sit too. The UNet's "
    "W8A8 step spent 27 of its 61 ms of kernel time in float32 attention. Since then a quantized "
    "Program's attention runs on int16 pairs where the CPU has AVX-512 VNNI but no AVX512-FP16 "
    "(`vpdpwssd`, 32 multiply-adds per instruction; `backends/attention_int16.py`): W8A8 "
    "artifacts with float32 and with int16 attention, one process, 1 thread, 15-20 interleaved "
    "rounds: the UNet 53.55 -> 45.06 ms, llama_512tok 57.26 -> 51.43 ms, ViT-Tiny 10.20 -> 9.86 "
    "ms, llama_64tok 5.40 -> 5.34 ms, output SQNR against float 23.24 -> 23.11, 24.93 -> 24.90, "
    "32.69 -> 32.61 and 25.20 -> 25.07 dB. On the AVX2 EPYC of sessions 24-31 (`znver3`) the "
    "same command gave, on session 31's code: TVM / ONNX Runtime in float 0.86 / 0.995 / 0.91 / "
    "0.97 / 0.91 / 0.94 (geomean 0.93x, every row at or below ONNX Runtime), TVM W7A8 / ORT's "
    "QDQ model 1.02 / 1.02 / 0.80 / 0.85 / 0.72 / 0.65 (0.83x; W8A8 1.00x), TVM W7A8 over TVM "
    "float 1.29-1.94x.\n\n"
    "On AVX2 without VNNI (session 24, 2026-12-01: an AMD EPYC, znver3, AVX2 and FMA3, no "
    "AVX-512, no VNNI; none of the AVX-512 kernels below apply there). At the session's "
    "start (commit c3ba555, the same command with `--repeats 7`) TVM took 1.79-2.09x ONNX "
    "Runtime's time in float (geomean 1.94x) and 1.49-3.70x that of its QDQ model in W8A8 "
    "(geomean 2.70x): int8 GEMMs and convs ran on the scheduled int32 panel kernels (33 "
    "GOP/s), float convs on a schedule whose 8 x 32 tiles spill AVX2's 16 registers (34% of"
    " the FMA peak), attention on 8 x 32 tiles (12-21 GFLOP/s). Since then the int8 tile "
    "GEMM runs on `vpmaddwd` (exact), float convs of every shape on the FMA tile kernel, "
    'and tiles are sized for 16 registers (docs/backends.md, "AVX2 CPUs without VNNI"); '
    "start -> this table, float and W8A8 (two runs, not interleaved; the ORT columns of a "
    "row moved by up to 12% between them, so compare the ratios): MobileNetV2 54.1 -> 26.8 "
    "and 75.4 -> 25.0 ms, ResNet-18 265.2 -> 128.9 and 224.4 -> 92.1 ms, ViT-Tiny 91.2 -> "
    "45.4 and 93.1 -> 39.1 ms, llama_64tok 57.7 -> 27.9 and 62.7 -> 23.6 ms, llama_512tok "
    "500.6 -> 209.4 and 453.9 -> 182.3 ms, the UNet 368.9 -> 194.1 and 342.1 -> 170.7 ms. "
    "Why W8A8 gains little over float there: the int8 kernel's `vpmaddwd` (16 multiply-adds"
    " per instruction) peaks at 153-155 GOP/s on one znver3 core against 102 GFLOP/s for the "
    "FMAs (`peaks.py`, session 29; sessions 25-28 measured 119-142 GOP/s with a peak kernel "
    "that issued one `vpaddw` per 6 `vpmaddwd`, and session 24 236 GOP/s from one in which "
    "LLVM had computed one product per iteration for all 12 accumulators), so exact int8 "
    "can be at most ~1.5x faster than float32 in a compute-bound GEMM there; the int8 GEMMs"
    " run at 135-148 GOP/s in the W8A8 ResNet-18 and ViT-Tiny since session 29, their "
    "activations held as int16 by the kernels that write them (85-123 GOP/s before, two "
    "`vpshufb` per row and step splitting uint8 activations into pairs; docs/backends.md). ONNX Runtime's "
    "AVX2 int8 kernels are faster but not exact: they sum u8 x s8 pairs with `vpmaddubsw`,"
    " which saturates at int16, and on that CPU optkit's W8A8 ONNX with int8 weights scored"
    " 27.9, 35.5, 7.6, 20.7, 20.0 and 10.6 dB of output SQNR against float in ONNX Runtime "
    "(rows in table order), against 44.0, 43.0, 32.7, 25.2, 24.9 and 23.2 dB on the VNNI "
    "Xeon of session 23; TVM's W8A8 keeps them (44.0, 43.0, 32.7, 25.2, 24.9, 23.0 dB), and "
    "so does the export with uint8 weights (ONNX Runtime's exact U8U8 kernels; the `u8` "
    "row, the default of `optimize` on CPUs without VNNI since session 25). "
    "Session 30 added the W7A8 rows: the same `ptq` with 7-bit weights (`wbits=7`), for which"
    " TVM's GEMM runs on `vpmaddubsw` (exact for |w| <= 64; 184-194 GOP/s alone against "
    "142-155 on `vpmaddwd`) and ONNX Runtime's U8S8 kernels are exact too: TVM W7A8 / ORT's "
    "QDQ model 1.04, 1.05, 0.82, 0.86, 0.72, 0.65 (geomean 0.84x, W8A8 1.01x in the same "
    "run), TVM W7A8 over TVM float 1.26-1.91x (>= 1.5x on ResNet-18, ViT-Tiny and both "
    "Llamas), at 0.4-3.6 dB of output SQNR below W8A8 (40.4, 39.7, 30.4, 22.8, 22.3, 22.7 dB)"
    " and above both of ONNX Runtime's QDQ models on every row (its `reduce_range` one: 38.8,"
    " 37.8, 18.0, 15.8, 11.8, 16.6 dB; it quantizes more ops than optkit, attention's matmuls"
    " among them). Session 31: RGB stems read the model's image in place (float32 by kernel-row"
    " runs, int8 interleaved to 4 channels and padded in one copy) instead of through "
    "`im2col_rows`: ResNet-18's 7 x 7 stem per node against ONNX Runtime's (1 thread, "
    "`kernel_profile` and ONNX Runtime's profiler) float 7.6 ms of GEMM + 1.2 ms of im2col -> "
    "5.2 + 0.26 ms (ONNX Runtime 5.2 ms), W7A8 3.2 + 2.1 ms -> 3.7 + 0.26 ms (ONNX Runtime's "
    "QDQ 4.1 ms); and an activation's clamp before a quantize step merges into the quantize "
    "step's own (MobileNetV2 W7A8 13.44 -> 13.18 ms); all bit-identical."
    "\n\nWhat TVM still loses on the AVX-512 Xeon of sessions 13-23 (per-kernel timing with `optkit.backends.kernel_profile`, 1 "
    "thread, same CPU, 2026-11-30): the UNet's W8A8 step spent 14.5 ms of kernel time in "
    "its self-attention at 1,024 tokens in float32 (70% of the fp32 peak), which int8 "
    "GEMMs cannot speed up, until attention ran in float16 (session 20); ResNet-18's W8A8 (2026-12-01, session 19, 15.2 ms of kernel time "
    "at batch 8 once each activation was one int8 tensor) spends 1.2 ms in its int8 7 x 7 "
    "stem's GEMM and 0.54 ms copying its kernel rows, 0.12 ms in its int8 max pool, 0.63 "
    "ms in quantizing kernels (2.54 ms before `backends/requant.py`) and 0.56 ms in pad "
    "copies (half of them since written by the GEMMs, `vnni.OutPad`); "
    "MobileNetV2's W8A8 depthwise convs (exact float32 sums on the NHWC kernel) took 3.2 "
    "of 8.4 ms at 10-15% of the fp32 peak in session 19; reading their input as int8 "
    "first lost to converting each tap (8.7 -> 9.5 ms), and won once each filter row's "
    "taps were unrolled (session 21); the 64-token decoder is 91% GEMM time, streaming 52 MB of "
    "float32 weights from memory (a 64 x 512 x 512 GEMM takes 0.28 ms with the caches "
    "flushed against 0.19 warm), which is where it trailed ONNX Runtime in float until "
    "session 22 (float32 GEMMs on the FMA tile kernel, prefetching). optkit's "
    "W8A8 ONNX and ONNX Runtime's `quantize_static` model are the same graph once ONNX "
    "Runtime has optimized them (MobileNetV2: 52 QLinearConv and 10 QLinearAdd each; "
    "ResNet-18: 20 and 8) and run alike (7.19 against 7.21 ms and 16.92 against 16.98 ms, "
    "medians of 40 interleaved rounds, 2026-12-01): a ratio of 1.01-1.02x in the table is "
    "run-to-run noise, not a slower graph. "
    "What changed (compiled artifacts of the commit before against after, timed in one "
    "process; docs/backends.md has the details): in session 23 (2026-12-01), GELU, "
    "GELU-tanh, SiLU and sigmoid after a tile GEMM, a GEGLU and a SwiGLU join the GEMMs' "
    "write-back (the UNet W8A8 42.0 -> 40.3 ms, float 88.7 -> 86.0 ms; llama_512tok "
    "W8A8 34.1 -> 33.2 ms; llama_64tok W8A8 4.88 -> 4.81 ms; ViT-Tiny float 18.30 -> "
    "18.14 ms, but W8A8 6.92 -> 7.04 ms, 1.8% slower), and float32 1 x 1 convs run on "
    "the FMA tile GEMM (MobileNetV2 float 13.73 -> 12.50 ms, the UNet 82.1 -> 80.8 ms; "
    "bit-identical); in session 22, float32 "
    "Linears run on the tile GEMM with AVX-512 FMAs (24 accumulators, epilogues in the "
    "write-back) and both tile GEMMs prefetch the next tile column's weights (float "
    "llama_64tok 16.76 -> 13.50 ms, llama_512tok 107.5 -> 102.9 ms, ViT-Tiny 19.03 -> "
    "18.35 ms, the UNet 86.9 -> 86.0 ms; W8A8 ResNet-18 14.49 -> 14.02 ms, ViT-Tiny 7.15 "
    "-> 6.93 ms; bit-identical); in session 21, fast math "
    "multiplies by a constant divisor's float32 reciprocal instead of dividing (each "
    "quantize step's `vdivps`: MobileNetV2 W8A8 7.67 -> 6.83 ms, ResNet-18 14.82 -> 14.25 "
    "ms, ViT-Tiny 7.40 -> 7.15 ms; a quantized value moves by one step where x / s lies "
    "within an ulp of a rounding boundary, 1.5 in 10^6 values; `--exact-math` divides) "
    "and W8A8 depthwise convs read their int8 input (MobileNetV2 6.83 -> 6.67 ms, "
    "bit-identical); in session 20, W8A8 models' "
    "attention runs in float16 on CPUs with AVX512-FP16 (`backends/attention_kernel.py`: "
    "the UNet 44.4 -> 34.9 ms, ViT-Tiny 8.81 -> 7.79 ms, llama_512tok 38.1 -> 32.1 ms, "
    "llama_64tok 3.84 -> 3.66 ms; output SQNR against float within 0.07 dB) and a fused QKV "
    "projection's head slices read it in place, no kernel copying it whole (ViT-Tiny "
    "7.68 -> 7.33 ms W8A8, 19.13 -> 18.65 ms float, bit-identical); in session "
    "19, a quantized "
    "activation became one int8 tensor that the next conv and the skip both read, a GEMM "
    "writes the next conv's padded input, and strided blocks' 1 x 1 skip convs took their "
    "epilogues (ResNet-18 W8A8 15.32 -> 14.93 ms, then 2% and 0.7% less; MobileNetV2 "
    "7.30 -> 7.19 ms; all bit-identical); in session 18, W8A8 "
    "convs lost their padded float copies (the zero-point pad sinks to the conv), RGB "
    "stems went int8 (kernel rows copied as one vector), the VNNI GEMM reads a padded "
    "image in place instead of an im2col and streams activations rather than weights "
    "past L2, and max pools run on int8 (ResNet-18 W8A8 20.34 -> 18.01 -> 16.87 -> 15.94 "
    "-> 15.14 ms, ViT-Tiny 9.51 -> "
    "8.90 ms, the UNet 47.9 -> 45.7 ms); earlier on 2026-12-01, NHWC group norms became a "
    "per-channel statistics kernel and a multiply-add (`backends/norms.py`; the UNet 87.6 "
    "-> 85.6 ms float, 49.8 -> 46.3 ms W8A8), `x[..., i]` became a slice that fuses "
    "(`backends/slices.py`), and elementwise kernels that read their input transposed "
    "(K^T) run in 16 x 16 tiles (llama_512tok 42.6 -> 39.4 ms W8A8, 109.7 -> 106.2 ms "
    "float; the UNet 85.1 -> 83.8 ms float), and a ReLU after an int8 GEMM joins its "
    "write-back (ResNet-18 W8A8 21.58 -> 21.32 ms); on 2026-11-30 (session 16), quantize kernels "
    "kept their rounding in vector form (TVM 0.27 left `nearbyint` scalar: MobileNetV2 "
    "W8A8 8.86 -> 7.66 ms, the UNet W8A8 62.1 -> 56.6 ms) and all-int8 conv chains went "
    "channels-last with transposes cancelled across the pads between them (the UNet W8A8 "
    "56.8 -> 51.3 ms). Before that: attention as one kernel whose score tiles stay in "
    "cache (the UNet 158.8 -> 131.7 ms float), with a mask input and causal query blocks "
    "(llama_512tok 141.5 -> 109.0 ms float, 70.3 -> 43.0 ms W8A8); epilogues fused through "
    "reshapes (ViT-Tiny 32.6 -> 27.8 ms float); weights above 2 MiB swept panel by panel; "
    "GEMM register tiles under TVM's 1 KiB stack limit (ResNet-18 W8A8 25.7 -> 22.2 ms); "
    "the VNNI GEMM's requantization in its write-back (MobileNetV2 W8A8 11.1 -> 9.3 ms); "
    "convs over flattened pixels (ResNet-18 float 188 -> 86 ms); score matmuls padded to "
    "64 columns (ViT float 55 -> 28 ms); int8 depthwise convs in exact float32 on the "
    "NHWC kernel and im2col at 64-byte copies (MobileNetV2 W8A8 92 -> 13 ms)."
)


def _geomean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v) and v > 0]
    return math.exp(sum(math.log(v) for v in finite) / len(finite)) if finite else float("nan")


def goal_lines(rows: list[list[Any]]) -> list[str]:
    """Issue 17's goals, checked row by row and over all rows (geometric means)."""
    lines = []
    for row in rows:
        tvm_ort, int8_gain, w8_qdq = (ratio(row, c) for c in RATIOS[:3])
        w7_gain = ratio(row, "TVM W7A8 speed-up over TVM")
        line = (
            f"- {row[0]}: TVM float {'meets' if tvm_ort <= 1 else 'misses'} TVM <= ORT ({tvm_ort:.2f}x); "
            f"TVM W8A8 {'meets' if int8_gain >= 1.5 else 'misses'} >= 1.5x faster than TVM float "
            f"({int8_gain:.2f}x; W7A8 {w7_gain:.2f}x)"
        )
        if row[0] in CNN_FAMILIES:
            line += (
                f"; optkit W8A8 ONNX {'meets' if w8_qdq <= 1 else 'misses'} <= ORT's quantize_static "
                f"QDQ ({w8_qdq:.2f}x)"
            )
        lines.append(line + ".")
    float_mean = _geomean([ratio(r, "TVM / ORT") for r in rows])
    int8_mean = _geomean([ratio(r, "TVM W8A8 / ORT QDQ") for r in rows])
    int7_mean = _geomean([ratio(r, "TVM W7A8 / ORT QDQ") for r in rows])
    lines += [
        f"- Geometric mean over the rows, TVM / ORT in float: {float_mean:.2f}x (goal <= 0.8x: "
        f"{'met' if float_mean <= 0.8 else 'missed'}).",
        f"- Geometric mean over the rows, TVM W8A8 / ORT's quantize_static QDQ model (int8 against "
        f"int8): {int8_mean:.2f}x (goal <= 0.5x: {'met' if int8_mean <= 0.5 else 'missed'}); TVM W7A8 "
        f"/ the same QDQ model: {int7_mean:.2f}x ({'met' if int7_mean <= 0.5 else 'missed'}).",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=None, choices=FAMILIES + HF_FAMILIES)
    parser.add_argument("--hf", action="store_true", help="the Hugging Face families (families.HF_FAMILIES)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    args.families = args.families or list(HF_FAMILIES if args.hf else FAMILIES)
    torch.set_num_threads(args.threads)
    rows: list[list[Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="optkit-families-") as tmp:
        for name in args.families:
            rows.append(measure(name, args, Path(tmp), notes))
    columns = ["family", *ROWS, *RATIOS]
    units = {c: "ms" for c in ROWS} | {c: "x" for c in RATIOS}
    table = Table(
        f"Latency per call (median of {args.repeats} interleaved rounds after {args.warmup} warm-up, "
        f"{args.threads} thread(s); "
        + (
            "inputs as `families.py` describes them)"
            if args.hf
            else f"images: batch {args.batch}, {args.image} x {args.image}; "
            "decoders: one sequence; sd_unet: a guided step's 2 latents of 4 x 32 x 32)"
        ),
        columns,
        rows,
        units,
    )
    goals = goal_lines(rows)
    import onnxruntime
    import tvm

    command = f"OMP_NUM_THREADS={args.threads} python benchmarks/bench_families.py " + " ".join(sys.argv[1:])
    markdown = "\n".join(
        [
            f"`{command.strip()}` on {cpu_name()} ({len(os.sched_getaffinity(0))} CPU(s) for the process; "
            "a shared machine, so compare ratios within a row), "
            f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, TVM {tvm.__version__}, "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}. Families from `benchmarks/families.py` with "
            "random weights and BatchNorm statistics (latency does not depend on them)"
            + (" (`HF_FAMILIES`: diffusers and transformers classes built from configs)" if args.hf else "")
            + ". Float rows "
            "run the `cleanup` Program (BatchNorms folded into the convs); W8A8 rows the `ptq` "
            "Program (BatchNorms folded first, per-channel int8 weights, activations calibrated on "
            "the example batch), W7A8 rows the same with `wbits=7` (7-bit weights). Ratios: latency / "
            "latency (> 1: the first is slower).",
            "",
            table.to_markdown(),
            "",
            "Goals of issue 17 (1 thread):"
            if args.threads == 1
            else f"Goals of issue 17 (set for 1 thread; checked here at {args.threads}):",
            *goals,
            "",
            *(f"- {n}" for n in notes),
        ]
    )
    if args.threads == 1 and not args.hf:  # the history of the 1-thread figures
        markdown += "\n\n" + HISTORY
    print(markdown)
    if not args.no_docs:
        section = (
            "bench_families" + ("_hf" if args.hf else "") + (f"_{args.threads}t" if args.threads > 1 else "")
        )
        write_section(section, markdown)


if __name__ == "__main__":
    main()
