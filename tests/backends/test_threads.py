"""TVM's runtime pool runs on exactly the threads asked for, and `optkit bench` reports them."""

import os
import subprocess
import sys

import pytest
from optkit.backends.threads import runtime_threads, set_runtime_threads

from optkit.benchmark import BenchConfig, benchmark
from optkit.errors import ConfigError
from optkit.timing import quiesce
from tests.backends.conftest import mlp_program


@pytest.mark.slow
def test_two_threads_in_a_fresh_process_whatever_the_default():
    # TVM's default on x86 is half the logical CPUs (one on a 2-core machine) and the target's
    # num-cores does not change it; the pool must still run two.
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    code = (
        "from optkit.backends.threads import set_runtime_threads, runtime_threads\n"
        "print(set_runtime_threads(2), runtime_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "2"]


def test_one_thread_and_bad_counts():
    before = os.sched_getaffinity(0)
    assert set_runtime_threads(1) == 1 == runtime_threads()
    assert os.sched_getaffinity(0) == before  # not pinned to the first core
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        set_runtime_threads(0)


@pytest.mark.slow
def test_bench_reports_every_runtimes_threads():
    result = benchmark(
        mlp_program(), BenchConfig(targets=("eager", "ort", "tvm-cpu"), threads=1, repeats=2, warmup=0)
    )
    assert {r.target: r.info.get("threads") for r in result.targets} == {"eager": 1, "ort": 1, "tvm-cpu": 1}
    table = result.to_report().tables[0]
    assert table.columns[2] == "threads" and [row[2] for row in table.rows] == [1, 1, 1]


def test_quiesce_returns_once_idle():
    assert 0.0 <= quiesce(window_s=0.001, max_s=0.05) <= 1.0
