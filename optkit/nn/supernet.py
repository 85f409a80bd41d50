"""A weight-sharing supernet for click-through-rate models, and the plain subnets cut from it.

Paper: Zhang et al., "NASRec: Weight Sharing Neural Architecture Search for Recommender
Systems" (WWW 2023): a supernet of blocks whose operators, widths and dense connectivity are
all searchable, trained once with weight sharing; any subnet inherits its weights. The
operator set here follows DLRM-family interactions: MLP, DLRM dot product (Naumov et al.,
2019), factorization machine (Rendle, 2010; bi-interaction pooling of He & Chua, 2017), DCN-v2
low-rank cross (Wang et al., 2021) and AutoInt-style self-attention over feature tokens
(Song et al., 2019).

Layout. Sparse ids (B, F) go through one embedding table per feature (stored as one table with
row offsets, ids reduced modulo each feature's row count: the hashing trick), giving tokens
(B, F, E). Dense features (B, Nd) go through a stem Linear + ReLU to (B, Dmax). The sources a
block may read are: 0 = the stem output, 1 = the flattened embeddings (B, F*E), k + 2 = the
output of block k < i. A `BlockChoice` picks, for block i, its operator, its output width d
from `dims` and a non-empty set of sources. The block's input x is the concatenation of the
chosen sources; interaction operators project x to an E-wide "dense token" and combine it with
the F embedding tokens. The head reads every block output that no later block reads.

Weight sharing. Each supernet block holds every operator at full size: input width = all
sources at full width, output width Dmax. A sampled subnet runs on the same weights with
unchosen sources zeroed and outputs cut to d (zero-padded to Dmax for later readers), which is
the same function as slicing the weights; `RecSupernet.subnet(choice)` does that slicing and
returns a plain `Subnet` whose blocks hold only the chosen operators at their chosen sizes.
Deviations from NASRec: operators act on one dense vector per block (no separate dense and
sparse block outputs), there is no sigmoid-gating or sum operator, and dimension choices are
per block output only.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from optkit.errors import ConfigError

OPERATORS = ("mlp", "dot", "fm", "cross", "attention")
STEM, EMBEDDINGS = 0, 1  # source ids of the stem output and the flattened embeddings


@dataclass(frozen=True)
class BlockChoice:
    """One block of a subnet: operator name, output width and the sources it reads (sorted)."""

    op: str
    dim: int
    sources: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.op}{self.dim}<{','.join(map(str, self.sources))}>"


@dataclass(frozen=True)
class SupernetConfig:
    """Sizes of the supernet: features, embedding width, width choices, blocks."""

    num_dense: int = 24
    cardinalities: tuple[int, ...] = (943, 1682, 7, 2, 21, 11, 19, 8)
    embed_dim: int = 16
    dims: tuple[int, ...] = (16, 32, 64)
    num_blocks: int = 4
    cross_rank: int = 16
    attention_heads: int = 2
    max_rows: int = 2048  # rows per embedding table; larger cardinalities are hashed (modulo)
    dropout: float = 0.0  # on the embedding tokens and every block input, in training only

    def __post_init__(self) -> None:
        if self.num_dense <= 0 or not self.cardinalities or min(self.cardinalities) < 1:
            raise ConfigError(f"need num_dense > 0 and positive cardinalities, got {self}")
        if not self.dims or min(self.dims) <= 0 or list(self.dims) != sorted(set(self.dims)):
            raise ConfigError(f"dims must be distinct positive widths in increasing order, got {self.dims}")
        if min(self.num_blocks, self.cross_rank, self.max_rows) <= 0:
            raise ConfigError(f"num_blocks, cross_rank and max_rows must be positive, got {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.embed_dim % self.attention_heads:
            raise ConfigError(
                f"embed_dim {self.embed_dim} must be divisible by attention_heads {self.attention_heads}"
            )

    @property
    def max_dim(self) -> int:
        return self.dims[-1]

    @property
    def rows(self) -> tuple[int, ...]:
        """Embedding rows per feature: the cardinality, capped at `max_rows`."""
        return tuple(min(c, self.max_rows) for c in self.cardinalities)

    def source_width(self, source: int) -> int:
        """Full width of a source: stem Dmax, embeddings F*E, a block output Dmax."""
        return self.embed_dim * self.fields if source == EMBEDDINGS else self.max_dim

    @property
    def fields(self) -> int:
        """Feature tokens: one per dense feature and one per sparse feature."""
        return self.num_dense + len(self.cardinalities)

    def check_choice(self, choice: tuple[BlockChoice, ...]) -> None:
        """Raise ConfigError unless `choice` is a valid subnet of this supernet."""
        if len(choice) != self.num_blocks:
            raise ConfigError(f"a subnet needs {self.num_blocks} block choices, got {len(choice)}")
        for i, c in enumerate(choice):
            if c.op not in OPERATORS:
                raise ConfigError(f"block {i}: operator {c.op!r} is not one of {', '.join(OPERATORS)}")
            if c.dim not in self.dims:
                raise ConfigError(f"block {i}: dim {c.dim} is not one of {self.dims}")
            if (
                not c.sources
                or list(c.sources) != sorted(set(c.sources))
                or not 0 <= c.sources[0] <= c.sources[-1] < i + 2
            ):
                raise ConfigError(f"block {i}: sources {c.sources} must be sorted distinct ids in 0..{i + 1}")


def sample_choice(config: SupernetConfig, rng: random.Random) -> tuple[BlockChoice, ...]:
    """A uniformly random subnet: operator and width uniform, each source kept with p = 1/2."""
    out = []
    for i in range(config.num_blocks):
        sources = [s for s in range(i + 2) if rng.random() < 0.5] or [rng.randrange(i + 2)]
        out.append(BlockChoice(rng.choice(OPERATORS), rng.choice(config.dims), tuple(sources)))
    return tuple(out)


def open_ends(choice: tuple[BlockChoice, ...]) -> list[int]:
    """Blocks whose output no later block reads (the head reads these); always the last block."""
    read = {s - 2 for c in choice for s in c.sources if s >= 2}
    return [i for i in range(len(choice)) if i not in read or i == len(choice) - 1]


def _linear(src: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear holding `src`'s weight restricted to `rows` (outputs) and `cols` (inputs)."""
    w = src.weight.detach()
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols]
    out = nn.Linear(w.shape[1], w.shape[0], bias=src.bias is not None)
    with torch.no_grad():
        out.weight.copy_(w)
        if src.bias is not None:
            out.bias.copy_(src.bias.detach() if rows is None else src.bias.detach()[rows])
    return out


