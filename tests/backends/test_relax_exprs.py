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


def _relax():
    from tvm import relax

    return relax


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


@pytest.mark.parametrize(
    "build",
    [
        lambda bb, x: bb.emit(_relax().op.add(x, x)),  # reads the parameter
        _causal_mask,  # more calls than allowed below
    ],
    ids=["parameter", "too-many-calls"],
)
def test_an_expression_of_a_parameter_or_too_long_has_none(build):
    expr, lookup = _bound_values(build)
    assert constant_value(expr, lookup, max_ops=3) is None


def test_a_bound_constant_and_a_sum_of_constants_have_values():
    mask = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    expr, lookup = _bound_values(lambda bb, _x: bb.emit(_relax().const(mask)))
    np.testing.assert_array_equal(constant_value(expr, lookup), mask)
    expr, lookup = _bound_values(
        lambda bb, _x: bb.emit(_relax().op.add(_relax().const(mask), _relax().const(mask)))
    )
    np.testing.assert_array_equal(constant_value(expr, lookup), 2 * mask)
