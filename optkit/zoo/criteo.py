"""A DLRM shaped like the Criteo Kaggle (Display Advertising Challenge) model, for cost figures.

The DLRM reference configuration for Criteo Kaggle (Naumov et al., "Deep Learning
Recommendation Model for Personalization and Recommendation Systems", 2019, and its
`dlrm_s_pytorch.py --data-set=kaggle` settings): 13 dense features through a bottom MLP
13-512-256-64, 26 categorical features each looked up in its own table (the Kaggle day-split
cardinalities below, 33.8M rows in all), embedding dimension 64, pairwise dot-product
interaction, a top MLP 512-256-1. `pooling` > 1 gives each sample that many ids per feature,
summed (the multi-hot lookups of production models; RecNMP evaluates pooling factors of 20-80).

The weights are random and the model is usually built on the `meta` device: its 8.6 GB of
tables never exist, yet `torch.export` records every shape, which is all the PIM cost model
reads. `scale` shrinks every table (rows / scale, at least 4) for a small model that runs.
"""

from __future__ import annotations

import torch
from torch import nn

# Rows per categorical feature in Criteo Kaggle (as DLRM's Kaggle preprocessing counts them).
KAGGLE_CARDINALITIES = (
    1460,
    583,
    10131227,
    2202608,
    305,
    24,
    12517,
    633,
    3,
    93145,
    5683,
    8351593,
    3194,
    27,
    14992,
    5461306,
    10,
    5652,
    2173,
    4,
    7046547,
    18,
    15,
    286181,
    105,
    142572,
)


def _mlp(sizes: tuple[int, ...], last_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_relu:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class CriteoDLRM(nn.Module):
    """DLRM: bottom MLP on dense features, one table per sparse feature, dot interaction, top MLP."""

    def __init__(
        self,
        dim: int = 64,
        cardinalities: tuple[int, ...] = KAGGLE_CARDINALITIES,
        bottom: tuple[int, ...] = (13, 512, 256, 64),
        top: tuple[int, ...] = (512, 256, 1),
    ) -> None:
        super().__init__()
        self.num_dense = bottom[0]
        self.bottom = _mlp(bottom, last_relu=True)
        self.tables = nn.ModuleList(nn.Embedding(rows, dim) for rows in cardinalities)
        features = len(cardinalities) + 1
        pairs = torch.triu_indices(features, features, offset=1)
        self.pairs: torch.Tensor
        self.register_buffer("pairs", pairs[0] * features + pairs[1], persistent=False)
        self.top = _mlp((dim + features * (features - 1) // 2,) + top, last_relu=False)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        # dense (B, 13), sparse (B, F, P) ids, P per feature, pooled by sum
        x = self.bottom(dense)  # (B, D)
        pooled = [table(sparse[:, i]).sum(dim=1) for i, table in enumerate(self.tables)]  # F x (B, D)
        tokens = torch.stack([x, *pooled], dim=1)  # (B, F+1, D)
        inter = torch.bmm(tokens, tokens.transpose(1, 2)).flatten(1)[:, self.pairs]  # (B, pairs)
        return self.top(torch.cat([x, inter], dim=1)).squeeze(-1)  # (B,)


def criteo_dlrm(scale: int = 1, dim: int = 64, tables: int = 26) -> CriteoDLRM:
    """The Kaggle-shaped DLRM with every table `scale` times smaller, keeping the first `tables`."""
    rows = tuple(max(4, c // scale) for c in KAGGLE_CARDINALITIES[:tables])
    return CriteoDLRM(dim=dim, cardinalities=rows)


def example_inputs(
    model: CriteoDLRM, batch: int = 256, pooling: int = 1, seed: int = 0, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense features and Zipf(1.05)-popular ids for `model` (ids hashed into each table)."""
    gen = torch.Generator().manual_seed(seed)
    dense = torch.randn(batch, model.num_dense, generator=gen)
    ranks = torch.arange(1, 100_001, dtype=torch.float64) ** -1.05
    draws = torch.multinomial(
        ranks / ranks.sum(), batch * len(model.tables) * pooling, replacement=True, generator=gen
    )
    ids = draws.view(batch, len(model.tables), pooling)
    rows = torch.tensor([t.num_embeddings for t in model.tables]).view(1, -1, 1)
    ids = (ids * 2654435761) % rows  # spread the hot ids over each table
    return dense.to(device), ids.to(device)
