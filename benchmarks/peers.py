"""Peers that quantization results are compared with, run in the same benchmark process.

- `naive_ptq`: per-tensor min-max weights and activations, round-to-nearest — the textbook
  baseline, expressed as an optkit `ptq` config so the same kernels run it.
- `ort_quantize_static`: ONNX Runtime's own static QDQ quantization of the float ONNX export,
  calibrated on the same batches (per-channel int8 weights, uint8 activations, MinMax).
- `torchao_int8_weight_only`: torchao's Int8WeightOnlyConfig on the eager module;
  `torchao_int4_weight_only` tries Int4WeightOnlyConfig and returns the reason it cannot run
  (with torchao 0.18 it needs the CUDA `mslk` package, absent on this CPU);
  `torchao_quantized(model, NAME, **options)` applies any torchao config by name (the dynamic
  int8 activation paths `Int8DynamicActivationInt8WeightConfig`,
  `Int8DynamicActivationIntxWeightConfig`, the CPU int4 path `IntxWeightOnlyConfig`).
- `ort_quantize_dynamic`: ONNX Runtime's dynamic quantization of the float ONNX export (int8
  weights, activations quantized per tensor at run time by `DynamicQuantizeLinear`).

Sizes are counted the same way for every format (`tensor_bytes`, `onnx_weight_bytes`): the
bytes of the stored tensors, 4-bit values at half a byte.
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

NAIVE_W8A8 = {  # every layer quantized: no treatment keeps one float
    "granularity": "tensor",
    "observer": "minmax",
    "treatments": [],
    "keep_float": [],
    "min_sqnr_db": 0.0,
}
NAIVE_W4A8 = {**NAIVE_W8A8, "wbits": 4}


class OrtDenoiser:
    """An ONNX Runtime session called like the Program it was exported from: first output only,
    and batches that are multiples of the exported (static) batch run in chunks of it, as
    `Program.run_chunked` does under classifier-free guidance."""

    def __init__(self, path: Path, threads: int | None = 1) -> None:
        from optkit.ir.onnx_io import onnx_session

        self.session = onnx_session(path, threads)
        self.names = [i.name for i in self.session.get_inputs()]
        shape = self.session.get_inputs()[0].shape
        self.batch = shape[0] if shape and isinstance(shape[0], int) else None
        self.path = path

    def run_once(self, *inputs: torch.Tensor) -> Any:
        feeds = {n: t.detach().numpy() for n, t in zip(self.names, inputs, strict=True)}
        return self.session.run(None, feeds)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        total = inputs[0].shape[0]
        size = self.batch or total
        if total % size:
            raise ValueError(f"{self.path.name} takes batches of {size}, got {total}")
        outs = [
            np.asarray(self.run_once(*(t[s : s + size] for t in inputs))[0]) for s in range(0, total, size)
        ]
        return torch.from_numpy(np.concatenate(outs))


def ort_quantize_static(
    float_onnx: Path,
    batches: Sequence[tuple[torch.Tensor, ...]],
    out: Path,
    weight_layers_only: bool = False,
    reduce_range: bool = False,
) -> Path:
    """ONNX Runtime's static QDQ quantization of `float_onnx`, calibrated on `batches`.

    By default ONNX Runtime chooses what to quantize (every op type it has QDQ rules for:
    also activation x activation MatMuls, Add, Softmax, ...); `weight_layers_only` restricts it
    to the MatMul/Gemm/Conv nodes that read a weight initializer, the layers optkit quantizes.
    `reduce_range`: 7-bit weights, ONNX Runtime's remedy for `vpmaddubsw`'s saturation on CPUs
    without VNNI (as `ptq`'s `wbits=7`).
    """
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
        prep = _suffix_initializers(prep, Path(tmp) / "renamed.onnx")
        nodes = _weight_layers(prep) if weight_layers_only else None
        quantize_static(
            str(prep),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=nodes,
            reduce_range=reduce_range,
        )
    return out


def _suffix_initializers(path: Path, out: Path) -> Path:
    """`path` with "_w" after every initializer's name. ONNX Runtime 1.32's quantizer gives a
    bias that several nodes share one copy per node, named the bias's name followed by a number,
    without checking that the name is free: in a diffusers VAE decoder's export the shared
    GroupNorm bias `val_11` became `val_119`, the name of a Reshape's int64 shape, and ONNX
    Runtime could not load the QDQ model it wrote (a DequantizeLinear of an int64 tensor)."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in graph.node
        for a in n.attribute
    ):
        return path  # subgraphs may name the initializers too: leave such a model as it is
    names = {t.name: f"{t.name}_w" for t in graph.initializer}
    for t in graph.initializer:
        t.name = names[t.name]
    for n in graph.node:
        n.input[:] = [names.get(i, i) for i in n.input]
    for value in [*graph.input, *graph.output, *graph.value_info]:  # initializers listed there too
        value.name = names.get(value.name, value.name)
    onnx.save(model, str(out))
    return out


