"""recsys: a DLRM-style click-through-rate model cut from a weight-sharing NAS supernet.

Paper: the "DNAS recommender with PIM co-design" row of docs/design.md; the supernet follows
Zhang et al., "NASRec: Weight Sharing Neural Architecture Search for Recommender Systems"
(WWW 2023). `optkit.nn.supernet` holds the supernet: blocks with operator choices (MLP, DLRM
dot product, factorization machine, DCN-v2 cross, self-attention), width choices and dense
connectivity (a block reads any subset of the stem, the feature tokens and earlier blocks),
plus a first-order (wide) term. The supernet trains with one uniformly sampled subnet per step
(weight sharing); `RecSupernet.subnet(choice)` cuts a plain module with sliced weights.

The registered model (`zoo:recsys`) is one fixed subnet, `RecsysConfig.choice`, so capture,
passes and ONNX see an ordinary graph: `forward(dense (B, 22) float, sparse (B, 8) int64) ->
click logits (B,)`, on `optkit.zoo.data.movielens_ctr` (MovieLens-100k, click = rating >= 4,
its fixed seed-0 80/20 split). The `fit` / `validation` parts split the train rows 90/10
(fixed); the test split is only read by `evaluate`.

The tiny subnet was picked by `search` (supernet trained 1,500 steps on `fit`, then 24
sampled subnets and a hand-written DLRM-like one scored with inherited weights on
`validation`; the best by AUC, 0.773, is kept; 168 s). That search ran before dropout was
added; with the same supernet settings it is reproduced by

    import dataclasses
    from optkit.zoo.recsys import RecsysConfig, search
    search(dataclasses.replace(RecsysConfig.tiny(), dropout=0.0), steps=1500)[0]  # one thread

(whose first candidate is now the picked subnet itself rather than the hand-written one).

`train` trains a supernet on `fit` for half the steps, inherits the chosen subnet's weights and
fine-tunes that subnet for the other half, keeping the weights with the best validation log
loss. `evaluate` reports AUC and log loss on the test split next to a logistic-regression
baseline (scikit-learn, C=1) on the same features (the 22 dense features and one-hot ids).

Deviations and choices:
- The two mean-rating dense features of `movielens_ctr` are dropped: on train rows they leave
  the row's own rating out, so with the user and item id embeddings a network can read the
  label off the difference (the baseline loses nothing: validation AUC 0.7811 with them,
  0.7809 without).
- `search` here is random sampling scored with inherited weights; the picked subnet is
  fine-tuned from the inherited weights, not retrained from scratch. No PIM cost enters it.
  The joint architecture x PIM search (NSGA-II, TPE, regularized evolution, on Ray) is
  `optkit search zoo:recsys` (`optkit.search`, `search_problem` below); the training loop and
  the inherited-weight scoring live there and are shared. `TINY_CHOICE` has not been re-picked
  from that search yet.
- Tiny sizes: feature tokens of width 16, block widths {16, 32, 64}, 4 blocks. Embedding
  tables have min(cardinality, 2048) rows (ids hashed modulo the rows): MovieLens needs no
  hashing (its largest feature, item id, has 1,682 values); Criteo-like data with larger
  cardinalities would be hashed.
- `small` uses a hand-written subnet (not searched).

Shipped checkpoint `optkit/zoo/checkpoints/recsys_tiny.safetensors` (85k parameters, 0.34 MB),
trained with seed 0 by

    OMP_NUM_THREADS=1 optkit zoo train recsys --steps 6000 --batch-size 256 -o recsys_tiny.safetensors

(lr 1e-3, dropout 0.3; 162 s; best validation AUC 0.791, log loss 0.5527). `optkit zoo eval
recsys --samples 20000` (the whole test split): AUC 0.7845, log loss 0.5573; the
logistic-regression baseline: AUC 0.7777, log loss 0.5604. The margin is modest: the id
embeddings overfit within a few epochs. Dropout was chosen on validation: 0.0 -> 0.784 /
0.5615, 0.2 -> 0.787 / 0.5571, 0.3 -> 0.791 / 0.5527 (AUC / log loss, 6,000 steps; 0.0 with
4,000); 10,000 steps at 0.2 overfit (0.784 / 0.5606); L2 penalties on the embeddings or
narrower tokens did no better in short trials.
"""

from __future__ import annotations

import copy
import functools
import math
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from optkit.errors import ConfigError
from optkit.metrics import log_loss, roc_auc
from optkit.nn.supernet import BlockChoice, RecSupernet, Subnet, SupernetConfig, sample_choice
from optkit.search.api import SearchProblem
from optkit.search.scoring import inherited_scores
from optkit.search.training import fit, predict, train_supernet  # noqa: F401  (the zoo's training loop)
from optkit.zoo.registry import EvalSettings, TrainSettings, ZooModel, register_model

