import pytest
import torch
from torch import nn

from optkit.ir.capture import capture


def mlp_program():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16)).eval()
    return capture(model, (torch.randn(4, 32),), name="mlp")


@pytest.fixture
def mlp():
    return mlp_program()


def outputs_of(program):
    out = program.run()
    return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]
