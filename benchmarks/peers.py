"""Peers that quantization results are compared with, run in the same benchmark process.

- `naive_ptq`: per-tensor min-max weights and activations, round-to-nearest — the textbook
  baseline, expressed as an optkit `ptq` config so the same kernels run it.
- `ort_quantize_static`: ONNX Runtime's own static QDQ quantization of the float ONNX export,
  calibrated on the same batches (per-channel int8 weights, uint8 activations, MinMax).
- `torchao_int8_weight_only`: torchao's Int8WeightOnlyConfig on the eager module (torchao's
  int4 weight-only needs the CUDA `mslk` package and is not available on this CPU).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

NAIVE_W8A8 = {"granularity": "tensor", "observer": "minmax", "keep_float": [], "min_sqnr_db": 0.0}
NAIVE_W4A8 = {"wbits": 4, "granularity": "tensor", "observer": "minmax", "keep_float": [], "min_sqnr_db": 0.0}


class OrtDenoiser:
    """An ONNX Runtime session called like the Program it was exported from."""

    def __init__(self, path: Path) -> None:
        from optkit.ir.onnx_io import onnx_session

        self.session = onnx_session(path)
        self.names = [i.name for i in self.session.get_inputs()]
        self.path = path

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        feeds = {n: t.detach().numpy() for n, t in zip(self.names, inputs, strict=True)}
        return torch.from_numpy(np.asarray(self.session.run(None, feeds)[0]))


def ort_quantize_static(float_onnx: Path, batches: Sequence[tuple[torch.Tensor, ...]], out: Path) -> Path:
    """ONNX Runtime's static QDQ quantization of `float_onnx`, calibrated on `batches`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from optkit.ir.onnx_io import onnx_session

    names = [i.name for i in onnx_session(float_onnx).get_inputs()]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{n: t.numpy() for n, t in zip(names, b, strict=True)} for b in batches])

        def get_next(self) -> dict[str, Any] | None:
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        prep = Path(tmp) / "prep.onnx"
        try:
            quant_pre_process(str(float_onnx), str(prep), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimization; quantize the plain file if it fails
            prep = float_onnx
        quantize_static(
            str(prep),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    return out


def torchao_int8_weight_only(model: nn.Module) -> tuple[nn.Module | None, str]:
    """A torchao int8 weight-only copy of `model`, or (None, reason) when torchao is missing."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except Exception as err:  # torchao is optional: `pip install -c constraints.txt -e .[bench]`
        return None, f"torchao not installed ({type(err).__name__})"
    quantized = copy.deepcopy(model)
    quantize_(quantized, Int8WeightOnlyConfig())
    return quantized, ""


def state_bytes(model: nn.Module) -> int:
    """Bytes of a module's saved state (torch.save of its state_dict)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.pt"
        torch.save(model.state_dict(), path)
        return path.stat().st_size