PAPER = "NASRec: Weight Sharing Neural Architecture Search for Recommender Systems (Zhang et al., WWW 2023)"
DATA_SEED = 0  # the fixed MovieLens split; user seeds only change initialization and sampling
VALIDATION_FRACTION = 0.1
LEAKY_DENSE = ("user_mean_rating", "item_mean_rating")
SUPERNET_FRACTION = 0.5  # share of the training steps spent on the supernet before fine-tuning
CHECKS = 20  # validation checks while fine-tuning; the best weights are kept

TINY_CHOICE = (  # picked by `search()`: best validation AUC of 25 candidates (see the header)
    BlockChoice("fm", 16, (0,)),
    BlockChoice("fm", 16, (0, 2)),
    BlockChoice("fm", 32, (0, 1)),
    BlockChoice("dot", 32, (1, 2, 3, 4)),
)
SMALL_CHOICE = (
    BlockChoice("mlp", 128, (0, 1)),
    BlockChoice("dot", 64, (0, 2)),
    BlockChoice("cross", 64, (1, 2)),
    BlockChoice("fm", 64, (2, 3)),
    BlockChoice("attention", 64, (0, 4)),
    BlockChoice("mlp", 64, (3, 5, 6)),
)


@dataclass(frozen=True)
class RecsysConfig(SupernetConfig):
    """Supernet sizes plus the subnet (`choice`) the zoo model is (22 MovieLens dense features)."""

    num_dense: int = 22
    choice: tuple[BlockChoice, ...] = TINY_CHOICE

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_choice(self.choice)

    def supernet(self) -> SupernetConfig:
        """The supernet part of this config (without the subnet choice)."""
        fields = {k: getattr(self, k) for k in SupernetConfig.__dataclass_fields__}
        return SupernetConfig(**fields)

    @classmethod
    def tiny(cls) -> RecsysConfig:
        return cls(dropout=0.3)

    @classmethod
    def small(cls) -> RecsysConfig:
        return cls(
            embed_dim=32, dims=(32, 64, 128), num_blocks=6, cross_rank=32, dropout=0.2, choice=SMALL_CHOICE
        )


def build(config: RecsysConfig) -> Subnet:
    """The zoo model: subnet `config.choice` of a freshly initialized supernet."""
    return Subnet(config.supernet(), config.choice)


