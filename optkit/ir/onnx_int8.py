"""The storage of int8 weights in an exported ONNX model, for ONNX Runtime's CPU kernels.

optkit's W8A8 ONNX feeds uint8 activations and, by default, int8 weights (`s8`) to ONNX
Runtime's quantized Conv / MatMul kernels: its U8S8 kernels, the fast ones everywhere. On x86
CPUs without VNNI (AVX2 or AVX-512 without `avx512_vnni` / `avx_vnni`) those kernels sum each
pair of byte products with `vpmaddubsw`, which saturates at int16 (ONNX Runtime's quantization
docs name the problem and the U8U8 remedy), so the model's outputs drift from the Program's. On
an AMD EPYC (znver3), 1 thread, batch 8, the model families of `benchmarks/families.py`: output
SQNR against float 7.6 dB (ViT-Tiny) and 27.9 dB (MobileNetV2) in ONNX Runtime, against 32.7 and
44.0 dB for the same graph with the weights stored as uint8 (`u8`: weight + 128, zero point +
128, the same dequantized values; ONNX Runtime's U8U8 kernels widen to int16 and are exact) and
32.8 / 44.0 dB for the Program in PyTorch. U8U8 is slower there: 39.3 against 34.5 ms
(ViT-Tiny), 20.5 against 15.6 ms (MobileNetV2; `benchmarks/bench_families.py`).

`auto` picks `u8` where ONNX Runtime's U8S8 is inexact (`ort_u8s8_exact`), else `s8`: the
exported file then follows the CPU that exports (and checks) it. Weights of 7 bits (`ptq`'s
`wbits=7`: every value in [-64, 64]) keep `s8` everywhere: a `vpmaddubsw` pair sum is then at
most 2 * 255 * 64 = 32640, inside int16, so U8S8 is exact on every CPU (ONNX Runtime's
`reduce_range` quantization rests on the same bound).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from optkit.errors import UnknownNameError
from optkit.host import cpu_flags
from optkit.quant.numerics import SEVEN_BIT_BOUND

INT8_WEIGHT_FORMS = ("auto", "s8", "u8")
_SHIFT = 128  # int8 -> uint8: the same grid, zero point moved with it


def ort_u8s8_exact(flags: frozenset[str] | None = None, machine: str | None = None) -> bool:
    """Whether ONNX Runtime's U8S8 int8 kernels are exact on this CPU: everywhere but on x86-64
    without VNNI (`avx512_vnni` or `avx_vnni`), where they saturate (`vpmaddubsw`)."""
    machine = machine if machine is not None else os.uname().machine
    if machine not in ("x86_64", "AMD64"):
        return True
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_vnni", "avx_vnni"} & flags)


def resolve_int8_weights(form: str) -> str:
    """`s8` or `u8` for a form of `INT8_WEIGHT_FORMS` (`auto`: `u8` where U8S8 is inexact)."""
    if form not in INT8_WEIGHT_FORMS:
        raise UnknownNameError("ONNX int8 weight form", form, INT8_WEIGHT_FORMS)
    if form == "auto":
        return "s8" if ort_u8s8_exact() else "u8"
    return form


def choose_int8_weights(form: str, seven_bit: bool) -> str:
    """`s8` or `u8` under `form` for a model whose int8 weights do (`seven_bit`) or do not all fit
    7 bits (`seven_bit_weights`): as `resolve_int8_weights`, but `auto` keeps `s8` for 7-bit ones."""
    resolved = resolve_int8_weights(form)
    return "s8" if form == "auto" and seven_bit else resolved


def seven_bit_weights(model: object) -> bool:
    """Whether `model` has int8 weights (`int8_weights`) and all their values lie in [-64, 64],
    where ONNX Runtime's U8S8 kernels are exact on every CPU."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}  # type: ignore[attr-defined]
    names = int8_weights(model)
    return bool(names) and all(
        int(np.abs(numpy_helper.to_array(inits[n]).astype(np.int16)).max(initial=0)) <= SEVEN_BIT_BOUND
        for n in names
    )


def int8_weights(model: object) -> list[str]:
    """The int8 weight initializers of an ONNX `model` (a ModelProto) that `unsigned_int8_weights`
    stores as uint8: each one read only as `DequantizeLinear`'s input (its zero point an int8
    initializer read only beside such weights) or as `MatMulInteger`'s B."""
    return _weights_and_uses(model)[0]


def _zero_of(node: Any) -> str:
    """The zero-point input of a `DequantizeLinear` or `MatMulInteger` (B's) node, "" if none."""
    at = 2 if node.op_type == "DequantizeLinear" else 3
    return node.input[at] if len(node.input) > at else ""


