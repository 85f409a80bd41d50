"""Reliability (issue 16): fuzzed graphs, hostile files, killed and concurrent runs, determinism.

    OMP_NUM_THREADS=1 TVM_NUM_THREADS=1 python benchmarks/bench_reliability.py [--graphs 200] \
        [--tvm-every 4] [--seed 0] [--kills 8] [--races 3] [--timeout 300]

1. Fuzzed graphs: `--graphs` random small models (`optkit.testing.fuzz.random_spec`, seeded) through
   capture -> ptq (checked against eager by the PassManager) -> ONNX Runtime, and every
   `--tvm-every`-th also through TVM (llvm). Each runs in a worker process: a native crash or a
   hang (over `--timeout` s) kills only the worker and is reported with the stage it was in.
2. Hostile files: every case of tests/test_hostile_files.py through the CLI in-process.
3. Killed runs: `optkit optimize` and `optkit lower` killed with SIGKILL at random times; the
   output must be absent or whole, and the next run must succeed.
4. Concurrent runs: two `optkit optimize` processes writing the same output directory at once.
5. Determinism: two runs of `optimize --passes ptq` and of `lower`, bytes compared.

Writes docs/benchmarks.md (section bench_reliability).
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from _docs import cpu_name, write_section  # noqa: E402

TINY = textwrap.dedent(
    """
    import torch
    from torch import nn

    def net():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.LayerNorm(128), nn.Linear(128, 16))
        return model, (torch.randn(8, 64),)
    """
)
TIMING_WORDS = ("latency", "speedup", "time")


# -- 1. fuzzed graphs ----------------------------------------------------------------------------
def _worker(conn: Any) -> None:
    import torch

    from optkit.testing.fuzz import FuzzSpec, check_graph

    torch.set_num_threads(1)
    while True:
        job = conn.recv()
        if job is None:
            return
        spec, tvm = FuzzSpec(**job["spec"]), job["tvm"]
        outcome = check_graph(spec, onnx=True, tvm=tvm, on_stage=lambda s: conn.send(("stage", s)))
        conn.send(("done", outcome.to_dict()))


class Supervisor:
    """One worker process at a time; a dead or hung worker is replaced and its graph reported."""

    def __init__(self, timeout: float) -> None:
        self.timeout, self.ctx = timeout, mp.get_context("spawn")
        self.proc: Any = None
        self.conn: Any = None

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()

    def run(self, spec: Any, tvm: bool) -> dict[str, Any]:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send({"spec": spec.__dict__, "tvm": tvm})
        stage, deadline = "start", time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            try:
                ready = left > 0 and self.conn.poll(min(left, 1.0))
                if ready:
                    kind, value = self.conn.recv()
                    if kind == "done":
                        return value
                    stage = value
                    continue
            except (EOFError, ConnectionError):
                ready = False
            if not self.proc.is_alive() or left <= 0:
                hung = self.proc.is_alive()
                self.proc.kill()
                self.proc.join()
                code = self.proc.exitcode
                self.proc = None
                what = f"hung over {self.timeout:.0f} s" if hung else f"died (exit code {code})"
                return {
                    "spec": spec.describe(),
                    "status": "contained",
                    "stage": stage,
                    "message": f"the worker {what} in stage {stage}",
                }

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(10)


def fuzz(graphs: int, tvm_every: int, seed: int, timeout: float) -> dict[str, Any]:
    from optkit.testing.fuzz import random_spec

    rng = np.random.default_rng(seed)
    supervisor = Supervisor(timeout)
    outcomes = []
    try:
        for i in range(graphs):
            spec = random_spec(rng)
            tvm = tvm_every > 0 and i % tvm_every == 0
            out = supervisor.run(spec, tvm)
            out["tvm"] = tvm
            outcomes.append(out)
            print(
                f"[fuzz {i + 1}/{graphs}] {out['status']:11s} {out['stage']:8s} {out['spec']} {out['message'][:160]}"
            )
    finally:
        supervisor.close()
    return {"outcomes": outcomes, "counts": collections.Counter(o["status"] for o in outcomes)}


# -- 2. hostile files ----------------------------------------------------------------------------
def hostile() -> dict[str, Any]:
    from tests.test_hostile_files import CASES, make_good, run_case

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "good").mkdir()
        good = make_good(Path(scratch) / "good")
        cwd = Path.cwd()
        for i, case in enumerate(CASES):
            work = Path(scratch) / f"case{i}" / "work"
            work.mkdir(parents=True)
            os.chdir(work)
            try:
                handled, why = run_case(case, work, good)
            finally:
                os.chdir(cwd)
            rows.append((case.__name__, handled, why))
            print(f"[hostile] {'ok ' if handled else 'BAD'} {case.__name__}: {why[:150]}")
    return {"rows": rows, "tried": len(rows), "clean": sum(r[1] for r in rows)}


# -- 3-5. processes: killed, concurrent, repeated ------------------------------------------------
def _optkit(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TVM_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "optkit", "--quiet", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _whole_optimize_output(out: Path) -> bool:
    from optkit.ir.serialize import load_program

    if not out.exists():
        return True
    try:
        load_program(out / "model.pt2")
        json.loads((out / "report.json").read_text())
        return (out / "model.onnx").stat().st_size > 0
    except Exception:
        return False


def _whole_artifact(out: Path) -> bool:
    from optkit.backends import load_artifact

    if not out.exists():
        return True
    try:
        load_artifact(out)
        return True
    except Exception:
        return False


def killed_runs(work: Path, kills: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    results = {}
    jobs = {
        "optimize": (
            ["optimize", "tiny:net", "--passes", "ptq", "--repeats", "2", "-o"],
            _whole_optimize_output,
        ),
        "lower": (["lower", "model.pt2", "--target", "cpu", "-o"], _whole_artifact),
    }
    for name, (args, whole) in jobs.items():
        start = time.monotonic()
        done = _optkit(*args, f"{name}-full", cwd=work)
        done.communicate()
        full_s = time.monotonic() - start
        ok = 0
        for k in range(kills):
            out = work / f"{name}-killed"
            proc = _optkit(*args, out.name, "--overwrite", cwd=work)
            time.sleep(float(rng.uniform(0.5, max(1.0, full_s))))
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            intact = whole(out)
            leftovers = [p.name for p in work.iterdir() if p.name.startswith(f".{out.name}.")]
            ok += intact
            print(
                f"[kill {name} {k + 1}/{kills}] output whole or absent: {intact}; hidden leftovers {leftovers}"
            )
        final = _optkit(*args, f"{name}-killed", "--overwrite", cwd=work)
        final.communicate()
        next_ok = final.returncode == 0 and whole(work / f"{name}-killed")
        leftovers = [p.name for p in work.iterdir() if p.name.startswith(f".{name}-killed.")]
        results[name] = {"kills": kills, "intact": ok, "next_run_ok": next_ok, "leftovers": leftovers}
    return results


def races(work: Path, trials: int) -> dict[str, Any]:
    good = 0
    notes = []
    for t in range(trials):
        out = f"race{t}"
        a = _optkit("optimize", "tiny:net", "--passes", "ptq", "--repeats", "2", "-o", out, cwd=work)
        b = _optkit("optimize", "tiny:net", "--passes", "ptq", "--repeats", "2", "-o", out, cwd=work)
        (_, err_a), (_, err_b) = a.communicate(), b.communicate()
        codes = sorted([a.returncode, b.returncode])
        loser = err_a if a.returncode else err_b
        said = "another run is writing" in loser or "exists and is not empty" in loser
        fine = codes == [0, 2] and said and _whole_optimize_output(work / out)
        good += fine
        notes.append(loser.strip().splitlines()[-1][:160] if loser.strip() else "")
        print(f"[race {t + 1}/{trials}] exit codes {codes}; loser said: {notes[-1]}")
    return {"trials": trials, "one_won_other_said_so": good, "messages": notes}


def determinism(work: Path) -> dict[str, Any]:
    for d in ("det-a", "det-b"):
        _optkit("optimize", "tiny:net", "--passes", "ptq", "--repeats", "2", "-o", d, cwd=work).communicate()
        _optkit("lower", f"{d}/model.pt2", "--target", "cpu", "-o", f"{d}-cpu", cwd=work).communicate()
    same = {}
    for name in ("det-{}/model.pt2", "det-{}/model.pt2.json", "det-{}/model.onnx", "det-{}-cpu/model.so"):
        a, b = work / name.format("a"), work / name.format("b")
        same[name.format("X")] = a.exists() and a.read_bytes() == b.read_bytes()

    def figures(d: str) -> dict[str, Any]:
        data = json.loads((work / d / "report.json").read_text())["figures"]
        return {k: v for k, v in data.items() if not any(w in k for w in TIMING_WORDS)}

    same["report figures except timings"] = figures("det-a") == figures("det-b")
    return same


# -- report ----------------------------------------------------------------------------------------
def markdown(args: argparse.Namespace, fz: dict, hs: dict, kl: dict, rc: dict, det: dict, wall: float) -> str:
    tvm_n = sum(o["tvm"] for o in fz["outcomes"])
    crashes = [o for o in fz["outcomes"] if o["status"] == "crash"]
    clean = [o for o in fz["outcomes"] if o["status"] == "clean_error"]
    contained = [o for o in fz["outcomes"] if o["status"] == "contained"]
    command = (
        "OMP_NUM_THREADS=1 TVM_NUM_THREADS=1 python benchmarks/bench_reliability.py "
        f"--graphs {args.graphs} --tvm-every {args.tvm_every} --seed {args.seed} --kills {args.kills} "
        f"--races {args.races} --timeout {args.timeout:g}"
    )
    lines = [
        "## Reliability (`bench_reliability`)",
        "",
        f"`{command}` on {cpu_name()} ({os.cpu_count()} cores, shared), Python {platform.python_version()}; "
        f"{wall / 60:.1f} min.",
        "",
        "### Fuzzed graphs",
        "",
        "Random small models (linear / conv / embedding stems; linear, attention by SDPA with no mask, a "
        "padding mask or causal, attention written out with a masked softmax, LayerNorm, RMSNorm, "
        "activations, residual adds, head reshapes, token and feature slicing; float32 and float16) "
        "through capture -> ptq (checked against eager by the PassManager with the pass's tolerance) -> "
        f"ONNX Runtime, and {tvm_n} of them also through TVM (llvm). Agreement with the optimized eager "
        "model: output SQNR >= 30 dB. Each graph runs in a worker process.",
        "",
        "| graphs | tried | agreed | clean OptkitError | native crash / hang contained in the worker | "
        "Python crash (not an OptkitError) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    groups = [
        ("all", fz["outcomes"]),
        *(
            (dtype, [o for o in fz["outcomes"] if o["spec"].endswith(dtype)])
            for dtype in ("float32", "float16")
        ),
        ("also through TVM", [o for o in fz["outcomes"] if o["tvm"]]),
    ]
    for label, group in groups:
        c = collections.Counter(o["status"] for o in group)
        lines.append(
            f"| {label} | {len(group)} | {c.get('agreed', 0)} | {c.get('clean_error', 0)} | "
            f"{c.get('contained', 0)} | {c.get('crash', 0)} |"
        )
    lines.append("")
    by_kind = collections.Counter(
        (o["stage"], re.sub(r"/tmp/\S+", "FILE", o["message"])[:110]) for o in clean + contained + crashes
    )
    if by_kind:
        lines += ["| stage | message (first 110 characters) | graphs |", "|---|---|---:|"]
        lines += [f"| {s} | {m.replace('|', '/')} | {n} |" for (s, m), n in by_kind.most_common(12)]
        lines.append("")
    lines += [
        "### Hostile files",
        "",
        f"{hs['tried']} files tried (truncated, corrupted and wrong-format .pt2 / .onnx / .safetensors / "
        ".npz, broken model.pt2.json sidecars, artifacts with a tampered library or manifest, TOML "
        "configs and workloads with wrong types, archives and manifests naming paths outside their "
        f"directory, pickles under another extension): **{hs['clean']} handled cleanly** (exit code 2, "
        "one line naming the file, nothing written, no code from the file run).",
        "",
    ]
    bad = [r for r in hs["rows"] if not r[1]]
    lines += [f"- not clean: `{n}`: {why[:160]}" for n, _, why in bad]
    lines += [
        "### Killed and concurrent runs",
        "",
        "| command | SIGKILLs at random times | output absent or whole after each | next run succeeds | hidden leftovers after it |",
        "|---|---:|---:|---|---|",
    ]
    for name, r in kl.items():
        lines.append(
            f"| `optkit {name}` | {r['kills']} | {r['intact']} | {'yes' if r['next_run_ok'] else 'NO'} | "
            f"{len(r['leftovers'])} |"
        )
    lines += [
        "",
        f"Two `optkit optimize` writing the same output directory at once, {rc['trials']} times: "
        f"**{rc['one_won_other_said_so']}** ended with one run writing a whole output and the other "
        f"exiting with code 2 saying so (e.g. `{rc['messages'][0] if rc['messages'] else ''}`).",
        "",
        "### Determinism",
        "",
        "Two runs of `optkit optimize tiny:net --passes ptq` and of `optkit lower --target cpu` on the result:",
        "",
        "| file | byte-identical |",
        "|---|---|",
    ]
    lines += [f"| {k} | {'yes' if v else 'NO'} |" for k, v in det.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=int, default=200)
    parser.add_argument("--tvm-every", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--races", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--no-write", action="store_true", help="Print only; leave docs/ alone.")
    args = parser.parse_args()
    start = time.monotonic()
    hs = hostile()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "tiny.py").write_text(TINY)
        subprocess.run(
            [sys.executable, "-m", "optkit", "--quiet", "optimize", "tiny:net", "--passes", "cleanup",
             "--no-onnx", "--repeats", "1", "-o", "src"],
            cwd=work, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
        )  # fmt: skip
        (work / "model.pt2").write_bytes((work / "src" / "model.pt2").read_bytes())
        (work / "model.pt2.json").write_text((work / "src" / "model.pt2.json").read_text())
        det = determinism(work)
        print("[determinism]", det)
        kl = killed_runs(work, args.kills, args.seed)
        rc = races(work, args.races)
    fz = fuzz(args.graphs, args.tvm_every, args.seed, args.timeout)
    text = markdown(args, fz, hs, kl, rc, det, time.monotonic() - start)
    print(text)
    if not args.no_write:
        write_section("bench_reliability", text)


if __name__ == "__main__":
    main()
