"""textlm: a Llama-style byte-level language model, trained on the Python reference manual.

Paper: Touvron et al., "LLaMA: Open and Efficient Foundation Language Models" (2023): pre-norm
decoder blocks with RMSNorm, rotary position embeddings (RoPE, Su et al., 2021) and a SwiGLU
MLP (Shazeer, 2020), causal self-attention, no biases. It is the zoo's large-language-model
stand-in: what `ptq` does to a decoder's activations (per-token scales, SmoothQuant, GPTQ) is
measured on it against ONNX Runtime's and torchao's dynamic int8 paths
(`benchmarks/bench_quant_llm.py`).

`forward(input_ids (B, T) int64) -> logits (B, T, 256)`. Tokens are UTF-8 bytes (vocabulary
256, no tokenizer to ship), read from `optkit.zoo.data.reference_text` (the reference manual's
topics as pydoc ships them with CPython: ~420 KB train, 45 KB held-out test). The metric is
perplexity per byte on the test split (and bits per byte = log2 of it).

Deviations and choices:
- Byte tokens instead of a BPE vocabulary, and a 128-byte context: the model has to be trained
  here, on 2 CPU cores, from text that ships offline.
- Separate input embedding and output head (not tied), as Llama has them.
- Multi-head attention (no grouped-query attention) through one fused causal
  `scaled_dot_product_attention`.
- The Workload calibrates on held-in training windows (`CALIBRATION_BATCHES` batches of
  `CALIBRATION_ROWS` x 128 bytes) and measures quality as perplexity; its figures are on
  calibration text, so the benchmark measures held-out perplexity itself.

Shipped checkpoint `optkit/zoo/checkpoints/textlm_tiny.safetensors` (see docs/zoo.md for its
recipe and figures): `OMP_NUM_THREADS=2 optkit zoo train textlm -o textlm_tiny.safetensors`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from optkit.errors import ConfigError
from optkit.zoo.data import reference_text
from optkit.zoo.registry import EvalSettings, TrainSettings, ZooModel, register_model
from optkit.zoo.training import run_steps

PAPER = "LLaMA: Open and Efficient Foundation Language Models (Touvron et al., 2023)"
VOCAB = 256  # UTF-8 bytes
CALIBRATION_BATCHES = 8
CALIBRATION_ROWS = 8
CALIBRATION_SEED = 0


@dataclass(frozen=True)
class TextLMConfig:
    dim: int = 192
    depth: int = 4
    heads: int = 6
    hidden: int = 512  # SwiGLU width
    context: int = 128  # bytes per window

    @classmethod
    def tiny(cls) -> TextLMConfig:
        return cls()

    @classmethod
    def small(cls) -> TextLMConfig:
        return cls(dim=512, depth=8, heads=8, hidden=1408, context=256)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotary_tables(context: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of RoPE's angles, each (context, head_dim)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)  # (Dh/2,)
    angles = torch.arange(context).float()[:, None] * inv_freq  # (T, Dh/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, Dh)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: TextLMConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.dim // cfg.heads
        self.q_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.o_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = self.k_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin  # cos, sin (T, Dh) broadcast over (B, H)
        k = k * cos + rotate_half(k) * sin
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, Dh)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, cfg: TextLMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.hidden, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.hidden, bias=False)
        self.down_proj = nn.Linear(cfg.hidden, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: TextLMConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class TextLM(nn.Module):
    """input_ids (B, T) int64, T <= context -> next-byte logits (B, T, 256)."""

    def __init__(self, cfg: TextLMConfig) -> None:
        super().__init__()
        if cfg.dim % cfg.heads or (cfg.dim // cfg.heads) % 2:
            raise ConfigError(f"dim {cfg.dim} must split into {cfg.heads} heads of even width")
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(VOCAB, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.dim)
        self.lm_head = nn.Linear(cfg.dim, VOCAB, bias=False)
        self.rope_cos: torch.Tensor
        self.rope_sin: torch.Tensor
        cos, sin = rotary_tables(cfg.context, cfg.dim // cfg.heads)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(_init)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        x = self.embed_tokens(input_ids)  # (B, T, D)
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]  # (T, Dh)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))  # (B, T, 256)


def _init(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)


def build(cfg: TextLMConfig) -> TextLM:
    return TextLM(cfg)


def windows(text: torch.Tensor, rows: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """`rows` random windows of `length` bytes from `text` (1-D), (rows, length) int64."""
    if text.numel() <= length:
        raise ConfigError(f"text of {text.numel()} bytes is too short for windows of {length}")
    starts = torch.randint(0, text.numel() - length, (rows,), generator=gen)
    return torch.stack([text[s : s + length] for s in starts.tolist()])


def example_inputs(model: nn.Module, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """`batch` windows of training text, one context long."""
    context = model.cfg.context if isinstance(model, TextLM) else TextLMConfig().context
    return (windows(reference_text("train"), batch, context, torch.Generator().manual_seed(seed)),)


def calibration_data(model: nn.Module) -> tuple[tuple[torch.Tensor, ...], ...]:
    """The Workload's calibration batches: fixed windows of training text."""
    context = model.cfg.context if isinstance(model, TextLM) else TextLMConfig().context
    text, gen = reference_text("train"), torch.Generator().manual_seed(CALIBRATION_SEED)
    return tuple((windows(text, CALIBRATION_ROWS, context, gen),) for _ in range(CALIBRATION_BATCHES))


