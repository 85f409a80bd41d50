"""int8 GEMM and convolution with AVX-512 VNNI (`vpdpbusd`: 64 u8 x s8 multiply-adds per instruction).

`vpdpbusd` multiplies 4 unsigned bytes by 4 signed bytes and adds the four products to each of
16 int32 lanes. optkit's int8 matmuls (`linear_w8a8`) and int8 convolutions (`conv2d_w8a8`,
through im2col) use it as follows:

- activations shifted to unsigned, `xu = x + 128` (uint8), in the kernel that quantizes them;
- the constant weight packed once at compile time as `Wv[N / 16, K / 4, 16, 4]`, so that for
  4 consecutive k the 16 output columns' bytes are one 64-byte register;
- `y = xu @ w - 128 * colsum(w)`, the correction a constant that the epilogue subtracts.

The kernel is written directly in TIR (`gemm_func`): a `rows x 16` int32 accumulator tile in
registers, one `vpdpbusd` per row per 4 k. It is not a schedule plus `tensorize`: with
apache-tvm-ffi 0.1.15.x `tensorize` crashed in `ffi::ToJSONGraph`, the serializer bug that also
kept MetaSchedule out (see `tuning.py`; not re-checked with the pinned 0.1.14.post1). Measured alone on this repository's AMD EPYC
(1 thread): 256x512x2048 at ~610 GOP/s, against ~227 GFLOP/s for the float32 packed kernel.
Used when the llvm target reports `avx512vnni`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LANES, GROUP = 16, 4  # int32 lanes per register, bytes per lane
ROWS = (8, 4, 2, 1)  # accumulator rows per tile: the first that divides M


def target_has_vnni(target: Any) -> bool:
    """Whether the llvm target's CPU has AVX-512 VNNI."""
    from tvm.target import codegen

    try:
        return bool(codegen.target_has_features("avx512vnni", target))
    except Exception:  # a non-x86 target or an LLVM that cannot answer: no VNNI
        return False


