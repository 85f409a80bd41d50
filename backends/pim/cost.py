"""The analytical cost model: latency and energy of each op on the host and on a PIM device,
and of moving a tensor between them.

PIM side (per op kind, with the preset's figures):
- `gather`: the table's rows are spread over every unit (sharded where a unit owns its memory,
  `unit_capacity_mib`), so lookups run bank- or rank-parallel at `unit_gbps` each; a
  memory-side cache (`cache_kib`, RecNMP's RankCache) serves the hottest rows of a Zipf id
  distribution. Pooling that follows (`reduction`) runs beside the rows, so only pooled vectors
  cross to the host; without a unit-to-unit path (UPMEM) every shard's partial sum does.
- `gemm`: weights live in the units' memory; a weight row is read once per
  `REUSE` activation vectors (HBM-PIM keeps 8 operand registers per unit, Lee et al., ISCA
  2021), compute at `lanes` MACs per cycle; the slower of the two bounds the op.
- `elementwise` / `reduction`: streamed through the units at their bandwidth and width.
Every PIM op also pays `launch_us`. Energy: bits read from the cells x `read_pj_per_bit`,
operations x `alu_pj_per_op`.

Host side: `HostModel`, fitted to TVM CPU kernels measured on this machine (see
`calibrate.py`): per kind, microseconds = a + b * MFLOP + c * MB moved; gathers from tables
larger than the last-level cache pay the measured random-row bandwidth. Host energy: busy time x
`HostSpec.core_watts`, plus DRAM bits x `dram_pj_per_bit` for weights and rows that do not
stay in cache.

Transfers: bytes / (link bandwidth x devices) + 1 us, energy bits x `host_pj_per_bit`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from optkit.backends.pim.ops import PimOp
from optkit.backends.pim.presets import HostSpec, PimPreset

from optkit.errors import ConfigError

REUSE = 8  # activation vectors a PIM unit holds per weight read (HBM-PIM: 8 GRF registers)
TRANSFER_US = 1.0  # fixed cost of one host <-> PIM transfer (optkit's assumption)
ZIPF_S = 1.05  # id skew of the cost workloads (Criteo-like; RecNMP's traces are similarly skewed)
INF = float("inf")


@dataclass(frozen=True)
class Cost:
    """Latency (microseconds) and energy (microjoules) of one op or transfer."""

    us: float
    uj: float

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.us + other.us, self.uj + other.uj)


ZERO = Cost(0.0, 0.0)


@dataclass
class HostModel:
    """Host latency per op kind, fitted to measured TVM CPU kernels (see `calibrate.py`).

    `coef[kind]` multiplies `calibrate.features`: (1, MFLOP, MB moved within L2, MB beyond
    L2), in microseconds; `gather_gbps` is the measured rate of random row reads from a table
    larger than the last-level cache; `llc_bytes` and `l2_bytes` the cache sizes.
    """

    coef: dict[str, tuple[float, float, float, float]]
    gather_gbps: float
    llc_bytes: int
    l2_bytes: int = 1 << 20
    call_us: float = 0.0  # calling a compiled library at all, once per host segment
    scale: dict[str, float] = field(default_factory=dict)  # per op group, fitted on whole models
    cpu: str = ""
    mape: dict[str, float] = field(default_factory=dict)  # fit quality on held-out kernels, %
    spec: HostSpec = field(default_factory=HostSpec)

    def latency_us(self, op: PimOp) -> float:
        """The op's host latency: its kernel fit, scaled by its group's whole-model factor."""
        return self.raw_latency_us(op) * self.scale.get(scale_group(op.kind), 1.0)

    def raw_latency_us(self, op: PimOp) -> float:
        if op.kind == "view":
            return 0.0
        kind = op.kind if op.kind in self.coef else "elementwise"
        moved = op.in_bytes + op.out_bytes + op.weight_bytes
        if op.kind == "gather":
            moved = op.in_bytes + op.out_bytes + op.lookups * op.row_bytes
        t = self._line(kind, op.flops / 1e6, moved / 1e6)
        cache = self.llc_bytes * op.cache_share
        if op.kind == "gather" and op.weight_bytes > cache:  # rows come from DRAM
            miss = 1.0 - zipf_hit_rate(op.rows, int(cache // max(op.row_bytes, 1)))
            t += miss * op.lookups * max(op.row_bytes, 64) / (self.gather_gbps * 1e3)
        return t

    def _line(self, kind: str, mflop: float, mb: float) -> float:
        inside = min(mb, self.l2_bytes / 1e6)
        a, b, c, d = self.coef[kind]
        return a + b * mflop + c * inside + d * (mb - inside)

    def cost(self, op: PimOp) -> Cost:
        us = self.latency_us(op)
        dram = op.lookups * max(op.row_bytes, 64) if op.kind == "gather" else op.weight_bytes
        if op.weight_bytes <= self.llc_bytes * (op.cache_share if op.kind == "gather" else 1.0):
            dram = 0
        uj = us * self.spec.core_watts + dram * 8 * self.spec.dram_pj_per_bit * 1e-6
        return Cost(us, uj)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["coef"] = {k: list(v) for k, v in self.coef.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostModel:
        try:
            return cls(
                coef={
                    k: (float(v[0]), float(v[1]), float(v[2]), float(v[3])) for k, v in data["coef"].items()
                },
                gather_gbps=float(data["gather_gbps"]),
                llc_bytes=int(data["llc_bytes"]),
                l2_bytes=int(data.get("l2_bytes", 1 << 20)),
                call_us=float(data.get("call_us", 0.0)),
                scale={k: float(v) for k, v in data.get("scale", {}).items()},
                cpu=str(data.get("cpu", "")),
                mape={k: float(v) for k, v in data.get("mape", {}).items()},
                spec=HostSpec(**data.get("spec", {})),
            )
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise ConfigError(f"host cost model is malformed: {type(err).__name__}: {err}") from None

    def save(self, path: Path) -> None:
        from optkit.fsutil import atomic_file

        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2))


# Op groups that share one whole-model scale factor (see `calibrate.fit_whole_models`).
SCALED = ("gemm", "gather", "memory")


def scale_group(kind: str) -> str:
    """`gemm`, `gather`, or `memory` for every other kind (elementwise, reduction, layout)."""
    return kind if kind in ("gemm", "gather") else "memory"


def zipf_hit_rate(rows: int, cached_rows: int, s: float = ZIPF_S) -> float:
    """Share of Zipf(s)-distributed lookups over `rows` ids that fall on the `cached_rows` hottest."""
    if rows <= 0 or cached_rows <= 0:
        return 0.0
    if cached_rows >= rows:
        return 1.0
    return _harmonic(cached_rows, s) / _harmonic(rows, s)


def _harmonic(n: int, s: float) -> float:
    # Generalized harmonic number: exact below 10k terms, Euler-Maclaurin beyond.
    if n <= 10_000:
        return sum(k**-s for k in range(1, n + 1))
    head = sum(k**-s for k in range(1, 10_001))
    a, b = 10_000.0, float(n)
    tail = (b ** (1 - s) - a ** (1 - s)) / (1 - s) if s != 1 else math.log(b / a)
    return head + tail + 0.5 * (b**-s - a**-s)


def supported(op: PimOp, preset: PimPreset) -> bool:
    """Whether `preset` can run `op` (views run anywhere; layout and other ops never on PIM)."""
    return op.kind == "view" or op.kind in preset.supports


def pim_cost(op: PimOp, preset: PimPreset) -> Cost:
    """Latency and energy of `op` on `preset`; infinite when the device cannot run it."""
    if op.kind == "view":
        return ZERO
    if not supported(op, preset):
        return Cost(INF, INF)
    units = preset.total_units
    elem = preset.element_bytes
    bw = units * preset.unit_gbps * 1e3  # bytes per microsecond
    ops_per_us = units * preset.lanes * 2 * preset.clock_mhz
    if op.kind == "gather":
        row = op.row_bytes * elem // 4 or 1
        cached = int(preset.cache_kib * 1024 * units // max(row, 1))
        miss = 1.0 - zipf_hit_rate(op.rows, cached) if preset.cache_kib else 1.0
        read = op.lookups * max(row, 32) * miss
        us = read / bw
        read_bits = read * 8
        ops = op.lookups * (op.row_bytes // 4)
    elif op.kind == "gemm":
        weight = op.weight_bytes * elem // 4
        passes = math.ceil(op.batch / REUSE) if weight else 1
        read = weight * passes + op.in_bytes * elem // 4
        us = max(read / bw, op.flops / ops_per_us)
        read_bits = read * 8
        ops = op.flops
    else:
        read = (op.in_bytes + op.out_bytes) * elem // 4
        us = max(read / bw, op.flops / ops_per_us)
        read_bits = read * 8
        ops = op.flops
    uj = (read_bits * preset.read_pj_per_bit + ops * preset.alu_pj_per_op) * 1e-6
    return Cost(us + preset.launch_us, uj)


def transfer_cost(nbytes: int, preset: PimPreset, elem_scale: bool = True) -> Cost:
    """Moving `nbytes` (fp32) between the host and `preset`, in the device's numerics."""
    if nbytes <= 0:
        return ZERO
    moved = nbytes * preset.element_bytes / 4 if elem_scale else nbytes
    us = moved / (preset.link_gbps * preset.devices * 1e3) + TRANSFER_US
    return Cost(us, moved * 8 * preset.host_pj_per_bit * 1e-6)


def partial_sums_bytes(op: PimOp, preset: PimPreset) -> int:
    """Extra bytes a pooled gather sends to the host when units cannot combine partial sums."""
    if op.kind != "gather" or preset.unit_to_unit or not preset.unit_capacity_mib:
        return 0
    shards = max(1, math.ceil(op.weight_bytes / (preset.unit_capacity_mib * 2**20)))
    return op.out_bytes * (min(shards, preset.total_units) - 1)
