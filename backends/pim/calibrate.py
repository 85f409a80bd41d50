"""Calibrating the host side of the PIM cost model on this machine.

Small one-op programs (a linear layer, an embedding lookup, an elementwise op, a pooling sum)
at several sizes are lowered through TVM for the CPU and timed; per op kind a line
microseconds = a + b * MFLOP + c * MB is fitted (non-negative least squares on relative
error), and its leave-one-out mean absolute percentage error is recorded. The random-row read
rate of a table larger than the last-level cache is measured the same way, with the table as a
runtime input so that it is not compiled into the library.

The fitted `HostModel` is cached per CPU and TVM version (`cache_path`), so the `pim` pass pays
for calibration once per machine. `QUICK` sizes serve the test suite; `FULL` the benchmark.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from optkit.backends.pim.cost import SCALED, HostModel, scale_group
from optkit.backends.pim.ops import program_ops
from torch import nn

from optkit.errors import BackendError

log = logging.getLogger(__name__)

Sizes = dict[str, list[tuple[int, ...]]]
QUICK: Sizes = {
    "gemm": [(2, 22, 64), (2, 64, 16), (8, 256, 256), (32, 512, 512), (64, 1024, 512)],
    "elementwise": [(128,), (4096,), (65536,), (1 << 20,)],
    "reduction": [(2, 8, 16), (64, 16, 64), (256, 32, 64), (1024, 64, 64)],
    "gather": [(2693, 16, 16), (4096, 32, 256), (16384, 64, 2048), (65536, 64, 16384)],
}
FULL: Sizes = {
    "gemm": [
        (2, 22, 64),
        (2, 64, 16),
        (2, 544, 16),
        (1, 512, 512),
        (8, 256, 256),
        (32, 512, 512),
        (64, 1024, 512),
        (256, 512, 256),
        (128, 1024, 1024),
        (32, 2048, 512),
        (256, 256, 1024),
        (512, 512, 512),
    ],
    "elementwise": [(128,), (1024,), (4096,), (16384,), (65536,), (262144,), (1 << 20,), (1 << 22,)],
    "reduction": [
        (2, 8, 16),
        (16, 8, 64),
        (64, 16, 64),
        (256, 32, 64),
        (512, 32, 64),
        (1024, 80, 64),
        (256, 80, 32),
    ],
    "gather": [
        (2693, 16, 16),
        (4096, 32, 256),
        (4096, 32, 4096),
        (16384, 64, 2048),
        (65536, 64, 16384),
        (100000, 16, 65536),
    ],
}
BIG_TABLE_QUICK = (1 << 20, 16, 1 << 14)  # rows, dim, lookups: 64 MiB
BIG_TABLE_FULL = (1 << 23, 16, 1 << 16)  # 512 MiB: beyond a 260 MiB last-level cache


class _Linear(nn.Module):
    def __init__(self, k: int, n: int) -> None:
        super().__init__()
        self.fc = nn.Linear(k, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class _Reshape(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1)


class _Relu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


class _Pool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=1)


class _Lookup(nn.Module):
    def __init__(self, rows: int, dim: int) -> None:
        super().__init__()
        self.table = nn.Embedding(rows, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids)


class _TableInput(nn.Module):
    def forward(self, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, table)


def _kernel(
    kind: str, size: tuple[int, ...], gen: torch.Generator
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    if kind == "gemm":
        m, k, n = size
        return _Linear(k, n), (torch.randn(m, k, generator=gen),)
    if kind == "elementwise":
        return _Relu(), (torch.randn(size[0], generator=gen),)
    if kind == "reduction":
        return _Pool(), (torch.randn(*size, generator=gen),)
    rows, dim, lookups = size
    return _Lookup(rows, dim), (zipf_ids(rows, lookups, gen),)


def zipf_ids(rows: int, count: int, gen: torch.Generator, s: float = 1.05) -> torch.Tensor:
    """`count` ids in [0, rows) with Zipf(s) popularity, the hot ids scattered over the table."""
    ranks = torch.arange(1, rows + 1, dtype=torch.float64)
    weights = ranks**-s
    draws = torch.multinomial(weights / weights.sum(), count, replacement=True, generator=gen)
    perm = torch.randperm(rows, generator=gen)
    return perm[draws]


def _measure(model: nn.Module, inputs: tuple[torch.Tensor, ...], repeats: int) -> tuple[float, Any]:
    from optkit.backends.lowering import lower

    from optkit.ir.capture import capture

    program = capture(model.eval(), inputs, name="pim-calibration")
    artifact = lower(program, "cpu")
    ms = artifact.latency_ms(*inputs, warmup=3, repeats=repeats)["median"]
    return ms * 1e3, program


def calibrate(
    sizes: Sizes | None = None,
    big_table: tuple[int, int, int] = BIG_TABLE_QUICK,
    repeats: int = 20,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> HostModel:
    """Measure TVM CPU kernels of every op kind on this machine and fit the `HostModel`."""
    sizes = sizes or QUICK
    say = progress or (lambda _m: None)
    gen = torch.Generator().manual_seed(seed)
    samples: dict[str, list[tuple[float, float, float]]] = {}
    # The cost of calling a compiled library at all is paid once per host segment, not per op.
    call_us, _ = _measure(_Reshape(), (torch.randn(4, 4, generator=gen),), repeats)
    for kind, shapes in sizes.items():
        for size in shapes:
            say(f"calibrate host: {kind} {size}")
            model, inputs = _kernel(kind, size, gen)
            us, program = _measure(model, inputs, repeats)
            op = max((o for o in program_ops(program) if o.kind == kind), key=lambda o: o.flops + o.in_bytes)
            moved = (
                op.in_bytes
                + op.out_bytes
                + (op.lookups * op.row_bytes if kind == "gather" else op.weight_bytes)
            )
            samples.setdefault(kind, []).append((op.flops / 1e6, moved / 1e6, max(us - call_us, 0.05)))
    l2 = cache_bytes(2)
    coef, mape = {}, {}
    for kind, rows in samples.items():
        coef[kind] = _fit(rows, l2)
        mape[kind] = _loo_mape(rows, l2)
    rows_, dim, lookups = big_table
    say(f"calibrate host: random rows of a {rows_ * dim * 4 >> 20} MiB table")
    table = torch.randn(rows_, dim, generator=gen)
    ids = zipf_ids(rows_, lookups, gen, s=0.0)  # uniform: every read misses the cache
    us, _ = _measure(_TableInput(), (table, ids), repeats)
    gather_gbps = lookups * max(dim * 4, 64) / (max(us - call_us, 0.05) * 1e3)
    model = HostModel(
        coef=coef,
        gather_gbps=gather_gbps,
        llc_bytes=llc_bytes(),
        l2_bytes=l2,
        call_us=call_us,
        cpu=cpu_key(),
        mape=mape,
    )
    fit_whole_models(model, whole_model_set(len(sizes.get("gemm", ())) > 6), repeats, seed, say)
    log.info("host model: %s", model.to_dict())
    return model


class _MiniDLRM(nn.Module):
    """A small recommender: embedding lookups pooled by sum, a bottom MLP, DLRM's pairwise dot
    interaction (batched matmul + gather of the upper triangle), a top MLP."""

    def __init__(self, tables: int, rows: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(rows, dim) for _ in range(tables))
        self.bottom = nn.Sequential(nn.Linear(13, hidden), nn.ReLU(), nn.Linear(hidden, dim), nn.ReLU())
        features = tables + 1
        pairs = torch.triu_indices(features, features, offset=1)
        self.pairs: torch.Tensor
        self.register_buffer("pairs", pairs[0] * features + pairs[1], persistent=False)
        width = dim + features * (features - 1) // 2
        self.top = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)  # (B, D)
        tokens = torch.stack([x, *(t(ids[:, i]).sum(dim=1) for i, t in enumerate(self.tables))], dim=1)
        inter = torch.bmm(tokens, tokens.transpose(1, 2)).flatten(1)[:, self.pairs]  # (B, pairs)
        return self.top(torch.cat([x, inter], dim=1))


def whole_model_set(full: bool) -> list[tuple[int, int, int, int, int, int]]:
    """(tables, rows, dim, hidden, batch, pooling) of the small recommenders the per-kind scales fit."""
    quick = [
        (4, 1000, 16, 64, 2, 1),
        (4, 1000, 16, 64, 32, 4),
        (8, 4000, 32, 128, 8, 2),
        (8, 4000, 32, 256, 64, 1),
        (2, 20000, 64, 512, 16, 8),
        (6, 2000, 16, 32, 48, 2),
    ]
    more = [
        (12, 1000, 16, 128, 4, 1),
        (3, 50000, 64, 256, 32, 4),
        (16, 500, 8, 64, 16, 1),
        (4, 8000, 32, 1024, 8, 1),
    ]
    return quick + more if full else quick


def _kind_sums(model: HostModel, program: Any) -> list[float]:
    sums = dict.fromkeys(SCALED, 0.0)
    for op in program_ops(program):
        sums[scale_group(op.kind)] += model.raw_latency_us(op)
    return [sums[g] for g in SCALED]


def fit_whole_models(
    model: HostModel,
    configs: list[tuple[int, int, int, int, int, int]],
    repeats: int,
    seed: int,
    say: Callable[[str], None],
) -> None:
    """Fit the scale (one for every op group, `SCALED`) that makes the sum over a compiled model's
    ops match its measured latency: TVM fuses elementwise ops into their producers and packs
    weights, which one-op kernels do not show. Sets `model.scale` and `model.mape["whole-model"]`
    (leave one out)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for tables, n, dim, hidden, batch, pooling in configs:
        say(f"calibrate host: recommender {tables}x{n}x{dim}, hidden {hidden}, batch {batch}")
        net = _MiniDLRM(tables, n, dim, hidden)
        inputs = (
            torch.randn(batch, 13, generator=gen),
            torch.randint(0, n, (batch, tables, pooling), generator=gen),
        )
        us, program = _measure(net, inputs, repeats)
        rows.append((_kind_sums(model, program), max(us - model.call_us, 0.05)))
    model.scale = _fit_scales(rows)
    errors = []
    for i, (x, t) in enumerate(rows):
        scale = _fit_scales(rows[:i] + rows[i + 1 :])
        errors.append(abs(float(np.dot(x, [scale[g] for g in SCALED])) - t) / t)
    model.mape["whole-model"] = 100.0 * float(np.mean(errors))


