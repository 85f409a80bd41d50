"""Winograd convolution F(m x m, 3 x 3): a float32 3 x 3 conv in 2.25x (m = 2) or 4x (m = 4)
fewer multiply-adds.

A 3 x 3 conv at stride 1 computes each m x m block of output pixels from the (m + 2) x (m + 2)
block of input pixels around it. Winograd's minimal filtering (Lavin and Gray, "Fast Algorithms
for Convolutional Neural Networks", CVPR 2016) writes that block as

    Y = A^T [ (G g G^T) . (B^T d B) ] A

with `g` the 3 x 3 filter, `d` the input tile, `.` the elementwise product and B, G, A small
constant matrices (F2: 0, +-1, +-1/2; F4: up to 8 and 1/24). Over channels the elementwise
products become (m + 2)^2 independent GEMMs, one per position of the transformed tile:

    M[xi] (P x K) = V[xi] (P x C) @ U[xi] (C x K),

for P tiles, C input and K output channels: per output pixel 4 (F2) or 2.25 (F4) multiply-adds
per channel pair against 9 for the direct conv. Here

- `U` is computed once at compile time (float64, stored float32) and packed for the FMA tile
  GEMM (`vnni.gemm_func`, `F32` or `F32_AVX2`), the GEMMs one batched kernel; a saved artifact
  stores the 3 x 3 weight instead and computes `U` again when loaded (`derived_weights`);
- `input_func` writes `V` (`[positions * P, C]`, one GEMM operand after another) from the NHWC
  image, reading its zero border in place (no pad kernel), a tile's input vectors once per
  register of channels;
- the output transform (`output_te`) is a TE compute that `FuseOps` fuses with the conv's
  bias, residual add and activation after it (it is marked output-elementwise-fusable, as the
  packed convs are, `packing._emit_fusable`); each output vector reads the GEMM results its
  position in the tile needs (9 of 16 for F2).

`choose` takes the variant with fewer multiply-adds for the output's size, the tiles past its
edge included (F4 from 3 x 3 pixels on), or the direct conv where the GEMMs would have too few
rows to pay for streaming their larger weights (`WEIGHT_REUSE`). F4's larger constants cost
accuracy: on ResNet-18 and the UNet of the model families the outputs moved by at most 1.3e-7
and 8.9e-6 (absolute) from F2's, the conv outputs by ~1e-6 relative to the direct conv's
(tests/backends/test_winograd.py).

Applies (`applies`) to float32 NHWC convs of 3 x 3 filters, stride and dilation 1, one group, a
padding of 1 on every side, and channel counts that are multiples of 16, under fast math (the
sums are reassociated, so results differ from the direct conv in the last bits; `--exact-math`
keeps the direct conv), on CPUs with AVX-512 or AVX2 and FMA3 (`vnni.F32`, `vnni.F32_AVX2`;
the transforms work on a register's lanes, 16 or 8). Image sides
that m does not divide get a last row or column of tiles whose outputs past the edge are not
stored.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from optkit.backends.parallel_loops import loop_kind
from optkit.backends.vnni import ARITHS, LANES, Arith, gemm_func
from optkit.backends.weights import Derivation


@dataclass(frozen=True)
class Variant:
    """F(m x m, 3 x 3): `m` outputs per tile side from `alpha = m + 2` inputs, with Lavin and
    Gray's matrices B^T (input, alpha x alpha), G (filter, alpha x 3) and A^T (output, m x alpha)."""

    m: int
    bt: np.ndarray
    g: np.ndarray
    at: np.ndarray

    @property
    def alpha(self) -> int:
        return self.m + 2

    @property
    def positions(self) -> int:
        """GEMMs per conv: one per position of the transformed alpha x alpha tile."""
        return self.alpha * self.alpha

    def tiles(self, h: int, w: int) -> tuple[int, int]:
        """Tiles down and across an `h x w` output."""
        return -(-h // self.m), -(-w // self.m)


F2 = Variant(
    2,
    np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
    np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64),
    np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64),
)
F4 = Variant(
    4,
    np.array(
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        np.float64,
    ),
    np.array(
        [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ],
        np.float64,
    ),
    np.array(
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64
    ),
)


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
        and arith.name == "fma"
        and kernel == (3, 3)
        and stride == [1, 1]
        and dilation == [1, 1]
        and list(pad) == [1, 1, 1, 1]
        and groups == 1
        and ci % LANES == 0
        and co % LANES == 0
    )


