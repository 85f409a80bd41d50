"""Fuzzed graphs: small random models pushed through capture, passes, ONNX Runtime and TVM.

A `FuzzSpec` says which layers a model stacks (linear, conv stem, embedding, attention with and
without masks, norms, activations, residual adds, reshapes and slicing), its sizes and dtype;
`build_model` turns it into a module and example inputs, `check_graph` runs one model through
the stages and says how it ended:

- `agreed`: every stage ran and its outputs agree with eager PyTorch (the pass's own tolerance,
  checked by the PassManager; ONNX Runtime and TVM against the optimized eager model);
- `clean_error`: a stage refused the model with an `OptkitError` (its message names the op);
- `crash`: any other exception, the failure optkit must not have.

`benchmarks/bench_reliability.py` runs a few hundred in worker processes (a native crash or a
hang there is caught and counted); the suite runs a small seeded subset through hypothesis.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from optkit.errors import OptkitError

LAYERS = (
    "linear",
    "relu",
    "gelu",
    "silu",
    "tanh",
    "layernorm",
    "rmsnorm",
    "attention",
    "attention_mask",
    "attention_causal",
    "attention_manual",
    "residual",
    "reshape_heads",
    "slice_tokens",
    "slice_features",
    "softmax",
)
STEMS = ("linear", "conv", "embedding")
DTYPES = ("float32", "float16")
AGREE_SQNR_DB = 30.0  # ONNX Runtime / TVM against the optimized eager model


@dataclass(frozen=True)
class FuzzSpec:
    """One random model: a stem, a stack of layers, sizes, a dtype and a weight seed."""

    stem: str
    layers: tuple[str, ...]
    batch: int = 2
    tokens: int = 8
    dim: int = 16
    heads: int = 2
    dtype: str = "float32"
    seed: int = 0

    def describe(self) -> str:
        return f"{self.stem}>{'>'.join(self.layers)} b{self.batch} t{self.tokens} d{self.dim} {self.dtype}"


def random_spec(rng: np.random.Generator) -> FuzzSpec:
    """A spec drawn from `rng` (the benchmark's source; the suite draws through hypothesis)."""
    heads = int(rng.choice([1, 2, 4]))
    return FuzzSpec(
        stem=str(rng.choice(STEMS)),
        layers=tuple(str(x) for x in rng.choice(LAYERS, size=int(rng.integers(1, 7)))),
        batch=int(rng.integers(1, 4)),
        tokens=int(rng.choice([4, 6, 8, 16])),
        dim=heads * int(rng.choice([4, 8, 12])),
        heads=heads,
        dtype=str(rng.choice(DTYPES, p=[0.85, 0.15])),
        seed=int(rng.integers(0, 2**31)),
    )


def fuzz_specs() -> Any:
    """A hypothesis strategy of `FuzzSpec` (hypothesis is imported only here)."""
    from hypothesis import strategies as st

    @st.composite
    def specs(draw: Any) -> FuzzSpec:
        heads = draw(st.sampled_from([1, 2, 4]))
        return FuzzSpec(
            stem=draw(st.sampled_from(STEMS)),
            layers=tuple(draw(st.lists(st.sampled_from(LAYERS), min_size=1, max_size=5))),
            batch=draw(st.integers(1, 3)),
            tokens=draw(st.sampled_from([4, 6, 8])),
            dim=heads * draw(st.sampled_from([4, 8])),
            heads=heads,
            dtype=draw(st.sampled_from(["float32", "float32", "float32", "float16"])),
            seed=draw(st.integers(0, 2**16)),
        )

    return specs()


class _Layer(nn.Module):
    """One fuzzed layer on a (B, T, D) stream; `kind` picks what it does."""

    def __init__(self, kind: str, dim: int, heads: int, tokens: int) -> None:
        super().__init__()
        self.kind, self.heads, self.tokens = kind, heads, tokens
        if kind in ("linear", "residual"):
            self.fc = nn.Linear(dim, dim)
        elif kind == "layernorm":
            self.norm = nn.LayerNorm(dim)
        elif kind == "rmsnorm":
            self.weight = nn.Parameter(torch.ones(dim))
        elif kind.startswith("attention"):
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        elif kind == "slice_features":
            self.fc = nn.Linear(dim // 2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kind
        if k == "linear":
            return self.fc(x)
        if k == "residual":
            return x + F.gelu(self.fc(x))
        if k in ("relu", "gelu", "silu", "tanh"):
            return getattr(torch, k)(x) if k in ("relu", "tanh") else getattr(F, k)(x)
        if k == "softmax":
            return x.softmax(-1)
        if k == "layernorm":
            return self.norm(x)
        if k == "rmsnorm":
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight
        if k.startswith("attention"):
            return x + self._attention(x)
        if k == "reshape_heads":
            b, t, d = x.shape
            y = x.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)  # (B, H, T, Dh)
            return y.transpose(1, 2).reshape(b, t, d) * 0.5 + x
        if k == "slice_tokens":
            half = x[:, : max(1, x.shape[1] // 2)]  # (B, T/2, D)
            return torch.cat([half, x[:, half.shape[1] :]], dim=1) + x[:, :1]
        if k == "slice_features":
            return self.fc(x[..., : x.shape[-1] // 2])
        raise AssertionError(k)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads
        q, key, v = self.qkv(x).reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)  # (B, H, T, Dh)
        if self.kind == "attention_manual":
            scores = q @ key.transpose(-2, -1) / (d // h) ** 0.5  # (B, H, T, T)
            keep = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            out = scores.masked_fill(~keep, float("-inf")).softmax(-1) @ v
        elif self.kind == "attention_mask":
            keep = torch.arange(t, device=x.device) < max(1, t - 1)  # the last token is padding
            out = F.scaled_dot_product_attention(q, key, v, attn_mask=keep[None, None, None, :])
        else:
            out = F.scaled_dot_product_attention(q, key, v, is_causal=self.kind == "attention_causal")
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class FuzzModel(nn.Module):
    """A stem to (B, T, D), the fuzzed layers, and a linear head."""

    def __init__(self, spec: FuzzSpec) -> None:
        super().__init__()
        self.stem_kind = spec.stem
        d = spec.dim
        if spec.stem == "linear":
            self.stem: nn.Module = nn.Linear(12, d)
        elif spec.stem == "conv":
            self.stem = nn.Conv2d(3, d, 3, padding=1)
        else:
            self.stem = nn.Embedding(50, d)
        self.layers = nn.ModuleList(_Layer(k, d, spec.heads, spec.tokens) for k in spec.layers)
        self.head = nn.Linear(d, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        if self.stem_kind == "conv":
            y = y.flatten(2).transpose(1, 2)  # (B, H*W, D)
        for layer in self.layers:
            y = layer(y)
        return self.head(y)


def build_model(spec: FuzzSpec) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The module of `spec` (seeded weights, eval mode) and example inputs for it."""
    gen = torch.Generator().manual_seed(spec.seed)
    torch.manual_seed(spec.seed)
    model = FuzzModel(spec).eval()
    dtype = getattr(torch, spec.dtype)
    if spec.stem == "embedding":
        x = torch.randint(0, 50, (spec.batch, spec.tokens), generator=gen)
    elif spec.stem == "conv":
        side = max(2, int(spec.tokens**0.5))
        x = torch.randn(spec.batch, 3, side, spec.tokens // side, generator=gen).to(dtype)
    else:
        x = torch.randn(spec.batch, spec.tokens, 12, generator=gen).to(dtype)
    return model.to(dtype), (x,)


@dataclass
class FuzzOutcome:
    """How one graph ended: `agreed`, `clean_error` or `crash`, at which stage, and why."""

    spec: FuzzSpec
    status: str
    stage: str = ""
    message: str = ""
    figures: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.describe(),
            "status": self.status,
            "stage": self.stage,
            "message": self.message,
            **self.figures,
        }


def check_graph(
    spec: FuzzSpec,
    *,
    passes: tuple[str, ...] = ("ptq",),
    onnx: bool = True,
    tvm: bool = False,
    on_stage: Callable[[str], None] | None = None,
) -> FuzzOutcome:
    """Run `spec`'s model through capture, `passes`, ONNX Runtime and (with `tvm`) TVM.

    `on_stage(name)` is called as each stage starts: a supervisor that sees the process die or
    hang knows where.
    """
    tell = on_stage or (lambda _stage: None)
    from optkit.api import optimize
    from optkit.ir.capture import capture
    from optkit.ir.onnx_io import export_onnx, flat_outputs, run_onnx

    stage = "build"
    figures: dict[str, float] = {}
    try:
        tell(stage)
        model, inputs = build_model(spec)
        stage = "capture"
        tell(stage)
        program = capture(model, inputs, name="fuzz")
        stage = "passes"
        tell(stage)
        optimized = optimize(program, list(passes)).program
        expected = [t.detach().float().numpy() for t in flat_outputs(optimized.run())]
        if onnx:
            stage = "onnx"
            tell(stage)
            import tempfile
            from pathlib import Path

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "fuzz.onnx"
                export_onnx(optimized, path, check=False)
                got = run_onnx(path, optimized.example_inputs)
            figures["onnx_sqnr_db"] = _agreement(expected, got, "ONNX Runtime")
        if tvm:
            stage = "tvm"
            tell(stage)
            from optkit.backends import lower

            artifact = lower(optimized, target="cpu")
            got = artifact.run(*(t.detach().numpy() for t in optimized.example_inputs))
            figures["tvm_sqnr_db"] = _agreement(expected, got, "TVM")
    except OptkitError as err:
        return FuzzOutcome(spec, "clean_error", stage, str(err).splitlines()[0][:300], figures)
    except Exception as err:
        where = traceback.extract_tb(err.__traceback__)[-1]
        message = f"{type(err).__name__}: {str(err)[:200]} ({where.filename}:{where.lineno})"
        return FuzzOutcome(spec, "crash", stage, message, figures)
    return FuzzOutcome(spec, "agreed", "done", "", figures)


def _agreement(expected: list[np.ndarray], got: list[Any], runtime: str) -> float:
    if len(got) != len(expected):
        raise OptkitError(f"{runtime} returned {len(got)} outputs, eager {len(expected)}")
    from optkit.metrics import sqnr_db

    worst = min(sqnr_db(e, np.asarray(g, dtype=np.float32)) for e, g in zip(expected, got, strict=True))
    if worst < AGREE_SQNR_DB:
        raise AssertionError(f"{runtime} disagrees with eager: {worst:.1f} dB < {AGREE_SQNR_DB} dB")
    return float(worst)
