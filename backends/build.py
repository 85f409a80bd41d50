"""Build: a Relax IRModule -> a TVM executable, with the schedules chosen for the target.

| schedule | CPU (llvm) | CUDA |
|---|---|---|
| `default` | constant weights packed into panels (`packing.py`), fast math (`fast_math.py`), optkit's rules (`cpu_schedules.py`: DLight's GEMV with bounded tiles, row reductions, matmul-like kernels, elementwise) + DLight's CPU Reduction as a fallback; a self-contained library | DLight GPU rules: Matmul, GEMV, Reduction, GeneralReduction, Fallback |
| `blas` | like `default`, and the float32 matmuls left after packing (activation x activation, as in attention) call numpy's BLAS (`blas.py`) | same as `default` |
| `naive` | `tvm.compile`'s own pipeline: untuned loop nests (for comparison only) | same as `default` (GPU code needs thread bindings) |

With tuning (`tuning.py`), the CPU matmul rule takes each kernel's measured-best tile from the
tuning database; kernels without a record get the rule's defaults. With MetaSchedule
(`metaschedule.py`), the kernels where its schedule beat optkit's arrive as `overrides`,
scheduled PrimFuncs by structural key, put in place after fusion so the schedule pass skips them. The pipeline mirrors TVM's own
`relax.backend.*.get_default_pipeline` with the schedule step inserted after fusion.
"""

from __future__ import annotations

import logging
from typing import Any

from optkit.backends.targets import TargetSpec, nvcc_compile_mode
from optkit.backends.weights import LiftedWeights, lift_pass

from optkit.errors import BackendError, UnknownNameError

log = logging.getLogger(__name__)

SCHEDULES = ("default", "blas", "naive")


def schedule_pass(spec: TargetSpec, tuned: dict[str, dict[str, int]] | None = None) -> Any:
    """The DLight pass that schedules every not-yet-scheduled PrimFunc for `spec`."""
    from optkit.backends.cpu_schedules import CPUGEMV, CPUElementwise, CPUMatmul, CPURowReduction
    from optkit.backends.expand_depthwise import CPUExpandDepthwise
    from tvm.s_tir import dlight as dl

    if spec.kind == "cuda":
        return dl.ApplyDefaultSchedule(
            dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()
        )
    matmul = CPUMatmul(tuned=tuned, spec=spec)
    return dl.ApplyDefaultSchedule(
        CPUExpandDepthwise(), CPUGEMV(), CPURowReduction(), matmul, dl.cpu.Reduction(), CPUElementwise()
    )


def _backend(spec: TargetSpec) -> Any:
    from tvm import relax

    return relax.backend.cuda.pipeline if spec.kind == "cuda" else relax.backend.cpu_generic.pipeline


def fusion_passes(spec: TargetSpec) -> list[Any]:
    """The passes before scheduling: library dispatch, legalize, fuse (shared with the tuners, so
    the kernels they tune are the ones the build schedules)."""
    from tvm import relax

    return _backend(spec).library_dispatch_passes(spec.tvm_target()) + [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        # `lv1 = lv0` aliases (a rewrite that returns an existing variable) hide a GEMM's bias
        # add from FuseOps: a Linear's bias add had been a kernel of its own.
        relax.transform.CanonicalizeBindings(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def fuse(mod: Any, spec: TargetSpec) -> Any:
    """`mod` legalized and fused as the build does it, not yet scheduled."""
    import tvm

    target = spec.tvm_target()
    with target:
        return tvm.transform.Sequential(fusion_passes(spec))(mod)


def structural_key(func: Any) -> str:
    """A key for a PrimFunc that ignores its variable names (TVM's structural hash, as
    MetaSchedule's database uses): the same kernel imported twice gets the same key."""
    import tvm_ffi

    return f"{tvm_ffi.structural_hash(func.without_attr('global_symbol')) & (2**64 - 1):016x}"


def override_pass(overrides: dict[str, Any]) -> Any:
    """A pass that replaces each fused PrimFunc whose `structural_key` is in `overrides` by its
    scheduled version (marked `tirx.is_scheduled`, so DLight's schedule pass leaves it)."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="OptkitApplyOverrides")
    def _apply(mod: Any, _ctx: Any) -> Any:
        for gvar, func in list(mod.functions_items()):
            if isinstance(func, tvm.tirx.PrimFunc) and (found := overrides.get(structural_key(func))):
                mod[gvar] = found
        return mod

    return _apply


def relax_pipeline(
    spec: TargetSpec,
    schedule: str = "default",
    tuned: dict[str, dict[str, int]] | None = None,
    overrides: dict[str, Any] | None = None,
    weights: LiftedWeights | None = None,
) -> Any:
    """The Relax pipeline for `tvm.compile`: legalize, fuse, (lift the weights into a parameter),
    schedule (tuned where measured), lower."""
    import tvm

    if schedule not in SCHEDULES:
        raise UnknownNameError("schedule", schedule, SCHEDULES)
    target = spec.tvm_target()
    backend = _backend(spec)
    scheduled: list[Any] = [override_pass(overrides)] if overrides else []
    if schedule != "naive" or spec.kind == "cuda":
        scheduled.append(schedule_pass(spec, tuned))

    @tvm.transform.module_pass(opt_level=0, name="OptkitPipeline")
    def _pipeline(mod: Any, _ctx: Any) -> Any:
        passes = (
            fusion_passes(spec)
            + ([lift_pass(weights)] if weights is not None else [])
            + scheduled
            + backend.dataflow_lower_passes(target)
            + backend.finalize_passes(target)
        )
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def build(
    mod: Any,
    spec: TargetSpec,
    schedule: str = "default",
    tuned: dict[str, dict[str, int]] | None = None,
    overrides: dict[str, Any] | None = None,
    weights: LiftedWeights | None = None,
) -> Any:
    """Compile `mod` for `spec`; returns the `tvm.relax.VMExecutable`. `tuned`: optkit tuner's
    tile per workload key; `overrides`: scheduled PrimFuncs per `structural_key` (MetaSchedule's);
    `weights`: where the constants lifted out of the library go (`weights.py`; None keeps them in)."""
    import tvm

    pipeline = relax_pipeline(spec, schedule, tuned, overrides, weights)
    try:
        if spec.kind == "cuda":
            with nvcc_compile_mode():
                return tvm.compile(mod, target=spec.tvm_target(), relax_pipeline=pipeline)
        return tvm.compile(mod, target=spec.tvm_target(), relax_pipeline=pipeline)
    except Exception as err:  # TVM raises its own InternalError / TVMError types
        first = str(err).strip().splitlines()[-1][:500] if str(err).strip() else type(err).__name__
        raise BackendError(f"TVM failed to compile for {spec.name} ({spec.config}): {first}") from err