def weight_transform(w_hwio: np.ndarray, variant: Variant = F2) -> np.ndarray:
    """`U[xi, C, K] = (G g G^T)[xi]` for each filter `g` of `w_hwio[3, 3, C, K]`, float32: in
    float64, G along the filter's rows, then along its columns (numpy's own loops, no BLAS, so
    the same bytes on every machine: a saved artifact computes them again, `derived_weights`)."""
    g = w_hwio.astype(np.float64)
    rows = np.einsum("ia,abck->ibck", variant.g, g)
    u = np.einsum("jb,ibck->ijck", variant.g, rows)
    return np.ascontiguousarray(u.reshape(variant.positions, *w_hwio.shape[2:]).astype(np.float32))


def packed_weights(w_hwio: np.ndarray, variant: Variant, arith: Arith) -> np.ndarray:
    """The batched GEMM's weights: `weight_transform`, each position packed for `arith`, one
    after another."""
    u = weight_transform(w_hwio, variant)
    return np.concatenate([arith.pack(u[xi]) for xi in range(variant.positions)], axis=0)


def derived_weights(source: np.ndarray, m: int, arith: str) -> np.ndarray:
    """`packed_weights` of the conv weight `source` (HWIO) for F(m x m) and the arithmetic of
    key `arith`: how a saved artifact stores these weights, as their 3 x 3 source, 1/4 (F4) or
    9/16 (F2) of their size (`weights.Derivation`)."""
    variants = {v.m: v for v in VARIANTS}
    if m not in variants or arith not in ARITHS:
        raise ValueError(
            f"no Winograd variant F{m} / arithmetic {arith!r}; known: {sorted(variants)}, {sorted(ARITHS)}"
        )
    return packed_weights(source, variants[m], ARITHS[arith])


def _i64(value: int) -> Any:
    from tvm import tirx

    return tirx.IntImm("int64", value)


def _linear(coefficients: np.ndarray, values: list[Any], scale: Any) -> Any:
    """`sum(c * v)` over the nonzero coefficients: adds and subtracts for +-1, else a multiply
    by `scale(|c|)` (a constant of the values' type)."""
    total = None
    for c, v in zip(coefficients, values, strict=True):
        if c == 0:
            continue
        term = v if abs(c) == 1 else v * scale(abs(float(c)))
        signed = term if c > 0 else -term
        total = signed if total is None else (total + term if c > 0 else total - term)
    return total