# ---------------------------------------------------------------------------------------------
# Operators: forward(x (B, in), tokens (B, F, E)) -> (B, out); `sliced` cuts a smaller copy.


class Operator(nn.Module):
    """A block operator: `forward(x (B, in), tokens (B, F, E)) -> (B, out)`."""

    def sliced(self, cols: torch.Tensor, dim: int) -> Operator:
        """A copy reading only input columns `cols` and producing the first `dim` outputs."""
        raise NotImplementedError


class MLPOp(Operator):
    """ReLU(W x + b)."""

    def __init__(self, width: int, out: int, embed_dim: int, fields: int, cfg: SupernetConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(width, out)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(x))  # (B, out)

    def sliced(self, cols: torch.Tensor, dim: int) -> MLPOp:
        new = copy.deepcopy(self)
        new.fc = _linear(self.fc, torch.arange(dim), cols)
        return new


class CrossOp(Operator):
    """DCN-v2 low-rank cross on x: x * (U V^T x + b) + x, then ReLU(W . + c) to the output width."""

    def __init__(self, width: int, out: int, embed_dim: int, fields: int, cfg: SupernetConfig) -> None:
        super().__init__()
        self.v = nn.Linear(width, cfg.cross_rank, bias=False)
        self.u = nn.Linear(cfg.cross_rank, width)
        self.fc = nn.Linear(width, out)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        crossed = x * self.u(self.v(x)) + x  # (B, in)
        return F.relu(self.fc(crossed))  # (B, out)

    def sliced(self, cols: torch.Tensor, dim: int) -> CrossOp:
        new = copy.deepcopy(self)
        new.v = _linear(self.v, cols=cols)
        new.u = _linear(self.u, rows=cols)
        new.fc = _linear(self.fc, torch.arange(dim), cols)
        return new


