"""Reshapes moved below elementwise ops, so that epilogues fuse into the kernel before them.

PyTorch's export spells a Linear on a 3-D input as `view` to 2-D, `addmm`, `view` back, and an
MLP as `gelu(view(addmm(view(x))))`. TVM's `FuseOps` fuses elementwise and broadcast ops into a
GEMM (a kernel marked output-elementwise-fusable), but a reshape is injective and stops it: on
a ViT (batch 8, 50 tokens) every MLP's GELU was a kernel of its own that read and wrote the
400 x 768 activations again, and so were the residual adds after the projections.

`sink_reshapes` rewrites `f(reshape(y, S))` as `reshape(f(y), S)` for elementwise `f`, where the
other operand of a binary op either broadcasts over trailing dims the reshape keeps (a bias), is
itself a reshape of a tensor shaped like `y`, or has the full shape `S` (a residual, then read
through a reshape to `y`'s shape, which costs nothing: the build turns a reshape that is not
fused into a view). Chains of reshapes collapse into one, and a reshape back to the source's
shape disappears. The result is `reshape(gelu(add(matmul(...), bias)))`: one fused kernel.
A `broadcast_to` of a tensor to its own shape (the export's `expand` in front of every attention
`bmm`) is dropped too: it had been a copy, or a copy fused into the softmax.

Measured with the bias fusion below and packing through `broadcast_to` (`packing.py`), compiled
artifacts of the commit before against after, timed in one process (1 thread, Intel Xeon with
AVX-512, 2026-11-30): ViT-Tiny 32.6 -> 27.8 ms in float (0.85x) and 16.9 -> 15.3 ms in W8A8;
a Llama-style decoder at 64 tokens and the diffusers UNet unchanged within noise (their
epilogues were small, or already fused). A second, smaller cause of unfused epilogues was a
`lv1 = lv0` alias binding after packing, which hid a GEMM's bias add from `FuseOps`;
`build.fusion_passes` runs `CanonicalizeBindings` first.
"""

from __future__ import annotations

from typing import Any

from optkit.backends.relax_exprs import relax_op, rewrite_functions, static_shape

UNARY = frozenset(
    {
        "relax.nn.gelu",
        "relax.nn.gelu_tanh",
        "relax.nn.silu",
        "relax.nn.relu",
        "relax.sigmoid",
        "relax.tanh",
        "relax.exp",
        "relax.erf",
        "relax.sqrt",
        "relax.rsqrt",
        "relax.negative",
        "relax.abs",
        "relax.round",
        "relax.floor",
        "relax.ceil",
        "relax.sign",
        "relax.clip",
        "relax.astype",
    }
)
BINARY = frozenset(
    {
        "relax.add",
        "relax.subtract",
        "relax.multiply",
        "relax.divide",
        "relax.maximum",
        "relax.minimum",
        "relax.power",
    }
)