def _weights_and_uses(model: object) -> tuple[list[str], dict[str, list[tuple[Any, int]]]]:
    """`int8_weights(model)`, and each tensor name's uses in `model` as (node, input index)."""
    import onnx
    from onnx import TensorProto

    assert isinstance(model, onnx.ModelProto)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}

    def int8(name: str) -> bool:
        return name in inits and inits[name].data_type == TensorProto.INT8

    outputs = {o.name for o in graph.output}
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            uses.setdefault(name, []).append((node, i))

    def weight_use(node: onnx.NodeProto, i: int) -> bool:
        return (node.op_type, i) in (("DequantizeLinear", 0), ("MatMulInteger", 1))

    def plain(name: str) -> bool:  # an int8 initializer read only as a weight
        return (
            int8(name)
            and name not in outputs
            and bool(uses.get(name))
            and all(weight_use(*u) for u in uses[name])
        )

    def zero_ok(node: onnx.NodeProto) -> bool:
        """No zero point (a MatMulInteger), or an int8 one read only beside plain weights."""
        zero = _zero_of(node)
        if not zero:
            return node.op_type == "MatMulInteger"
        return int8(zero) and all(
            (n.op_type, i) in (("DequantizeLinear", 2), ("MatMulInteger", 3))
            and plain(n.input[0 if i == 2 else 1])
            for n, i in uses[zero]
        )

    return [name for name in inits if plain(name) and all(zero_ok(n) for n, _ in uses[name])], uses


def unsigned_int8_weights(model: object) -> int:
    """Store the int8 weights of an ONNX `model` (a ModelProto, changed in place; `int8_weights`)
    as uint8: each one is shifted by 128, and so is its zero point (one added for a
    `MatMulInteger` without). Returns how many weights changed."""
    import onnx
    from onnx import numpy_helper

    assert isinstance(model, onnx.ModelProto)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    weights, uses = _weights_and_uses(model)
    shifted: set[str] = set()

    def shift(name: str) -> None:
        if name in shifted:
            return
        values = numpy_helper.to_array(inits[name]).astype(np.int16) + _SHIFT
        inits[name].CopyFrom(numpy_helper.from_array(values.astype(np.uint8), name))
        shifted.add(name)

    for name in weights:
        shift(name)
        for node, _ in uses[name]:
            zero = _zero_of(node)
            if zero:
                shift(zero)
                continue
            zero = f"{name}_zero_u8"  # MatMulInteger's B without a zero point: 0 -> 128
            if zero not in inits:
                inits[zero] = numpy_helper.from_array(np.array(_SHIFT, np.uint8), zero)
                graph.initializer.append(inits[zero])
            del node.input[3:]
            node.input.extend([""] * (3 - len(node.input)) + [zero])
    return len(weights)


def int8_kept_note(count: int, seven_bit: bool = False) -> str:
    """A report's line on `count` int8 weights kept as int8 (`s8`, or `auto` on a CPU with VNNI
    or for 7-bit weights): whether ONNX Runtime runs them exactly on this CPU, and how to write a
    file that it runs exactly on every CPU."""
    if seven_bit:
        return (
            f"model.onnx keeps its {count} int8 weights as int8 for ONNX Runtime's U8S8 kernels; their "
            "values fit 7 bits (ptq wbits=7), which those kernels sum exactly on every CPU."
        )
    where = (
        "exact on this CPU (VNNI), but on x86-64 CPUs without VNNI they saturate (vpmaddubsw)"
        if ort_u8s8_exact()
        else "which saturate on this CPU without VNNI (vpmaddubsw): see the ONNX Runtime error figure"
    )
    return (
        f"model.onnx keeps its {count} int8 weights as int8 for ONNX Runtime's U8S8 kernels, {where}; "
        "--onnx-int8-weights u8 writes a file that ONNX Runtime runs exactly on every CPU."
    )


def int8_weights_note(count: int, form: str) -> str:
    """A report's line on `count` int8 weights stored as uint8 under `form`."""
    why = (
        "ONNX Runtime's int8 kernels saturate on this CPU without VNNI (vpmaddubsw), its U8U8 ones are exact"
        if form == "auto"
        else "as asked (--onnx-int8-weights u8)"
    )
    return (
        f"model.onnx stores its {count} int8 weights as uint8 (value + 128, zero point + 128): {why}; "
        "--onnx-int8-weights s8 keeps int8 (ONNX Runtime's faster U8S8 kernels)."
    )
