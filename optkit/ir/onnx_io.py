"""ONNX in and out.

Out: `export_onnx` writes a Program with the dynamo exporter and checks, in ONNX Runtime, that
the file reproduces the Program's outputs on its example inputs. In: `OnnxModel` reads an
`.onnx` file for analysis (op counts, parameters, FLOPs of the matmul/conv ops from ONNX shape
inference) and for lowering; passes need the PyTorch graph and do not take ONNX models.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optkit.errors import ArtifactError, OptkitError
from optkit.fsutil import atomic_file
from optkit.ir.ops import squeeze_as_view
from optkit.ir.program import Program

log = logging.getLogger(__name__)


def flat_outputs(value: Any) -> list[torch.Tensor]:
    """The tensors of a (nested) model output, in pytree order."""
    leaves, _ = torch.utils._pytree.tree_flatten(value)
    return [t for t in leaves if isinstance(t, torch.Tensor)]


def export_onnx(
    program: Program,
    path: str | Path,
    opset: int | None = None,
    check: bool = True,
    int8_weights: str = "auto",
) -> dict[str, float]:
    """Export `program` to `path` (ONNX, dynamo exporter), written atomically.

    With `check`, the file is run in ONNX Runtime on the example inputs and compared with the
    Program; returns {"max_abs_error": ..., "onnx_bytes": ..., "int8_weights_u8" and
    "int8_weights_s8": how many int8 weights are stored as uint8, and how many stay int8}.
    `int8_weights` (`onnx_int8.INT8_WEIGHT_FORMS`): `s8`, `u8`, or `auto`, `u8` where ONNX
    Runtime's int8 kernels would saturate on this CPU. Raises
    `OptkitError` naming the first unsupported op when the exporter fails.
    """
    from optkit.ir.onnx_int8 import resolve_int8_weights

    path = Path(path)
    resolve_int8_weights(int8_weights)  # an unknown form fails before the export
    kwargs: dict[str, Any] = {"dynamo": True, "verbose": False, "external_data": False}
    quantized = any(str(n.target).startswith("optkit.") for n in program.compute_nodes())
    if quantized:
        from optkit.quant.ops import onnx_translations

        # Blocked (group-wise) and int4 QuantizeLinear/DequantizeLinear need opset 21.
        kwargs["custom_translation_table"] = onnx_translations()
        opset = max(opset or 21, 21)
    if opset is not None:
        kwargs["opset_version"] = opset
    with atomic_file(path) as tmp:
        try:
            with warnings.catch_warnings(), _export_spellings(program.graph_module):
                warnings.simplefilter("ignore")
                _quiet_exporter_logs()
                torch.onnx.export(program.graph_module, program.example_inputs, str(tmp), **kwargs)
        except Exception as err:
            first = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
            raise OptkitError(f"ONNX export of {program.name} failed: {first[:300]}") from err
        unsigned, signed, seven_bit = _finish_quantized(tmp, int8_weights) if quantized else (0, 0, False)
        figures = {
            "onnx_bytes": float(tmp.stat().st_size),
            "int8_weights_u8": float(unsigned),
            "int8_weights_s8": float(signed),
            "int8_weights_7bit": float(seven_bit),
        }
        if check:
            expected = flat_outputs(program.run())
            got = run_onnx(tmp, program.example_inputs)
            if len(got) != len(expected):
                raise OptkitError(f"ONNX model has {len(got)} outputs, the Program {len(expected)}")
            figures["max_abs_error"] = max(
                (float(np.max(np.abs(g - e.detach().numpy()))) if e.numel() else 0.0)
                for g, e in zip(got, expected, strict=True)
            )
            # Context for the error: an all-zero output (e.g. an untrained zero-initialized head)
            # would make any export look exact.
            figures["output_abs_max"] = max((float(e.abs().max()) if e.numel() else 0.0) for e in expected)
    return figures


@contextmanager
def _export_spellings(gm: torch.fx.GraphModule) -> Iterator[None]:
    """While exporting, two ops of `gm` spelled as the exporter reads them right, then restored.

    - `aten.contiguous` as a clone to contiguous memory. The exporter traces the graph again and
      decomposes it, and there `contiguous` of a transposed attention output (a T5 encoder's,
      transformers 5.24) was taken for a no-op, the `reshape` after it for a `view` of the
      transposed strides, and the export failed ("Cannot view a tensor with shape [1, 77, 4, 64]
      and strides ..."). A clone always copies; ONNX has no strides, so the file is the same.
    - a `squeeze` that names a dimension of size > 1 (a no-op there) as a `view` to its output
      shape (`optkit.ir.ops.squeeze_as_view`): ONNX's `Squeeze` refuses such a dimension, and
      ONNX Runtime could not load a PixArt transformer's export."""
    saved = []
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        if n.target is torch.ops.aten.contiguous.default:
            saved.append((n, n.target, n.args, n.kwargs))
            n.target, n.kwargs = torch.ops.aten.clone.default, {"memory_format": torch.contiguous_format}
        elif (shape := squeeze_as_view(n)) is not None:
            saved.append((n, n.target, n.args, n.kwargs))
            n.target, n.args = torch.ops.aten.view.default, (n.args[0], shape)
    if saved:
        gm.recompile()
    try:
        yield
    finally:
        for n, target, args, kwargs in saved:
            n.target, n.args, n.kwargs = target, args, kwargs
        if saved:
            gm.recompile()


def run_onnx(
    path: str | Path, inputs: tuple[torch.Tensor, ...], threads: int | None = None
) -> list[np.ndarray]:
    """Run the ONNX file at `path` in ONNX Runtime (CPU) on `inputs`."""
    session = onnx_session(path, threads)
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise OptkitError(
            f"{Path(path).name} takes {len(names)} inputs ({', '.join(names)}), got {len(inputs)}"
        )
    feeds = {n: t.detach().numpy() for n, t in zip(names, inputs, strict=True)}
    return list(session.run(None, feeds))


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for `path`, with `threads` intra-op threads if given."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ArtifactError(f"ONNX Runtime cannot load {path}: {err}") from err


def _finish_quantized(path: Path, int8_weights: str) -> tuple[int, int, bool]:
    """Rewrite a quantized export in place: int4 weights materialized, int8 weights stored as
    `int8_weights` (a form of `onnx_int8.INT8_WEIGHT_FORMS`, `onnx_int8.choose_int8_weights`).
    Returns how many int8 weights are now uint8, how many stay int8, and whether they all fit
    7 bits."""
    import onnx

    from optkit.ir import onnx_int8

    model = onnx.load(str(path))
    _materialize_int4(model)
    seven_bit = onnx_int8.seven_bit_weights(model)
    if onnx_int8.choose_int8_weights(int8_weights, seven_bit) == "u8":
        unsigned, signed = onnx_int8.unsigned_int8_weights(model), 0
    else:
        unsigned, signed = 0, len(onnx_int8.int8_weights(model))
    onnx.save(model, str(path))
    return unsigned, signed, seven_bit


def _materialize_int4(model: Any) -> None:
    """Replace `optkit.onnx::AsInt4(bytes)` nodes of `model` (a ModelProto, changed in place) by
    INT4/UINT4 initializers of the same bytes.

    PyTorch has no 4-bit dtype, so packed weights leave the exporter as uint8 (K, N/2); ONNX's
    INT4 layout of a (K, N) tensor is exactly those bytes.
    """
    import onnx

    from optkit.quant.ops import INT4_DOMAIN

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.domain != INT4_DOMAIN:
            keep.append(node)
            continue
        source = inits.get(node.input[0])
        if source is None:
            raise OptkitError(
                f"int4 weight {node.input[0]!r} is not a constant initializer in the ONNX graph"
            )
        signed = next((a.i for a in node.attribute if a.name == "signed"), 1)
        raw = onnx.numpy_helper.to_array(source).tobytes()
        dims = list(source.dims[:-1]) + [source.dims[-1] * 2]
        dtype = onnx.TensorProto.INT4 if signed else onnx.TensorProto.UINT4
        graph.initializer.append(onnx.helper.make_tensor(node.output[0], dtype, dims, raw, raw=True))
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input}
    for t in [
        t for t in graph.initializer if t.name not in used and t.name not in {o.name for o in graph.output}
    ]:
        graph.initializer.remove(t)
    for entry in [o for o in model.opset_import if o.domain == INT4_DOMAIN]:
        model.opset_import.remove(entry)


