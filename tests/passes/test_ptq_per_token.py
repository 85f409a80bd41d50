"""`ptq activations="per-token"`, `recipe="auto"` and GPTQ's calibration rows."""

import pytest
import torch
from optkit.passes.ptq import PTQConfig
from torch import nn

from optkit.errors import OptkitError
from optkit.ir.capture import capture
from optkit.ir.onnx_io import export_onnx
from optkit.metrics import sqnr_db
from optkit.pipeline import PassManager, build_passes
from optkit.quant.rewrite import GPTQ_ROWS_PER_CHANNEL
from optkit.workload import Calibration
from tests.passes.tiny_lm import lm_program


class TokenMLP(nn.Module):
    """Two Linears over (B, T, 64) tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 96)
        self.fc2 = nn.Linear(96, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _tokens(seed: int) -> torch.Tensor:
    # The first token of every row is 60x the others: an LLM's "massive activation" (BOS) token.
    x = torch.randn(4, 16, 64, generator=torch.Generator().manual_seed(seed))
    x[:, 0] *= 60.0
    return x


@pytest.fixture(scope="module")
def token_program():
    torch.manual_seed(0)
    program = capture(TokenMLP().eval(), (_tokens(0),), name="token-mlp")
    calib = Calibration.from_batches([(_tokens(s),) for s in range(1, 5)])
    return program.with_workload(program.workload.replace(calibration=calib))


def _quantize(program, **opts):
    opts = {"min_sqnr_db": 0.0, **opts}
    return PassManager(build_passes(["ptq", "dce"], {"ptq": opts})).run(program)


def _sqnr(reference, candidate, seed=9):
    x = _tokens(seed)
    return sqnr_db(reference.graph_module(x), candidate.graph_module(x))


@pytest.fixture(scope="module")
def per_token(token_program):
    return _quantize(token_program, activations="per-token").program


def test_per_token_scales_are_computed_in_the_graph(per_token):
    gemms = [n for n in per_token.graph.nodes if n.target == torch.ops.optkit.linear_w8a8.default]
    assert len(gemms) == 2
    for node in gemms:
        scale = node.args[1]
        assert scale.target == torch.ops.aten.div.Tensor
        amax = scale.args[0].args[0]
        assert amax.target == torch.ops.aten.amax.default and amax.args[1:] == ([-1], True)
        assert amax.args[0].args[0] is node.args[0]  # max |x| of the GEMM's own input
        assert int(getattr(per_token.graph_module, node.args[2].target)) == 0


def test_per_token_follows_each_row_and_beats_one_calibrated_scale(token_program, per_token):
    static = _quantize(token_program).program
    db_token, db_static = _sqnr(token_program, per_token), _sqnr(token_program, static)
    assert db_token > db_static + 10.0  # the outlier token no longer sets every row's grid
    # Each row is on its own grid: scaling one row leaves the others' outputs unchanged.
    x = _tokens(9)
    y = per_token.graph_module(x)
    x2 = x.clone()
    x2[0, 3] *= 8.0
    y2 = per_token.graph_module(x2)
    torch.testing.assert_close(y2[1:], y[1:])
    torch.testing.assert_close(y2[0, :3], y[0, :3])


def test_per_token_runs_in_onnx_runtime_and_matches(tmp_path, per_token):
    figures = export_onnx(per_token, tmp_path / "per_token.onnx")
    assert figures["max_abs_error"] < 1e-4 * max(1.0, figures["output_abs_max"])


def test_per_token_lowers_through_tvm_and_matches(per_token):
    pytest.importorskip("tvm")
    from optkit.backends import lower

    artifact = lower(per_token, "cpu", num_cores=1)
    (got,) = artifact.run(*per_token.example_inputs)
    torch.testing.assert_close(torch.as_tensor(got), per_token.run(), rtol=1e-4, atol=1e-4)


def test_w4a8_per_token_quantizes_rows_before_the_weight_only_kernel(token_program):
    program = _quantize(
        token_program, wbits=4, granularity="group", group_size=32, activations="per-token"
    ).program
    qdq = [n for n in program.graph.nodes if n.target == torch.ops.optkit.act_qdq.default]
    assert len(qdq) == 2 and all(n.args[1].target == torch.ops.aten.div.Tensor for n in qdq)
    assert _sqnr(token_program, program) > 15.0


def test_auto_recipe_scores_every_candidate_and_keeps_the_best(token_program, per_token):
    result = _quantize(token_program, recipe="auto", recipe_alphas=(0.5,), smooth_threshold=0.0)
    figures = result.records[0].figures
    scores = dict(part.rsplit(": ", 1) for part in figures["recipe_sqnr"].value.split("; "))
    assert set(scores) == {
        "static, smoothquant 0",
        "static, smoothquant 0.5",
        "per-token, smoothquant 0",
        "per-token, smoothquant 0.5",
    }
    best = max(scores, key=lambda k: float(scores[k]))
    assert figures["recipe"].value == best
    assert best.startswith("per-token")


def test_auto_recipe_skips_alphas_when_no_layer_has_channel_outliers(token_program):
    # The outliers here are tokens, not channels: no input passes SmoothQuant's threshold.
    result = _quantize(token_program, recipe="auto", recipe_alphas=(0.5, 0.8))
    scores = result.records[0].figures["recipe_sqnr"].value.split("; ")
    assert [s.split(":")[0] for s in scores] == [
        "static, smoothquant 0",
        "smoothquant",
        "per-token, smoothquant 0",
    ]
    assert "passes smooth_threshold 8" in scores[1]


def test_gptq_asks_the_calibration_data_for_enough_rows():
    program = lm_program(tied=False)  # ids (2, 8): 16 rows per batch; widest Linear input 288
    ids = [(torch.randint(0, 1024, (2, 8), generator=torch.Generator().manual_seed(s)),) for s in range(400)]
    program = program.with_workload(program.workload.replace(calibration=Calibration.from_batches(ids)))
    result = _quantize(program, method="gptq", wbits=4, granularity="group", abits=16)
    rows = result.records[0].figures["gptq_rows"].value
    assert rows >= GPTQ_ROWS_PER_CHANNEL * 96  # fc1 reads 96 channels
    few = _quantize(
        program.with_workload(program.workload.replace(calibration=Calibration.from_batches(ids[:2]))),
        method="gptq",
        wbits=4,
        granularity="group",
        abits=16,
    )
    assert few.records[0].figures["gptq_rows"].value == 32  # all the data there is


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"activations": "dynamic"}, "unknown ptq activations 'dynamic'"),
        ({"activations": "per-token", "abits": 16}, "needs abits=4 or 8"),
        ({"recipe": "auto", "abits": 16}, "needs abits=8"),
        ({"recipe": "best"}, "unknown ptq recipe 'best'"),
        (
            {"recipe": "auto", "recipe_alphas": (1.5,)},
            r"recipe_alphas must be SmoothQuant alphas in \[0, 1\]",
        ),
    ],
)
def test_bad_activation_options(opts, match):
    with pytest.raises(OptkitError, match=match):
        PTQConfig(**opts)
