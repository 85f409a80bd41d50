"""The joint search space: a subnet of the supernet x the knobs of a PIM device.

Architecture (NASRec's space, `optkit.nn.supernet`): per block an operator, an output width
and a non-empty set of sources (stem, feature tokens, earlier blocks). Hardware (the fields of
a `PimPreset` that a designer would turn, each of which the cost model reads):

- `units_scale`: compute units relative to the preset (HBM-PIM has one unit per 2 banks; x2
  is one per bank). The cost model reads units for bandwidth and compute (`pim_cost`).
- `clock_scale`: the units' clock relative to the preset; compute scales with it, and so does
  a unit's bandwidth from its bank (a bank-level unit reads a fixed number of bits a cycle).
- `numerics`: the format weights and activations have on the device: element bytes enter every
  PIM read and every transfer, and a SIMD unit of fixed width holds more lanes of a narrower
  format (lanes scale with the preset's element bytes over the new ones: fp16 -> int8 doubles
  them); the AUC of a candidate is measured with the weights of its PIM-placed ops rounded to
  it (`scoring.py`).
- `placement`: where tables and layers go: `optimal` (min-cut), `greedy` (every embedding
  table to PIM) or `host` (no PIM at all, the baseline a designer compares against).

The knobs have no area or static-power term in the cost model, so for latency and energy more
units and a faster clock never hurt: the search then picks the largest, and says so.

Parameters are named `b{i}_op`, `b{i}_dim`, `b{i}_src{j}` (a bool per source) and `hw_*`; a
block whose source bools are all false reads the newest source before it (the previous block,
or the feature tokens for block 0), so every point of the space is a valid subnet.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

from optkit.backends.pim.presets import NUMERICS, PimPreset
from optkit.errors import ConfigError
from optkit.nn.supernet import OPERATORS, BlockChoice, SupernetConfig

PLACEMENTS = ("optimal", "greedy", "host")


class Suggester(Protocol):
    """What the space needs from an Optuna trial (or a stand-in): categorical suggestions."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class HardwareChoice:
    """The PIM knobs of one candidate, relative to a base preset."""

    units_scale: float = 1.0
    clock_scale: float = 1.0
    numerics: str = ""  # "" = the preset's own
    placement: str = "optimal"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Candidate:
    """One point of the joint space: a subnet and the device it runs on."""

    choice: tuple[BlockChoice, ...]
    hardware: HardwareChoice

    def describe(self) -> str:
        hw = self.hardware
        arch = " | ".join(map(str, self.choice))
        return f"{arch} @ units x{hw.units_scale:g}, clock x{hw.clock_scale:g}, {hw.numerics or 'own format'}, {hw.placement}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "choice": [[c.op, c.dim, list(c.sources)] for c in self.choice],
            "hardware": self.hardware.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        try:
            choice = tuple(
                BlockChoice(str(op), int(dim), tuple(int(s) for s in src)) for op, dim, src in data["choice"]
            )
            return cls(choice, HardwareChoice(**data["hardware"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"malformed search candidate {data!r}: {err}") from None


@dataclass(frozen=True)
class SearchSpace:
    """Which architectures and which device knobs the search may pick."""

    supernet: SupernetConfig
    preset: PimPreset
    operators: tuple[str, ...] = OPERATORS
    units_scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    clock_scales: tuple[float, ...] = (0.5, 1.0, 1.5)
    numerics: tuple[str, ...] = ()  # () = the preset's own format and every narrower one
    placements: tuple[str, ...] = PLACEMENTS

    def __post_init__(self) -> None:
        bad = [op for op in self.operators if op not in OPERATORS]
        if bad or not self.operators:
            raise ConfigError(
                f"search operators must be a non-empty subset of {', '.join(OPERATORS)}, got {list(self.operators)}"
            )
        for name in ("units_scales", "clock_scales"):
            values = getattr(self, name)
            if not values or min(values) <= 0:
                raise ConfigError(f"search space {name} must be non-empty and positive, got {list(values)}")
        if not self.numerics:
            own = self.preset.element_bytes
            narrower = tuple(n for n in NUMERICS if _bytes(n) <= own)
            object.__setattr__(self, "numerics", narrower)
        bad = [n for n in self.numerics if n not in NUMERICS]
        if bad:
            raise ConfigError(
                f"search numerics must be among {', '.join(NUMERICS)}, got {list(self.numerics)}"
            )
        bad = [p for p in self.placements if p not in PLACEMENTS]
        if bad or not self.placements:
            raise ConfigError(
                f"search placements must be a non-empty subset of {', '.join(PLACEMENTS)}, got {list(self.placements)}"
            )

    def suggest(self, trial: Suggester) -> Candidate:
        """The candidate `trial` picks (every parameter categorical; see the module docstring)."""
        blocks = []
        for i in range(self.supernet.num_blocks):
            op = trial.suggest_categorical(f"b{i}_op", list(self.operators))
            dim = trial.suggest_categorical(f"b{i}_dim", list(self.supernet.dims))
            sources = [j for j in range(i + 2) if trial.suggest_categorical(f"b{i}_src{j}", [False, True])]
            blocks.append(BlockChoice(op, int(dim), tuple(sources or [i + 1])))
        hw = HardwareChoice(
            units_scale=float(trial.suggest_categorical("hw_units_scale", list(self.units_scales))),
            clock_scale=float(trial.suggest_categorical("hw_clock_scale", list(self.clock_scales))),
            numerics=str(trial.suggest_categorical("hw_numerics", list(self.numerics))),
            placement=str(trial.suggest_categorical("hw_placement", list(self.placements))),
        )
        return Candidate(tuple(blocks), hw)

    def params_of(self, candidate: Candidate) -> dict[str, Any]:
        """The trial parameters that give `candidate` (for `study.enqueue_trial`)."""
        out: dict[str, Any] = {}
        for i, c in enumerate(candidate.choice):
            out[f"b{i}_op"], out[f"b{i}_dim"] = c.op, c.dim
            for j in range(i + 2):
                out[f"b{i}_src{j}"] = j in c.sources
        hw = candidate.hardware
        out.update(
            hw_units_scale=hw.units_scale,
            hw_clock_scale=hw.clock_scale,
            hw_numerics=hw.numerics,
            hw_placement=hw.placement,
        )
        return out


def _bytes(numerics: str) -> int:
    return {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}[numerics]


def hardware_preset(base: PimPreset, hw: HardwareChoice) -> PimPreset:
    """`base` with the knobs of `hw` applied; a new name so reports tell the two apart."""
    units = max(1, round(base.units * hw.units_scale))
    numerics = hw.numerics or base.numerics
    lanes = max(1, base.lanes * base.element_bytes // _bytes(numerics))
    same = units == base.units and hw.clock_scale == 1.0 and numerics == base.numerics
    return dataclasses.replace(
        base,
        name=base.name
        if same
        else f"{base.name}[units={units},clock={base.clock_mhz * hw.clock_scale:g},{numerics}]",
        units=units,
        clock_mhz=base.clock_mhz * hw.clock_scale,
        unit_gbps=base.unit_gbps * hw.clock_scale,
        numerics=numerics,
        lanes=lanes,
        peak_tflops=base.peak_tflops * units / base.units * hw.clock_scale * lanes / base.lanes,
        unit_capacity_mib=base.unit_capacity_mib * base.units / units if base.unit_capacity_mib else 0.0,
    )
