"""InstaManip: few-shot image manipulation by a multimodal transformer with group self-attention.

Paper: Lai et al., "Unleashing In-context Learning of Autoregressive Models for Few-shot Image
Manipulation" (InstaManip, CVPR 2025). A prompt holds exemplar (before, after) image pairs, a
query image, learnable *manipulation tokens* Z and learnable *generation tokens*. Group
self-attention splits in-context learning into two stages: *learning*, P(Z | exemplars), where
Z attends to the exemplars; and *applying*, P(edited query | query, Z), where the query and
generation tokens attend to Z and to each other but never to the raw exemplars. The generation
tokens' final states are decoded into the edited image. A relation regularization makes the
similarity of the manipulation features of two prompts follow the similarity of their
instructions, so that Z encodes the edit and not the exemplars' content.

Here (tiny, on 16x16 digits): an episode is K exemplar pairs sharing one action of
`optkit.zoo.data.apply_action` (shift, rotate, flip, thicken) and a query digit; the target is
the query after that action. Every image is cut into p x p patch tokens (a linear patch
tokenizer) with fixed 2D sin-cos positions plus a learned role embedding (before, after,
query, generation). The sequence and its attention rule (`optkit.nn.group_attention`):

    pair_0 .. pair_{K-1}   one group per exemplar pair    sees: itself only
    manip (Z)              M learnable tokens             sees: every pair, itself
    query                  the query's patch tokens       sees: manip, itself
    gen                    one learnable token per patch  sees: manip, query, itself

so exemplars never see the query, and the query never sees a raw exemplar token: everything it
learns from the exemplars passes through Z. The mask is built from the static config in
`__init__` (a buffer), so `torch.export` and ONNX carry it as a constant.

Output: the edited query is predicted in one shot (all generation tokens in one forward pass),
not autoregressively patch by patch. Why: the edits are deterministic, so there is no
multi-modal output distribution for sampling to capture; one pass replaces (R/p)^2 = 16
sequential decoding steps, has no exposure bias, and keeps the captured graph a single static
call (no decode loop or KV cache for capture, ONNX or the passes to handle). This is also how
the paper's image output works: SEED-X-style learnable generation tokens whose final states go
to an image decoder in one step; only text would be generated token by token.

Deviations from the paper:
- No text instruction and no pretrained multimodal LLM (the paper starts from a large
  LLaMA-style model): a small pre-LayerNorm transformer (GELU MLP, not RMSNorm/SwiGLU)
  trained from scratch.
- Image tokenizer and decoder are a linear patch embedding and a linear patch head (the paper
  uses a pretrained ViT image tokenizer and a diffusion image decoder that also sees the
  query image).
- Attention is bidirectional inside each group and groups follow each other in sequence order
  (block-causal); the paper's backbone is causal token by token. Each exemplar pair is its own
  group (the paper puts all exemplars and the instruction into one learning group); Z pools
  over the pairs.
- Loss: pixel MSE of the edited query (the paper regresses image features for its decoder).
  The relation regularization's target similarity is 1 for two episodes with the same action
  and 0 otherwise (the paper uses the similarity of the instructions' text embeddings).
- Sizes are tiny: `tiny` is dim 96, depth 4, 4 heads, 2 exemplars, 8 manipulation tokens.

Blocks are an `nn.ModuleList` named `blocks` (module paths `blocks.N`).

Shipped checkpoint `optkit/zoo/checkpoints/instamanip_tiny.safetensors` (453k params, 1.8 MB):

    OMP_NUM_THREADS=1 optkit zoo train instamanip --steps 1500 --batch-size 32 -o instamanip_tiny.safetensors

(seed 0, lr 1e-3; 768 s on one heavily shared core; final loss 0.0325). `optkit zoo eval
instamanip` (256 test episodes, seed 0): PSNR 21.4 dB against 10.3 dB for returning the query
unedited and 9.5 dB with exemplars of another action; identity accuracy 0.90 (0.93 on the true
edits).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from optkit.errors import ConfigError
from optkit.metrics import psnr_db
from optkit.nn.group_attention import GroupLayout, GroupSelfAttention, group_attention_mask
from optkit.zoo.data import ACTIONS, apply_action, digits
from optkit.zoo.digits_metrics import class_accuracy
from optkit.zoo.dit import sincos_pos_embed_2d
from optkit.zoo.registry import EvalSettings, TrainSettings, ZooModel, register_model

PAPER = (
    "Unleashing In-context Learning of Autoregressive Models for Few-shot Image Manipulation "
    "(InstaManip; Lai et al., CVPR 2025)"
)
RELATION_WEIGHT = 0.1  # weight of the relation regularization next to the pixel MSE
ROLES = ("before", "after", "query", "gen")


@dataclass(frozen=True)
class InstaManipConfig:
    """Sizes of an InstaManip on (1, resolution, resolution) images with `exemplars` pairs."""

    resolution: int = 16
    patch: int = 4
    exemplars: int = 2
    manip_tokens: int = 8
    dim: int = 96
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.patch <= 0 or self.resolution % self.patch:
            raise ConfigError(f"resolution {self.resolution} must be a multiple of patch {self.patch}")
        if self.dim % self.heads or self.dim % 4:
            raise ConfigError(f"dim {self.dim} must be divisible by heads {self.heads} and by 4")
        if min(self.exemplars, self.manip_tokens, self.depth) <= 0:
            raise ConfigError(f"exemplars, manip_tokens and depth must be positive, got {self}")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.resolution // self.patch

    @property
    def image_tokens(self) -> int:
        """Patch tokens per image."""
        return self.grid * self.grid

    def layout(self) -> GroupLayout:
        """The group layout of the prompt (see the module docstring)."""
        n, k = self.image_tokens, self.exemplars
        pairs = tuple(f"pair_{i}" for i in range(k))
        return GroupLayout(
            groups=(*((p, 2 * n) for p in pairs), ("manip", self.manip_tokens), ("query", n), ("gen", n)),
            sees={
                **{p: (p,) for p in pairs},
                "manip": (*pairs, "manip"),
                "query": ("manip", "query"),
                "gen": ("manip", "query", "gen"),
            },
        )

    @classmethod
    def tiny(cls) -> InstaManipConfig:
        return cls(dim=96, depth=4, heads=4)

    @classmethod
    def small(cls) -> InstaManipConfig:
        return cls(exemplars=3, manip_tokens=16, dim=192, depth=6, heads=6)


class Block(nn.Module):
    """Pre-LayerNorm transformer block whose self-attention is group-masked."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, layout: GroupLayout) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GroupSelfAttention(dim, heads, layout)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))  # (B, L, D)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))  # (B, L, D)


