"""Artifact save/load, manifest checks and input validation."""

import json

import numpy as np
import pytest
from optkit.backends import load_artifact, lower

from optkit.errors import ArtifactError, ConfigError
from tests.backends.conftest import outputs_of


@pytest.fixture
def saved(mlp, tmp_path):
    artifact = lower(mlp, "cpu", num_cores=1)
    return artifact, artifact.save(tmp_path / "art")


def test_save_load_round_trip(mlp, saved):
    artifact, path = saved
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["target"] == "cpu" and manifest["tune_trials"] == 0
    assert manifest["inputs"] == [{"name": artifact.inputs[0].name, "shape": [4, 32], "dtype": "float32"}]
    assert manifest["outputs"][0]["shape"] == [4, 16]
    assert manifest["extern_funcs"] == []  # the default library is self-contained
    loaded = load_artifact(path)
    (got,) = loaded.run(mlp.example_inputs[0].numpy())
    np.testing.assert_allclose(got, outputs_of(mlp)[0], rtol=1e-4, atol=1e-5)


def test_outputs_survive_the_next_call(mlp):
    # CPU outputs are zero-copy views of the VM's tensors: a later call must not overwrite them.
    artifact = lower(mlp, "cpu", num_cores=1)
    x = mlp.example_inputs[0].numpy()
    (first,) = artifact.run(x)
    kept = first.copy()
    (second,) = artifact.run(x * 2)
    np.testing.assert_array_equal(first, kept)
    assert not np.allclose(first, second)
    # A misaligned input buffer is copied rather than handed to kernels that assume alignment.
    buf = np.empty(x.size + 2, np.float32)
    offset = 1 if (buf.ctypes.data + 4) % 64 else 2
    shifted = buf[offset : offset + x.size].reshape(x.shape)
    assert shifted.ctypes.data % 64
    shifted[...] = x
    np.testing.assert_allclose(artifact.run(shifted)[0], kept, rtol=1e-6)


@pytest.mark.slow
def test_blas_artifact_names_its_callback(transformer_program, tmp_path):
    artifact = lower(transformer_program, "cpu", schedule="blas", num_cores=1)
    path = artifact.save(tmp_path / "blas")
    assert json.loads((path / "manifest.json").read_text())["extern_funcs"] == ["optkit.blas.matmul"]
    got = load_artifact(path).run(*transformer_program.example_inputs)
    np.testing.assert_allclose(got[0], outputs_of(transformer_program)[0], rtol=1e-4, atol=1e-5)


def test_refuses_other_tvm_version(saved):
    _, path = saved
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["tvm_version"] = "0.19.0"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="tvm 0.19.0"):
        load_artifact(path)


def test_refuses_corrupt_library_and_missing_files(saved):
    _, path = saved
    lib = path / "model.so"
    lib.write_bytes(lib.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="does not match the hash"):
        load_artifact(path)
    lib.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt"):
        load_artifact(path)


def test_save_is_atomic_and_refuses_overwrite(saved):
    artifact, path = saved
    from optkit.errors import OptkitError

    with pytest.raises(OptkitError, match="--overwrite"):
        artifact.save(path)
    artifact.save(path, overwrite=True)
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "model.so", "weights.bin"]


def test_run_checks_inputs(saved):
    artifact, _ = saved
    with pytest.raises(ConfigError, match=r"takes 1 inputs .*got 2"):
        artifact.run(np.zeros((4, 32), np.float32), np.zeros((4, 32), np.float32))
    with pytest.raises(ConfigError, match=r"expected shape \(4, 32\) float32, got shape \(4, 31\) float32"):
        artifact.run(np.zeros((4, 31), np.float32))
    with pytest.raises(ConfigError, match=r"got shape \(4, 32\) float64"):
        artifact.run(np.zeros((4, 32)))
