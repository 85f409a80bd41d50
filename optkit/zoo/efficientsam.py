"""EfficientSAM: a ViT image encoder, a point/box prompt encoder and a two-way mask decoder.

Paper: Xiong et al., "EfficientSAM: Leveraged Masked Image Pretraining for Efficient Segment
Anything" (CVPR 2024), which keeps the Segment Anything design (Kirillov et al., ICCV 2023):
a plain ViT encodes the image once into a (D, G, G) embedding; a prompt encoder turns points
and box corners into tokens (random-Fourier positional encoding of the coordinates plus a
learned embedding per point type); a mask decoder runs a two-way transformer between the
prompt tokens (with a learned IoU token and mask token in front) and the image embedding,
upsamples the image embedding 4x with two transposed convolutions and takes the dot product
with a hypernetwork MLP of the mask token's output to get the mask logits; the IoU token's
output predicts the mask's IoU. Prompts use EfficientSAM's interface: a (B, P, 2) tensor of
points with (B, P) labels, where 1 is a foreground point, 0 a background point, 2 and 3 the
top-left and bottom-right corners of a box, and -1 an unused slot (the "not a point" token).

Deviations from the paper:
- No SAMI masked-image pretraining (no SAM teacher ships offline) and no SA-1B: the whole model
  is trained from scratch on `optkit.zoo.data.shapes_with_masks` (one target shape over a
  noisy background and one distractor shape), 32 x 32 RGB images in [-1, 1].
- Sizes far below ViT-Tiny: `tiny` is a 4-block ViT of width 80 on 4 x 4 patches (8 x 8
  tokens) and a decoder of width 64 with MLP width 256 (SAM: 256 and 2048); ~0.53M parameters.
- Points and boxes are given normalized to [0, 1] (x, y), not in pixels.
- One mask output (SAM's single-mask mode): no multimask tokens and no minimum-over-masks loss.
  Mask prompts (dense prompts) are not supported; the "no mask" embedding is always added.
- Masks come out at 4 G = R pixels (the input resolution) when the patch is 4; other patches
  are resized bilinearly to R inside the model.
- Loss: binary cross-entropy + dice on the mask (SAM: focal 20 : dice 1) plus MSE of the IoU
  prediction; each training example gets a box, a point or both, drawn at random; no iterative
  point sampling and no box jitter.

The encoder's blocks are found by module path `encoder.blocks.N` (an `nn.ModuleList`).

Shipped checkpoint `optkit/zoo/checkpoints/efficientsam_tiny.safetensors` (2.1 MB, 527k
parameters), trained with seed 0 by

    OMP_NUM_THREADS=1 optkit zoo train efficientsam --steps 2500 --batch-size 32 -o efficientsam_tiny.safetensors

(lr 1e-3; 80,000 generated shapes; final smoothed loss 0.158; 27 min wall on a core shared
with seven other jobs, 4.7 min of CPU time). `optkit zoo eval efficientsam --samples 1000`
(held-out shapes): mIoU 0.884 with a box prompt, 0.789 with one point, 0.884 with both; mean
absolute error of the IoU head 0.038.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from optkit.errors import ConfigError
from optkit.metrics import miou
from optkit.nn.vit import LayerNorm2d, ViTEncoder
from optkit.zoo.registry import EvalSettings, TrainSettings, ZooModel, register_model

PAPER = "EfficientSAM: Leveraged Masked Image Pretraining for Efficient Segment Anything (Xiong et al., CVPR 2024)"
PROMPT_MODES = ("box", "point", "box+point")
PROMPT_SLOTS = 3  # [point, box top-left, box bottom-right]; unused slots get label -1
DISTRACTORS = 1
TEST_SEED = 2_000_000_011  # held-out shapes; training draws seeds seed * 1e6 + step + 1


@dataclass(frozen=True)
class EfficientSAMConfig:
    """Sizes of an EfficientSAM on (3, resolution, resolution) images."""

    resolution: int = 32
    patch: int = 4
    encoder_dim: int = 80
    encoder_depth: int = 4
    encoder_heads: int = 4
    mlp_ratio: float = 4.0
    dim: int = 64  # prompt and decoder width (SAM: 256)
    decoder_depth: int = 2
    decoder_heads: int = 4
    decoder_mlp_dim: int = 256
    attention_downsample: int = 2

    def __post_init__(self) -> None:
        if self.patch <= 0 or self.resolution % self.patch:
            raise ConfigError(f"resolution {self.resolution} must be a multiple of patch {self.patch}")
        if self.encoder_dim % self.encoder_heads:
            raise ConfigError(
                f"encoder_dim {self.encoder_dim} must be divisible by encoder_heads {self.encoder_heads}"
            )
        if self.dim % 8:
            raise ConfigError(f"dim {self.dim} must be a multiple of 8 (mask upscaling to dim / 8)")
        inner = self.dim // max(self.attention_downsample, 1)
        if (
            self.attention_downsample < 1
            or self.dim % self.attention_downsample
            or inner % self.decoder_heads
        ):
            raise ConfigError(
                f"dim {self.dim} / attention_downsample {self.attention_downsample} must be an int "
                f"divisible by decoder_heads {self.decoder_heads}"
            )
        if min(self.encoder_depth, self.decoder_depth, self.decoder_mlp_dim) <= 0:
            raise ConfigError(f"depths and decoder_mlp_dim must be positive, got {self}")

    @property
    def grid(self) -> int:
        """Image-embedding tokens per side."""
        return self.resolution // self.patch

    @classmethod
    def tiny(cls) -> EfficientSAMConfig:
        return cls()

    @classmethod
    def small(cls) -> EfficientSAMConfig:
        return cls(
            resolution=64, encoder_dim=192, encoder_depth=6, encoder_heads=3, dim=128, decoder_mlp_dim=512
        )


class RandomFourierPositions(nn.Module):
    """SAM's positional encoding: [sin, cos](2 pi (2 xy - 1) @ G) with a fixed Gaussian G (2, D/2).

    `G` is drawn once from a fixed seed and stored with the weights.
    """

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.gaussian_matrix: torch.Tensor
        self.register_buffer("gaussian_matrix", scale * torch.randn(2, dim // 2, generator=gen))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode (..., 2) coordinates in [0, 1] as (..., D) features."""
        angles = 2 * math.pi * ((2 * coords - 1) @ self.gaussian_matrix)  # (..., D/2)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)  # (..., D)


