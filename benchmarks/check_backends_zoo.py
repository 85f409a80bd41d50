"""Lower zoo models through TVM (default CPU path) in float and after `ptq`, and compare with the Program.

    OMP_NUM_THREADS=1 python benchmarks/check_backends_zoo.py dit ldm recsys efficientsam

Prints, per model and precision, the compile+run time and the max abs difference between the
TVM artifact's outputs and the Program's own outputs on the example inputs (zoo `tiny`, batch 2).
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np


def main(names: list[str]) -> None:
    from optkit.backends import lower

    from optkit.pipeline import PassManager, build_passes
    from optkit.refs import load_program_ref

    warnings.simplefilter("ignore")
    for name in names:
        program = load_program_ref(f"zoo:{name}")
        quantized = PassManager(build_passes(["ptq"])).run(program).program
        for tag, prog in (("float", program), ("w8a8", quantized)):
            start = time.perf_counter()
            artifact = lower(prog, "cpu", num_cores=1)
            got = artifact.run(*prog.example_inputs)
            ref = prog.run()
            refs = [r.numpy() for r in (ref if isinstance(ref, (tuple, list)) else (ref,))]
            err = max(float(np.abs(g - r).max()) for g, r in zip(got, refs, strict=True))
            scale = max(float(np.abs(r).max()) for r in refs)
            took = time.perf_counter() - start
            print(f"{name:<14} {tag:<6} {took:6.1f} s  max|err| {err:.1e}  max|out| {scale:.2e}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["dit", "ldm", "recsys", "efficientsam"])
