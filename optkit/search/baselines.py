"""Hand-designed baselines written in the supernet's operators, and training chosen subnets alone.

- DLRM (Naumov et al., 2019): a bottom MLP on the dense features, the dot-product interaction
  of the embeddings with it, then a top MLP.
- DCN-v2 (Wang et al., 2021), stacked form: two low-rank cross layers on x0 = [dense, embeddings],
  then MLPs.

Both are points of the same space (same embeddings, stem, wide term and head), so they train
with the same recipe as the searched subnets; deviations from the papers: the bottom MLP is the
supernet's one-layer stem plus one block, and a cross layer here crosses its own input, not x0.
"""

from __future__ import annotations

from typing import Any

from optkit.errors import ConfigError
from optkit.metrics import log_loss, roc_auc
from optkit.nn.supernet import EMBEDDINGS, STEM, BlockChoice, Subnet, SupernetConfig
from optkit.search.training import Data, predict, train_alone


def _top_mlp(config: SupernetConfig, first: int) -> list[BlockChoice]:
    top = config.dims[-1]
    return [BlockChoice("mlp", top, (i + 1,)) for i in range(first, config.num_blocks)]


def dlrm_choice(config: SupernetConfig) -> tuple[BlockChoice, ...]:
    """Bottom MLP -> dot interaction (embeddings + bottom output) -> top MLP."""
    if config.num_blocks < 2:
        raise ConfigError(f"the DLRM baseline needs at least 2 blocks, got {config.num_blocks}")
    d = config.dims[-1]
    blocks = [BlockChoice("mlp", d, (STEM,)), BlockChoice("dot", d, (EMBEDDINGS, 2))]
    return tuple(blocks + _top_mlp(config, 2))


def dcn_v2_choice(config: SupernetConfig) -> tuple[BlockChoice, ...]:
    """Two cross layers on [stem, embeddings] -> MLPs."""
    if config.num_blocks < 2:
        raise ConfigError(f"the DCN-v2 baseline needs at least 2 blocks, got {config.num_blocks}")
    d = config.dims[-1]
    blocks = [BlockChoice("cross", d, (STEM, EMBEDDINGS)), BlockChoice("cross", d, (2,))]
    return tuple(blocks + _top_mlp(config, 2))


BASELINES = {"dlrm": dlrm_choice, "dcn-v2": dcn_v2_choice}


def train_subnet_alone(
    config: SupernetConfig,
    choice: tuple[BlockChoice, ...],
    splits: dict[str, Data],
    steps: int,
    seed: int = 0,
    batch_size: int = 256,
    lr: float = 1e-3,
) -> dict[str, Any]:
    """Train subnet `choice` from its own initialization on `fit` (best validation log loss
    kept) and measure it on `test`: {"validation_auc", "validation_log_loss", "test_auc",
    "test_log_loss", "params"}."""
    import torch

    torch.manual_seed(seed)
    model = Subnet(config, choice)
    out: dict[str, Any] = train_alone(
        model, splits["fit"], splits["validation"], steps, batch_size=batch_size, lr=lr, seed=seed
    )
    probs = predict(model, splits["test"])
    out["test_auc"] = roc_auc(splits["test"]["labels"], probs)
    out["test_log_loss"] = log_loss(splits["test"]["labels"], probs)
    out["params"] = sum(p.numel() for p in model.parameters())
    return out