def _quiet_exporter_logs() -> None:
    for name in ("torch.onnx", "torch.onnx._internal.exporter._registration", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)


@dataclass
class OnnxModel:
    """An `.onnx` file read for analysis: graph, input shapes, op counts, parameters, FLOPs."""

    path: Path
    model: Any

    @classmethod
    def load(cls, path: str | Path) -> OnnxModel:
        import onnx

        path = Path(path)
        try:
            model = onnx.load(str(path))
            model = onnx.shape_inference.infer_shapes(model)
        except Exception as err:
            raise ArtifactError(f"{path} is not a readable ONNX model: {err}") from err
        if not model.graph.node or not model.graph.output:
            raise ArtifactError(
                f"{path} holds no ONNX graph (no nodes or no outputs): empty or not an ONNX file"
            )
        return cls(path, model)

    @property
    def name(self) -> str:
        return self.path.stem

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.model.graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def parameter_count(self) -> int:
        return sum(math.prod(t.dims) for t in self.model.graph.initializer)

    def parameter_bytes(self) -> int:
        from onnx import helper

        return sum(
            math.prod(t.dims) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
            for t in self.model.graph.initializer
        )

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        g = self.model.graph
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            dims = vi.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                shapes[vi.name] = tuple(d.dim_value for d in dims)
        for t in g.initializer:
            shapes[t.name] = tuple(t.dims)
        return shapes

    def total_flops(self) -> int:
        """FLOPs of MatMul, Gemm and Conv nodes whose shapes are known (others count 0)."""
        shapes = self._shapes()
        total = 0
        for node in self.model.graph.node:
            out = shapes.get(node.output[0]) if node.output else None
            if out is None:
                continue
            if node.op_type in ("MatMul", "Gemm", "MatMulInteger"):
                a = shapes.get(node.input[0])
                if a:
                    k = a[0] if node.op_type == "Gemm" and _attr(node, "transA") else a[-1]
                    total += 2 * math.prod(out) * k
            elif node.op_type in ("Conv", "ConvInteger"):
                w = shapes.get(node.input[1])
                if w:
                    total += 2 * math.prod(out) * math.prod(w[1:])
        return total


def _attr(node: Any, name: str) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), 0)
