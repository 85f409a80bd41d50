"""`pim`: place each op on the host or a simulated processing-in-memory device.

Where it belongs: last, after the passes that change the graph (`ptq`, `groupwise`, ...), just
before `optkit lower --target pim:PRESET`. It reads the graph's shapes only, so it never
changes outputs; the placement goes to `annotations.partition` (stable op key -> 0 host,
1 PIM) and the figures to `annotations.figures["pim"]`.

Per op, the cost on the host (fitted to TVM CPU kernels measured on this machine,
`backends/pim/calibrate.py`) and on the preset's device (`backends/pim/cost.py`); per tensor,
the cost of crossing the link; what the device cannot run and what does not fit its memory
stays on the host. The placement minimizing modeled latency (or energy) is found by min-cut
(`backends/pim/placement.py`); the report sets it beside host-only and the greedy rule (every
embedding lookup to PIM), and beside the exhaustive optimum when the graph is small enough.
The partitioned model is also run in the device's numerics and its outputs compared to the host
run (SQNR), so a placement that costs accuracy says so.

A model with nothing the device can run gets a warning and a host-only placement, reported as
such, never presented as PIM.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

from optkit.backends.pim.calibrate import host_model
from optkit.backends.pim.placement import (
    EXHAUSTIVE_LIMIT,
    PIM,
    CostTable,
    co_locate,
    exhaustive_placement,
    greedy_placement,
    host_only,
    optimal_placement,
    program_table,
    sinks_of,
)
from optkit.backends.pim.presets import PimPreset, resolve_preset
from optkit.backends.pim.simulate import run_partitioned, schedule

from optkit.ir.onnx_io import flat_outputs
from optkit.ir.program import Program
from optkit.metrics import sqnr_db
from optkit.pipeline import Pass, PassConfig, PassResult, register_pass
from optkit.report import Figure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PimConfig(PassConfig):
    """Which device, which objective, which placement rule."""

    preset: str = "hbm-pim"  # hbm-pim | aim | upmem | recnmp | path/to/device.toml
    objective: Literal["latency", "energy"] = "latency"
    placement: Literal["optimal", "greedy", "host"] = "optimal"
    calibration: Literal["quick", "full"] = "quick"  # host kernels measured to fit the host model
    exhaustive: bool = True  # also find the exhaustive optimum when the graph is small enough

    def __post_init__(self) -> None:
        resolve_preset(self.preset)  # an unknown preset or a bad preset file fails here


def cost_table(program: Program, preset: str | PimPreset, calibration: str = "quick") -> CostTable:
    """The host / PIM cost table of `program` on a preset, with this machine's host model."""
    preset = resolve_preset(preset) if isinstance(preset, str) else preset
    return program_table(program, preset, host_model(quick=calibration == "quick"))


