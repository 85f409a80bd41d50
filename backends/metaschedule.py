"""MetaSchedule as a tuner: search schedules per kernel, keep each one only where it beats optkit's.

`lower(..., tuner="metaschedule", tune_trials=N)` fuses the module as the build will (same
passes, so the kernels are the ones the build schedules), takes the kernels with a reduction
(matmuls, packed matmuls and convs, softmax / norm rows: elementwise kernels have nothing for a
search to find that `CPUElementwise` misses) and tunes those not yet in the work dir's
MetaSchedule JSON database (`database_workload.json`, `database_tuning_record.json`) with a
global budget of N trials. Then, per kernel, it compiles MetaSchedule's best schedule and
optkit's own rule (`build.schedule_pass`) alone, times both with `time_evaluator` on random
inputs and keeps the faster; the verdict and both times are stored in
`<work_dir>/metaschedule_choices.json`, so a later run with the same kernels spends no trials
and measures nothing. The winners are handed to the build as scheduled PrimFuncs
(`build.build(..., overrides=...)`), which DLight's default-schedule pass then leaves alone.

Two things differ from `tune_relax`'s defaults, both for this 2-core machine:
- Builds and runs happen in this process (`_InProcessBuilder`, `_InProcessRunner`). The local
  builder and runner start worker processes that each import TVM and its tensor intrinsics;
  on a loaded 2-core machine that start took longer than the builder's 30 s timeout, and every
  trial failed.
- `TuneContext` imports `tvm.s_tir.tensor_intrin`, whose CUDA, ROCm and Hexagon intrinsics take
  ~65 s to parse; only the x86 ones matter on this target, so `_x86_tensor_intrinsics` imports
  those alone (the package is registered without its `__init__`, once per process). The cost
  model is `random`: TVM's default (`xgb`) needs xgboost, which optkit does not depend on. Without
a learned cost model the evolutionary search is a costly random search (its first generation
alone, 512 candidates a kernel, ran over 2 minutes on `dit:small` before the first trial), so
the search is `replay-trace`: random decisions in MetaSchedule's design space, each measured.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from optkit.backends.targets import TargetSpec

from optkit.errors import BackendError
from optkit.fsutil import atomic_file

log = logging.getLogger(__name__)

CHOICES_FILE = "metaschedule_choices.json"
MS_LOGGER = "tvm.s_tir.meta_schedule"


def tune_metaschedule(
    mod: Any,
    spec: TargetSpec,
    trials: int,
    work_dir: Path,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tune the reduction kernels of `mod` with MetaSchedule (`trials` in all), keep per kernel
    the faster of MetaSchedule's schedule and optkit's rule.

    Returns (scheduled PrimFunc per workload key, for the kernels MetaSchedule won; a summary:
    tuner, kernels, trials run, reused kernels, database, and per kernel the winner and both
    times in microseconds).
    """
    if spec.kind != "llvm":
        raise BackendError(f"MetaSchedule tuning is implemented for the cpu target only, not {spec.name}")
    _check_tvm_ffi()
    say = progress or (lambda _msg: None)
    work_dir.mkdir(parents=True, exist_ok=True)
    _x86_tensor_intrinsics()
    from tvm.s_tir import meta_schedule as ms

    target = spec.tvm_target()
    kernels = reduction_kernels(mod, spec)
    database = ms.database.JSONDatabase(work_dir=str(work_dir))
    queries = {key: _as_module(func) for key, (_name, func) in kernels.items()}
    choices = _load_choices(work_dir / CHOICES_FILE)
    on_target = _target_digest(spec)
    # A kernel is searched once: the run that first sees it (a verdict is kept even when the
    # budget left it no trial), so a later run with the same kernels spends no trials.
    pending = [
        key
        for key, query in queries.items()
        if not database.has_workload(query) and f"{key}-{on_target}" not in choices
    ]
    run = 0
    if pending and trials > 0:
        pending.sort(key=lambda k: -_flops(queries[k]))  # the heaviest first, in case trials run out
        run = _search(pending, kernels, queries, target, trials, work_dir, database, say)
    overrides: dict[str, Any] = {}
    for i, (key, (name, func)) in enumerate(kernels.items()):
        choice = choices.get(f"{key}-{on_target}")
        if choice is None or key in pending:
            say(f"compare schedules {i + 1}/{len(kernels)}: {name}")
            choice = _compare(name, func, queries[key], database, spec)
            choices[f"{key}-{on_target}"] = choice
        if choice["winner"] == "metaschedule":
            sch = database.query_schedule(queries[key], target, workload_name="main")
            if sch is None:  # the record went missing from the database: optkit's rule stands
                log.warning("no MetaSchedule record for %s any more; using optkit's schedule", name)
                continue
            overrides[key] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    _save_choices(work_dir / CHOICES_FILE, choices)
    summary = {
        "tuner": "metaschedule",
        "kernels": len(kernels),
        "trials_run": run,
        "reused": len(kernels) - len(pending),
        "database": str(work_dir),
        "choices": {name: _public(choices[f"{key}-{on_target}"]) for key, (name, _f) in kernels.items()},
    }
    log.info("metaschedule tuning: %d kernels, %d trials, %d reused", len(kernels), run, summary["reused"])
    return overrides, summary


