"""CUDA: codegen and the nvcc compile run here; running the artifact needs a GPU."""

import numpy as np
import pytest
from optkit.backends import load_artifact, lower
from optkit.backends.targets import cuda_device_present, find_nvcc

from optkit.errors import ArtifactError
from tests.backends.conftest import outputs_of

needs_nvcc = pytest.mark.skipif(find_nvcc() is None, reason="nvcc not found: CUDA kernels cannot be compiled")


@needs_nvcc
def test_cuda_codegen_and_nvcc_compile(mlp, tmp_path):
    artifact = lower(mlp, "cuda")
    assert artifact.info["blas_matmuls"] == 0  # DLight GPU schedules, no CPU BLAS callback
    kinds = _module_kinds(artifact.module.mod)
    assert "cuda" in kinds  # the device kernels were generated and compiled by nvcc
    path = artifact.save(tmp_path / "cuda_art")  # export_library links host code + the fatbin
    assert (path / "model.so").stat().st_size > 0
    if not cuda_device_present():
        with pytest.raises(ArtifactError, match="no CUDA device"):
            load_artifact(path)
    else:
        assert load_artifact(path).target.config == {"kind": "cuda", "arch": "sm_80"}


def _modules(mod):
    yield mod
    for sub in mod.imports:
        yield from _modules(sub)


def _module_kinds(mod):
    return {m.kind for m in _modules(mod)}


@pytest.mark.gpu
@needs_nvcc
@pytest.mark.skipif(not cuda_device_present(), reason="no CUDA device (tvm.cuda().exist is False)")
def test_cuda_artifact_matches_torch(mlp, transformer_program):
    for program in (mlp, transformer_program):
        artifact = lower(program, "cuda")
        (got,) = artifact.run(*program.example_inputs)
        np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-3, atol=1e-4)
