"""Readers of Relax expressions: the value of an expression computed from constants alone."""

import numpy as np
import pytest
from optkit.backends.relax_exprs import constant_value


def _bound_values(build):
    """Run `build(bb, x)` inside a Relax function of one parameter `x`; return the expression it
    returns and a binding lookup over the function."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([4, 4], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(build(bb, x))
        bb.emit_func_output(out)
    bindings = {}
    for block in bb.get()["main"].body.blocks:
        for binding in block.bindings:
            bindings[binding.var] = binding.value
    return out, bindings.get


def _causal_mask(bb, _x):
    from tvm import relax

    op = relax.op
    cols = bb.emit(op.expand_dims(bb.emit(op.arange(0, 4, 1, "int64")), axis=[0]))
    rows = bb.emit(op.expand_dims(bb.emit(op.arange(0, 4, 1, "int64")), axis=[1]))
    keep = bb.emit(
        op.logical_and(
            bb.emit(op.less_equal(bb.emit(op.subtract(cols, rows)), relax.const(0, "int64"))),
            bb.emit(op.full([4, 4], relax.const(True, "bool"), "bool")),
        )
    )
    return bb.emit(op.where(keep, relax.const(0.0, "float32"), relax.const(-np.inf, "float32")))


def test_a_mask_built_from_constants_has_a_value():
    expr, lookup = _bound_values(_causal_mask)
    cache = {}
    value = constant_value(expr, lookup, cache=cache)
    np.testing.assert_array_equal(value, np.triu(np.full((4, 4), -np.inf, np.float32), k=1))
    assert len(cache) == 1 and constant_value(expr, lookup, cache=cache) is value  # evaluated once


def _parameter_doubled(bb, x):
    from tvm import relax

    return bb.emit(relax.op.add(x, x))


MASK = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)


def _bound_constant(bb, _x):
    from tvm import relax

    return bb.emit(relax.const(MASK))


def _sum_of_constants(bb, _x):
    from tvm import relax

    return bb.emit(relax.op.add(relax.const(MASK), relax.const(MASK)))


@pytest.mark.parametrize(
    "build",
    [_parameter_doubled, _causal_mask],  # reads the parameter; more calls than allowed below
    ids=["parameter", "too-many-calls"],
)
def test_an_expression_of_a_parameter_or_too_long_has_none(build):
    expr, lookup = _bound_values(build)
    assert constant_value(expr, lookup, max_ops=3) is None


@pytest.mark.parametrize(("build", "want"), [(_bound_constant, MASK), (_sum_of_constants, 2 * MASK)])
def test_a_bound_constant_and_a_sum_of_constants_have_values(build, want):
    expr, lookup = _bound_values(build)
    np.testing.assert_array_equal(constant_value(expr, lookup), want)