def input_func(
    batch: int, height: int, width: int, channels: int, variant: Variant = F2, lanes: int = LANES
) -> Any:
    """The TIR kernel `V[positions * P, C] = B^T d B` per tile d of the NHWC image
    `x[B, H, W, C]` (padded by 1 with zeros, read in place): tile p's transformed values at
    position xi are row `xi * P + p`. Tiles run in parallel; per `lanes` channels (a register:
    16 on AVX-512, 8 on AVX2) a tile loads its alpha x alpha input vectors (those past the
    image: zeros) and stores the transformed ones."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.tirx.script.builder import ir as T

    th, tw = variant.tiles(height, width)
    count, alpha = batch * th * tw, variant.alpha
    vec = f"float32x{lanes}"
    zero = tirx.Broadcast(tirx.const(0.0, "float32"), lanes)

    def scale(c: float) -> Any:
        return tirx.Broadcast(tirx.const(c, "float32"), lanes)

    with IRBuilder() as ib, T.prim_func(private=True, s_tir=True):
        T.func_name("winograd_input")
        x = T.arg("x", T.buffer((_i64(batch), _i64(height), _i64(width), _i64(channels)), "float32"))
        v = T.arg("v", T.buffer((_i64(variant.positions * count), _i64(channels)), "float32"))
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        nbytes = 4.0 * (batch * height * width * channels + variant.positions * count * channels)
        loop = loop_kind(4.0 * alpha * variant.positions * count * channels, nbytes)
        with T.sblock("root"), loop(_i64(0), _i64(count)) as p:
            b, rest = p // _i64(th * tw), p % _i64(th * tw)
            top = rest // _i64(tw) * _i64(variant.m) - _i64(1)
            left = rest % _i64(tw) * _i64(variant.m) - _i64(1)
            with T.serial(_i64(0), _i64(channels // lanes)) as step:
                c = step * _i64(lanes)
                tile = []
                for a in range(alpha):
                    row = []
                    for col in range(alpha):
                        y, xx = top + _i64(a), left + _i64(col)
                        inside = tirx.all(y >= _i64(0), y < _i64(height), xx >= _i64(0), xx < _i64(width))
                        row.append(T.Bind(tirx.if_then_else(inside, x.vload([b, y, xx, c], dtype=vec), zero)))
                    tile.append(row)
                # B^T d: down each column; then (B^T d) B: along each row
                down = [
                    [
                        T.Bind(_linear(variant.bt[i], [tile[a][col] for a in range(alpha)], scale))
                        for col in range(alpha)
                    ]
                    for i in range(alpha)
                ]
                for i, j in itertools.product(range(alpha), range(alpha)):
                    value = _linear(variant.bt[j], down[i], scale)
                    T.buffer_store(
                        v, value, [_i64((i * alpha + j) * count) + p, tirx.Ramp(c, _i64(1), lanes)]
                    )
    return ib.get()


def columns_func(count: int, channels: int, variant: Variant = F2, lanes: int = LANES) -> Any:
    """The TIR kernel `T[m * alpha * P, K] = A^T M` per tile: from a tile's `alpha x alpha` GEMM
    results (rows `xi * P + p` of `m`), the `m x alpha` sums down its columns, row
    `(i * alpha + col) * P + p`. Per `lanes` channels a tile loads its results once;
    `output_te` finishes along the rows."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.tirx.script.builder import ir as T

    alpha, vec = variant.alpha, f"float32x{lanes}"

    def scale(c: float) -> Any:
        return tirx.Broadcast(tirx.const(c, "float32"), lanes)

    with IRBuilder() as ib, T.prim_func(private=True, s_tir=True):
        T.func_name("winograd_columns")
        m = T.arg("m", T.buffer((_i64(variant.positions * count), _i64(channels)), "float32"))
        t = T.arg("t", T.buffer((_i64(variant.m * alpha * count), _i64(channels)), "float32"))
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        nbytes = 4.0 * (variant.positions + variant.m * alpha) * count * channels
        loop = loop_kind(4.0 * variant.m * variant.positions * count * channels, nbytes)
        with (
            T.sblock("root"),
            loop(_i64(0), _i64(count)) as p,
            T.serial(_i64(0), _i64(channels // lanes)) as step,
        ):
            c = step * _i64(lanes)
            ramp = tirx.Ramp(c, _i64(1), lanes)
            results = [
                [T.Bind(m.vload([_i64((a * alpha + col) * count) + p, c], dtype=vec)) for col in range(alpha)]
                for a in range(alpha)
            ]
            for i, col in itertools.product(range(variant.m), range(alpha)):
                value = _linear(variant.at[i], [results[a][col] for a in range(alpha)], scale)
                T.buffer_store(t, value, [_i64((i * alpha + col) * count) + p, ramp])
    return ib.get()


def output_te(batch: int, height: int, width: int, variant: Variant = F2) -> Any:
    """TE kernel: the conv's NHWC output `y[B, H, W, K]` from the column sums
    `t[m * alpha * P, K]` (`columns_func`), `Y = (A^T M) A` per tile: output (i, j) of a tile
    adds the sums of row i that A's column j takes (3 of 4 for F2, up to 5 of 6 for F4). The
    branch on j is one value across a vector of channels."""
    from tvm import te, tirx

    th, tw = variant.tiles(height, width)
    count, alpha, tile = batch * th * tw, variant.alpha, variant.m

    def kernel(t: Any) -> Any:
        k = int(t.shape[1])

        def value(b: Any, y: Any, xx: Any, ch: Any) -> Any:
            p = (b * th + y // tile) * tw + xx // tile
            row = [t[((y % tile) * alpha + col) * count + p, ch] for col in range(alpha)]
            sums = [_linear(variant.at[j], row, lambda c: tirx.const(c, "float32")) for j in range(tile)]
            chosen = sums[-1]
            for j in reversed(range(tile - 1)):
                chosen = tirx.if_then_else(xx % tile == j, sums[j], chosen)
            return chosen

        return te.compute((batch, height, width, k), value, name="winograd_output")

    return kernel


VARIANTS = (F2, F4)
# Rows per GEMM below which the tile GEMM waits on its weights rather than its FMAs: on the Zen 4
# of session 33 one core does ~57 G multiply-adds a second and reads ~5 G float32 weights from
# memory. At batch 1 ResNet-18's 4 x 4 images give F4 one tile per image, so each of its 36 GEMMs
# is one row over a 512 x 512 weight: 2.05 ms a conv against 0.73 ms direct.
WEIGHT_REUSE = 12


def cost(variant: Variant | None, batch: int, height: int, width: int) -> int:
    """A conv's multiply-adds per input and output channel pair, each GEMM's counted as at least
    `WEIGHT_REUSE` rows (its weights streamed from memory); `None`: the direct conv (9 per
    output pixel)."""
    if variant is None:
        return 9 * max(batch * height * width, WEIGHT_REUSE)
    rows = batch * math.prod(variant.tiles(height, width))
    return variant.positions * max(rows, WEIGHT_REUSE)


def choose(batch: int, height: int, width: int) -> Variant | None:
    """The variant of least `cost` for a batch of `height x width` outputs, tiles past the edge
    included, or None where the direct conv costs less (or ties): F4 from 3 x 3 outputs on, F2
    on smaller ones and where F4's GEMMs would have too few rows (ResNet-18's 7 x 7 convs at
    batch 1), the direct conv where F2's would too (its 4 x 4 ones at batch 1)."""
    options: list[Variant | None] = [None, *VARIANTS]
    return min(options, key=lambda v: (cost(v, batch, height, width), v.m if v is not None else 0))


def conv(
    bb: Any,
    x: Any,
    w_hwio: np.ndarray,
    emit_fusable: Any,
    arith: Arith,
    variant: Variant,
    derived: Callable[[Any, Derivation], None] | None = None,
) -> Any:
    """Emit the conv of the NHWC image `x` ([B, H, W, C], float32) with `w_hwio` ([3, 3, C, K])
    as the Winograd kernels of `variant` (`choose` picks it): the input transform, the GEMMs as
    one batched tile kernel of `arith`, and the output transform through `emit_fusable`
    (`packing._emit_fusable`). Returns the output. `derived(tensor, derivation)` is told how
    the GEMM's weight constant is computed from `w_hwio` (`weights.LiftedWeights.derived`)."""
    from tvm import relax

    batch, height, width, channels = (int(d) for d in x.ty.shape)
    k = int(w_hwio.shape[3])
    th, tw = variant.tiles(height, width)
    count, positions = batch * th * tw, variant.positions
    transformed = relax.TensorType((positions * count, channels), "float32")
    gvar = bb.add_func(input_func(batch, height, width, channels, variant, arith.width), "winograd_input")
    v = bb.emit(relax.call_tir(gvar, [x], transformed))
    weight = relax.const(packed_weights(w_hwio, variant, arith))
    if derived is not None:  # (which copies `w_hwio` out: lowering may free the Program's weights)
        derived(weight.value, Derivation("winograd", {"m": variant.m, "arith": arith.key}, w_hwio))
    gemm = bb.add_func(
        gemm_func(count, k, channels, arith=arith, batch=positions), arith.name + "_winograd_gemm"
    )
    products = relax.TensorType((positions * count, k), "float32")
    m = bb.emit(relax.call_tir(gemm, [v, weight], products))
    columns = bb.add_func(columns_func(count, k, variant, arith.width), "winograd_columns")
    sums = relax.TensorType((variant.m * variant.alpha * count, k), "float32")
    t = bb.emit(relax.call_tir(columns, [m], sums))
    return emit_fusable(bb, output_te(batch, height, width, variant), t, name="winograd_output")
