"""Half-precision models (issue 20): captured and quantized without widening the model to float32."""

import pytest
import torch

from optkit.ir.capture import capture
from optkit.ir.program import weight_tensors
from optkit.pipeline import PassManager, build_passes
from tests import models


@pytest.mark.parametrize(("pass_name", "dtype"), [("ptq", torch.float16), ("groupwise", torch.bfloat16)])
def test_half_model_quantizes_in_its_own_dtype(dtype, pass_name):
    torch.manual_seed(0)
    factory = models.conv_net if pass_name == "ptq" else models.transformer
    model, inputs = factory()
    inputs = tuple(t.to(dtype) if t.is_floating_point() else t for t in inputs)
    program = capture(model.to(dtype), inputs)
    result = PassManager(build_passes([pass_name])).run(program)
    out = result.program.run()
    out = out[0] if isinstance(out, (tuple, list)) else out
    assert out.dtype == dtype
    assert result.records[-1].check["min_sqnr_db"] > 15
    tensors = list(weight_tensors(result.program.graph_module).values())
    # What stays float is the input's own half-precision tensors and the quantizers' scales:
    # no float32 copy of a weight.
    widened = sum(t.numel() for t in tensors if t.dtype == torch.float32)
    assert widened < 0.1 * sum(p.numel() for p in model.parameters())
    assert any(t.dtype in (torch.int8, torch.uint8) for t in tensors)
