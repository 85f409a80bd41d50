"""`lower(program, target)`: the one entry point from a Program to a compiled `Artifact`.

Order: inference BatchNorms folded into the convs before them (`fold-batchnorm`, on a copy of
the Program: one elementwise kernel less per conv, and the packed kernels see the folded
weights) -> import (`tvm_import.py`: ATen rewrites from `aten_rewrites.py`, quantized converters
from `quantized.py`) -> on CPU, float convs in NHWC (`layout.py`), packed weights (depthwise
convs included), fast math and with `schedule="blas"` float32 matmuls
to BLAS (`_specialize`) -> optional schedule tuning with a persistent database (`tuning.py`) ->
build with DLight / optkit schedules (`build.py`). When the build fails, `diagnose.py` compiles
the imported bindings one by one to name the ATen op and module path that TVM cannot compile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optkit.backends.artifact import Artifact
from optkit.backends.blas import BLAS_MATMUL, offload_matmuls
from optkit.backends.build import SCHEDULES, build
from optkit.backends.targets import TargetSpec, resolve_target
from optkit.backends.tvm_import import NodeOrigin, import_program

from optkit.errors import BackendError, ConfigError, UnknownNameError
from optkit.ir.program import Program

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def lower(
    program: Program,
    target: str = "cpu",
    tune_trials: int = 0,
    work_dir: str | Path | None = None,
    *,
    schedule: str = "default",
    num_cores: int | None = None,
    cuda_arch: str = "sm_80",
    fast_math: bool = True,
    progress: Progress | None = None,
) -> Artifact:
    """Compile `program` for `target` (`cpu` or `cuda`) and return the runnable `Artifact`.

    On the CPU, constant weights of matmuls and convolutions are packed into panels
    (`packing.py`) and, with `fast_math` (default), softmax / exp / erf / tanh / sigmoid use
    vectorizable polynomial versions (`fast_math.py`); int8 matmuls and convs use AVX-512 VNNI
    where the target has it (`vnni.py`).
    `schedule` is `default` (a self-contained library), `blas` (float32 matmuls that remain
    after packing, such as attention's, call numpy's BLAS) or `naive` (TVM's untuned loop nests,
    for comparison); see `build.py`. `tune_trials > 0` measures that many schedule variants of
    the matmul-like kernels (see `tuning.py` for why this is not MetaSchedule) and keeps the
    database in `work_dir` (default `.optkit-tune/<target>`), so a second run reuses it.
    """
    if tune_trials < 0:
        raise ConfigError(f"tune_trials must be >= 0, got {tune_trials}")
    if schedule not in SCHEDULES:
        raise UnknownNameError("schedule", schedule, SCHEDULES)
    say = progress or (lambda _msg: None)
    spec = resolve_target(target, num_cores=num_cores, cuda_arch=cuda_arch)
    start = time.perf_counter()
    program = _fold_batchnorms(program)
    say("import into Relax")
    imported = import_program(program)
    mod = imported.mod
    if spec.kind == "llvm" and schedule != "naive":
        from tvm import relax

        say("pack weights")
        mod = relax.transform.FoldConstant()(mod)  # transposed weights are computed once, here
    imported_mod = mod
    mod, figures = _specialize(mod, spec, schedule, fast_math)
    tuned = None
    tuning: dict[str, Any] = {}
    if tune_trials > 0:
        from optkit.backends.tuning import default_work_dir, tune

        tune_dir = Path(work_dir) if work_dir is not None else default_work_dir(spec.name)
        tuned, tuning = tune(mod, spec, tune_trials, tune_dir, progress=say)
    say(f"build for {spec.name}")
    try:
        executable = build(mod, spec, schedule, tuned)
    except BackendError as err:
        say("find the op that fails to compile")
        raise _name_failing_op(err, imported_mod, imported.origins, spec, schedule, fast_math) from err
    info: dict[str, Any] = {
        "model": program.name,
        "schedule": schedule,
        "tune_trials": tune_trials,
        **figures,
        "extern_funcs": [BLAS_MATMUL] if figures["blas_matmuls"] else [],
        "decomposed_ops": list(imported.decomposed),
        "aten_rewrites": dict(imported.rewritten),
        "compile_seconds": round(time.perf_counter() - start, 2),
        **({"tuning": tuning} if tuning else {}),
    }
    log.info("lowered %s for %s in %.1f s", program.name, spec.name, info["compile_seconds"])
    return Artifact(executable, spec, imported.inputs, imported.outputs, info)


def _fold_batchnorms(program: Program) -> Program:
    """`program`, or a copy of it with its inference BatchNorms folded when it has any."""
    from optkit.passes.fold_batchnorm import fold_batchnorm

    from optkit.ir.ops import op_name

    if not any(
        op_name(n) in ("batch_norm", "_native_batch_norm_legit_no_training") for n in program.compute_nodes()
    ):
        return program
    copy = program.clone()
    if fold_batchnorm(copy.graph_module):
        from optkit.ir.program import eliminate_dead_code, remove_unused_attributes

        eliminate_dead_code(copy.graph_module)
        remove_unused_attributes(copy.graph_module)
        copy.graph_module.recompile()
        return copy
    return program


def _specialize(mod: Any, spec: TargetSpec, schedule: str, fast_math: bool) -> tuple[Any, dict[str, int]]:
    """The CPU rewrites before the build: packed weights, fast math, BLAS; figures for the report."""
    figures = {
        "packed_matmuls": 0,
        "packed_convs": 0,
        "depthwise_convs": 0,
        "channels_last_convs": 0,
        "vnni_kernels": 0,
        "fast_math_ops": 0,
        "blas_matmuls": 0,
    }
    if spec.kind != "llvm" or schedule == "naive":
        return mod, figures
    from optkit.backends.fast_math import fast_math as use_fast_math
    from optkit.backends.layout import cancel_transposes, channels_last
    from optkit.backends.packing import pack_weights
    from optkit.backends.vnni import target_has_vnni

    mod, figures["channels_last_convs"] = channels_last(mod)
    mod, packed = pack_weights(mod, vnni=target_has_vnni(spec.tvm_target()))
    figures.update(
        packed_matmuls=packed["matmul"],
        packed_convs=packed["conv2d"],
        depthwise_convs=packed["depthwise"],
        vnni_kernels=packed["vnni"],
    )
    mod, _ = cancel_transposes(mod)
    if fast_math:
        mod, figures["fast_math_ops"] = use_fast_math(mod)
    if schedule == "blas":
        mod, figures["blas_matmuls"] = offload_matmuls(mod)
    return mod, figures


def _name_failing_op(
    err: BackendError,
    mod: Any,
    origins: dict[str, NodeOrigin],
    spec: TargetSpec,
    schedule: str,
    fast_math: bool,
) -> BackendError:
    """`err` restated with the ATen op and module path of the first binding that fails alone."""
    from optkit.backends.diagnose import locate_build_failure

    try:
        found = locate_build_failure(
            mod, origins, lambda m: build(_specialize(m, spec, schedule, fast_math)[0], spec, schedule)
        )
    except Exception:  # the search is best effort; the build's own error still stands
        log.debug("could not search for the failing op", exc_info=True)
        found = None
    if found is None:
        return BackendError(f"{err} (no single op fails to compile alone; the failure needs fused kernels)")
    origin, message = found
    return BackendError(
        f"TVM cannot compile {origin.describe()} for {spec.name}: {message}. Rewrite that module with "
        "other ops (e.g. cast its inputs) or keep it out of the lowered graph"
    )