class InstaManip(nn.Module):
    """`forward(before (B, K, 1, R, R), after (B, K, 1, R, R), query (B, 1, R, R)) -> (B, 1, R, R)`.

    The exemplar pairs (before[:, i], after[:, i]) show one edit; the output is the query with
    that edit applied, in [-1, 1] (unclamped).
    """

    pos_embed: torch.Tensor

    def __init__(self, config: InstaManipConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.layout = c.layout()
        self.patch_embed = nn.Linear(c.patch * c.patch, c.dim)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(c.dim, c.grid), persistent=False)  # (N, D)
        self.role_embed = nn.Parameter(torch.zeros(len(ROLES), c.dim))
        self.manip_tokens = nn.Parameter(torch.zeros(c.manip_tokens, c.dim))
        self.gen_tokens = nn.Parameter(torch.zeros(c.image_tokens, c.dim))
        self.blocks = nn.ModuleList([Block(c.dim, c.heads, c.mlp_ratio, self.layout) for _ in range(c.depth)])
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.patch * c.patch)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for p in (self.role_embed, self.manip_tokens, self.gen_tokens):
            nn.init.normal_(p, std=0.02)

    @property
    def attention_mask(self) -> torch.Tensor:
        """The (L, L) boolean group mask every block uses (True = may attend)."""
        return group_attention_mask(self.layout)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, R, R) images -> (B, G*G, p*p) patches in raster order, pixels row-major."""
        p, g = self.config.patch, self.config.grid
        x = images.reshape(images.shape[0], g, p, g, p)  # (B, G, p, G, p)
        return x.permute(0, 1, 3, 2, 4).reshape(images.shape[0], g * g, p * p)  # (B, N, p*p)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, G*G, p*p) patches -> (B, 1, R, R) image (inverse of `patchify`)."""
        p, g = self.config.patch, self.config.grid
        x = patches.reshape(patches.shape[0], g, g, p, p).permute(0, 1, 3, 2, 4)  # (B, G, p, G, p)
        return x.reshape(patches.shape[0], 1, g * p, g * p)  # (B, 1, R, R)

    def _image_tokens(self, images: torch.Tensor, role: int) -> torch.Tensor:
        return self.patch_embed(self.patchify(images)) + self.pos_embed + self.role_embed[role]  # (B, N, D)

    def forward_features(
        self, before: torch.Tensor, after: torch.Tensor, query: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(edited query (B, 1, R, R), manipulation features (B, M, D) after the last block)."""
        c = self.config
        b = query.shape[0]
        # 1. Tokenize: one group of 2N tokens per exemplar pair, then Z, the query and the
        #    generation tokens, in the order of `config.layout()`.
        parts = []
        for i in range(c.exemplars):
            parts.append(self._image_tokens(before[:, i], 0))  # (B, N, D)
            parts.append(self._image_tokens(after[:, i], 1))  # (B, N, D)
        parts.append(self.manip_tokens.expand(b, -1, -1))  # (B, M, D)
        parts.append(self._image_tokens(query, 2))  # (B, N, D)
        parts.append((self.gen_tokens + self.pos_embed + self.role_embed[3]).expand(b, -1, -1))  # (B, N, D)
        h = torch.cat(parts, dim=1)  # (B, L, D)
        # 2. Group self-attention blocks: Z learns the edit from the pairs, the query side applies it.
        for block in self.blocks:
            h = block(h)  # (B, L, D)
        h = self.norm(h)
        # 3. Decode the generation tokens into patches of the edited query.
        manip = h[:, self.layout.span("manip")]  # (B, M, D)
        image = self.unpatchify(self.head(h[:, self.layout.span("gen")]))  # (B, 1, R, R)
        return image, manip

    def forward(self, before: torch.Tensor, after: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return self.forward_features(before, after, query)[0]


# ---------------------------------------------------------------------------------------------
# Episodes, training and evaluation


def episodes(
    images: torch.Tensor, labels: torch.Tensor, n: int, exemplars: int, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """`n` episodes from the digit pool (images (P, 1, R, R), labels (P,)), actions in turn.

    Each episode takes K+1 random digits of the pool; the first K are the exemplars' before
    images, the last the query; one action (episode i gets action i mod 4 shifted by a random
    offset) edits all of them. Returns before/after (n, K, 1, R, R), query/target (n, 1, R, R),
    action (n,) and query labels (n,).
    """
    k = exemplars
    idx = torch.randint(0, images.shape[0], (n, k + 1), generator=gen)  # (n, K+1)
    offset = int(torch.randint(0, len(ACTIONS), (1,), generator=gen))
    action = (torch.arange(n) + offset) % len(ACTIONS)  # (n,)
    raw = images[idx.flatten()]  # (n*(K+1), 1, R, R)
    edited = apply_action(raw, action.repeat_interleave(k + 1))
    raw = raw.reshape(n, k + 1, *raw.shape[1:])
    edited = edited.reshape(n, k + 1, *edited.shape[1:])
    return {
        "before": raw[:, :k],
        "after": edited[:, :k],
        "query": raw[:, k],
        "target": edited[:, k],
        "action": action,
        "label": labels[idx[:, k]],
    }


def undo_geometry(images: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Undo the rotate and flip actions (a classifier reads digits upright and unmirrored);
    shifted and thickened digits are left as they are."""
    back_rot = torch.rot90(images, -1, dims=(-2, -1))
    back_flip = torch.flip(images, dims=(-1,))
    rot = (action == ACTIONS.index("rotate")).reshape(-1, 1, 1, 1)
    flip = (action == ACTIONS.index("flip")).reshape(-1, 1, 1, 1)
    return torch.where(rot, back_rot, torch.where(flip, back_flip, images))


def relation_loss(manip: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Relation regularization: cosine similarities of the episodes' mean manipulation features
    (B, B) regressed onto 1 for episodes sharing an action and 0 otherwise."""
    z = F.normalize(manip.mean(dim=1), dim=-1)  # (B, D)
    target = (action[:, None] == action[None, :]).float()  # (B, B)
    return F.mse_loss(z @ z.T, target)


def example_inputs(model: nn.Module, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Deterministic (before, after, query): `batch` test-split episodes drawn with `seed`."""
    cfg: InstaManipConfig = model.config  # type: ignore[assignment]
    images, labels = digits("test", cfg.resolution)
    ep = episodes(images, labels, batch, cfg.exemplars, torch.Generator().manual_seed(seed))
    return ep["before"], ep["after"], ep["query"]


def train(model: nn.Module, settings: TrainSettings) -> dict[str, float]:
    """Train on episodes drawn from the 4,000 training digits: pixel MSE of the edited query
    plus the relation regularization; AdamW, warmup + cosine decay, gradient clipping."""
    if settings.steps < 1 or settings.batch_size < 2 or settings.lr <= 0:
        raise ConfigError(f"steps and lr must be positive and batch_size >= 2, got {settings}")
    cfg: InstaManipConfig = model.config  # type: ignore[assignment]
    images, labels = digits("train", cfg.resolution, seed=settings.seed)
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    warmup = max(1, settings.steps // 50)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, settings.steps - warmup))) * 0.95 + 0.05

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    start = time.perf_counter()
    ema = mse_ema = None
    for step in range(settings.steps):
        ep = episodes(images, labels, settings.batch_size, cfg.exemplars, gen)
        pred, manip = model.forward_features(ep["before"], ep["after"], ep["query"])  # type: ignore[operator]
        mse = F.mse_loss(pred, ep["target"])
        loss = mse + RELATION_WEIGHT * relation_loss(manip, ep["action"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        mse_ema = mse.item() if mse_ema is None else 0.98 * mse_ema + 0.02 * mse.item()
        if settings.progress:
            settings.progress(step + 1, settings.steps, ema)
    model.eval()
    return {
        "final_loss": float(ema or 0.0),
        "final_mse": float(mse_ema or 0.0),
        "seconds": time.perf_counter() - start,
        "steps": float(settings.steps),
    }


@torch.no_grad()
def evaluate(model: nn.Module, settings: EvalSettings) -> dict[str, float]:
    """Edit `num_samples` held-out episodes (test digits, actions in turn, seeded) and score:

    psnr_db (prediction vs the true edit), copy_query_psnr_db (the query returned unedited, the
    baseline), wrong_exemplars_psnr_db (the same queries with exemplars of the next action:
    how much the output depends on the exemplars), psnr_db_<action> per action, and
    identity_accuracy: the shipped digits classifier's accuracy on the query's label for the
    prediction with rotate/flip undone; identity_accuracy_true_edit is the same for the true
    edits (its ceiling).
    """

    cfg: InstaManipConfig = model.config  # type: ignore[assignment]
    model.eval()
    images, labels = digits("test", cfg.resolution)
    gen = torch.Generator().manual_seed(settings.seed)
    ep = episodes(images, labels, settings.num_samples, cfg.exemplars, gen)
    wrong = (ep["action"] + 1) % len(ACTIONS)
    k = cfg.exemplars
    wrong_after = apply_action(ep["before"].flatten(0, 1), wrong.repeat_interleave(k)).reshape(
        ep["before"].shape
    )
    preds, wrong_preds = [], []
    for s in range(0, settings.num_samples, settings.batch_size):
        part = slice(s, s + settings.batch_size)
        preds.append(model(ep["before"][part], ep["after"][part], ep["query"][part]))
        wrong_preds.append(model(ep["before"][part], wrong_after[part], ep["query"][part]))
    pred = torch.cat(preds).clamp(-1, 1)  # (N, 1, R, R)
    wrong_pred = torch.cat(wrong_preds).clamp(-1, 1)
    target, action = ep["target"], ep["action"]
    figures = {
        "psnr_db": psnr_db(target, pred),
        "copy_query_psnr_db": psnr_db(target, ep["query"]),
        "wrong_exemplars_psnr_db": psnr_db(target, wrong_pred),
        "identity_accuracy": class_accuracy(undo_geometry(pred, action), ep["label"]),
        "identity_accuracy_true_edit": class_accuracy(undo_geometry(target, action), ep["label"]),
    }
    for a, name in enumerate(ACTIONS):
        sel = action == a
        if bool(sel.any()):
            figures[f"psnr_db_{name}"] = psnr_db(target[sel], pred[sel])
    return {k: float(v) for k, v in figures.items()}


register_model(
    ZooModel(
        name="instamanip",
        paper=PAPER,
        task="multimodal",
        configs={"tiny": InstaManipConfig.tiny(), "small": InstaManipConfig.small()},
        build=InstaManip,
        example_inputs=example_inputs,
        train=train,
        evaluate=evaluate,
        train_defaults=TrainSettings(steps=1500, batch_size=32),  # the shipped checkpoint's recipe
        extra={"data": "action_pairs", "actions": ACTIONS, "relation_weight": RELATION_WEIGHT},
    )
)
