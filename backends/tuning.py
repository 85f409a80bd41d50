"""Tuning: measure schedule variants of each matmul-like kernel, keep the best in a JSON database.

This is `tuner="optkit"` (the default). MetaSchedule is the other tuner (`tuner="metaschedule"`,
`metaschedule.py`). It was ruled out here while `tvm.ir.save_json` (`ffi::ToJSONGraph`)
segfaulted on any TIR object, which MetaSchedule's `TuneContext` and JSON database both hit: that
came from `apache-tvm-ffi` 0.1.15.x, which is not binary-compatible with the apache-tvm
0.27.0.post1 wheel; with `apache-tvm-ffi==0.1.14.post1` (pinned in constraints.txt) it works.

What optkit tunes: the parameters of its own CPU matmul template (`cpu_schedules.py`): rows in
the register tile and vector lanes per tile. Each trial compiles one kernel with one variant and
times it on random inputs with TVM's `time_evaluator`; the fastest variant per kernel is stored
in `<work_dir>/tuning_db.json` under a key made from the kernel's TVMScript and the target, so a
later run (same kernel, same target) reuses it without measuring. Twelve variants a kernel, a
second or so each: cheap, and on the packed kernels the default tile usually stands.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from optkit.backends.targets import TargetSpec

from optkit.errors import BackendError
from optkit.fsutil import atomic_file

log = logging.getLogger(__name__)

DB_FILE = "tuning_db.json"
ROW_TILES = (8, 4, 6, 2)  # the default (8) first, so even one trial keeps the default in play
VECTOR_LANES = (32, 16, 64)


def default_work_dir(target: str) -> Path:
    """`.optkit-tune/<target>` under the current directory."""
    return Path(".optkit-tune") / target


def workload_key(func: Any, spec: TargetSpec) -> str:
    """A stable key for a fused PrimFunc on a target: SHA-256 of its TVMScript and the target."""
    text = func.script() + json.dumps(spec.config, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def candidates() -> list[dict[str, int]]:
    """The schedule variants tried per kernel, default first."""
    return [{"rows": r, "lanes": v} for v, r in itertools.product(VECTOR_LANES, ROW_TILES)]


class TuningDatabase:
    """Best schedule parameters per workload key, persisted as JSON in the work dir."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        if path.is_file():
            try:
                self.records = json.loads(path.read_text())["records"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise BackendError(
                    f"tuning database {path} is corrupt ({err}); delete it to start over"
                ) from err

    def best(self, key: str) -> dict[str, int] | None:
        record = self.records.get(key)
        return dict(record["params"]) if record else None

    def commit(self, key: str, name: str, params: dict[str, int], ms: float) -> None:
        old = self.records.get(key)
        if old is None or ms < old["ms"]:
            self.records[key] = {"name": name, "params": params, "ms": ms}

    def save(self) -> None:
        with atomic_file(self.path) as tmp:
            tmp.write_text(json.dumps({"version": 1, "records": self.records}, indent=1) + "\n")


def tune(
    mod: Any,
    spec: TargetSpec,
    trials: int,
    work_dir: Path,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, dict[str, int]], dict[str, Any]]:
    """Measure up to `trials` variants over the matmul-like kernels of `mod`; returns the schedules.

    Returns (best params per workload key, a summary: kernels, trials run, reused records, DB path).
    Kernels already in the database are not measured again.
    """
    if spec.kind != "llvm":
        raise BackendError(f"tuning is implemented for the cpu target only, not {spec.name}")
    say = progress or (lambda _msg: None)
    work_dir.mkdir(parents=True, exist_ok=True)
    db = TuningDatabase(work_dir / DB_FILE)
    tasks = extract_tasks(mod, spec)
    pending = [t for t in tasks if db.best(t["key"]) is None]
    reused = len(tasks) - len(pending)
    queue = [(t, c) for c in candidates() for t in pending]  # round-robin: every kernel gets trials early
    run = 0
    for task, params in queue[:trials]:
        run += 1
        say(
            f"tune {run}/{min(trials, len(queue))}: {task['name']} rows={params['rows']} lanes={params['lanes']}"
        )
        ms = _measure(task, params, spec)
        if ms is not None:
            db.commit(task["key"], task["name"], params, ms)
    db.save()
    best = {t["key"]: p for t in tasks if (p := db.best(t["key"])) is not None}
    summary = {
        "tuner": "optkit",
        "kernels": len(tasks),
        "trials_run": run,
        "reused": reused,
        "database": str(db.path),
    }
    log.info("tuning: %s", summary)
    return best, summary


def extract_tasks(mod: Any, spec: TargetSpec) -> list[dict[str, Any]]:
    """The fused PrimFuncs with one reduction block, with the argument types `main` calls them with."""
    import tvm
    from optkit.backends.cpu_schedules import is_matmul_like
    from tvm import relax

    with spec.tvm_target():
        fused = tvm.transform.Sequential(
            [
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
            ]
        )(mod)
    call_tir = tvm.ir.Op.get("relax.call_tir")
    tasks: dict[str, dict[str, Any]] = {}
    for block in fused["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not isinstance(call, relax.Call) or call.op != call_tir:
                continue
            gvar = call.args[0]
            func = fused[gvar]
            if not is_matmul_like(func):
                continue
            key = workload_key(func, spec)
            arg_tys = [a.ty for a in call.args[1].fields] + [call.ty]
            tasks.setdefault(key, {"key": key, "name": gvar.name_hint, "func": func, "types": arg_tys})
    return list(tasks.values())


def _measure(task: dict[str, Any], params: dict[str, int], spec: TargetSpec) -> float | None:
    import tvm
    from optkit.backends.cpu_schedules import CPUMatmul

    target = spec.tvm_target()
    sch = CPUMatmul(params).apply(task["func"], target, False)
    if sch is None:
        return None
    func = sch.mod["main"].with_attr("global_symbol", "main")
    try:
        lib = tvm.compile(tvm.IRModule({"main": func}), target=target).jit()
    except Exception as err:  # a variant LLVM cannot compile is just a failed trial
        log.debug("variant %s of %s failed to build: %s", params, task["name"], err)
        return None
    rng = np.random.default_rng(0)
    args = []
    for ty in task["types"]:
        shape = [int(d) for d in ty.shape]
        dtype = str(ty.dtype)
        if dtype.startswith("float"):
            data = rng.standard_normal(shape).astype(dtype)
        else:
            data = rng.integers(-8, 8, size=shape).astype(dtype)
        args.append(tvm.runtime.tensor(data))
    timer = lib.time_evaluator("main", tvm.cpu(0), number=3, repeat=1, min_repeat_ms=20)
    return float(timer(*args).mean * 1e3)
