import pytest
import torch

from optkit.ir.capture import capture
from tests import models


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
