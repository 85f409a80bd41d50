"""Programs with optkit's quantized ops lower to integer Relax compute and match their own output."""

import numpy as np
import pytest
from optkit.backends import lower
from optkit.backends.tvm_import import import_program

from optkit.pipeline import PassManager, build_passes
from tests.backends.conftest import outputs_of


def _quantized(program, name, opts):
    return PassManager(build_passes([name], {name: opts})).run(program).program


@pytest.mark.parametrize(
    ("name", "opts", "op"),
    [
        ("ptq", {}, "linear_w8a8"),
        ("groupwise", {"bits": 4, "group_size": 16}, "linear_wq"),
        ("ptq", {"wbits": 4, "granularity": "group", "group_size": 16}, "act_qdq"),
        ("ptq", {"wbits": 4, "granularity": "group", "group_size": 16, "lowrank": 4}, "act_qdq"),
    ],
)
def test_quantized_linear_matches_program(mlp, name, opts, op):
    program = _quantized(mlp, name, opts)
    assert op in program.op_counts()
    artifact = lower(program, "cpu", num_cores=1)
    (got,) = artifact.run(*program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-4, atol=1e-5)


def test_w8a8_is_an_int8_matmul_with_int32_accumulation(mlp):
    text = import_program(_quantized(mlp, "ptq", {})).mod.script()
    assert "R.matmul(" in text and 'out_dtype="int32"' in text
    assert "R.astype(" in text and '"int8"' in text


def test_int4_weights_stay_packed_in_the_kernel(mlp):
    mod = import_program(_quantized(mlp, "groupwise", {"bits": 4, "group_size": 16})).mod
    text = mod.script()
    assert "groupwise_matmul" in text
    # The packed uint8 weight goes into the kernel; no float copy of the weight is made.
    assert '"uint8"' in text
    assert "R.matmul(" not in text


def test_quantized_conv_matches_program(conv_program):
    from optkit.backends import vnni
    from optkit.backends.targets import resolve_target

    program = _quantized(conv_program, "ptq", {})
    assert "conv2d_w8a8" in program.op_counts()
    artifact = lower(program, "cpu", num_cores=1)
    (got,) = artifact.run(*program.example_inputs)
    np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-4, atol=1e-4)
    if vnni.int8_arith(resolve_target("cpu").tvm_target()) is not None:
        # Both convs (the 3-channel one by kernel rows) on the VNNI GEMM, with the linear head;
        # their zero-point pads moved to the im2col.
        assert artifact.info["vnni_kernels"] == 3
        assert artifact.info["sunk_pads"] >= 2
        assert artifact.info["padded_outputs"] == 1  # the first conv writes the second's padded input


def test_narrow_int8_convs_stay_int8_when_asked(conv_program):
    program = _quantized(conv_program, "ptq", {})
    default = import_program(program).mod.script()
    narrow = import_program(program, narrow_int8_convs=True).mod.script()
    # conv_program's first conv reads 3 channels: float32 on the centered values by default.
    assert default.count('out_dtype="int32"') == narrow.count('out_dtype="int32"') - 1


def test_programs_lowered_into_one_library_keep_their_own_kernels(mlp):
    """Two int4 Programs whose importers name kernels of different shapes alike
    (`groupwise_matmul`) each run their own in one library (`lower_functions`)."""
    import torch
    from optkit.backends.lowering import lower_functions

    from optkit.ir.capture import capture

    torch.manual_seed(1)
    other = torch.nn.Sequential(torch.nn.Linear(48, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).eval()
    opts = {"bits": 4, "group_size": 16}
    programs = {
        "main": _quantized(mlp, "groupwise", opts),
        "other": _quantized(capture(other, (torch.randn(2, 48),), name="other"), "groupwise", opts),
    }
    lowered = lower_functions(programs, "cpu", num_cores=1)
    assert lowered["other"].module is lowered["main"].module and lowered["other"].entry == "other"
    for name, program in programs.items():
        (got,) = lowered[name].run(*program.example_inputs)
        np.testing.assert_allclose(got, outputs_of(program)[0], rtol=1e-4, atol=1e-5)