class PromptEncoder(nn.Module):
    """Points and box corners -> sparse prompt tokens; the dense positional map of the image grid.

    A valid slot is the positional encoding of its coordinates plus the learned embedding of its
    label (0 background, 1 foreground, 2 box top-left, 3 box bottom-right); a slot with label -1
    is the learned "not a point" embedding alone.
    """

    def __init__(self, dim: int, grid: int) -> None:
        super().__init__()
        self.positions = RandomFourierPositions(dim)
        self.label_embed = nn.Embedding(5, dim)  # row 0: not a point; rows 1..4: labels 0..3
        self.no_mask_embed = nn.Parameter(torch.randn(1, dim, 1, 1) * 0.02)
        centers = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
        ys, xs = torch.meshgrid(centers, centers, indexing="ij")
        self.grid_coords: torch.Tensor
        self.register_buffer("grid_coords", torch.stack([xs, ys], dim=-1), persistent=False)  # (G, G, 2)

    def forward(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        valid = (labels >= 0).unsqueeze(-1).to(points.dtype)  # (B, P, 1)
        return self.positions(points) * valid + self.label_embed(labels.long().clamp(-1, 3) + 1)  # (B, P, D)

    def image_positions(self) -> torch.Tensor:
        """The positional encoding of every image-embedding cell center, (1, D, G, G)."""
        return self.positions(self.grid_coords).permute(2, 0, 1).unsqueeze(0)


class PromptAttention(nn.Module):
    """Multi-head attention whose q/k/v projections may shrink the width by `downsample`."""

    def __init__(self, dim: int, heads: int, downsample: int = 1) -> None:
        super().__init__()
        inner = dim // downsample
        self.heads = heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)  # (B, H, N, C/H)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(
            self._split(self.q_proj(q)), self._split(self.k_proj(k)), self._split(self.v_proj(v))
        )  # (B, H, Nq, C/H)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))  # (B, Nq, D)