def _fit_scales(rows: list[tuple[list[float], float]]) -> dict[str, float]:
    # One factor for every group: per-group factors are collinear on recommenders (every model has
    # gathers, GEMMs and memory ops in similar proportions) and the fit degenerates to zeros.
    totals = np.array([sum(x) for x, _ in rows])
    y = np.array([t for _, t in rows])
    factor = float(np.median(y / np.maximum(totals, 1e-9)))  # robust to one noisy timing
    return dict.fromkeys(SCALED, factor)


def _fit(rows: list[tuple[float, float, float]], l2: int) -> tuple[float, float, float, float]:
    from scipy.optimize import nnls

    a = np.array([features(f, m, l2) for f, m, _ in rows])
    y = np.array([t for _, _, t in rows])
    w = 1.0 / y  # fit relative error: small and large kernels count alike
    x, _ = nnls(a * w[:, None], y * w)
    return float(x[0]), float(x[1]), float(x[2]), float(x[3])


def features(mflop: float, mb: float, l2: int) -> list[float]:
    """Regressors of the host model: 1, MFLOP, MB moved within L2, MB moved beyond it."""
    inside = min(mb, l2 / 1e6)
    return [1.0, mflop, inside, mb - inside]


def _loo_mape(rows: list[tuple[float, float, float]], l2: int) -> float:
    if len(rows) < 4:
        return float("nan")
    errs = []
    for i, (f, m, t) in enumerate(rows):
        coef = _fit(rows[:i] + rows[i + 1 :], l2)
        errs.append(abs(float(np.dot(coef, features(f, m, l2))) - t) / t)
    return 100.0 * float(np.mean(errs))


