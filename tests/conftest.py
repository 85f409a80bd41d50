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
def recommender_program():
    model, inputs = models.recommender()
    return capture(model, inputs, name="recommender")