class TwoWayBlock(nn.Module):
    """Tokens attend to themselves, tokens to the image, an MLP on tokens, the image to tokens.

    Positional encodings are added to queries and keys of every attention (not to values); the
    first block's self-attention sees the raw tokens without their encoding, as in SAM.
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int, downsample: int, skip_first_pe: bool) -> None:
        super().__init__()
        self.skip_first_pe = skip_first_pe
        self.self_attn = PromptAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_token_to_image = PromptAttention(dim, heads, downsample)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)
        self.norm3 = nn.LayerNorm(dim)
        self.cross_image_to_token = PromptAttention(dim, heads, downsample)
        self.norm4 = nn.LayerNorm(dim)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_pe:
            queries = self.self_attn(queries, queries, queries)  # (B, T, D)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe  # (B, T, D), (B, G*G, D)
        queries = self.norm2(queries + self.cross_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.fc2(F.relu(self.fc1(queries))))
        q = queries + query_pe
        keys = self.norm4(keys + self.cross_image_to_token(k, q, queries))  # (B, G*G, D)
        return queries, keys


class MLP(nn.Module):
    """ReLU MLP with `depth` Linear layers (SAM's hypernetwork and IoU head)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, depth: int) -> None:
        super().__init__()
        dims = [dim_in] + [hidden] * (depth - 1) + [dim_out]
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class MaskDecoder(nn.Module):
    """Two-way transformer over [IoU token, mask token, prompt tokens] and the image embedding.

    `forward(image_embedding (B, D, G, G), image_pe (1, D, G, G), prompts (B, P, D))` returns
    mask logits (B, 1, 4G, 4G) and the predicted IoU (B, 1).
    """

    def __init__(self, cfg: EfficientSAMConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.output_tokens = nn.Parameter(torch.randn(1, 2, d) * 0.02)  # [IoU token, mask token]
        self.blocks = nn.ModuleList(
            [
                TwoWayBlock(d, cfg.decoder_heads, cfg.decoder_mlp_dim, cfg.attention_downsample, i == 0)
                for i in range(cfg.decoder_depth)
            ]
        )
        self.final_attn = PromptAttention(d, cfg.decoder_heads, cfg.attention_downsample)
        self.final_norm = nn.LayerNorm(d)
        self.upscale1 = nn.ConvTranspose2d(d, d // 4, kernel_size=2, stride=2)
        self.upscale_norm = LayerNorm2d(d // 4)
        self.upscale2 = nn.ConvTranspose2d(d // 4, d // 8, kernel_size=2, stride=2)
        self.hypernetwork = MLP(d, d, d // 8, depth=3)
        self.iou_head = MLP(d, d, 1, depth=3)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, prompts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, d, g, _ = image_embedding.shape
        # 1. Tokens: learned output tokens in front of the prompt tokens.
        tokens = torch.cat([self.output_tokens.expand(b, -1, -1), prompts], dim=1)  # (B, 2+P, D)
        keys = image_embedding.flatten(2).transpose(1, 2)  # (B, G*G, D)
        key_pe = image_pe.flatten(2).transpose(1, 2)  # (1, G*G, D)
        # 2. Two-way transformer, then a last token-to-image attention.
        queries = tokens
        for block in self.blocks:
            queries, keys = block(queries, keys, tokens, key_pe)
        queries = self.final_norm(
            queries + self.final_attn(queries + tokens, keys + key_pe, keys)
        )  # (B, 2+P, D)
        # 3. Upscale the image embedding 4x and project it on the mask token's hypernetwork output.
        fmap = keys.transpose(1, 2).reshape(b, d, g, g)  # (B, D, G, G)
        fmap = F.gelu(self.upscale2(F.gelu(self.upscale_norm(self.upscale1(fmap)))))  # (B, D/8, 4G, 4G)
        weights = self.hypernetwork(queries[:, 1])  # (B, D/8)
        masks = torch.einsum("bc,bchw->bhw", weights, fmap).unsqueeze(1)  # (B, 1, 4G, 4G)
        return masks, self.iou_head(queries[:, 0])  # (B, 1, 4G, 4G), (B, 1)


class EfficientSAM(nn.Module):
    """`forward(image (B, 3, R, R), points (B, P, 2), labels (B, P) int64) -> (masks, iou)`.

    Points are (x, y) in [0, 1]; labels as in the module docstring. Returns mask logits
    (B, 1, R, R) (positive = inside) and the predicted IoU of the mask (B, 1).
    """

    def __init__(self, config: EfficientSAMConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.encoder = ViTEncoder(
            3, c.resolution, c.patch, c.encoder_dim, c.encoder_depth, c.encoder_heads, c.mlp_ratio, c.dim
        )
        self.prompt_encoder = PromptEncoder(c.dim, c.grid)
        self.decoder = MaskDecoder(c)

    def forward(
        self, image: torch.Tensor, points: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.encoder(image) + self.prompt_encoder.no_mask_embed  # (B, D, G, G)
        prompts = self.prompt_encoder(points, labels)  # (B, P, D)
        masks, iou = self.decoder(embedding, self.prompt_encoder.image_positions(), prompts)
        if masks.shape[-1] != self.config.resolution:
            masks = F.interpolate(
                masks, size=(self.config.resolution,) * 2, mode="bilinear", align_corners=False
            )
        return masks, iou  # (B, 1, R, R), (B, 1)


def make_prompts(
    points: torch.Tensor, boxes: torch.Tensor, mode: torch.Tensor | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt tensors from the data's points (N, 1, 2) and boxes (N, 4).

    `mode` is one of `PROMPT_MODES` for every row, or an (N,) int tensor of indices into it.
    Returns coords (N, 3, 2) = [point, box top-left, box bottom-right] and labels (N, 3) int64
    = [1, 2, 3] with unused slots set to -1.
    """
    n = points.shape[0]
    if isinstance(mode, str):
        if mode not in PROMPT_MODES:
            raise ConfigError(f"prompt mode must be one of {', '.join(PROMPT_MODES)}, got {mode!r}")
        mode = torch.full((n,), PROMPT_MODES.index(mode), dtype=torch.int64)
    coords = torch.cat([points[:, :1], boxes.reshape(n, 2, 2)], dim=1)  # (N, 3, 2)
    use_point = mode != 0
    use_box = mode != 1
    labels = torch.stack(
        [
            torch.where(use_point, 1, -1),
            torch.where(use_box, 2, -1),
            torch.where(use_box, 3, -1),
        ],
        dim=1,
    ).long()  # (N, 3)
    return coords, labels


def example_inputs(model: nn.Module, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Deterministic (image, points, labels): generated shapes prompted by a point and a box."""
    from optkit.zoo.data import shapes_with_masks

    cfg: EfficientSAMConfig = model.config  # type: ignore[assignment]
    images, _, points, boxes = shapes_with_masks(batch, cfg.resolution, seed=seed, distractors=DISTRACTORS)
    return (images, *make_prompts(points, boxes, "box+point"))


def mask_iou(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-image IoU (N,) of logits > 0 against {0, 1} masks, both (N, H, W); 1 when both empty."""
    pred, true = logits > 0, masks > 0.5
    inter = (pred & true).flatten(1).sum(1).float()
    union = (pred | true).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def segmentation_loss(logits: torch.Tensor, iou_pred: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """BCE + dice on mask logits (N, H, W) plus MSE of the predicted IoU (N,) to the true IoU."""
    bce = F.binary_cross_entropy_with_logits(logits, masks)
    prob = logits.sigmoid().flatten(1)
    true = masks.flatten(1)
    dice = 1 - (2 * (prob * true).sum(1) + 1) / (prob.sum(1) + true.sum(1) + 1)
    iou_loss = F.mse_loss(iou_pred, mask_iou(logits.detach(), masks))
    return bce + dice.mean() + iou_loss


def train(model: nn.Module, settings: TrainSettings) -> dict[str, float]:
    """Train on freshly generated shapes every step, each example with a random prompt mode.

    AdamW (weight decay 0.01) with linear warmup and cosine decay, gradient clipping at 1.
    """
    from optkit.zoo.data import shapes_with_masks

    if settings.steps < 1 or settings.batch_size < 1 or settings.lr <= 0:
        raise ConfigError(f"steps, batch_size and lr must be positive, got {settings}")
    cfg: EfficientSAMConfig = model.config  # type: ignore[assignment]
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    warmup = max(1, settings.steps // 50)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, settings.steps - warmup))) * 0.95 + 0.05

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    start = time.perf_counter()
    ema = None
    for step in range(settings.steps):
        images, masks, points, boxes = shapes_with_masks(
            settings.batch_size,
            cfg.resolution,
            seed=settings.seed * 1_000_000 + step + 1,
            distractors=DISTRACTORS,
        )
        mode = torch.randint(0, len(PROMPT_MODES), (settings.batch_size,), generator=gen)
        logits, iou_pred = model(images, *make_prompts(points, boxes, mode))
        loss = segmentation_loss(logits[:, 0], iou_pred[:, 0], masks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if settings.progress:
            settings.progress(step + 1, settings.steps, ema)
    model.eval()
    return {
        "final_loss": float(ema or 0.0),
        "seconds": time.perf_counter() - start,
        "steps": float(settings.steps),
    }


@torch.no_grad()
def evaluate(model: nn.Module, settings: EvalSettings) -> dict[str, float]:
    """mIoU on `num_samples` held-out shapes (seed TEST_SEED + seed) for each prompt mode.

    Returns miou_box, miou_point, miou_box_point and iou_pred_error (mean absolute error of the
    IoU head against the true IoU, box prompts).
    """
    from optkit.zoo.data import shapes_with_masks

    cfg: EfficientSAMConfig = model.config  # type: ignore[assignment]
    model.eval()
    images, masks, points, boxes = shapes_with_masks(
        settings.num_samples, cfg.resolution, seed=TEST_SEED + settings.seed, distractors=DISTRACTORS
    )
    figures: dict[str, float] = {}
    for mode in PROMPT_MODES:
        logits, ious = [], []
        for s in range(0, settings.num_samples, settings.batch_size):
            sl = slice(s, s + settings.batch_size)
            out, iou = model(images[sl], *make_prompts(points[sl], boxes[sl], mode))
            logits.append(out[:, 0])
            ious.append(iou[:, 0])
        pred = torch.cat(logits)  # (N, R, R)
        figures[f"miou_{mode.replace('+', '_')}"] = miou(pred, masks)
        if mode == "box":
            figures["iou_pred_error"] = float((torch.cat(ious) - mask_iou(pred, masks)).abs().mean())
    return figures


register_model(
    ZooModel(
        name="efficientsam",
        paper=PAPER,
        task="segmentation",
        configs={"tiny": EfficientSAMConfig.tiny(), "small": EfficientSAMConfig.small()},
        build=EfficientSAM,
        example_inputs=example_inputs,
        train=train,
        evaluate=evaluate,
        train_defaults=TrainSettings(steps=2500, batch_size=32),  # the shipped checkpoint's recipe
        extra={"data": "shapes_with_masks", "prompt_modes": PROMPT_MODES},
    )
)