@register_pass("pim", PimConfig)
class PimPartition(Pass):
    """Partition ops between the host and a PIM device by modeled latency or energy."""

    shares_weights = True  # registers new tensors; never writes its input's

    def run(self, program: Program) -> PassResult:
        cfg: PimConfig = self.config  # type: ignore[assignment]
        table = cost_table(program, cfg.preset, cfg.calibration)
        preset = table.preset
        sinks = sinks_of(program)
        start = time.perf_counter()
        if cfg.placement == "optimal":
            chosen = optimal_placement(table, sinks, cfg.objective)
        elif cfg.placement == "greedy":
            chosen = greedy_placement(table, sinks)
        else:
            chosen = host_only(table)
        chosen = co_locate(table, chosen)
        seconds = time.perf_counter() - start
        placed = [op for op in table.ops if chosen[op.name] == PIM and op.kind != "view"]
        too_big = [op for op in table.ops if op.kind == "gather" and op.weight_bytes > preset.capacity_bytes]
        if too_big:
            log.warning(
                "%d table(s) of %s exceed the %s device's %.1f GiB (largest %.1f GiB, %s): they stay on the host",
                len(too_big),
                program.name,
                preset.name,
                preset.capacity_bytes / 2**30,
                max(op.weight_bytes for op in too_big) / 2**30,
                max(too_big, key=lambda o: o.weight_bytes).key,
            )
        if not any(table.can_pim(op.name) and op.kind != "view" for op in table.ops):
            log.warning(
                "%s has no op the %s device can run (it runs %s); placed on the host",
                program.name,
                preset.name,
                ", ".join(preset.supports),
            )
        elif not placed and cfg.placement != "host":
            log.warning(
                "on %s, no op of %s runs faster on PIM than on the host; placed on the host",
                preset.name,
                program.name,
            )
        evals = {
            "host": table.evaluate(host_only(table), sinks),
            "greedy": table.evaluate(greedy_placement(table, sinks), sinks),
            "chosen": table.evaluate(chosen, sinks),
        }
        free = sum(1 for op in table.ops if table.can_pim(op.name) and op.kind != "view")
        if cfg.exhaustive and 0 < free <= EXHAUSTIVE_LIMIT:
            evals["exhaustive"] = table.evaluate(exhaustive_placement(table, sinks, cfg.objective), sinks)
        trace = schedule(table, chosen, sinks)
        ops_by_name = {op.name: op for op in table.ops}
        program.annotations.partition = {ops_by_name[n].key: side for n, side in chosen.items()}
        sqnr = self._device_sqnr(program, preset)
        batch = (
            int(program.example_inputs[0].shape[0])
            if program.example_inputs and program.example_inputs[0].dim()
            else 1
        )
        host, chosen_ev = evals["host"], evals["chosen"]
        figures = {
            "preset": Figure(preset.name, "", "PIM preset"),
            "pim_ops": Figure(len(placed), "ops", "ops placed on PIM"),
            "latency_host_only": Figure(host.latency_us, "us", "modeled latency, host only"),
            "latency_greedy": Figure(
                evals["greedy"].latency_us, "us", "modeled latency, greedy (embeddings to PIM)"
            ),
            "latency_pim": Figure(chosen_ev.latency_us, "us", f"modeled latency, {cfg.placement} placement"),
            "latency_scheduled": Figure(trace.latency_us, "us", "modeled latency, host and PIM overlapped"),
            "throughput_pim": Figure(batch / chosen_ev.latency_us * 1e6, "samples/s", "modeled throughput"),
            "speedup_vs_host": Figure(
                host.latency_us / chosen_ev.latency_us, "x", "modeled speed-up vs host only"
            ),
            "speedup_vs_greedy": Figure(
                evals["greedy"].latency_us / chosen_ev.latency_us, "x", "modeled speed-up vs greedy"
            ),
            "energy_host_only": Figure(host.energy_uj, "uJ", "modeled energy per inference, host only"),
            "energy_pim": Figure(chosen_ev.energy_uj, "uJ", "modeled energy per inference"),
            "energy_saving": Figure(
                host.energy_uj / chosen_ev.energy_uj, "x", "modeled energy, host only / PIM"
            ),
            "bytes_moved": Figure(chosen_ev.transfer_bytes, "bytes", "host <-> PIM bytes per inference"),
            "pim_resident_bytes": Figure(chosen_ev.pim_bytes, "bytes", "tables and weights on PIM"),
            "partition_seconds": Figure(seconds, "s", "placement time"),
        }
        if "exhaustive" in evals:
            best = evals["exhaustive"].objective(cfg.objective)
            figures["gap_to_exhaustive"] = Figure(
                100.0 * (chosen_ev.objective(cfg.objective) - best) / best,
                "%",
                "gap to the exhaustive optimum",
            )
        if sqnr is not None:
            figures["device_output_sqnr"] = Figure(
                sqnr, "dB", f"outputs in {preset.numerics} vs host float32"
            )
        program.annotations.figures["pim"] = {
            "preset": preset.name,
            "objective": cfg.objective,
            "placement": cfg.placement,
            "evaluations": {
                k: {
                    "latency_us": v.latency_us,
                    "energy_uj": v.energy_uj,
                    "transfer_bytes": v.transfer_bytes,
                    "pim_bytes": v.pim_bytes,
                }
                for k, v in evals.items()
            },
            "trace": trace.rows(),
            "host_model": table.host_model.to_dict(),
        }
        return PassResult(program, modified=bool(placed), figures=figures)

    @staticmethod
    def _device_sqnr(program: Program, preset: PimPreset) -> float | None:
        if any(t.device.type == "meta" for t in program.example_inputs):
            return None  # a model built on the meta device is costed, never run
        try:
            ref = flat_outputs(program.run())
            got = flat_outputs(run_partitioned(program, preset))
        except (RuntimeError, TypeError, ValueError) as err:  # a model that cannot run here (meta tensors)
            log.info("device numerics not checked: %s", err)
            return None
        floats = [(r, g) for r, g in zip(ref, got, strict=True) if r.is_floating_point() and r.numel()]
        if not floats:
            return None
        return float(min(sqnr_db(r.float(), g.float()) for r, g in floats))