def sink_reshapes(mod: Any) -> tuple[Any, int]:
    """`mod` with reshapes moved below the elementwise ops that read them (module docstring);
    returns (mod, number of ops now computed before their reshape)."""
    from tvm import relax

    reshape_op, broadcast_op = relax_op("relax.reshape"), relax_op("relax.broadcast_to")
    count = 0

    @relax.expr_functor.mutator
    class _Sink(relax.PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call: Any) -> Any:
            nonlocal count
            call = self.visit_expr_post_order(call)
            name = getattr(call.op, "name", None)
            if call.op == reshape_op:
                return self._collapse(call)
            if call.op == broadcast_op and static_shape(call.args[0]) == static_shape(call) is not None:
                return call.args[0]  # a broadcast to the shape it has: a copy kernel for nothing
            if name in UNARY and (src := self._reshaped(call.args[0])) is not None:
                y, _ = src
                count += 1
                inner = self.builder_.emit(relax.Call(call.op, [y, *call.args[1:]], call.attrs))
                return relax.op.reshape(inner, call.ty.shape)
            if name in BINARY and (args := self._binary_sources(call)) is not None:
                count += 1
                inner = self.builder_.emit(relax.Call(call.op, args, call.attrs))
                return relax.op.reshape(inner, call.ty.shape)
            return call

        def _reshaped(self, expr: Any) -> tuple[Any, list[int]] | None:
            """(y, y's shape) when `expr` is a variable bound to `reshape(y, ...)` of static shapes."""
            if not isinstance(expr, relax.Var):
                return None
            bound = self.lookup_binding(expr)
            if not isinstance(bound, relax.Call) or bound.op != reshape_op:
                return None
            y = bound.args[0]
            y_shape, out_shape = static_shape(y), static_shape(expr)
            if y_shape is None or out_shape is None:
                return None
            return y, y_shape

        def _binary_sources(self, call: Any) -> list[Any] | None:
            out = static_shape(call)
            a, b = call.args
            for first, second in ((a, b), (b, a)):
                src = self._reshaped(first)
                if src is None or static_shape(first) != out:
                    continue
                y, y_shape = src
                other = self._other_operand(second, y_shape, out)
                if other is None:
                    continue
                return [y, other] if first is a else [other, y]
            return None

        def _other_operand(self, other: Any, y_shape: list[int], out: list[int]) -> Any | None:
            shape = static_shape(other)
            if shape is None:
                return None
            src = self._reshaped(other)
            if src is not None and src[1] == y_shape and shape == out:
                return src[0]  # both sides reshaped from the same shape
            if shape == out:
                return self.builder_.emit(relax.op.reshape(other, y_shape))  # a residual: a view
            core = list(shape)
            while core and core[0] == 1:
                core.pop(0)
            kept = _common_suffix(y_shape, out)
            if len(core) > kept or any(c not in (1, d) for c, d in zip(core[::-1], out[::-1], strict=False)):
                return None
            if len(core) == len(shape):
                return other
            return self.builder_.emit(relax.op.reshape(other, core or [1]))

        def _collapse(self, call: Any) -> Any:
            """`reshape(reshape(x, S1), S2)` -> `reshape(x, S2)`, or `x` when x already has S2."""
            src = self._reshaped(call.args[0])
            if src is None:
                return call
            x, x_shape = src
            if x_shape == static_shape(call):
                return x
            return relax.op.reshape(x, call.ty.shape)

    rewritten = rewrite_functions(_Sink(mod), mod)
    mod = relax.transform.CanonicalizeBindings()(rewritten)  # drops `lv = x` aliases
    return relax.transform.DeadCodeElimination()(mod), count


def _common_suffix(a: list[int], b: list[int]) -> int:
    """How many trailing dims `a` and `b` share exactly."""
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


LAYOUT_OPS = ("relax.reshape", "relax.permute_dims")


def copy_shared_layouts(mod: Any) -> tuple[Any, int]:
    """Give each strided slice of a shared reshape / transpose chain its own copy of the chain;
    returns (mod, slices given one).

    A fused QKV projection is split into heads as `permute_dims(reshape(qkv))`, then Q, K and V
    are slices of it. `FuseOps` fuses an injective op into its consumer only when it has one, so
    the permuted tensor was a kernel of its own: a full copy of the projection's output, written
    and read back (ViT-Tiny W8A8: 0.63 of 8.1 ms of kernel time). With the chain copied into
    each slice's bindings (only when every reader of the shared tensor is a strided slice), each
    slice's kernel reads its third of the projection directly, and the shared chain goes."""
    from tvm import relax

    slice_op = relax_op("relax.strided_slice")
    layout = {relax_op(name) for name in LAYOUT_OPS}
    count = 0

    @relax.expr_functor.mutator
    class _Copy(relax.PyExprMutator):  # type: ignore[misc]
        def __init__(self, module: Any) -> None:
            super().__init__(module)
            self.readers: dict[Any, list[Any]] = {}

        def visit_function_(self, func: Any) -> Any:
            self.readers = {}
            for block in func.body.blocks:
                for binding in block.bindings:
                    for var in relax.analysis.free_vars(binding.value):
                        self.readers.setdefault(var, []).append(binding.value)
            for var in relax.analysis.free_vars(func.body.body):
                self.readers.setdefault(var, []).append(None)
            return super().visit_function_(func)

        def visit_call_(self, call: Any) -> Any:
            nonlocal count
            new = self.visit_expr_post_order(call)
            if call.op != slice_op or not isinstance(call.args[0], relax.Var):
                return new
            shared = call.args[0]
            readers = self.readers.get(shared, [])
            if len(readers) < 2 or not all(isinstance(r, relax.Call) and r.op == slice_op for r in readers):
                return new
            chain, source = [], shared
            while isinstance(source, relax.Var):
                bound = self.lookup_binding(source)
                if not isinstance(bound, relax.Call) or bound.op not in layout:
                    break
                chain.append(bound)
                source = bound.args[0]
            if not chain:
                return new
            value = self.visit_expr(source)
            for bound in reversed(chain):
                value = self.builder_.emit(relax.Call(bound.op, [value, *bound.args[1:]], bound.attrs))
            count += 1
            return relax.Call(new.op, [value, *new.args[1:]], new.attrs, new.ty_args)

    rewritten = rewrite_functions(_Copy(mod), mod)
    return relax.transform.DeadCodeElimination()(rewritten), count
