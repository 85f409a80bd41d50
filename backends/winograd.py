"""Winograd convolution F(2 x 2, 3 x 3): a float32 3 x 3 conv in 2.25x fewer multiply-adds.

A 3 x 3 conv at stride 1 computes each 2 x 2 block of output pixels from the 4 x 4 block of
input pixels around it. Winograd's minimal filtering (Lavin and Gray, "Fast Algorithms for
Convolutional Neural Networks", CVPR 2016) writes that block as

    Y = A^T [ (G g G^T) . (B^T d B) ] A

with `g` the 3 x 3 filter, `d` the 4 x 4 input tile, `.` the elementwise product and B, G, A
small constant matrices of 0, +-1 and +-0.5. Over channels the elementwise products become 16
independent GEMMs, one per position of the 4 x 4 transformed tile:

    M[xi] (P x K) = V[xi] (P x C) @ U[xi] (C x K),  xi = 0 .. 15,

for P tiles, C input and K output channels: 16 * C * K multiply-adds per tile of 4 outputs
against 36 * C * K for the direct conv. Here

- `U` is computed once at compile time (float64, stored float32) and packed for the FMA tile
  GEMM (`vnni.gemm_func`, `F32`), the 16 GEMMs one batched kernel;
- `input_func` writes `V` (`[16 * P, C]`, one GEMM operand after another) from the NHWC image,
  reading its zero border in place (no pad kernel), a tile's 16 input vectors once per 16
  channels;
- the output transform (`output_te`) is a TE compute that `FuseOps` fuses with the conv's
  bias, residual add and activation after it (it is marked output-elementwise-fusable, as the
  packed convs are, `packing._emit_fusable`); each output vector reads the 9 of its tile's 16
  GEMM results it needs.

Applies (`applies`) to float32 NHWC convs of 3 x 3 filters, stride and dilation 1, one group, a
padding of 1 on every side, and channel counts that are multiples of 16, under fast math (the
sums are reassociated: results differ from the direct conv in the last bits, ~1e-7 relative;
`--exact-math` keeps the direct conv), on CPUs with AVX-512 (the only ones it is measured on).
Odd image sides get a last row or column of tiles whose second output is not stored.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from optkit.backends.parallel_loops import loop_kind
from optkit.backends.vnni import F32, LANES, Arith, gemm_func

TILE = 2  # output pixels per tile side, m of F(m x m, r x r)
ALPHA = 4  # input pixels per tile side, m + r - 1
# Lavin and Gray's matrices for F(2, 3): B^T (input), G (filter), A^T (output)
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)


def applies(
    kernel: tuple[int, int],
    stride: list[int],
    dilation: list[int],
    pad: list[int],
    groups: int,
    channels: tuple[int, int],
    arith: Arith | None,
) -> bool:
    """Whether a float32 NHWC conv takes the Winograd kernels (see the module's docstring)."""
    ci, co = channels
    return (
        arith is not None
        and arith.width == LANES
        and kernel == (3, 3)
        and stride == [1, 1]
        and dilation == [1, 1]
        and list(pad) == [1, 1, 1, 1]
        and groups == 1
        and ci % LANES == 0
        and co % LANES == 0
    )


def tiles(h: int, w: int) -> tuple[int, int]:
    """Tiles down and across an `h x w` output."""
    return -(-h // TILE), -(-w // TILE)


def weight_transform(w_hwio: np.ndarray) -> np.ndarray:
    """`U[xi, C, K] = (G g G^T)[xi]` for each filter `g` of `w_hwio[3, 3, C, K]`, float32."""
    g = w_hwio.astype(np.float64)
    u = np.einsum("ia,abck,jb->ijck", G, g, G)
    return np.ascontiguousarray(u.reshape(ALPHA * ALPHA, *w_hwio.shape[2:]).astype(np.float32))


def _i64(value: int) -> Any:
    from tvm import tirx

    return tirx.IntImm("int64", value)


def _combine(values: list[Any]) -> list[Any]:
    """`B^T v` for the 4 vectors `v` (one column or row of a tile): adds and subtracts only."""
    d0, d1, d2, d3 = values
    return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]


def input_func(batch: int, height: int, width: int, channels: int) -> Any:
    """The TIR kernel `V[16 * P, C] = B^T d B` per tile of the NHWC image `x[B, H, W, C]`
    (padded by 1 with zeros, read in place): tile p's transformed values at position xi are row
    `xi * P + p`. Tiles run in parallel; per 16 channels a tile loads its 16 input vectors
    (those past the image: zeros) and stores the 16 transformed ones."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.tirx.script.builder import ir as T

    th, tw = tiles(height, width)
    count = batch * th * tw
    vec = f"float32x{LANES}"
    zero = tirx.Broadcast(tirx.const(0.0, "float32"), LANES)
    with IRBuilder() as ib, T.prim_func(private=True, s_tir=True):
        T.func_name("winograd_input")
        x = T.arg("x", T.buffer((_i64(batch), _i64(height), _i64(width), _i64(channels)), "float32"))
        v = T.arg("v", T.buffer((_i64(ALPHA * ALPHA * count), _i64(channels)), "float32"))
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        nbytes = 4.0 * (batch * height * width * channels + ALPHA * ALPHA * count * channels)
        loop = loop_kind(2.0 * 32 * count * channels, nbytes)
        with T.sblock("root"), loop(_i64(0), _i64(count)) as p:
            b, rest = p // _i64(th * tw), p % _i64(th * tw)
            top, left = rest // _i64(tw) * _i64(TILE) - _i64(1), rest % _i64(tw) * _i64(TILE) - _i64(1)
            with T.serial(_i64(0), _i64(channels // LANES)) as step:
                c = step * _i64(LANES)
                tile = []
                for a in range(ALPHA):
                    row = []
                    for col in range(ALPHA):
                        y, xx = top + _i64(a), left + _i64(col)
                        inside = tirx.all(y >= _i64(0), y < _i64(height), xx >= _i64(0), xx < _i64(width))
                        row.append(T.Bind(tirx.if_then_else(inside, x.vload([b, y, xx, c], dtype=vec), zero)))
                    tile.append(row)
                # B^T d: down each column; then (B^T d) B: along each row
                columns = [_combine([tile[a][col] for a in range(ALPHA)]) for col in range(ALPHA)]
                for i in range(ALPHA):
                    for j, value in enumerate(_combine([T.Bind(columns[col][i]) for col in range(ALPHA)])):
                        T.buffer_store(
                            v, value, [_i64((i * ALPHA + j) * count) + p, tirx.Ramp(c, _i64(1), LANES)]
                        )
    return ib.get()


def output_te(batch: int, height: int, width: int) -> Any:
    """TE kernel: the conv's NHWC output `y[B, H, W, K]` from the GEMM results `m[16 * P, K]`,
    `Y = A^T M A` per tile. Each output value adds the 9 results its position in the tile
    (row i, column j) reads; the branches on i and j are one value across a vector of channels."""
    from tvm import te, tirx

    th, tw = tiles(height, width)
    count = batch * th * tw

    def kernel(m: Any) -> Any:
        k = int(m.shape[1])

        def value(b: Any, y: Any, xx: Any, ch: Any) -> Any:
            p = (b * th + y // TILE) * tw + xx // TILE

            def at(i: int, j: int) -> Any:
                return m[(i * ALPHA + j) * count + p, ch]

            def down(j: int) -> Any:  # (A^T M)[row, j]
                return tirx.if_then_else(
                    y % TILE == 0, at(0, j) + at(1, j) + at(2, j), at(1, j) - at(2, j) - at(3, j)
                )

            return tirx.if_then_else(xx % TILE == 0, down(0) + down(1) + down(2), down(1) - down(2) - down(3))

        return te.compute((batch, height, width, k), value, name="winograd_output")

    return kernel


def conv(bb: Any, x: Any, w_hwio: np.ndarray, emit_fusable: Any, arith: Arith = F32) -> Any:
    """Emit the conv of the NHWC image `x` ([B, H, W, C], float32) with `w_hwio` ([3, 3, C, K])
    as the Winograd kernels: the input transform, the 16 GEMMs as one batched tile kernel, and
    the output transform through `emit_fusable` (`packing._emit_fusable`). Returns the output."""
    from tvm import relax

    batch, height, width, channels = (int(d) for d in x.ty.shape)
    k = int(w_hwio.shape[3])
    th, tw = tiles(height, width)
    count = batch * th * tw
    positions = ALPHA * ALPHA
    transformed = relax.TensorType((positions * count, channels), "float32")
    gvar = bb.add_func(input_func(batch, height, width, channels), "winograd_input")
    v = bb.emit(relax.call_tir(gvar, [x], transformed))
    u = weight_transform(w_hwio)
    packed = np.concatenate([arith.pack(u[xi]) for xi in range(positions)], axis=0)
    gemm = bb.add_func(
        gemm_func(count, k, channels, arith=arith, batch=positions), arith.name + "_winograd_gemm"
    )
    m = bb.emit(
        relax.call_tir(gemm, [v, relax.const(packed)], relax.TensorType((positions * count, k), "float32"))
    )
    return emit_fusable(bb, output_te(batch, height, width), m, name="winograd_output")
