"""Schedule tuning: a few trials on tiny matmuls, a persistent database reused on the next run."""

import json

import numpy as np
from optkit.backends import lower
from optkit.backends.cpu_schedules import CPUMatmul
from optkit.backends.targets import resolve_target
from optkit.backends.tuning import candidates, extract_tasks
from optkit.backends.tvm_import import import_program

from tests.backends.conftest import outputs_of


def test_tuning_writes_and_reuses_database(mlp, tmp_path, scheduled_float_matmuls):
    first = lower(mlp, "cpu", tune_trials=4, work_dir=tmp_path, num_cores=1)
    assert first.info["blas_matmuls"] == 0  # tuned runs keep matmuls in TVM
    assert first.info["tuning"]["kernels"] == 2 and first.info["tuning"]["trials_run"] == 4
    records = json.loads((tmp_path / "tuning_db.json").read_text())["records"]
    assert len(records) == 2
    assert all(r["ms"] > 0 and set(r["params"]) == {"rows", "lanes"} for r in records.values())
    (got,) = first.run(*mlp.example_inputs)
    np.testing.assert_allclose(got, outputs_of(mlp)[0], rtol=1e-4, atol=1e-5)

    second = lower(mlp, "cpu", tune_trials=4, work_dir=tmp_path, num_cores=1)
    assert second.info["tuning"]["reused"] == 2 and second.info["tuning"]["trials_run"] == 0
    (again,) = second.run(*mlp.example_inputs)
    np.testing.assert_allclose(again, got, rtol=1e-6)


def test_every_candidate_schedules_the_kernel(mlp):
    spec = resolve_target("cpu", num_cores=1)
    tasks = extract_tasks(import_program(mlp).mod, spec)
    assert [t["name"] for t in tasks] == ["fused_matmul_add_gelu", "fused_matmul1_add1"]
    target = spec.tvm_target()
    for params in candidates():
        assert CPUMatmul(params).apply(tasks[0]["func"], target, False) is not None, params
