"""An inverted-residual block's expand 1 x 1 conv and depthwise conv as one kernel.

MobileNetV2's blocks (Sandler et al. 2018) widen the channels with a 1 x 1 conv and ReLU6, then
filter each channel with a 3 x 3 depthwise conv. Lowered apart, the 1 x 1 conv writes the wide
activation and the depthwise conv reads it back, nine taps per value: the biggest tensors of the
network go through memory twice, at a handful of multiply-adds per byte. The fused kernel
computes, per image and block of `rows` output rows, the expanded input rows those outputs need
(`(rows - 1) * stride + kernel` rows: a buffer of a few hundred KiB that stays in L2) and filters
them at once; the rows at a block's border are computed twice (7% more at 7 rows, stride 2).

| Relax (NHWC, `layout.channels_last`) | becomes |
|---|---|
| `e = act(conv2d(x, W1) + b1)`, W1 1 x 1, stride 1, no padding; `act` ReLU, ReLU6 (`minimum(maximum(., 0), 6)`) or none; `y = conv2d(e, Wd)` depthwise, constant weights, `e` read by the depthwise conv alone, at least `MIN_BYTES` of `e` | `y = expand_depthwise(x, W1, b1, Wd)`: `e` never written; the depthwise conv's own bias and activation join its write-back (the kernel is output-elementwise-fusable) |

Below `MIN_BYTES` the expanded tensor stays in cache between the two kernels, and the tile GEMM
of the 1 x 1 conv (`vnni.py`, 12 accumulators) beats the fused kernel's expand step (8). Measured
on one core of an AMD EPYC (znver3, AVX2), a stem 1 x 1 conv, the pair and a project conv, the
two kernels against the fused one (ms, medians of 15 interleaved calls): 8 x 56 x 56 x 16 -> 96,
stride 2 (9.6 MB expanded) 4.8 -> 2.9; 8 x 28 x 28 x 24 -> 144 (3.6 MB) 6.0 -> 4.8, stride 2 2.2
-> 1.7; 2 x 56 x 56 x 16 -> 96 (2.4 MB) 0.71 either way; 8 x 14 x 14 x 32 -> 192 (1.2 MB) 1.16
-> 1.33. MobileNetV2 in float at batch 8 (three pairs fused): 0.88-0.93x the time, bit-identical.
AVX-512 CPUs keep the two kernels (`applies`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from optkit.backends.parallel_loops import parallel
from optkit.backends.relax_exprs import bound_call, constant_value, rewrite_calls, scalar_float, static_shape
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

log = logging.getLogger(__name__)

MIN_BYTES = 3 << 20  # the expanded activation's size from which the fused kernel wins (above)
BLOCK_BYTES = 384 << 10  # the expanded rows one block computes: within a 512 KiB L2
EXPAND, ACTIVATION, DEPTHWISE = "expand_conv", "expand_act", "expand_depthwise"
KERNEL_NAME = "expand_depthwise_conv2d_nhwc"
CHANNEL_TILE = 16  # channels per register tile (two AVX2 registers, one AVX-512 register)
PIXEL_TILES = (4, 2, 1)  # pixels per register tile, the first that divides the width
WIDTHS = (8,)  # vector widths (float32 lanes) the fusion is measured to pay on: AVX2


def applies(width: int) -> bool:
    """Whether lowering fuses the pairs for a CPU whose float32 tile kernels use vectors of
    `width` lanes (`vnni.Arith.width`): on AVX2, where it was measured. AVX-512 CPUs keep the two
    kernels: there the 1 x 1 conv's tile GEMM holds 24 accumulators against the fused kernel's 4
    (untuned for them, not measured)."""
    return width in WIDTHS


def fuse_expand_depthwise(mod: Any, min_bytes: int | None = None) -> tuple[Any, int]:
    """`mod` with each expand 1 x 1 conv + depthwise conv pair of the table above whose expanded
    activation has at least `min_bytes` (default `MIN_BYTES`) as one kernel; returns (mod,
    number of pairs fused)."""
    from optkit.backends.packing import _var_readers

    min_bytes = MIN_BYTES if min_bytes is None else min_bytes
    readers = _var_readers(mod)

    def rewrite(call: Any, bb: Any) -> Any | None:
        try:
            return _fuse(call, bb, readers, min_bytes)
        except _NotFusable:
            return None

    return rewrite_calls(mod, "relax.nn.conv2d", rewrite)


class _NotFusable(Exception):
    pass


def _fuse(call: Any, bb: Any, readers: dict[Any, int], min_bytes: int) -> Any:
    from optkit.backends.packing import _emit_fusable
    from tvm import relax

    lookup = bb.lookup_binding
    depthwise = _nhwc(call, lookup)
    e, wd, stride, dilation, pad, groups = depthwise
    n, h, w, channels = _shape(e)
    if groups != channels or wd.shape[2:] != (1, channels) or channels % CHANNEL_TILE or dilation != [1, 1]:
        raise _NotFusable
    if n * h * w * channels * 4 < min_bytes:
        raise _NotFusable
    activation, pre = _activation(e, lookup, readers)
    biased = bound_call(pre, lookup, "relax.add") if _single(pre, readers) else None
    conv_out, bias = (biased.args[0], biased.args[1]) if biased is not None else (pre, None)
    expand_call = bound_call(conv_out, lookup, "relax.nn.conv2d") if _single(conv_out, readers) else None
    if expand_call is None:
        raise _NotFusable
    x, w1, e_stride, _, e_pad, e_groups = _nhwc(expand_call, lookup)
    if w1.shape[:2] != (1, 1) or e_stride != [1, 1] or any(e_pad) or e_groups != 1:
        raise _NotFusable
    b1 = np.zeros(channels, np.float32) if bias is None else _channel_vector(bias, lookup, channels)
    kernel = _expand_depthwise_te(stride, pad, activation, wd.shape[:2])
    return _emit_fusable(
        bb,
        kernel,
        x,
        relax.const(np.ascontiguousarray(w1[0, 0])),  # (Ci, C)
        relax.const(b1),
        relax.const(np.ascontiguousarray(wd[:, :, 0, :])),  # (Kh, Kw, C)
        name=KERNEL_NAME,
    )


def _nhwc(call: Any, lookup: Any) -> tuple[Any, np.ndarray, list[int], list[int], list[int], int]:
    from optkit.backends.packing import _nhwc_conv, _NotPackable

    try:
        found = _nhwc_conv(call, lookup)
    except _NotPackable:
        found = None
    if found is None:
        raise _NotFusable
    return found


def _shape(x: Any) -> list[int]:
    shape = static_shape(x)
    if shape is None or len(shape) != 4:
        raise _NotFusable
    return shape


def _single(x: Any, readers: dict[Any, int]) -> bool:
    """Whether `x` is read once (by the op being fused): otherwise it must still be written."""
    return readers.get(x, 0) == 1


def _activation(e: Any, lookup: Any, readers: dict[Any, int]) -> tuple[tuple[float, float] | None, Any]:
    """((low, high) or None, the activation's input) for `e` = ReLU6 / ReLU / identity of it."""
    if not _single(e, readers):
        raise _NotFusable
    if (relu := bound_call(e, lookup, "relax.nn.relu")) is not None:
        return (0.0, float("inf")), relu.args[0]
    high = bound_call(e, lookup, "relax.minimum")
    low = bound_call(high.args[0] if high is not None else e, lookup, "relax.maximum")
    if low is None:
        return None, e
    lo = scalar_float(low.args[1], lookup)
    hi = scalar_float(high.args[1], lookup) if high is not None else float("inf")
    if lo is None or hi is None or (high is not None and not _single(high.args[0], readers)):
        raise _NotFusable
    return (lo, hi), low.args[0]


def _channel_vector(bias: Any, lookup: Any, channels: int) -> np.ndarray:
    """The bias as `channels` float32 values: a constant, or constants reshaped or transposed."""
    value = constant_value(bias, lookup)
    if (
        value is None
        or value.dtype != np.float32
        or value.size != channels
        or value.shape[-1:] != (channels,)
    ):
        raise _NotFusable
    return np.ascontiguousarray(value.reshape(channels))


def _expand_depthwise_te(
    stride: list[int], pad: list[int], activation: tuple[float, float] | None, taps: tuple[int, int]
) -> Any:
    """`y[n, i, j, c] = sum_{ry, rx} act(x[n, ., ., :] @ W1[:, c] + b1[c]) * Wd[ry, rx, c]`, the
    padding read in place (zero outside the image, as the depthwise conv's padding of `e`)."""
    from tvm import te, tirx

    kh, kw = taps

    def kernel(x: Any, w1: Any, b1: Any, wd: Any) -> Any:
        n, h, w, ci = (int(d) for d in x.shape)
        channels = int(w1.shape[1])
        oh = (h + pad[0] + pad[2] - kh) // stride[0] + 1
        ow = (w + pad[1] + pad[3] - kw) // stride[1] + 1
        k = te.reduce_axis((0, ci), name="k")
        conv = te.compute(
            (n, h, w, channels),
            lambda b, i, j, c: te.sum(x[b, i, j, k] * w1[k, c], axis=k),
            name=EXPAND,
        )

        def act(b: Any, i: Any, j: Any, c: Any) -> Any:
            value = conv[b, i, j, c] + b1[c]
            if activation is not None:
                value = tirx.max(value, tirx.const(activation[0], "float32"))
                if np.isfinite(activation[1]):
                    value = tirx.min(value, tirx.const(activation[1], "float32"))
            return value

        expanded = te.compute((n, h, w, channels), act, name=ACTIVATION)
        ry = te.reduce_axis((0, kh), name="ry")
        rx = te.reduce_axis((0, kw), name="rx")

        def tap(b: Any, i: Any, j: Any, c: Any) -> Any:
            y = i * stride[0] + ry - pad[0]
            xx = j * stride[1] + rx - pad[1]
            inside = tirx.all(y >= 0, y < h, xx >= 0, xx < w)
            return tirx.if_then_else(inside, expanded[b, y, xx, c], tirx.const(0.0, "float32"))

        return te.compute(
            (n, oh, ow, channels),
            lambda b, i, j, c: te.sum(tap(b, i, j, c) * wd[ry, rx, c], axis=[ry, rx]),
            name=f"{DEPTHWISE}_stride{stride[0]}",  # the schedule sizes its row blocks by it
        )

    return kernel


def _block_names(func: Any) -> list[str]:
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        root = sch.get_sblock("root")
    except Exception:  # a hand-written kernel without a root block (`vnni.py`): not this one
        return []
    return [str(sch.get(b).name_hint) for b in sch.get_child_blocks(root)]


def _depthwise_block(func: Any) -> tuple[str, int] | None:
    """(name, row stride) of the fused kernel's depthwise block when `func` (a PrimFunc, fused
    with its epilogue or not) is this module's kernel, else None."""
    names = _block_names(func)
    if EXPAND not in names or ACTIVATION not in names:
        return None
    for name in names:
        if name.startswith(f"{DEPTHWISE}_stride"):
            return name, int(name.rsplit("stride", 1)[1])
    return None


def block_rows(out_rows: int, width: int, channels: int, stride: int, taps: int) -> int:
    """Output rows per block: the most that divide `out_rows` whose expanded input rows
    (`(rows - 1) * stride + taps` rows of `width` x `channels` float32) fit `BLOCK_BYTES`."""
    best = 1
    for rows in range(1, out_rows + 1):
        if out_rows % rows == 0 and ((rows - 1) * stride + taps) * width * channels * 4 <= BLOCK_BYTES:
            best = rows
    return best


class CPUExpandDepthwise(CPUScheduleRule):
    """The schedule rule for this module's kernel (`schedule_expand_depthwise`); other kernels
    are left to the next rule."""

    def apply(self, func: Any, target: Any, _tunable: bool) -> Any:
        from tvm import tirx

        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        if (found := _depthwise_block(func)) is None:
            return None
        try:
            return schedule_expand_depthwise(func, *found)
        except Exception as err:  # an epilogue the write-back cannot take: the generic rules'
            log.warning("the fused expand + depthwise kernel keeps a generic schedule: %s", err)
            return None


def schedule_expand_depthwise(func: Any, depthwise_name: str, stride: int) -> Any:
    """The fused kernel's schedule: images x row blocks in parallel; per block, the expanded
    rows in register tiles of `PIXEL_TILES` pixels x `CHANNEL_TILE` channels (the 1 x 1 conv's
    reduction innermost, its bias and activation in the tile's write-back), then the depthwise
    conv in tiles of 4 pixels x 16 channels with its taps unrolled, its epilogue (bias,
    activation, from `FuseOps`) in the write-back. Returns the schedule."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    conv, act, depthwise = (sch.get_sblock(name) for name in (EXPAND, ACTIVATION, depthwise_name))
    epilogue = _consumers_in_order(sch, depthwise)
    acc = sch.cache_write(depthwise, 0, "global")
    for block in epilogue:
        sch.reverse_compute_inline(block)
    copy = sch.cache_write(conv, 0, "global")
    sch.reverse_compute_inline(act)
    n, i, j, c, ry, rx = sch.get_loops(depthwise)
    out_rows, out_cols, channels = (_extent(sch, loop) for loop in (i, j, c))
    in_shape = [_extent(sch, loop) for loop in sch.get_loops(conv)[:4]]  # (N, H, W, C)
    rows = block_rows(out_rows, in_shape[2], channels, stride, _extent(sch, ry))
    i_outer, i_inner = sch.split(i, [None, rows])
    j_outer, j_inner = sch.split(j, [None, _pixel_tile(out_cols)])
    c_outer, c_inner = sch.split(c, [None, CHANNEL_TILE])
    sch.reorder(n, i_outer, i_inner, j_outer, c_outer, ry, rx, j_inner, c_inner)
    sch.reverse_compute_at(acc, c_outer, preserve_unit_loops=True)
    sch.unroll(rx)
    sch.unroll(j_inner)
    sch.vectorize(c_inner)
    # the expanded rows of the block, tile by tile
    sch.compute_at(copy, i_outer, preserve_unit_loops=True)
    eh, ew, ec = sch.get_loops(copy)[-3:]
    ew_outer, ew_inner = sch.split(ew, [None, _pixel_tile(in_shape[2])])
    ec_outer, ec_inner = sch.split(ec, [None, CHANNEL_TILE])
    sch.reorder(eh, ew_outer, ec_outer, ew_inner, ec_inner)
    sch.compute_at(conv, ec_outer, preserve_unit_loops=True)
    cw, cc, ck = sch.get_loops(conv)[-3:]
    sch.reorder(ck, cw, cc)
    sch.unroll(cw)
    sch.vectorize(cc)
    sch.vectorize(ec_inner)
    parallel(sch, sch.fuse(n, i_outer))
    inits = [sch.decompose_reduction(conv, ck), sch.decompose_reduction(depthwise, ry)]
    for block in (*inits, acc):
        sch.vectorize(sch.get_loops(block)[-1])
    return sch


def _consumers_in_order(sch: Any, block: Any) -> list[Any]:
    """The elementwise blocks after `block`, each reading the one before (bias, activation)."""
    chain = []
    current = block
    while len(consumers := sch.get_consumers(current)) == 1:
        current = consumers[0]
        chain.append(current)
    return chain


def _extent(sch: Any, loop: Any) -> int:
    return int(sch.get(loop).extent)


def _pixel_tile(width: int) -> int:
    return next(t for t in PIXEL_TILES if width % t == 0)
