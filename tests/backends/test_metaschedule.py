"""MetaSchedule as a tuner: a tiny trial budget on a small MLP, the per-kernel choice in the
manifest, the database reused on the next run, winners put in place of optkit's schedule."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from optkit.backends import load_artifact, lower
from optkit.backends.build import fuse, override_pass, schedule_pass, structural_key
from optkit.backends.lowering import TUNERS
from optkit.backends.metaschedule import CHOICES_FILE, reduction_kernels
from optkit.backends.targets import resolve_target
from optkit.backends.tvm_import import import_program

from optkit.cli.main import cli
from optkit.errors import BackendError, ConfigError, UnknownNameError
from tests.backends.conftest import outputs_of

MODEL = (
    "import torch\n"
    "def make():\n"
    "    torch.manual_seed(0)\n"
    "    m = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 16)).eval()\n"
    "    return m, (torch.randn(4, 32),)\n"
)


@pytest.mark.slow
def test_metaschedule_lowering_records_choices_and_reuses_database(
    mlp, tmp_path, monkeypatch, scheduled_float_matmuls
):
    (tmp_path / "ms_mlp.py").write_text(MODEL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["--json", "lower", "ms_mlp:make", "--tuner", "metaschedule", "--tune-trials", "2", "-o", "art"]
    result = CliRunner().invoke(cli, [*args, "--work-dir", "wd"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["tuner"] == "metaschedule"
    tuning = manifest["tuning"]
    assert tuning["kernels"] == 2 and tuning["trials_run"] == 2 and tuning["reused"] == 0
    # Packing stays on (each GEMM carries its fused bias / GELU epilogue in its kernel's name).
    assert len(tuning["choices"]) == 2 and all("packed_matmul" in name for name in tuning["choices"])
    for choice in tuning["choices"].values():
        assert choice["winner"] in ("optkit", "metaschedule")
        assert choice["optkit_us"] > 0 and choice["metaschedule_us"] > 0
        faster = "metaschedule" if choice["metaschedule_us"] < choice["optkit_us"] else "optkit"
        assert choice["winner"] == faster
    assert (tmp_path / "wd" / "database_tuning_record.json").is_file()

    from ms_mlp import make

    model, example = make()
    with torch.no_grad():
        expected = model(*example).numpy()
    (got,) = load_artifact(tmp_path / "art").run(*[t.numpy() for t in example])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

    # Same kernels, same work dir, same target (the CLI's default cores): no trial and no
    # measurement, the same verdicts.
    again = lower(mlp, "cpu", tune_trials=2, work_dir=tmp_path / "wd", tuner="metaschedule")
    assert again.info["tuning"]["trials_run"] == 0 and again.info["tuning"]["reused"] == 2
    assert again.info["tuning"]["choices"] == tuning["choices"]

    # Where MetaSchedule wins, its schedule is what runs: force it for every kernel.
    path = tmp_path / "wd" / CHOICES_FILE
    choices = json.loads(path.read_text())
    for choice in choices["choices"].values():
        choice["winner"] = "metaschedule"
    path.write_text(json.dumps(choices))
    forced = lower(mlp, "cpu", tune_trials=2, work_dir=tmp_path / "wd", tuner="metaschedule")
    assert {c["winner"] for c in forced.info["tuning"]["choices"].values()} == {"metaschedule"}
    (got,) = forced.run(*mlp.example_inputs)
    np.testing.assert_allclose(got, outputs_of(mlp)[0], rtol=1e-4, atol=1e-5)


def test_override_pass_replaces_only_the_named_kernel(mlp):
    import tvm

    spec = resolve_target("cpu", num_cores=1)
    mod = import_program(mlp).mod
    kernels = reduction_kernels(mod, spec)
    assert sorted(name for name, _ in kernels.values()) == ["fused_matmul1_add1", "fused_matmul_add_gelu"]
    key, (name, func) = next(iter(kernels.items()))
    with spec.tvm_target():
        ours = schedule_pass(spec)(tvm.IRModule({"main": func}))["main"]
    marked = ours.with_attr("optkit.test_marker", 1)
    replaced = override_pass({key: marked})(fuse(mod, spec))
    funcs = {g.name_hint: f for g, f in replaced.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    assert "optkit.test_marker" in funcs[name].attrs
    others = [f for n, f in funcs.items() if n != name]
    assert others and all(f.attrs is None or "optkit.test_marker" not in f.attrs for f in others)
    assert structural_key(func) == key


def test_bad_tuner_and_trials_are_refused(mlp):
    with pytest.raises(UnknownNameError, match="autotvm") as err:
        lower(mlp, "cpu", tune_trials=1, tuner="autotvm")
    assert all(name in str(err.value) for name in TUNERS)
    with pytest.raises(ConfigError, match="tune_trials must be an integer >= 0, got -1"):
        lower(mlp, "cpu", tune_trials=-1, tuner="metaschedule")


def test_a_segfaulting_tvm_ffi_is_refused_before_tuning(mlp, monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata, "version", lambda name: "0.1.15.post2" if name == "apache-tvm-ffi" else real(name)
    )
    with pytest.raises(BackendError, match=r"apache-tvm-ffi 0\.1\.15\.post2.*--tuner optkit"):
        lower(mlp, "cpu", tune_trials=1, tuner="metaschedule")


def test_cli_refuses_bad_tuner_and_negative_trials(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["lower", "zoo:mlp", "--tuner", "autotvm", "-o", "art"])
    assert result.exit_code == 2 and "'autotvm' is not one of 'optkit', 'metaschedule'" in result.output
    result = runner.invoke(cli, ["lower", "zoo:mlp", "--tune-trials", "-3", "-o", "art"])
    assert result.exit_code == 2 and "-3 is not in the range x>=0" in result.output
    assert not (tmp_path / "art").exists()
