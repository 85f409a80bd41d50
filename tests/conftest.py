"""Shared fixtures. Threads are pinned to one per runtime: two processes whose torch and TVM
thread pools each spin on 2 cores slow each other far more than 2x (shared/NOTES.md)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TVM_NUM_THREADS", "1")

import pytest
import torch

from optkit.ir.capture import capture
from tests import models

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def conv_program():
    model, inputs = models.conv_net()
    return capture(model, inputs, name="conv")


@pytest.fixture
def transformer_program():
    model, inputs = models.transformer()
    return capture(model, inputs, name="transformer")


@pytest.fixture
def outlier_program():
    model, inputs = models.outlier_mlp()
    return capture(model, inputs, name="outlier-mlp")


@pytest.fixture
def recommender_program():
    model, inputs = models.recommender()
    return capture(model, inputs, name="recommender")


@pytest.fixture
def pim_host_model(monkeypatch, tmp_path):
    """A fixed host cost model in a private cache, so `pim` placements need no TVM calibration.

    The coefficients are of the size this project's calibration measures on a server CPU (a few
    microseconds a kernel, ~10 us per MFLOP); tests of calibration itself live in
    tests/backends/pim/test_calibrate.py."""
    from optkit.backends.pim.calibrate import cache_path
    from optkit.backends.pim.cost import HostModel

    monkeypatch.setenv("OPTKIT_CACHE_DIR", str(tmp_path / "cache"))
    coef = (1.0, 10.0, 5.0, 20.0)
    model = HostModel(
        coef={k: coef for k in ("gemm", "elementwise", "reduction", "gather")},
        gather_gbps=5.0,
        llc_bytes=32 << 20,
        l2_bytes=2 << 20,
        call_us=1.0,
        cpu="test",
    )
    for quick in (True, False):
        path = cache_path(quick)
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
    return model