def applies(k: int) -> bool:
    """Whether a K x N int8 weight fits the kernel: K a multiple of 4 (N is padded to 16)."""
    return k % GROUP == 0


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pack(w: np.ndarray) -> np.ndarray:
    """int8 `W[K, N]` -> `Wv[N / 16, K / 4, 16, 4]`."""
    k, n = w.shape
    return np.ascontiguousarray(w.reshape(k // GROUP, GROUP, n // LANES, LANES).transpose(2, 0, 3, 1))


def gemm_func(m: int, n: int, k: int) -> Any:
    """The TIR kernel `y[M, N] (int32) = xu[M, K] (uint8) @ Wv (packed int8)`.

    Shapes and loops are int64, as Relax's, so that `FuseOps` can fuse the elementwise epilogue
    that follows (zero-point correction, rescale, bias) into the kernel (`op_pattern` 4:
    out-elementwise-fusable).
    """
    from tvm import tirx
    from tvm.script import tirx as T

    rows = next(r for r in ROWS if m % r == 0)
    nb, kb, mb = n // LANES, k // GROUP, m // rows
    i64 = lambda v: tirx.IntImm("int64", v)  # noqa: E731
    mm, nn, kk, nbb, kbb, rr, tiles = i64(m), i64(n), i64(k), i64(nb), i64(kb), i64(rows), i64(mb * nb)

    @T.prim_func(private=True, s_tir=True)
    def vnni_gemm(  # TVMScript buffer specs below are calls, which mypy cannot read as types
        x: T.Buffer((mm, kk), "uint8"),  # type: ignore[valid-type]
        w: T.Buffer((nbb, kbb, 16, 4), "int8"),  # type: ignore[valid-type]
        y: T.Buffer((mm, nn), "int32"),  # type: ignore[valid-type]
    ) -> None:
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 4})
        with T.sblock("root"):
            for tile in T.parallel(tiles):
                acc = T.alloc_local((rr, 16), "int32")
                for r in T.unroll(rr):
                    acc[r, T.ramp(T.int64(0), 1, 16)] = T.broadcast(T.int32(0), 16)
                for ko in T.serial(kbb):
                    b = w.vload([tile % nbb, ko, T.int64(0), T.int64(0)], dtype="int8x64")
                    for r in T.unroll(rr):
                        a = T.reinterpret(
                            x.vload([tile // nbb * rr + r, ko * 4], dtype="uint8x4"), dtype="int32"
                        )
                        acc[r, T.ramp(T.int64(0), 1, 16)] = T.call_llvm_pure_intrin(
                            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                            acc.vload([r, T.int64(0)], dtype="int32x16"),
                            T.reinterpret(T.broadcast(a, 16), dtype="uint8x64"),
                            b,
                            dtype="int32x16",
                        )
                for r in T.unroll(rr):
                    y[tile // nbb * rr + r, T.ramp(tile % nbb * 16, 1, 16)] = acc.vload(
                        [r, T.int64(0)], dtype="int32x16"
                    )

    return vnni_gemm


def to_unsigned(bb: Any, x: Any) -> Any:
    """int8 -> uint8 by adding 128 (elementwise; fuses into the kernel that produced x)."""
    from tvm import relax

    op = relax.op
    return bb.emit(
        op.astype(bb.emit(op.add(bb.emit(op.astype(x, "int32")), relax.const(128, "int32"))), "uint8")
    )


def matmul(bb: Any, xu: Any, w: np.ndarray) -> Any:
    """Emit `xu[M, K] (uint8, int8 + 128) @ w[K, N] (int8) - 128 * colsum(w)` (int32) through
    the VNNI kernel; returns the Relax expression."""
    from tvm import relax

    m, k = (int(d) for d in xu.ty.shape)
    n = w.shape[1]
    n16 = _round_up(n, LANES)
    wide = np.concatenate([w, np.zeros((k, n16 - n), w.dtype)], axis=1) if n16 > n else w
    gvar = bb.add_func(gemm_func(m, n16, k), "vnni_gemm")
    y = bb.emit(relax.call_tir(gvar, [xu, relax.const(pack(wide))], relax.TensorType((m, n16), "int32")))
    if n16 > n:
        y = bb.emit(relax.op.strided_slice(y, axes=[1], begin=[0], end=[n]))
    shift = (128 * w.astype(np.int64).sum(axis=0)).astype(np.int32)
    return relax.op.subtract(y, relax.const(shift))


def im2col(bb: Any, x: Any, kh: int, kw: int, stride: list[int], dilation: list[int]) -> Any:
    """Emit `cols[B * OH * OW, KH * KW * C4]` from a padded NHWC `x[B, H, W, C]` (C4: C rounded up
    to a multiple of 4, the extra channels 0). Channels innermost, so each tap copies C
    contiguous bytes (vectorized). A kernel of its own, marked opaque so that `FuseOps` does not
    pull x's producers into it (each input element is read up to KH * KW times, and would be
    recomputed as often)."""
    from tvm import relax, te, tirx

    b, h, w, c = (int(d) for d in x.ty.shape)
    c4 = _round_up(c, GROUP)
    oh = (h - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    src = te.placeholder((b, h, w, c), str(x.ty.dtype), name="x")

    def tap(n: Any, i: Any, j: Any, ky: Any, kx: Any, ch: Any) -> Any:
        value = src[
            n, i * stride[0] + ky * dilation[0], j * stride[1] + kx * dilation[1], tirx.min(ch, c - 1)
        ]
        return value if c4 == c else tirx.if_then_else(ch < c, value, tirx.const(0, src.dtype))

    cols = te.compute((b, oh, ow, kh, kw, c4), tap, name="im2col")
    func = te.create_prim_func([src, cols]).without_attr("global_symbol")
    func = func.with_attr("op_pattern", 8)  # kOpaque
    gvar = bb.add_func(func, "im2col")
    out = bb.emit(relax.call_tir(gvar, [x], relax.TensorType([b, oh, ow, kh, kw, c4], str(x.ty.dtype))))
    return bb.emit(relax.op.reshape(out, (b * oh * ow, kh * kw * c4)))


def conv_weight(w: np.ndarray) -> np.ndarray:
    """`W[Co, Ci, KH, KW]` -> the GEMM weight `[KH * KW * Ci4, Co]` matching `im2col`'s columns."""
    co, ci, kh, kw = w.shape
    ci4 = _round_up(ci, GROUP)
    if ci4 > ci:
        w = np.concatenate([w, np.zeros((co, ci4 - ci, kh, kw), w.dtype)], axis=1)
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(kh * kw * ci4, co))