def reduction_kernels(mod: Any, spec: TargetSpec) -> dict[str, tuple[str, Any]]:
    """The fused, unscheduled PrimFuncs of `mod` with a reduction block, by `build.structural_key`:
    (name, PrimFunc). Fused exactly as `build.build` fuses, so the keys match at build time."""
    import tvm
    from optkit.backends.build import fuse, structural_key

    fused = fuse(mod, spec)
    kernels: dict[str, tuple[str, Any]] = {}
    for gvar, func in fused.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs and "tirx.is_scheduled" in func.attrs:
            continue
        if _has_reduction(func):
            kernels.setdefault(structural_key(func), (gvar.name_hint, func))
    return kernels


def _has_reduction(func: Any) -> bool:
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    root = sch.get_sblock("root", func_name="main")
    for block in sch.get_child_blocks(root):
        if any(iv.iter_type == 2 for iv in sch.get(block).iter_vars):  # IterVar.CommReduce
            return True
    return False


def _as_module(func: Any) -> Any:
    """The one-function IRModule MetaSchedule tunes and its database is queried with."""
    import tvm

    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def _search(
    pending: list[str],
    kernels: dict[str, tuple[str, Any]],
    queries: dict[str, Any],
    target: Any,
    trials: int,
    work_dir: Path,
    database: Any,
    say: Callable[[str], None],
) -> int:
    """Run MetaSchedule on the `pending` kernels with `trials` in all; returns the trials run."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir
    from tvm.s_tir.meta_schedule.utils import fork_seed

    names = [kernels[key][0] for key in pending]
    # MetaSchedule sizes its console handler by its logger's level (and then sets that to DEBUG):
    # at WARNING, its task table per batch goes to DIR/logs only.
    logging.getLogger(MS_LOGGER).setLevel(logging.WARNING)
    loggers = get_loggers_from_work_dir(str(work_dir), names)
    contexts = [
        ms.TuneContext(
            mod=queries[key],
            target=target,
            space_generator="post-order-apply",
            search_strategy="replay-trace",
            task_name=name,
            logger=logger,
            rand_state=seed,
            num_threads=1,
        ).clone()
        for key, name, logger, seed in zip(pending, names, loggers, fork_seed(0, n=len(pending)), strict=True)
    ]
    per_task = max(1, trials // len(pending))  # an equal share each; no kernel starves
    builder, runner, progress = _measure_classes()
    count = _TrialCount()
    say(f"metaschedule: {len(pending)} kernels, {trials} trials")
    try:
        ms.tune.tune_tasks(
            tasks=contexts,
            task_weights=[1.0] * len(contexts),
            work_dir=str(work_dir),
            max_trials_global=trials,
            max_trials_per_task=per_task,
            num_trials_per_iter=min(16, per_task),
            builder=builder(),
            runner=runner(),
            database=database,
            cost_model="random",
            # TVM's defaults less RemoveBuildArtifact: the in-process "artifacts" are not files.
            measure_callbacks=[
                ms.measure_callback.AddToDatabase(),
                ms.measure_callback.UpdateCostModel(),
                progress(names, trials, count, say),
            ],
            task_scheduler="gradient",
        )
    finally:
        _BUILT.clear()  # modules built but never run (a failed batch)
    return count.trials


def _flops(query: Any) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(query))
    except Exception:  # an estimate only orders the search; a kernel it cannot count goes last
        return 0.0


def _compare(name: str, func: Any, query: Any, database: Any, spec: TargetSpec) -> dict[str, Any]:
    """Time optkit's schedule and MetaSchedule's best for one kernel; the faster wins."""
    import tvm
    from optkit.backends.build import schedule_pass

    target = spec.tvm_target()
    with target:
        ours = schedule_pass(spec)(tvm.IRModule({"main": func}))["main"]
    optkit_us = time_kernel(ours, target)
    sch = database.query_schedule(query, target, workload_name="main")
    ms_us = time_kernel(sch.mod["main"], target) if sch is not None else None
    wins = ms_us is not None and (optkit_us is None or ms_us < optkit_us)
    return {
        "name": name,
        "winner": "metaschedule" if wins else "optkit",
        "optkit_us": None if optkit_us is None else round(optkit_us, 3),
        "metaschedule_us": None if ms_us is None else round(ms_us, 3),
    }


def time_kernel(func: Any, target: Any) -> float | None:
    """Microseconds per call of PrimFunc `func` alone on random inputs (best of 3 repeats of
    `time_evaluator`); None when it fails to compile."""
    import tvm

    try:
        lib = tvm.compile(_as_module(func), target=target).jit()
    except Exception as err:  # a schedule LLVM cannot compile simply does not compete
        log.debug("kernel failed to build: %s", err)
        return None
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    args = [_random_tensor(info.as_json()) for info in ArgInfo.from_prim_func(func)]
    timer = lib.time_evaluator("main", tvm.cpu(0), number=3, repeat=3, min_repeat_ms=10)
    return float(min(timer(*args).results) * 1e6)


def _load_choices(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text())["choices"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise BackendError(f"{path} is corrupt ({err}); delete it to compare the schedules again") from err


def _save_choices(path: Path, choices: dict[str, dict[str, Any]]) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps({"version": 1, "choices": choices}, indent=1) + "\n")


def _target_digest(spec: TargetSpec) -> str:
    return hashlib.sha256(json.dumps(spec.config, sort_keys=True).encode()).hexdigest()[:12]


def _public(choice: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in choice.items() if k != "name"}


def _check_tvm_ffi() -> None:
    """Refuse, rather than segfault, with an apache-tvm-ffi whose JSON serializer crashes."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("apache-tvm-ffi")
    except PackageNotFoundError:
        return
    if found.startswith("0.1.15"):
        raise BackendError(
            f"MetaSchedule segfaults with apache-tvm-ffi {found} (its JSON serializer does not match "
            "the apache-tvm 0.27 wheel); install apache-tvm-ffi==0.1.14.post1 (constraints.txt) or "
            "use --tuner optkit"
        )