def _weight_layers(path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(path)).graph
    inits = {t.name for t in graph.initializer}
    return [
        n.name
        for n in graph.node
        if n.op_type in ("MatMul", "Gemm", "Conv") and any(i in inits for i in n.input[1:2])
    ]


def torchao_int8_weight_only(model: nn.Module) -> tuple[nn.Module | None, str]:
    """A torchao int8 weight-only copy of `model`, or (None, reason) when torchao is missing."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except Exception as err:  # torchao is optional: `pip install -c constraints.txt -e .[bench]`
        return None, f"torchao not installed ({type(err).__name__})"
    quantized = copy.deepcopy(model)
    quantize_(quantized, Int8WeightOnlyConfig())
    return quantized, ""


def torchao_int4_weight_only(model: nn.Module, group_size: int = 32) -> tuple[nn.Module | None, str]:
    """A torchao int4 weight-only copy of `model`, or (None, reason) when it cannot be made."""
    try:
        from torchao.quantization import Int4WeightOnlyConfig, quantize_
    except Exception as err:
        return None, f"torchao not installed ({type(err).__name__})"
    quantized = copy.deepcopy(model)
    try:
        quantize_(quantized, Int4WeightOnlyConfig(group_size=group_size))
    except Exception as err:  # torchao 0.18: "Requires mslk >= 1.0.0" (a CUDA-only package)
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    return quantized, ""


def torchao_quantized(model: nn.Module, config: str, **options: Any) -> tuple[nn.Module | None, str]:
    """A copy of `model` quantized by torchao's config class `config` (built with `options`;
    a `group_size` option becomes `PerGroup(group_size)` granularity), or (None, reason)."""
    try:
        import torchao.quantization as tq
    except Exception as err:
        return None, f"torchao not installed ({type(err).__name__})"
    if "group_size" in options:
        key = "weight_granularity" if config == "Int8DynamicActivationIntxWeightConfig" else "granularity"
        options[key] = tq.PerGroup(options.pop("group_size"))
    quantized = copy.deepcopy(model)
    try:
        tq.quantize_(quantized, getattr(tq, config)(**options))
    except Exception as err:
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    return quantized, ""


def ort_quantize_dynamic(float_onnx: Path, out: Path, per_channel: bool = False) -> Path:
    """ONNX Runtime's dynamic quantization of `float_onnx` (its defaults: int8 weights, per
    tensor unless `per_channel`; activations quantized at run time, per tensor)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(float_onnx), str(out), per_channel=per_channel, weight_type=QuantType.QInt8)
    return out


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of a module's stored tensors; tensor subclasses (torchao) count their inner tensors."""

    def size(t: torch.Tensor) -> int:
        if type(t) is not torch.Tensor and type(t) is not nn.Parameter and hasattr(t, "__tensor_flatten__"):
            names, _ = t.__tensor_flatten__()
            return sum(size(getattr(t, n)) for n in names)
        return t.numel() * t.element_size()

    return sum(size(t) for t in model.state_dict().values())


def onnx_weight_bytes(path: Path) -> int:
    """Bytes of an ONNX model's initializers, 4-bit types at half a byte per value."""
    import onnx
    from onnx import TensorProto, helper

    total = 0.0
    for t in onnx.load(str(path)).graph.initializer:
        n = int(np.prod(t.dims)) if t.dims else 1
        if t.data_type in (TensorProto.INT4, TensorProto.UINT4):
            total += n / 2
        else:
            total += n * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return int(total)


def state_bytes(model: nn.Module) -> int:
    """Bytes of a module's saved state (torch.save of its state_dict)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.pt"
        torch.save(model.state_dict(), path)
        return path.stat().st_size