def cache_bytes(level: int) -> int:
    """The size of this machine's level-`level` cache (sysfs; the largest unified one of that level)."""
    best = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (
                int((index / "level").read_text()) != level
                or (index / "type").read_text().strip() == "Instruction"
            ):
                continue
            text = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            best = max(best, int(text.rstrip("KMG")) * scale)
        except ValueError:
            continue
    return best or {1: 32 << 10, 2: 1 << 20, 3: 32 << 20}.get(level, 32 << 20)


def llc_bytes() -> int:
    """The last-level cache of this machine (sysfs), or 32 MiB when it cannot be read."""
    return max(cache_bytes(3), cache_bytes(2))


def cpu_key() -> str:
    """This machine's CPU model name (the host model is kept per CPU)."""
    from optkit.backends.targets import cpu_model_name

    return cpu_model_name() or "unknown cpu"


def cache_path(quick: bool) -> Path:
    """Where the host model of this CPU and TVM version is kept."""
    import tvm

    root = Path(os.environ.get("OPTKIT_CACHE_DIR") or Path.home() / ".cache" / "optkit")
    digest = hashlib.sha256(f"{cpu_key()}|{tvm.__version__}|{llc_bytes()}".encode()).hexdigest()[:12]
    return root / "pim" / f"host-{'quick' if quick else 'full'}-{digest}.json"


def host_model(quick: bool = True, progress: Callable[[str], None] | None = None) -> HostModel:
    """The cached host model of this machine, calibrated first if there is none."""
    path = cache_path(quick)
    if path.exists():
        import json

        try:
            return HostModel.from_dict(json.loads(path.read_text()))
        except (ValueError, BackendError) as err:
            log.warning("ignoring unreadable host model %s: %s", path, err)
        except Exception as err:  # a malformed cache is recalibrated, not fatal
            log.warning("ignoring unreadable host model %s: %s", path, err)
    model = calibrate(
        QUICK if quick else FULL, BIG_TABLE_QUICK if quick else BIG_TABLE_FULL, progress=progress
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model