def _x86_tensor_intrinsics() -> None:
    """Register the x86 tensor intrinsics without the other targets' (see the module docstring)."""
    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        if spec is None:
            raise BackendError(f"this TVM build has no {name}; MetaSchedule tuning needs it")
        sys.modules[name] = importlib.util.module_from_spec(spec)
    importlib.import_module(f"{name}.x86")


# -- in-process builder, runner and progress callback ---------------------------------------------
# Built on first use: `derived_object` needs TVM, which optkit imports only when lowering.
_BUILT: dict[str, Any] = {}  # the "artifact path" the builder hands the runner -> compiled module


@dataclass
class _TrialCount:
    trials: int = 0


@functools.cache
def _measure_classes() -> tuple[Any, Any, Any]:
    """(InProcessBuilder, InProcessRunner, Progress) as MetaSchedule objects."""
    import tvm
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    @derived_object
    class InProcessBuilder(ms.builder.PyBuilder):  # type: ignore[misc]
        def build(self, build_inputs: list[Any]) -> list[Any]:
            results = []
            for item in build_inputs:
                try:
                    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(item.mod)
                    lib = tvm.compile(mod, target=item.target).jit()
                except Exception as err:  # a failed candidate is a failed trial, not a failed run
                    results.append(ms.builder.BuilderResult(None, f"{type(err).__name__}: {err}"))
                    continue
                key = f"in-process:{len(_BUILT)}:{id(lib)}"
                _BUILT[key] = lib
                results.append(ms.builder.BuilderResult(key, None))
            return results

    @derived_object
    class DoneFuture(ms.runner.PyRunnerFuture):  # type: ignore[misc]
        def __init__(self, result: Any) -> None:
            super().__init__()
            self.value = result

        def done(self) -> bool:
            return True

        def result(self) -> Any:
            return self.value

    @derived_object
    class InProcessRunner(ms.runner.PyRunner):  # type: ignore[misc]
        def run(self, runner_inputs: list[Any]) -> list[Any]:
            futures = []
            for item in runner_inputs:
                lib = _BUILT.pop(item.artifact_path, None)
                try:
                    if lib is None:
                        raise BackendError(f"no compiled module for {item.artifact_path}")
                    args = [_random_tensor(a.as_json()) for a in item.args_info]
                    timer = lib.time_evaluator("main", tvm.cpu(0), number=3, repeat=1, min_repeat_ms=10)
                    result = ms.runner.RunnerResult([float(t) for t in timer(*args).results], None)
                except Exception as err:  # a candidate that fails on real inputs is a failed trial
                    result = ms.runner.RunnerResult(None, f"{type(err).__name__}: {err}")
                futures.append(DoneFuture(result))
            return futures

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):  # type: ignore[misc]
        def __init__(self, names: list[str], budget: int, count: _TrialCount, say: Callable[[str], None]):
            super().__init__()
            self.names, self.budget, self.count, self.say = names, budget, count, say

        def apply(self, _sched: Any, task_id: int, _cands: Any, _built: Any, results: list[Any]) -> None:
            self.count.trials += len(results)
            times = [min(float(t) for t in r.run_secs) for r in results if r.error_msg is None and r.run_secs]
            best = f", best of batch {min(times) * 1e6:.1f} us" if times else ", no valid candidate"
            done = min(self.count.trials, self.budget)
            self.say(f"metaschedule trial {done}/{self.budget}: {self.names[task_id]}{best}")

    return InProcessBuilder, InProcessRunner, Progress


def _random_tensor(arg_info: Any) -> Any:
    """A tensor for MetaSchedule's JSON argument info `["TENSOR", dtype, shape]`."""
    import tvm

    _kind, dtype, shape = arg_info
    rng = np.random.default_rng(0)
    shape = [int(d) for d in shape]
    data = rng.standard_normal(shape) if str(dtype).startswith("float") else rng.integers(-8, 8, size=shape)
    return tvm.runtime.tensor(data.astype(str(dtype)))
