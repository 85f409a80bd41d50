"""`lower(program, target)`: the one entry point from a Program to a compiled `Artifact`.

Order: inference BatchNorms folded into the convs before them (`fold-batchnorm`, on a copy of
the Program: one elementwise kernel less per conv, and the packed kernels see the folded
weights) -> import (`tvm_import.py`: ATen rewrites from `aten_rewrites.py`, quantized converters
from `quantized.py`) -> on CPU, float convs in NHWC (`layout.py`), packed weights (depthwise
convs included), fast math and with `schedule="blas"` float32 matmuls
to BLAS (`_specialize`) -> optional schedule tuning with a persistent database (`tuning.py`, or
MetaSchedule per kernel where it beats optkit's rule: `metaschedule.py`) ->
build with DLight / optkit schedules (`build.py`), the weights lifted out of the library into a
tuple parameter after fusion (`weights.py`). When the build fails, `diagnose.py` compiles
the imported bindings one by one to name the ATen op and module path that TVM cannot compile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from optkit.backends.artifact import Artifact
from optkit.backends.blas import BLAS_MATMUL, offload_matmuls
from optkit.backends.build import SCHEDULES, build
from optkit.backends.targets import TargetSpec, resolve_target
from optkit.backends.tvm_import import NodeOrigin, import_program
from optkit.backends.weights import LiftedWeights, WeightReleaser

from optkit.errors import BackendError, ConfigError, UnknownNameError
from optkit.ir.program import Program

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
MAIN = "main"
TUNERS = ("optkit", "metaschedule")
ATTENTION_PRECISIONS = ("auto", "float32", "float16", "int16")


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
    tuner: str = "optkit",
    progress: Progress | None = None,
    release_weights: bool = False,
    attention_precision: str = "auto",
    winograd: bool = True,
) -> Artifact:
    """Compile `program` for `target` (`cpu` or `cuda`) and return the runnable `Artifact`.

    On the CPU, constant weights of matmuls and convolutions are packed into panels
    (`packing.py`) and, with `fast_math` (default), softmax / exp / erf / tanh / sigmoid use
    vectorizable polynomial versions and divisions by a constant multiply by its reciprocal
    (`fast_math.py`); int8 matmuls and convs use AVX-512 VNNI
    where the target has it (`vnni.py`).
    `schedule` is `default` (a self-contained library), `blas` (float32 matmuls that remain
    after packing, such as attention's, call numpy's BLAS) or `naive` (TVM's untuned loop nests,
    for comparison); see `build.py`. `tune_trials > 0` measures that many schedule variants of
    the matmul-like kernels with optkit's tuner (`tuner="optkit"`, `tuning.py`), or spends that
    many MetaSchedule trials on the kernels with a reduction and keeps, per kernel, the faster of
    its schedule and optkit's (`tuner="metaschedule"`, `metaschedule.py`; the winners and their
    times are in `info["tuning"]["choices"]`). Either keeps its database in `work_dir` (default
    `.optkit-tune/<target>`), so a second run with the same kernels spends no trials.
    `release_weights` frees the Program's weights as their packed panels replace them, so that
    lowering holds about one copy of the weights, not two (`optkit lower` does; the Program
    cannot run afterwards, and a build failure is reported without naming the failing op).
    The weights leave the library either way (`weights.py`).
    `attention_precision`: fused attention in `float32`, in `float16` (`attention_kernel.py`, CPUs
    with AVX512-FP16 only), on 16-bit integers (`int16`: `attention_int16.py`, CPUs with AVX-512
    VNNI) or `auto`: for a quantized Program (its outputs already carry the quantization's error)
    float16 where the CPU has AVX512-FP16, else int16 where it has AVX-512 VNNI; float32
    otherwise. `info["reduced_attentions"]` counts the attentions that run in that precision
    (the others, whose shapes the kernel does not take, stay in float32).
    `winograd` (with `fast_math`, on AVX-512 CPUs): float32 3 x 3 convs at stride 1 run as
    Winograd F(2 x 2) or F(4 x 4) transforms around batched GEMMs (`winograd.py`; counted in
    `info["winograd_convs"]`): up to 4x fewer multiply-adds, results that differ from the direct
    conv in the last bits, and those convs' packed weights 16/9 or 4 times as large.
    """
    return lower_functions(
        {MAIN: program},
        target,
        tune_trials,
        work_dir,
        schedule=schedule,
        num_cores=num_cores,
        cuda_arch=cuda_arch,
        fast_math=fast_math,
        tuner=tuner,
        progress=progress,
        release_weights=release_weights,
        attention_precision=attention_precision,
        winograd=winograd,
    )[MAIN]


def lower_functions(
    programs: Mapping[str, Program],
    target: str = "cpu",
    tune_trials: int = 0,
    work_dir: str | Path | None = None,
    *,
    schedule: str = "default",
    num_cores: int | None = None,
    cuda_arch: str = "sm_80",
    fast_math: bool = True,
    tuner: str = "optkit",
    progress: Progress | None = None,
    release_weights: bool = False,
    attention_precision: str = "auto",
    winograd: bool = True,
) -> dict[str, Artifact]:
    """Compile several Programs into ONE library, each a function named by its key (one of them
    `main`), and return an Artifact per function; the Artifacts share the library and its VM.

    The VM's constant pool keeps equal constants once (TVM's ExecBuilder deduplicates them by
    structural equality), so Programs that share weights, such as a model and its cache step
    variants, store and load each (packed) weight once. Options as for `lower`.
    """
    if isinstance(tune_trials, bool) or not isinstance(tune_trials, int) or tune_trials < 0:
        raise ConfigError(f"tune_trials must be an integer >= 0, got {tune_trials!r}")
    if tuner not in TUNERS:
        raise UnknownNameError("tuner", tuner, TUNERS)
    if schedule not in SCHEDULES:
        raise UnknownNameError("schedule", schedule, SCHEDULES)
    if attention_precision not in ATTENTION_PRECISIONS:
        raise UnknownNameError("attention precision", attention_precision, ATTENTION_PRECISIONS)
    if MAIN not in programs:
        raise ConfigError(f"lower_functions needs a Program named {MAIN!r}; got {', '.join(programs)}")
    say = progress or (lambda _msg: None)
    spec = resolve_target(target, num_cores=num_cores, cuda_arch=cuda_arch)
    reduced = _attention_precision(attention_precision, spec, schedule, programs.values())
    from optkit.backends.vnni import int8_arith

    # RGB stems stay int8 where the int8 tile kernels copy them by kernel rows (`quantized.py`)
    narrow_int8 = spec.kind == "llvm" and schedule != "naive" and int8_arith(spec.tvm_target()) is not None
    start = time.perf_counter()
    imported = {}
    tensors: list[Any] = []  # the Programs' weights (and their BatchNorm-folded copies')
    for i, (name, program) in enumerate(programs.items()):
        say("import into Relax" + (f" ({i + 1}/{len(programs)})" if len(programs) > 1 else ""))
        folded = _fold_batchnorms(program)
        if release_weights:
            tensors += [*program.parameters().values(), *folded.parameters().values()]
        imported[name] = import_program(folded, narrow_int8_convs=narrow_int8)
        # The imported constants are the Program's own tensors (DLPack). Packing reads them, and
        # the transposes in front of them, in place (`packing._constant`); what it leaves is
        # folded after it (`_specialize`): no transposed copy of every weight is made first.

    mod = _merged_module({name: imp.mod for name, imp in imported.items()})
    if len(programs) > 1 or spec.kind == "llvm":
        say("pack weights")
    releaser = None
    if release_weights:
        releaser = lambda m: WeightReleaser(tensors, m)  # noqa: E731  counted on the module packing sees
    weights = LiftedWeights()  # the constants leave the library at the build (`weights.py`)
    mod, figures = _specialize(
        mod,
        spec,
        schedule,
        fast_math,
        lambda done, total, left: say(f"pack weights {done}/{total} (about {left:.0f} s left)"),
        releaser,
        attention=reduced,
        winograd=winograd,
        weights=weights,
    )
    tuned = None
    overrides = None
    tuning: dict[str, Any] = {}
    if tune_trials > 0:
        from optkit.backends.tuning import default_work_dir, tune

        tune_dir = Path(work_dir) if work_dir is not None else default_work_dir(spec.name)
        if tuner == "metaschedule":
            from optkit.backends.metaschedule import tune_metaschedule

            overrides, tuning = tune_metaschedule(mod, spec, tune_trials, tune_dir, progress=say)
        else:
            tuned, tuning = tune(mod, spec, tune_trials, tune_dir, progress=say)
    say(f"build for {spec.name}")
    try:
        executable = build(mod, spec, schedule, tuned, overrides, weights=weights)
    except BackendError as err:
        if release_weights:  # the imported graph's weights are gone; it cannot be rebuilt op by op
            raise
        say("find the op that fails to compile")
        main = imported[MAIN]
        main_mod = _merged_module({MAIN: main.mod})
        raise _name_failing_op(
            err, main_mod, main.origins, spec, schedule, fast_math, reduced, winograd
        ) from err
    info: dict[str, Any] = {
        "model": programs[MAIN].name,
        "schedule": schedule,
        "tune_trials": tune_trials,
        **({"tuner": tuner} if tune_trials else {}),
        "attention_precision": reduced,
        **figures,
        "extern_funcs": [BLAS_MATMUL] if figures["blas_matmuls"] else [],
        "decomposed_ops": list(dict.fromkeys(op for imp in imported.values() for op in imp.decomposed)),
        "aten_rewrites": dict(imported[MAIN].rewritten),
        "weight_tensors": len(weights.tensors),
        "weight_bytes": weights.nbytes,
        "compile_seconds": round(time.perf_counter() - start, 2),
        **({"functions": list(programs)} if len(programs) > 1 else {}),
        **({"tuning": tuning} if tuning else {}),
    }
    log.info(
        "lowered %s (%d functions) for %s in %.1f s",
        info["model"],
        len(programs),
        spec.name,
        info["compile_seconds"],
    )
    main_artifact = Artifact(
        executable,
        spec,
        imported[MAIN].inputs,
        imported[MAIN].outputs,
        info,
        weights.tensors,
        weights.derivations,
    )
    return {
        name: main_artifact
        if name == MAIN
        else main_artifact.entry_point(name, imported[name].inputs, imported[name].outputs)
        for name in programs
    }


def _merged_module(mods: Mapping[str, Any]) -> Any:
    """One IRModule holding each module's `main` under its key and the kernels its converters
    emitted (`groupwise_matmul`, ...): the kernels of every key but `main` are renamed
    `KEY__kernel` (structurally equal kernels are kept once) and each `main` calls its own, so
    two Programs whose importers named kernels of different shapes alike do not share one."""
    import tvm
    from tvm import relax

    builder = relax.BlockBuilder()
    mains = {}
    for name, mod in mods.items():
        renames: dict[str, Any] = {}
        for gvar, func in mod.functions_items():
            if gvar.name_hint != "main":
                hint = gvar.name_hint if name == MAIN else f"{name}__{gvar.name_hint}"
                renames[gvar.name_hint] = builder.add_func(func, hint)
        mains[name] = _rename_calls(mod["main"], renames) if renames else mod["main"]
    merged = builder.get()
    for name, main in mains.items():
        merged[tvm.ir.GlobalVar(name)] = main.with_attr("global_symbol", name)
    return merged


def _rename_calls(func: Any, renames: Mapping[str, Any]) -> Any:
    """`func` with every GlobalVar named in `renames` replaced by its new GlobalVar."""
    from tvm import relax

    @relax.expr_functor.mutator
    class _Rename(relax.PyExprMutator):  # type: ignore[misc]
        def visit_global_var_(self, op: Any) -> Any:
            return renames.get(op.name_hint, op)

    return _Rename().visit_expr(func)


def _fold_batchnorms(program: Program) -> Program:
    """`program`, or a copy of it with its inference BatchNorms folded when it has any."""
    from optkit.passes.fold_batchnorm import fold_batchnorm

    from optkit.ir.ops import op_name

    if not any(
        op_name(n) in ("batch_norm", "_native_batch_norm_legit_no_training") for n in program.compute_nodes()
    ):
        return program
    copy = program.clone(share_weights=True)  # fold_batchnorm registers new weights
    if fold_batchnorm(copy.graph_module):
        from optkit.ir.program import eliminate_dead_code, remove_unused_attributes

        eliminate_dead_code(copy.graph_module)
        remove_unused_attributes(copy.graph_module)
        copy.graph_module.recompile()
        return copy
    return program


def _attention_precision(precision: str, spec: TargetSpec, schedule: str, programs: Any) -> str:
    """The precision fused attention runs in (`lower`'s `attention_precision`)."""
    if precision == "float32" or spec.kind != "llvm" or schedule == "naive":
        return "float32"
    from optkit.backends.attention_kernel import target_has_fp16
    from optkit.backends.vnni import target_has_vnni

    target = spec.tvm_target()
    has = {"float16": target_has_fp16(target), "int16": target_has_vnni(target)}
    needs = {"float16": "AVX512-FP16", "int16": "AVX-512 VNNI"}
    if precision in has:
        if not has[precision]:
            raise ConfigError(
                f"attention_precision={precision!r} needs a CPU with {needs[precision]}, and target "
                f"{spec.name} has none; use 'auto' or 'float32'"
            )
        return precision
    from optkit.quant.ops import is_quantized

    if not any(is_quantized(p) for p in programs):
        return "float32"
    return next((name for name, present in has.items() if present), "float32")


def _specialize(
    mod: Any,
    spec: TargetSpec,
    schedule: str,
    fast_math: bool,
    progress: Callable[[int, int, float], None] | None = None,
    releaser: Callable[[Any], WeightReleaser] | None = None,
    attention: str = "float32",
    winograd: bool = True,
    weights: LiftedWeights | None = None,
) -> tuple[Any, dict[str, int]]:
    """The CPU rewrites before the build: packed weights, fast math, BLAS; figures for the report.
    `releaser(mod)`, when given, frees the weights packing replaces (`WeightReleaser`);
    `attention`: the precision of fused attentions where their shapes allow; `winograd`: 3 x 3
    convs as Winograd transforms, with `fast_math` (`lower`); `weights`: the store the build
    lifts the constants into, told which packed weights are derived (`weights.py`)."""
    figures = {
        "packed_matmuls": 0,
        "packed_convs": 0,
        "depthwise_convs": 0,
        "int8_depthwise_inputs": 0,
        "padded_matmuls": 0,
        "channels_last_convs": 0,
        "vnni_kernels": 0,
        "fma_kernels": 0,
        "winograd_convs": 0,
        "fast_math_ops": 0,
        "blas_matmuls": 0,
        "sunk_reshapes": 0,
        "copied_layouts": 0,
        "fused_attentions": 0,
        "reduced_attentions": 0,
        "expand_depthwise_convs": 0,
        "vnni_epilogues": 0,
        "split_group_norms": 0,
        "sliced_takes": 0,
        "sunk_pads": 0,
        "int8_max_pools": 0,
        "shared_quantizes": 0,
        "padded_outputs": 0,
        "geglu_epilogues": 0,
        "reciprocal_divisions": 0,
    }
    if spec.kind != "llvm" or schedule == "naive":
        return mod, figures
    from optkit.backends.attention import fuse_attention
    from optkit.backends.epilogues import fuse_vnni_epilogues
    from optkit.backends.expand_depthwise import applies as expand_depthwise_applies
    from optkit.backends.expand_depthwise import fuse_expand_depthwise
    from optkit.backends.fast_math import fast_math as use_fast_math
    from optkit.backends.fast_math import reciprocal_divisions
    from optkit.backends.layout import cancel_transposes, channels_last
    from optkit.backends.norms import split_group_norms
    from optkit.backends.packing import pack_weights
    from optkit.backends.pads import sink_pads
    from optkit.backends.pools import int8_max_pools
    from optkit.backends.requant import share_quantized
    from optkit.backends.reshapes import copy_shared_layouts, sink_reshapes
    from optkit.backends.slices import constant_takes_as_slices
    from optkit.backends.vnni import LANES as vnni_lanes
    from optkit.backends.vnni import float_arith, int8_arith
    from tvm import relax

    vnni = int8_arith(spec.tvm_target())  # the tile kernels' arithmetic on this CPU, or None
    fma = float_arith(spec.tvm_target())
    mod, figures["channels_last_convs"] = channels_last(mod, fold_weights=False, int8=vnni is not None)
    mod, figures["sunk_pads"] = sink_pads(mod)  # before packing, whose VNNI convs take the pads in
    mod, figures["int8_max_pools"] = int8_max_pools(mod)
    # before packing pads the scores
    lanes = fma.width if fma is not None else vnni_lanes  # float32 lanes of the CPU's registers
    mod, figures["fused_attentions"], figures["reduced_attentions"] = fuse_attention(mod, attention, lanes)
    if fma is not None and expand_depthwise_applies(fma.width):  # before packing takes the convs
        mod, figures["expand_depthwise_convs"] = fuse_expand_depthwise(mod)
    release = releaser(mod) if releaser is not None else None
    mod, packed = pack_weights(
        mod,
        vnni=vnni,
        fma=fma,
        progress=progress,
        consumed=release.consumed if release is not None else None,
        winograd=fast_math and winograd,
        derived=weights.derived if weights is not None else None,
    )
    if release is not None:
        figures["released_weight_bytes"] = release.freed_bytes
    # What packing left (weights of ops it does not pack) is folded once, here, as before.
    mod = relax.transform.FoldConstant()(mod)
    figures.update(
        packed_matmuls=packed["matmul"],
        packed_convs=packed["conv2d"],
        depthwise_convs=packed["depthwise"],
        int8_depthwise_inputs=packed["int8_depthwise"],
        padded_matmuls=packed["padded"],
        vnni_kernels=packed["vnni"],
        fma_kernels=packed["fma"],
        winograd_convs=packed["winograd"],
    )
    mod, _ = cancel_transposes(mod)
    mod, figures["split_group_norms"] = split_group_norms(mod)
    mod, figures["sliced_takes"] = constant_takes_as_slices(mod)
    mod, figures["sunk_reshapes"] = sink_reshapes(mod)
    mod, figures["copied_layouts"] = copy_shared_layouts(mod)
    if vnni is not None:
        mod, figures["shared_quantizes"] = share_quantized(mod)
    # after `share_quantized`, which finds quantize steps by their division; before the VNNI
    # epilogues, which take the multiply into the GEMMs' write-back
    if fast_math:
        mod, figures["reciprocal_divisions"] = reciprocal_divisions(mod)
    if vnni is not None or fma is not None:
        fused = fuse_vnni_epilogues(mod, fast=fast_math)
        mod, figures["vnni_epilogues"], figures["padded_outputs"], figures["geglu_epilogues"] = fused
    if fast_math:  # after the epilogues, which take a GEGLU's `gelu` into a GEMM's write-back
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
    attention: str = "float32",
    winograd: bool = True,
) -> BackendError:
    """`err` restated with the ATen op and module path of the first binding that fails alone."""
    from optkit.backends.diagnose import locate_build_failure

    try:
        found = locate_build_failure(
            mod,
            origins,
            lambda m: build(
                _specialize(m, spec, schedule, fast_math, attention=attention, winograd=winograd)[0],
                spec,
                schedule,
            ),
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