class _TokenOp(Operator):
    """Base of the interaction operators: x is projected to one more E-wide token."""

    proj: nn.Linear
    fc: nn.Linear

    def dense_token(self, x: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.proj(x)  # (B, E)
        return p, torch.cat([p.unsqueeze(1), tokens], dim=1)  # (B, E), (B, F+1, E)

    def sliced(self, cols: torch.Tensor, dim: int) -> _TokenOp:
        new = copy.deepcopy(self)
        new.proj = _linear(self.proj, cols=cols)
        new.fc = _linear(self.fc, rows=torch.arange(dim))
        return new


class DotOp(_TokenOp):
    """DLRM interaction: pairwise dot products of the F+1 tokens (upper triangle) and the dense token."""

    def __init__(self, width: int, out: int, embed_dim: int, fields: int, cfg: SupernetConfig) -> None:
        super().__init__()
        n = fields + 1
        rows, cols = torch.triu_indices(n, n, offset=1)
        self.pairs: torch.Tensor
        self.register_buffer("pairs", rows * n + cols, persistent=False)  # flat indices of i < j
        self.proj = nn.Linear(width, embed_dim)
        self.fc = nn.Linear(embed_dim + n * (n - 1) // 2, out)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        p, t = self.dense_token(x, tokens)
        dots = torch.bmm(t, t.transpose(1, 2)).flatten(1)[:, self.pairs]  # (B, (F+1)F/2)
        return F.relu(self.fc(torch.cat([p, dots], dim=1)))  # (B, out)


class FMOp(_TokenOp):
    """Factorization machine: bi-interaction 0.5 ((sum t)^2 - sum t^2) over tokens, with the dense token."""

    def __init__(self, width: int, out: int, embed_dim: int, fields: int, cfg: SupernetConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(width, embed_dim)
        self.fc = nn.Linear(2 * embed_dim, out)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        p, t = self.dense_token(x, tokens)
        total = t.sum(1)  # (B, E)
        fm = 0.5 * (total * total - (t * t).sum(1))  # (B, E)
        return F.relu(self.fc(torch.cat([p, fm], dim=1)))  # (B, out)


class AttentionOp(_TokenOp):
    """AutoInt-style: multi-head self-attention over the F+1 tokens (residual), flattened."""

    def __init__(self, width: int, out: int, embed_dim: int, fields: int, cfg: SupernetConfig) -> None:
        super().__init__()
        self.heads = cfg.attention_heads
        self.proj = nn.Linear(width, embed_dim)
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.o = nn.Linear(embed_dim, embed_dim)
        self.fc = nn.Linear((fields + 1) * embed_dim, out)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        _, t = self.dense_token(x, tokens)
        b, n, e = t.shape
        qkv = (
            self.qkv(t).reshape(b, n, 3, self.heads, e // self.heads).permute(2, 0, 3, 1, 4)
        )  # (3, B, H, N, e)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(b, n, e)
        t = t + self.o(a)  # (B, F+1, E)
        return F.relu(self.fc(t.flatten(1)))  # (B, out)


OPERATOR_CLASSES: dict[str, type[Operator]] = {
    "mlp": MLPOp,
    "dot": DotOp,
    "fm": FMOp,
    "cross": CrossOp,
    "attention": AttentionOp,
}


class FeatureEmbedding(nn.Module):
    """One table per sparse feature, stored as one table with row offsets; ids taken modulo rows."""

    def __init__(self, rows: tuple[int, ...], dim: int) -> None:
        super().__init__()
        offsets = torch.tensor([0, *rows[:-1]]).cumsum(0)
        self.rows: torch.Tensor
        self.offsets: torch.Tensor
        self.register_buffer("rows", torch.tensor(rows), persistent=False)
        self.register_buffer("offsets", offsets, persistent=False)
        self.table = nn.Embedding(sum(rows), dim)
        nn.init.normal_(self.table.weight, std=0.05)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(torch.remainder(ids, self.rows) + self.offsets)  # (B, F, E)


class DenseTokens(nn.Module):
    """One learned vector per dense feature, scaled by the feature's value (as in an FM)."""

    def __init__(self, num_dense: int, dim: int) -> None:
        super().__init__()
        self.vectors = nn.Parameter(torch.randn(num_dense, dim) * 0.05)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return dense.unsqueeze(-1) * self.vectors  # (B, Nd, E)


class WideTerm(nn.Module):
    """First-order (logistic-regression) logit: a linear map of the dense features plus one
    learned weight per sparse id, as the linear part of a factorization machine."""

    def __init__(self, config: SupernetConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.num_dense, 1)
        self.ids = FeatureEmbedding(config.rows, 1)
        nn.init.zeros_(self.ids.table.weight)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.dense(dense).squeeze(-1) + self.ids(sparse).sum(dim=(1, 2))  # (B,)


class RecSupernet(nn.Module):
    """`forward(dense (B, Nd), sparse (B, F) int64, choice) -> click logits (B,)`.

    Runs subnet `choice` on the shared weights; `subnet(choice)` cuts it out as a plain module.
    """

    def __init__(self, config: SupernetConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embedding = FeatureEmbedding(c.rows, c.embed_dim)
        self.dense_tokens = DenseTokens(c.num_dense, c.embed_dim)
        self.wide = WideTerm(c)
        self.stem = nn.Linear(c.num_dense, c.max_dim)
        self.blocks = nn.ModuleList()
        for i in range(c.num_blocks):
            width = sum(c.source_width(s) for s in range(i + 2))
            ops = {
                name: cls(width, c.max_dim, c.embed_dim, c.fields, c)
                for name, cls in OPERATOR_CLASSES.items()
            }
            self.blocks.append(nn.ModuleDict(ops))
        self.head = nn.Linear(c.num_blocks * c.max_dim, 1)
        self.dropout = nn.Dropout(c.dropout) if c.dropout > 0 else nn.Identity()

    def forward(
        self, dense: torch.Tensor, sparse: torch.Tensor, choice: tuple[BlockChoice, ...]
    ) -> torch.Tensor:
        c = self.config
        tokens = self.dropout(
            torch.cat([self.dense_tokens(dense), self.embedding(sparse)], dim=1)
        )  # (B, Nd+F, E)
        sources = [F.relu(self.stem(dense)), tokens.flatten(1)]  # full widths
        for block, bc in zip(self.blocks, choice, strict=True):
            x = torch.cat(
                [s if j in bc.sources else torch.zeros_like(s) for j, s in enumerate(sources)], dim=1
            )
            y = block.get_submodule(bc.op)(self.dropout(x), tokens)[:, : bc.dim]  # (B, d)
            sources.append(F.pad(y, (0, c.max_dim - bc.dim)))  # (B, Dmax)
        ends = set(open_ends(choice))
        outs = [s if i in ends else torch.zeros_like(s) for i, s in enumerate(sources[2:])]
        return self.head(torch.cat(outs, dim=1)).squeeze(-1) + self.wide(dense, sparse)  # (B,)

    @torch.no_grad()
    def subnet(self, choice: tuple[BlockChoice, ...]) -> Subnet:
        """The plain module of `choice`, holding copies of the sliced shared weights."""
        c = self.config
        c.check_choice(choice)
        widths = [c.max_dim, c.source_width(EMBEDDINGS)]  # actual widths in the subnet
        blocks = []
        for block, bc in zip(self.blocks, choice, strict=True):
            starts = [sum(c.source_width(s) for s in range(j)) for j in range(len(widths))]
            cols = torch.cat([torch.arange(starts[j], starts[j] + widths[j]) for j in bc.sources])
            blocks.append(cast(Operator, block.get_submodule(bc.op)).sliced(cols, bc.dim))
            widths.append(bc.dim)
        ends = open_ends(choice)
        head_cols = torch.cat([torch.arange(i * c.max_dim, i * c.max_dim + choice[i].dim) for i in ends])
        sub = Subnet(c, choice, nn.ModuleList(blocks), _linear(self.head, cols=head_cols))
        sub.embedding.load_state_dict(self.embedding.state_dict())
        sub.dense_tokens.load_state_dict(self.dense_tokens.state_dict())
        sub.wide.load_state_dict(self.wide.state_dict())
        sub.stem.load_state_dict(self.stem.state_dict())
        return sub


class Subnet(nn.Module):
    """One architecture of the supernet as a plain model: `forward(dense, sparse) -> logits (B,)`.

    Blocks (`blocks.N`) hold only their chosen operator with sliced weights; the data flow is
    fixed Python, so `torch.export` and ONNX see an ordinary graph.
    """

    def __init__(
        self,
        config: SupernetConfig,
        choice: tuple[BlockChoice, ...],
        blocks: nn.ModuleList | None = None,
        head: nn.Linear | None = None,
    ) -> None:
        super().__init__()
        config.check_choice(choice)
        self.config = config
        self.choice = choice
        self.ends = open_ends(choice)
        if blocks is None or head is None:
            fresh = RecSupernet(config).subnet(choice)
            blocks, head = fresh.blocks, fresh.head
        self.embedding = FeatureEmbedding(config.rows, config.embed_dim)
        self.dense_tokens = DenseTokens(config.num_dense, config.embed_dim)
        self.wide = WideTerm(config)
        self.stem = nn.Linear(config.num_dense, config.max_dim)
        self.blocks: nn.ModuleList = blocks
        self.head: nn.Linear = head
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        tokens = self._drop(
            torch.cat([self.dense_tokens(dense), self.embedding(sparse)], dim=1)
        )  # (B, Nd+F, E)
        sources = [F.relu(self.stem(dense)), tokens.flatten(1)]
        for block, bc in zip(self.blocks, self.choice, strict=True):
            x = torch.cat([sources[j] for j in bc.sources], dim=1)  # (B, in)
            sources.append(block(self._drop(x), tokens))  # (B, d)
        deep = self.head(torch.cat([sources[i + 2] for i in self.ends], dim=1)).squeeze(-1)  # (B,)
        return deep + self.wide(dense, sparse)  # (B,)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        # Decided in Python, so an exported (eval-mode) graph holds no dropout nodes.
        return self.dropout(x) if self.training else x

    def describe(self) -> str:
        """The architecture in one line, e.g. `mlp64<0,1> | dot32<2>`."""
        return " | ".join(map(str, self.choice))
