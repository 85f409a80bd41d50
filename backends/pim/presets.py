"""PIM device presets: the simulated processing-in-memory devices `--target pim:PRESET` names.

A `PimPreset` holds what the cost model needs: compute units and their clock and width, the
bandwidth a unit sees inside the memory and the bandwidth of the link to the host, capacity,
numerics, the op kinds the device can run, and energy per bit for each stage a bit crosses
between the DRAM cell and the host plus energy per ALU operation. Every figure names its source
next to it; figures that are optkit's own choices (how many devices a system has, launch
overheads no paper states) say so.

Energy per bit per stage comes from the FGDRAM breakdown (O'Connor et al., MICRO 2017) as the
AttAcc simulator configures it (Park et al., ASPLOS 2024, `src/config.py`): cell activate 0.11,
cell read 0.44, column decoder to bank-group mux 1.01, bank-group mux to global IO 1.23, TSV
0.5 and interposer IO 0.3 pJ/bit; ALU 0.32 pJ per operation (AttAcc's `alu`). Off-chip DDR
transfers cost 20 pJ/bit in all (Horowitz, "Computing's energy problem", ISSCC 2014: a 64-bit
DRAM access costs 1.3-2.6 nJ); the part beyond the on-die stages is charged to the DDR IO.

A preset can also come from a TOML file (`pim:path/to/device.toml`) with the same keys; it is
checked for consistency (positive sizes, known numerics and op kinds, peak FLOPs that the units
and clock can deliver).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optkit.errors import ConfigError, UnknownNameError

# Op kinds the cost model knows (see backends/pim/ops.py).
OP_KINDS = ("gather", "gemm", "elementwise", "reduction")
NUMERICS = ("fp32", "fp16", "bf16", "int8")

# FGDRAM per-stage read energy, pJ/bit (O'Connor et al., MICRO 2017, as in AttAcc's config.py).
CELL_ACT = 0.11
CELL_RD = 0.44
COL_TO_BG = 1.01
BG_TO_GIO = 1.23
TSV = 0.5
INTERPOSER_IO = 0.3
ALU_PJ = 0.32  # AttAcc's per-operation ALU energy
DDR_ACCESS = 20.0  # whole off-chip DDR access, pJ/bit (Horowitz, ISSCC 2014: 1.3 nJ / 64 bit)


@dataclass(frozen=True)
class HostSpec:
    """The host side: its DRAM bandwidth and energy, and the power a busy core draws.

    `core_watts`: Intel's Xeon Platinum 8480+ spec sheet gives 350 W TDP for 56 cores, 6.25 W
    a core, charged while the host computes (idle power is charged to neither side).
    """

    dram_gbps: float = 19.2  # one DDR4-2400 channel: 2400 MT/s x 8 bytes (JEDEC DDR4)
    dram_pj_per_bit: float = DDR_ACCESS
    core_watts: float = 350.0 / 56


@dataclass(frozen=True)
class PimPreset:
    """One simulated PIM device (or a system of `devices` identical ones)."""

    name: str
    description: str
    level: str  # where the units sit: bank, rank
    units: int  # compute units in one device
    clock_mhz: float
    lanes: int  # SIMD lanes a unit has; a lane does one multiply-accumulate (2 ops) per cycle
    unit_gbps: float  # bandwidth from a unit's memory to the unit, GB/s
    link_gbps: float  # host <-> device bandwidth of one device, GB/s
    capacity_gib: float  # memory of one device
    numerics: str
    supports: tuple[str, ...]
    read_pj_per_bit: float  # cell -> unit
    host_pj_per_bit: float  # cell or unit -> host (every stage and the IO)
    alu_pj_per_op: float = ALU_PJ
    launch_us: float = 1.0  # per-op command overhead
    devices: int = 1
    unit_capacity_mib: float = 0.0  # memory a unit owns (0: units share the device's memory)
    unit_to_unit: bool = True  # can units combine partial results without the host?
    cache_kib: float = 0.0  # a memory-side cache per unit for hot embedding rows (RecNMP)
    peak_tflops: float = 0.0  # the published peak; checked against units x lanes x clock
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        positive = ("units", "clock_mhz", "lanes", "unit_gbps", "link_gbps", "capacity_gib", "devices")
        for key in positive:
            if not getattr(self, key) > 0:
                raise ConfigError(f"PIM preset {self.name!r}: {key} must be > 0, got {getattr(self, key)!r}")
        if self.numerics not in NUMERICS:
            raise UnknownNameError(f"numerics of PIM preset {self.name!r}", self.numerics, NUMERICS)
        bad = [k for k in self.supports if k not in OP_KINDS]
        if bad or not self.supports:
            raise ConfigError(
                f"PIM preset {self.name!r}: supports must list op kinds from {', '.join(OP_KINDS)}, got {list(self.supports)}"
            )
        if self.peak_tflops:
            modeled = self.unit_tflops * self.units
            if abs(modeled - self.peak_tflops) > 0.25 * self.peak_tflops:
                raise ConfigError(
                    f"PIM preset {self.name!r} is inconsistent: {self.units} units x {self.lanes} lanes x "
                    f"{self.clock_mhz} MHz give {modeled:.3g} TFLOPS, but peak_tflops says {self.peak_tflops}"
                )
        if self.unit_capacity_mib and self.unit_capacity_mib * self.units / 1024 > 1.01 * self.capacity_gib:
            raise ConfigError(
                f"PIM preset {self.name!r} is inconsistent: {self.units} units x {self.unit_capacity_mib} MiB "
                f"exceed capacity_gib {self.capacity_gib}"
            )

    @property
    def unit_tflops(self) -> float:
        """Peak operations per second of one unit, in tera-ops (multiply-accumulate = 2 ops)."""
        return self.lanes * 2 * self.clock_mhz * 1e6 / 1e12

    @property
    def total_units(self) -> int:
        return self.units * self.devices

    @property
    def capacity_bytes(self) -> int:
        return int(self.capacity_gib * self.devices * 2**30)

    @property
    def element_bytes(self) -> int:
        return {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}[self.numerics]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, PimPreset] = {
    "hbm-pim": PimPreset(
        name="hbm-pim",
        description="Samsung HBM-PIM (Aquabolt-XL): an FP16 SIMD unit per 2 banks at 300 MHz",
        level="bank",
        units=128,  # 1.2 TFLOPS / (16 lanes x 2 ops x 300 MHz)
        clock_mhz=300,
        lanes=16,
        unit_gbps=9.6,  # 256 bits a cycle at 300 MHz: 4x the cube's external 307 GB/s over 128 units
        link_gbps=307.2,  # HBM2 2.4 Gbps x 1024 pins
        capacity_gib=6,
        numerics="fp16",
        supports=("gemm", "elementwise", "reduction", "gather"),
        read_pj_per_bit=CELL_ACT + CELL_RD,
        host_pj_per_bit=CELL_ACT + CELL_RD + COL_TO_BG + BG_TO_GIO + TSV + INTERPOSER_IO,
        launch_us=1.0,  # optkit's assumption: a PIM mode switch and command burst per op
        peak_tflops=1.2,
        sources=(
            "Lee et al., Hardware Architecture and Software Stack for PIM Based on Commercial DRAM Technology, ISCA 2021",
            "Kwon et al., A 20nm 6GB Function-In-Memory DRAM, ISSCC 2021 (6 GB cube, 1.2 TFLOPS, 300 MHz units)",
        ),
    ),
    "aim": PimPreset(
        name="aim",
        description="SK hynix GDDR6-AiM: a 1 GHz BF16 MAC unit per bank, 512 GB/s inside a chip",
        level="bank",
        units=32,  # 16 banks x 2 channels
        clock_mhz=1000,
        lanes=16,
        unit_gbps=16.0,  # 512 GB/s internal / 32 banks
        link_gbps=64.0,  # GDDR6 16 Gbps x 32 pins
        capacity_gib=1,  # 8 Gb
        numerics="bf16",
        supports=("gemm", "elementwise", "reduction"),
        read_pj_per_bit=CELL_ACT + CELL_RD,
        host_pj_per_bit=CELL_ACT + CELL_RD + COL_TO_BG + BG_TO_GIO + (DDR_ACCESS - 2.79),
        launch_us=0.5,  # optkit's assumption
        devices=8,  # optkit's choice: an 8-chip card
        peak_tflops=1.0,
        sources=("Lee et al., A 1ynm 1.25V 8Gb 16Gb/s/pin GDDR6-based Accelerator-in-Memory, ISSCC 2022",),
    ),
    "upmem": PimPreset(
        name="upmem",
        description="UPMEM DDR4 PIM: 2,560 in-order 350 MHz DPUs, 64 MB MRAM each, no DPU-to-DPU path",
        level="bank",
        units=2560,
        clock_mhz=350,
        lanes=1,  # a scalar core; int8 multiply-add at best one per cycle (PrIM measures less)
        unit_gbps=0.628,  # MRAM read bandwidth per DPU (Gomez-Luna et al., PrIM, IEEE Access 2022)
        link_gbps=6.68,  # CPU -> DPU parallel transfers, all DPUs (PrIM)
        capacity_gib=160,
        numerics="int8",
        supports=("gather", "gemm", "elementwise", "reduction"),
        read_pj_per_bit=CELL_ACT + CELL_RD,
        host_pj_per_bit=DDR_ACCESS,
        launch_us=20.0,  # optkit's assumption: a DPU program launch and completion poll
        unit_capacity_mib=64,
        unit_to_unit=False,
        sources=(
            "Gomez-Luna et al., Benchmarking a New Paradigm: An Experimental Analysis of a Real PIM Architecture (PrIM), IEEE Access 2022",
            "Devaux, The True Processing In Memory Accelerator, Hot Chips 2019",
        ),
    ),
    "recnmp": PimPreset(
        name="recnmp",
        description="RecNMP-style rank-level near-memory processing: 8 DDR4-2400 ranks, a reduction unit and a 128 KB cache each",
        level="rank",
        units=8,  # 4 DIMMs x 2 ranks on one channel
        clock_mhz=1200,
        lanes=16,  # a 64-byte fp32 adder row per DRAM burst
        unit_gbps=19.2,  # each rank streams at the full DDR4-2400 rate to its own unit
        link_gbps=19.2,  # the shared channel to the host
        capacity_gib=64,  # 8 ranks x 8 GiB (optkit's choice of DIMM size)
        numerics="fp32",
        supports=("gather", "reduction"),  # SparseLengthsSum: lookups and their pooling
        read_pj_per_bit=CELL_ACT + CELL_RD + COL_TO_BG + BG_TO_GIO,
        host_pj_per_bit=DDR_ACCESS,
        launch_us=0.1,  # optkit's assumption: one NMP packet per pooling
        cache_kib=128,
        sources=(
            "Ke et al., RecNMP: Accelerating Personalized Recommendation with Near-Memory Processing, ISCA 2020",
        ),
    ),
}


def resolve_preset(name: str) -> PimPreset:
    """A preset by name (`hbm-pim`, `aim`, `upmem`, `recnmp`) or from a `.toml` file path."""
    if name.endswith(".toml"):
        return load_preset_file(name)
    if name not in PRESETS:
        raise UnknownNameError("PIM preset", name, tuple(PRESETS) + ("path/to/device.toml",))
    return PRESETS[name]


def load_preset_file(path: str | Path) -> PimPreset:
    """Read a preset from TOML (the `PimPreset` fields; `base = "hbm-pim"` starts from a preset)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"PIM preset file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"PIM preset file {path} is not valid TOML: {err}") from None
    base = data.pop("base", None)
    fields = {f.name: f for f in dataclasses.fields(PimPreset)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"PIM preset file {path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(fields)}"
        )
    values: dict[str, Any] = (
        resolve_preset(base).to_dict() if base else {"name": path.stem, "description": str(path)}
    )
    for key, value in data.items():
        expected = type(values[key]) if key in values else None
        if isinstance(value, list):
            value = tuple(value)
        if expected in (int, float) and isinstance(value, bool | str):
            raise ConfigError(f"PIM preset file {path}: {key} must be a number, got {value!r}")
        values[key] = value
    values.setdefault("name", path.stem)
    try:
        return PimPreset(**values)
    except TypeError as err:
        raise ConfigError(f"PIM preset file {path}: {err}") from None
