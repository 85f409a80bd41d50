import pytest
import torch

from optkit.errors import CaptureError, ConfigError
from optkit.ir.capture import capture
from optkit.ir.onnx_io import flat_outputs
from tests import models


@pytest.mark.parametrize("factory", [models.conv_net, models.transformer, models.recommender])
def test_capture_matches_eager(factory):
    model, inputs = factory()
    program = capture(model, inputs)
    expected = model.eval()(*inputs)
    assert torch.allclose(program.run(), expected, atol=1e-6)
    # Every compute node of a captured model keeps its module path.
    assert any(n.meta.get("nn_module_stack") for n in program.compute_nodes())
    assert not any(n.op == "call_module" for n in program.graph.nodes), "guards call must be dropped"


def test_capture_runs_on_new_inputs_of_same_shape():
    model, inputs = models.conv_net()
    program = capture(model, inputs)
    x = torch.randn_like(inputs[0])
    assert torch.allclose(program.run(x), model(x), atol=1e-6)


def test_data_dependent_control_flow_names_module_and_hint():
    model, inputs = models.data_dependent()
    with pytest.raises(CaptureError) as err:
        capture(model, inputs)
    msg = str(err.value)
    assert "module 'inner'" in msg
    assert "data-dependent" in msg
    assert "torch.where" in msg


def test_non_tensor_inputs_are_refused():
    model, _ = models.conv_net()
    with pytest.raises(ConfigError, match="example input 1 is a bool"):
        capture(model, (torch.randn(1, 3, 8, 8), True))


def test_not_a_module():
    with pytest.raises(ConfigError, match="torch.nn.Module"):
        capture(lambda x: x, (torch.randn(2),))  # type: ignore[arg-type]


def test_single_tensor_input_is_accepted():
    model, inputs = models.conv_net()
    program = capture(model, inputs[0])
    assert len(program.example_inputs) == 1
    assert len(flat_outputs(program.run())) == 1
