"""A tiny co-design problem: a 2-block supernet on synthetic click data, trained a few steps."""

import pytest
import torch

from optkit.nn.supernet import RecSupernet, SupernetConfig
from optkit.search.api import SearchProblem
from optkit.search.training import train_supernet

CONFIG = SupernetConfig(
    num_dense=4,
    cardinalities=(20, 10, 5),
    embed_dim=4,
    dims=(4, 8),
    num_blocks=2,
    cross_rank=2,
    attention_heads=2,
    max_rows=64,
)


def synthetic_splits(rows: int = 600, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Clicks from a logistic model of the dense features and one id effect per feature."""
    gen = torch.Generator().manual_seed(seed)
    dense = torch.randn(rows, CONFIG.num_dense, generator=gen)
    sparse = torch.stack([torch.randint(0, c, (rows,), generator=gen) for c in CONFIG.cardinalities], dim=1)
    effects = [torch.randn(c, generator=gen) for c in CONFIG.cardinalities]
    logit = dense[:, 0] - 0.5 * dense[:, 1] + sum(e[sparse[:, i]] for i, e in enumerate(effects))
    labels = (torch.rand(rows, generator=gen) < torch.sigmoid(logit)).float()
    data = {"dense": dense, "sparse": sparse, "labels": labels}
    cut1, cut2 = rows * 2 // 3, rows * 5 // 6
    return {
        "fit": {k: v[:cut1] for k, v in data.items()},
        "validation": {k: v[cut1:cut2] for k, v in data.items()},
        "test": {k: v[cut2:] for k, v in data.items()},
    }


@pytest.fixture(scope="session")
def tiny_problem() -> SearchProblem:
    return SearchProblem("synthetic", CONFIG, synthetic_splits())


@pytest.fixture(scope="session")
def tiny_supernet(tiny_problem) -> RecSupernet:
    torch.manual_seed(0)
    supernet = RecSupernet(CONFIG)
    train_supernet(supernet, tiny_problem.splits["fit"], 40, 64, 3e-3, torch.Generator().manual_seed(0))
    return supernet


@pytest.fixture
def scorer(tiny_problem, tiny_supernet, pim_host_model):
    from optkit.backends.pim.presets import resolve_preset

    from optkit.search.scoring import CandidateScorer

    return CandidateScorer(
        tiny_supernet, tiny_problem.splits["validation"], resolve_preset("hbm-pim"), pim_host_model, batch=16
    )