def train(model: nn.Module, settings: TrainSettings) -> dict[str, float]:
    """Next-byte cross-entropy on random training windows; AdamW, warm-up then cosine decay."""
    if not isinstance(model, TextLM):
        raise ConfigError(f"textlm trains a TextLM, got {type(model).__name__}")
    if settings.steps < 1 or settings.batch_size < 1 or settings.lr <= 0:
        raise ConfigError(f"steps, batch_size and lr must be positive, got {settings}")
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    text = reference_text("train")
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    rest = [p for n, p in model.named_parameters() if p.dim() != 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=settings.lr,
        betas=(0.9, 0.95),
    )
    warmup = max(1, settings.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, settings.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    context = model.cfg.context

    def loss_at(step: int) -> torch.Tensor:
        chunk = windows(text, settings.batch_size, context + 1, gen)  # (B, T + 1)
        logits = model(chunk[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten())

    return run_steps(model, opt, sched, loss_at, settings)


def scoring_windows(text: torch.Tensor, context: int, windows_max: int, multiple_of: int = 1) -> torch.Tensor:
    """Consecutive, non-overlapping windows of `context + 1` bytes of `text`, (N, context + 1):
    at most `windows_max`, N a multiple of `multiple_of` (for graphs with a static batch)."""
    n = min(windows_max, (text.numel() - 1) // context) // multiple_of * multiple_of
    if n < 1:
        raise ConfigError(f"text of {text.numel()} bytes holds no window of {context + 1}")
    return torch.stack([text[i * context : i * context + context + 1] for i in range(n)])


def windows_perplexity(
    logits_of: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, batch_size: int
) -> float:
    """Perplexity per byte over `rows` (N, T + 1): each row's last T bytes scored from the ones
    before by `logits_of(ids (B, T)) -> logits (B, T, 256)` (a model, a session, an artifact)."""
    total = 0.0
    with torch.no_grad():
        for part in rows.split(batch_size):
            logits = logits_of(part[:, :-1]).float()
            total += float(F.cross_entropy(logits.flatten(0, 1), part[:, 1:].flatten(), reduction="sum"))
    return math.exp(total / (rows.shape[0] * (rows.shape[1] - 1)))


def perplexity(
    model: nn.Module, text: torch.Tensor, context: int, windows_max: int, batch_size: int
) -> float:
    """Perplexity per byte of `model` on up to `windows_max` `scoring_windows` of `text`."""
    return windows_perplexity(model, scoring_windows(text, context, windows_max), batch_size)


def evaluate(model: nn.Module, settings: EvalSettings) -> dict[str, float]:
    """Perplexity and bits per byte on the held-out test text (at most `num_samples` windows)."""
    context = model.cfg.context if isinstance(model, TextLM) else TextLMConfig().context
    model.eval()
    ppl = perplexity(model, reference_text("test"), context, settings.num_samples, settings.batch_size)
    return {"perplexity": ppl, "bits_per_byte": math.log2(ppl)}


register_model(
    ZooModel(
        name="textlm",
        paper=PAPER,
        task="language-model",
        configs={"tiny": TextLMConfig.tiny(), "small": TextLMConfig.small()},
        build=build,
        example_inputs=example_inputs,
        train=train,
        evaluate=evaluate,
        metric="perplexity",
        calibration=calibration_data,
        train_defaults=TrainSettings(steps=1500, batch_size=32, lr=2e-3),
    )
)