def example_inputs(model: nn.Module, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Deterministic (dense, sparse): standard-normal dense features, uniform valid ids."""
    cfg: SupernetConfig = model.config  # type: ignore[assignment]
    gen = torch.Generator().manual_seed(seed)
    dense = torch.randn(batch, cfg.num_dense, generator=gen)
    sparse = torch.stack([torch.randint(0, c, (batch,), generator=gen) for c in cfg.cardinalities], dim=1)
    return dense, sparse


# ---------------------------------------------------------------------------------------------
# Data and the training loop


@functools.lru_cache(maxsize=1)
def _movielens() -> dict:
    from optkit.zoo.data import movielens_ctr

    return movielens_ctr(seed=DATA_SEED)


def ctr_splits() -> dict[str, dict[str, torch.Tensor]]:
    """MovieLens CTR as {"train", "fit", "validation", "test"}: `fit` + `validation` = `train`.

    The validation part is a fixed 10% of the train rows, used only to pick subnets. The two
    mean-rating features are dropped (`LEAKY_DENSE`): on train rows they leave the row's own
    rating out, so together with the user and item id embeddings a network can read the label
    off the difference; 22 dense features remain, for the model and the baseline alike.
    """
    data = _movielens()
    keep = [i for i, name in enumerate(data["dense_names"]) if name not in LEAKY_DENSE]
    train, test = ({**data[k], "dense": data[k]["dense"][:, keep]} for k in ("train", "test"))
    n = train["labels"].shape[0]
    order = torch.from_numpy(np.random.default_rng(DATA_SEED).permutation(n))
    cut = int(n * VALIDATION_FRACTION)
    val_idx, fit_idx = order[:cut], order[cut:]
    return {
        "train": train,
        "fit": {k: v[fit_idx] for k, v in train.items()},
        "validation": {k: v[val_idx] for k, v in train.items()},
        "test": test,
    }


def train(model: nn.Module, settings: TrainSettings) -> dict[str, float]:
    """Train a supernet on the `fit` split (half the steps), inherit `model`'s subnet weights and
    fine-tune the subnet for the other half, keeping the weights with the lowest validation log
    loss (checked `CHECKS` times): the ids overfit within a few epochs.
    """

    if settings.steps < 2 or settings.batch_size < 1 or settings.lr <= 0:
        raise ConfigError(f"need steps >= 2 and positive batch_size and lr, got {settings}")
    if not isinstance(model, Subnet):
        raise ConfigError(f"recsys.train needs the zoo's Subnet model, got {type(model).__name__}")
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    splits = ctr_splits()
    val = splits["validation"]
    super_steps = max(1, int(settings.steps * SUPERNET_FRACTION))
    tune_steps = settings.steps - super_steps
    check_every = max(1, tune_steps // CHECKS)
    start = time.perf_counter()
    best: dict = {"log_loss": math.inf}

    def validate() -> None:
        model.eval()
        probs = predict(model, val)
        loss = log_loss(val["labels"], probs)
        if loss < best["log_loss"]:
            best.update(
                log_loss=loss, auc=roc_auc(val["labels"], probs), state=copy.deepcopy(model.state_dict())
            )
        model.train()

    def tune_progress(step: int, loss: float) -> None:
        if step % check_every == 0 or step == tune_steps:
            validate()
        if settings.progress:
            settings.progress(super_steps + step, settings.steps, loss)

    def super_progress(step: int, loss: float) -> None:
        if settings.progress:
            settings.progress(step, settings.steps, loss)

    supernet = RecSupernet(model.config)
    super_loss = train_supernet(
        supernet, splits["fit"], super_steps, settings.batch_size, settings.lr, gen, super_progress
    )
    model.load_state_dict(supernet.subnet(model.choice).state_dict())
    validate()
    model.train()
    loss = fit(
        list(model.parameters()),
        lambda d, s, g: model(d, s),
        splits["fit"],
        tune_steps,
        settings.batch_size,
        settings.lr,
        gen,
        tune_progress,
    )
    model.load_state_dict(best["state"])
    model.eval()
    return {
        "final_loss": float(loss),
        "supernet_loss": float(super_loss),
        "validation_auc": float(best["auc"]),
        "validation_log_loss": float(best["log_loss"]),
        "seconds": time.perf_counter() - start,
        "steps": float(settings.steps),
    }


# ---------------------------------------------------------------------------------------------
# Search and evaluation


def search(
    config: RecsysConfig | None = None,
    candidates: int = 24,
    steps: int = 3000,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
) -> list[dict]:
    """Train a supernet on the `fit` split, score `candidates` sampled subnets and `config.choice`
    on the validation split with inherited weights; return them best first (by AUC).

    Each entry: {"choice": tuple of BlockChoice, "name", "auc", "log_loss", "params"}.
    """

    config = config or RecsysConfig.tiny()
    splits = ctr_splits()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    supernet = RecSupernet(config.supernet())
    train_supernet(supernet, splits["fit"], steps, batch_size, lr, gen)
    rng = random.Random(seed + 1)
    choices = [config.choice] + [sample_choice(supernet.config, rng) for _ in range(candidates)]
    results = inherited_scores(supernet, choices, splits["validation"])
    return sorted(results, key=lambda r: -r["auc"])


def search_problem(size: str = "tiny") -> SearchProblem:
    """`zoo:recsys` as a co-design search problem (`optkit search`): the supernet of size `size`
    and the MovieLens CTR splits (`fit` trains the supernet, `validation` scores candidates,
    `test` measures the retrained ones)."""
    configs = {"tiny": RecsysConfig.tiny(), "small": RecsysConfig.small()}
    if size not in configs:
        raise ConfigError(f"recsys has sizes {', '.join(configs)}, got {size!r}")
    return SearchProblem(f"recsys:{size}", configs[size].supernet(), ctr_splits())


@functools.lru_cache(maxsize=1)
def baseline_probabilities() -> np.ndarray:
    """Test-split click probabilities of logistic regression on dense + one-hot sparse features."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import OneHotEncoder

    splits = ctr_splits()
    enc = OneHotEncoder(handle_unknown="ignore")

    def features(part: dict[str, torch.Tensor], fit_encoder: bool) -> sp.csr_matrix:
        ids = part["sparse"].numpy()
        onehot = enc.fit_transform(ids) if fit_encoder else enc.transform(ids)
        return sp.hstack([sp.csr_matrix(part["dense"].numpy()), onehot]).tocsr()

    train, test = splits["train"], splits["test"]
    lr = LogisticRegression(C=1.0, max_iter=1000).fit(features(train, True), train["labels"].numpy())
    return lr.predict_proba(features(test, False))[:, 1]


def evaluate(model: nn.Module, settings: EvalSettings) -> dict[str, float]:
    """AUC and log loss on the first `num_samples` test rows (20,000 in all), with the LR baseline.

    Returns auc, log_loss, baseline_auc, baseline_log_loss and rows.
    """

    test = ctr_splits()["test"]
    rows = min(settings.num_samples, test["labels"].shape[0])
    part = {k: v[:rows] for k, v in test.items()}
    model.eval()
    probs = predict(model, part, settings.batch_size)
    base = baseline_probabilities()[:rows]
    labels = part["labels"]
    return {
        "auc": roc_auc(labels, probs),
        "log_loss": log_loss(labels, probs),
        "baseline_auc": roc_auc(labels, base),
        "baseline_log_loss": log_loss(labels, base),
        "rows": float(rows),
    }


register_model(
    ZooModel(
        name="recsys",
        paper=PAPER,
        task="recommendation",
        configs={"tiny": RecsysConfig.tiny(), "small": RecsysConfig.small()},
        build=build,
        example_inputs=example_inputs,
        train=train,
        evaluate=evaluate,
        train_defaults=TrainSettings(steps=6000, batch_size=256),  # the shipped checkpoint's recipe
        extra={"data": "movielens_ctr", "supernet": RecSupernet, "search": search},
    )
)
