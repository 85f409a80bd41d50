"""The TVM lowering paths on one MLP against PyTorch eager and ONNX Runtime.

    python benchmarks/bench_backends_mlp.py [--threads 1] [--tune-trials 12] [--repeats 20]

Model: Linear(512, 2048) -> GELU -> Linear(2048, 512) on a (256, 512) float32 batch. Paths:
TVM untuned (`schedule="naive"`: LegalizeOps loop nests), the default path (weights packed into
panels, fast-math GELU, optkit's schedules), the default path with libm's erf
(`fast_math=False`), and tuned (`tune_trials=N` variants of the matmul template measured, in a
fresh database). `--threads` sets OMP/OpenBLAS/TVM/torch/ORT threads before anything is
imported. Last, the MLP after the `ptq` pass (W8A8): its eager Program (`ops.int8_matmul`; error
against float eager), ONNX Runtime on its export, and TVM's int8 kernels (AVX-512 VNNI where the
CPU has it; error against the W8A8 Program). Prints one line per path: median ms (of
`--repeats`; 3 for the untuned path), ratio to float eager, max abs error.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tune-trials", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TVM_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import onnxruntime as ort
    import torch
    from optkit.backends import lower

    from optkit.ir.capture import capture
    from optkit.timing import latency_ms

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(512, 2048), torch.nn.GELU(), torch.nn.Linear(2048, 512)
    ).eval()
    x = torch.randn(256, 512)
    with torch.no_grad():
        ref = model(x).numpy()
    rows: list[tuple[str, float, float]] = []
    with torch.no_grad():
        eager = latency_ms(model, x, repeats=args.repeats)["median"]
    rows.append(("torch eager", eager, 0.0))

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mlp.onnx")
        torch.onnx.export(model, (x,), path, dynamo=True)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        feed = {name: x.numpy()}
        out = sess.run(None, feed)[0]
        rows.append(
            ("onnxruntime", latency_ms(sess.run, None, feed, repeats=args.repeats)["median"], _err(out, ref))
        )

    program = capture(model, (x,), name="mlp")
    xn = x.numpy()
    paths = [
        ("tvm untuned (naive)", {"schedule": "naive"}, 3),
        ("tvm default (packed, fast math)", {}, args.repeats),
        ("tvm default, libm erf", {"fast_math": False}, args.repeats),
    ]
    with tempfile.TemporaryDirectory() as work:
        if args.tune_trials:
            paths.append(
                (
                    f"tvm tuned ({args.tune_trials} trials)",
                    {"tune_trials": args.tune_trials, "work_dir": work},
                    args.repeats,
                )
            )
        for label, kwargs, repeats in paths:
            artifact = lower(program, "cpu", num_cores=args.threads, **kwargs)
            got = artifact.run(xn)[0]
            ms = artifact.latency_ms(xn, warmup=1, repeats=repeats)["median"]
            rows.append((label, ms, _err(got, ref)))
    # The same MLP after `ptq` (W8A8 per-channel): the Program's own eager kernels vs TVM's integer kernels.
    from optkit.pipeline import PassManager, build_passes

    quantized = PassManager(build_passes(["ptq"])).run(program).program
    with torch.no_grad():
        qref = quantized.run(x).numpy()
        rows.append(
            (
                "torch eager W8A8 Program",
                latency_ms(quantized.run, x, repeats=args.repeats)["median"],
                _err(qref, ref),
            )
        )
    from optkit.ir.onnx_io import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mlp-w8a8.onnx")
        export_onnx(quantized, path, check=False)
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: xn}
        out = sess.run(None, feed)[0]
        ms = latency_ms(sess.run, None, feed, repeats=args.repeats)["median"]
        rows.append(("onnxruntime W8A8 Program", ms, _err(out, qref)))
    artifact = lower(quantized, "cpu", num_cores=args.threads)
    got = artifact.run(xn)[0]
    ms = artifact.latency_ms(xn, warmup=1, repeats=args.repeats)["median"]
    rows.append((f"tvm W8A8 ({artifact.info['vnni_kernels']} VNNI kernels)", ms, _err(got, qref)))
    print(f"threads={args.threads} cpu={os.uname().machine} python={sys.version.split()[0]}")
    for label, ms, err in rows:
        print(f"{label:<32} {ms:10.2f} ms  x{ms / eager:8.2f} vs eager  max|err| {err:.1e}")


def _err(a, b) -> float:  # type: ignore[no-untyped-def]
    import numpy as np

    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


if __name__ == "__main__":
    main()
