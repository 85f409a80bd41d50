"""SVDQuant's low-rank split (`optkit.quant.lowrank`): the SVD factors, the gain that picks layers,
and the float graph rewrite that `ptq` quantizes afterwards."""

import pytest
import torch

from optkit.errors import ConfigError
from optkit.quant.lowrank import (
    FACTOR_DTYPE,
    branch_gain_db,
    choose_branches,
    insert_lowrank_branch,
    lowrank_split,
)
from optkit.quant.numerics import QuantSpec
from optkit.quant.sites import find_sites

W4G16 = QuantSpec(4, True, "group", 16)


def test_split_adds_up_to_the_weight_with_float16_factors():
    w = torch.randn(48, 32)
    split = lowrank_split(w, 8)
    assert split.up.shape == (48, 8) and split.down.shape == (8, 32) and split.rank == 8
    assert split.up.dtype == split.down.dtype == FACTOR_DTYPE
    # The residual is taken against the stored (rounded) factors: the sum is W to float32 rounding.
    rebuilt = split.up.double() @ split.down.double() + split.residual.double()
    torch.testing.assert_close(rebuilt, w.double(), atol=1e-6, rtol=0)
    assert split.stored_bytes == (48 * 8 + 8 * 32) * 2


def test_split_takes_the_top_singular_directions():
    u, _ = torch.linalg.qr(torch.randn(40, 40))
    v, _ = torch.linalg.qr(torch.randn(24, 24))
    s = torch.tensor([50.0, 20.0] + [0.1] * 22)
    w = u[:, :24] @ torch.diag(s) @ v.t()  # (40, 24), rank-2 dominant
    split = lowrank_split(w, 2)
    assert float(torch.linalg.matrix_norm(split.residual, ord=2)) == pytest.approx(0.1, abs=0.02)


def test_an_outlier_column_is_absorbed_and_the_gain_says_so():
    torch.manual_seed(0)
    plain = torch.randn(64, 64)
    spiky = plain.clone()
    spiky[:, 5] *= 25.0  # one input channel stretches every group it falls in
    split = lowrank_split(spiky, 1)
    assert float(split.residual.abs().max()) < 0.25 * float(spiky.abs().max())
    spiky_gain = branch_gain_db(spiky, split, W4G16)
    plain_gain = branch_gain_db(plain, lowrank_split(plain, 1), W4G16)
    assert spiky_gain > 10.0 and plain_gain < 2.0


@pytest.mark.parametrize("rank", [0, 33])
def test_split_refuses_ranks_outside_one_to_min_dim(rank):
    with pytest.raises(ConfigError, match=r"lowrank must be in \[1, min\(out, in\)\] = \[1, 32\]"):
        lowrank_split(torch.randn(48, 32), rank)


def test_choose_branches_names_layers_the_rank_does_not_fit(outlier_program):
    sites, _ = find_sites(outlier_program)
    with pytest.raises(
        ConfigError,
        match=r"lowrank=80 exceeds min\(out, in\) of 0 \(96 x 64\), 2 \(64 x 96\); use lowrank <= 64",
    ):
        choose_branches(sites, 80, 1.0, (), lambda s: W4G16, lambda s: None)
    splits, gains = choose_branches(sites, 64, 1.0, ("0",), lambda s: W4G16, lambda s: None)
    assert list(gains) == ["2"] and len(splits) == 1  # lowrank_skip leaves layer 0 without a branch


def test_choose_branches_keeps_the_fraction_with_largest_gain():
    from torch import nn

    from optkit.ir.capture import capture

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32))
    with torch.no_grad():
        model[1].weight[:, 3] *= 30.0  # only the middle layer has an outlier
    sites, _ = find_sites(capture(model, (torch.randn(4, 32),)))
    _, gains = choose_branches(sites, 2, 0.3, (), lambda s: W4G16, lambda s: None)
    assert list(gains) == ["1"]


def test_inserted_branch_keeps_the_float_function(outlier_program):
    reference = outlier_program.run()
    sites, _ = find_sites(outlier_program)
    for site in sites:
        insert_lowrank_branch(outlier_program, site, lowrank_split(site.weight, 4))
    outlier_program.graph_module.recompile()
    torch.testing.assert_close(outlier_program.run(), reference, atol=1e-4, rtol=1e-4)
    ops = outlier_program.op_counts()
    assert ops["linear"] == 6 and ops["add"] == 2 and ops["_to_copy"] == 4  # float16 factors cast to float32
    # The site now reads the residual weight; the branch reads the same input as the site.
    for site in sites:
        assert site.node.args[1].target.endswith("lowrank_residual")
        branch = [u for u in site.node.args[0].users if u is not site.node]
        assert len(branch) == 1 and branch[0].target is torch.ops.aten.linear.default
