"""Build: a Relax IRModule -> a TVM executable, with the schedules chosen for the target.

| schedule | CPU (llvm) | CUDA |
|---|---|---|
| `default` | constant weights packed into panels (`packing.py`), fast math (`fast_math.py`), optkit's rules (`cpu_schedules.py`: DLight's GEMV with bounded tiles, row reductions, matmul-like kernels, elementwise) + DLight's CPU Reduction as a fallback; a self-contained library | DLight GPU rules: Matmul, GEMV, Reduction, GeneralReduction, Fallback |
| `blas` | like `default`, and the float32 matmuls left after packing (activation x activation, as in attention) call numpy's BLAS (`blas.py`) | same as `default` |
| `naive` | `tvm.compile`'s own pipeline: untuned loop nests (for comparison only) | same as `default` (GPU code needs thread bindings) |

With tuning (`tuning.py`), the CPU matmul rule takes each kernel's measured-best tile from the
tuning database; kernels without a record get the rule's defaults. The pipeline mirrors TVM's own
`relax.backend.*.get_default_pipeline` with the schedule step inserted after fusion.
"""

from __future__ import annotations

import logging
from typing import Any

from optkit.backends.targets import TargetSpec, nvcc_compile_mode

from optkit.errors import BackendError, UnknownNameError

log = logging.getLogger(__name__)

SCHEDULES = ("default", "blas", "naive")


def schedule_pass(spec: TargetSpec, tuned: dict[str, dict[str, int]] | None = None) -> Any:
    """The DLight pass that schedules every not-yet-scheduled PrimFunc for `spec`."""
    from optkit.backends.cpu_schedules import CPUGEMV, CPUElementwise, CPUMatmul, CPURowReduction
    from tvm.s_tir import dlight as dl

    if spec.kind == "cuda":
        return dl.ApplyDefaultSchedule(
            dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()
        )
    matmul = CPUMatmul(tuned=tuned, spec=spec)
    return dl.ApplyDefaultSchedule(CPUGEMV(), CPURowReduction(), matmul, dl.cpu.Reduction(), CPUElementwise())


def relax_pipeline(
    spec: TargetSpec, schedule: str = "default", tuned: dict[str, dict[str, int]] | None = None
) -> Any:
    """The Relax pipeline for `tvm.compile`: legalize, fuse, schedule (tuned where measured), lower."""
    import tvm
    from tvm import relax

    if schedule not in SCHEDULES:
        raise UnknownNameError("schedule", schedule, SCHEDULES)
    target = spec.tvm_target()
    backend = relax.backend.cuda.pipeline if spec.kind == "cuda" else relax.backend.cpu_generic.pipeline
    legalize = [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
    scheduled: list[Any] = []
    if schedule != "naive" or spec.kind == "cuda":
        scheduled.append(schedule_pass(spec, tuned))

    @tvm.transform.module_pass(opt_level=0, name="OptkitPipeline")
    def _pipeline(mod: Any, _ctx: Any) -> Any:
        passes = (
            backend.library_dispatch_passes(target)
            + legalize
            + scheduled
            + backend.dataflow_lower_passes(target)
            + backend.finalize_passes(target)
        )
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def build(
    mod: Any, spec: TargetSpec, schedule: str = "default", tuned: dict[str, dict[str, int]] | None = None
) -> Any:
    """Compile `mod` for `spec`; returns the `tvm.relax.VMExecutable`."""
    import tvm

    pipeline = relax_pipeline(spec, schedule, tuned)
    try:
        if spec.kind == "cuda":
            with nvcc_compile_mode():
                return tvm.compile(mod, target=spec.tvm_target(), relax_pipeline=pipeline)
        return tvm.compile(mod, target=spec.tvm_target(), relax_pipeline=pipeline)
    except Exception as err:  # TVM raises its own InternalError / TVMError types
        first = str(err).strip().splitlines()[-1][:500] if str(err).strip() else type(err).__name__
        raise BackendError(f"TVM failed to compile for {spec.name} ({spec.config}): {first}") from err
