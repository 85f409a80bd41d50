"""TVM's CPU runtime thread pool: run a compiled model on exactly the threads asked for.

The target's `num-cores` does not size TVM's runtime pool. The pool is created on first use with
`TVM_NUM_THREADS` (else `OMP_NUM_THREADS`, else half the logical CPUs on x86) workers, so on
a 2-core machine TVM ran on one thread while `optkit bench --threads 2` gave PyTorch and ONNX
Runtime two (issue 17). `set_runtime_threads(n)` raises that cap through the environment
before the pool exists, then selects `n` workers with TVM 0.27's `runtime.config_threadpool`
(mode 1: all cores of the machine, which are all "big" on a homogeneous CPU), and returns the
count the runtime reports back (`runtime.NumThreads`), which callers should show.

`config_threadpool` also pins the calling thread, worker 0, to the first core. With one thread
that buys nothing and costs much on a shared machine: the process can no longer move off a
core another job is using (found by `bench_peaks`, whose kernels then ran on the busy core
while the other sat idle). For one thread the caller's CPU affinity is put back.
"""

from __future__ import annotations

import logging
import os

from optkit.errors import ConfigError

log = logging.getLogger(__name__)

_ALL_CORES = 1  # threading::ThreadGroup::kBig


def _env_threads() -> int:
    for name in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "")
        if value.strip().isdigit() and int(value) > 0:
            return int(value)
    return 0


def runtime_threads() -> int:
    """The number of threads TVM's CPU runtime runs parallel loops on now."""
    import tvm_ffi

    return int(tvm_ffi.get_global_func("runtime.NumThreads")())


def set_runtime_threads(threads: int) -> int:
    """Make TVM's CPU runtime use `threads` threads; returns the count it reports afterwards.

    The count can fall short only when TVM's pool was created earlier in this process with
    fewer workers (a cap fixed at creation); that is logged, and the return value says so.
    """
    if threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    if _env_threads() < threads:
        # Read once, when the pool is created: a no-op if it already exists.
        os.environ["TVM_NUM_THREADS"] = str(threads)
    import tvm  # noqa: F401  (registers the runtime's global functions)
    import tvm_ffi

    affinity = os.sched_getaffinity(0)
    tvm_ffi.get_global_func("runtime.config_threadpool")(_ALL_CORES, threads)
    if threads == 1:
        os.sched_setaffinity(0, affinity)
    got = runtime_threads()
    if got != threads:
        log.warning(
            "TVM's runtime runs %d thread(s), not %d: its pool was created earlier in this process "
            "with fewer workers; set TVM_NUM_THREADS=%d before the first TVM call",
            got,
            threads,
            threads,
        )
    return got
