"""`optkit lower MODEL --target pim:PRESET`: the host part compiled by TVM, the PIM part for the
simulator, in one directory that `optkit run` runs.

The partitioned Program (placement in `annotations.partition`, from the `pim` pass, run here
when the Program has none) is cut into segments: maximal runs of consecutive ops on one side,
in graph order (views join the segment they sit in). Host segments become Programs of their
own and are lowered through TVM for the CPU (weights stay compiled-in constants); PIM
segments run in the simulator, in the device's numerics (`simulate.py`). A run returns the
outputs and a `Trace` of the cost model's timing of every op and transfer, and the measured
wall time of the host segments.

Directory: `model.pt2` (+ its sidecar, with the partition), `pim.json` (format, preset,
segments), `host_K/` (one TVM artifact per host segment).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from optkit.backends.artifact import Artifact, _versions, load_artifact, read_manifest
from optkit.backends.pim.cost import HostModel
from optkit.backends.pim.placement import HOST, PIM, program_table, sinks_of
from optkit.backends.pim.presets import PimPreset, resolve_preset
from optkit.backends.pim.simulate import PartitionedRunner, Trace, placement_of, schedule
from torch.fx.passes.split_module import split_module

from optkit.errors import ArtifactError, ConfigError
from optkit.fsutil import atomic_dir, atomic_file
from optkit.ir.onnx_io import flat_outputs
from optkit.ir.program import Program

log = logging.getLogger(__name__)

FORMAT = "optkit-pim-artifact"
FORMAT_VERSION = 1
TARGET_PREFIX = "pim:"


def parse_target(target: str) -> PimPreset | None:
    """`pim:PRESET` -> the preset; any other target -> None."""
    if not target.startswith(TARGET_PREFIX):
        return None
    name = target[len(TARGET_PREFIX) :]
    if not name:
        raise ConfigError(
            "target pim needs a preset: pim:hbm-pim, pim:aim, pim:upmem, pim:recnmp or pim:FILE.toml"
        )
    return resolve_preset(name)


def segment_ids(program: Program, placement: dict[str, int]) -> tuple[dict[str, int], list[int]]:
    """Node name -> segment id for every call_function node, and each segment's side."""
    seg: dict[str, int] = {}
    sides: list[int] = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        side = placement.get(node.name, HOST)
        source = node.args[0] if node.args else None
        if (
            getattr(node.target, "__name__", "") == "getitem"
            and isinstance(source, fx.Node)
            and source.name in seg
        ):
            seg[node.name] = seg[source.name]  # a tuple is unpacked where it is made
            continue
        if not sides or side != sides[-1]:
            sides.append(side)
        seg[node.name] = len(sides) - 1
    return seg, sides


def split(program: Program, placement: dict[str, int]) -> tuple[fx.GraphModule, list[int]]:
    """The Program cut into one submodule per segment (`submod_K`), weights inside their segment."""
    seg, sides = segment_ids(program, placement)
    gm = program.graph_module
    parts = split_module(gm, gm, lambda node: seg.get(node.name, 0), keep_original_order=True)
    _own_weights(parts)
    return parts, sides


def _own_weights(parts: fx.GraphModule) -> None:
    # split_module passes parameters to a segment as inputs; make them the segment's own
    # constants again, so TVM packs them and callers pass activations only.
    for call in [n for n in parts.graph.nodes if n.op == "call_module"]:
        sub: fx.GraphModule = getattr(parts, str(call.target))
        placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
        keep = []
        for arg, ph in zip(call.args, placeholders, strict=True):
            if isinstance(arg, fx.Node) and arg.op == "get_attr":
                value = _fetch(parts, str(arg.target))
                name = str(arg.target).replace(".", "_")
                sub.register_buffer(
                    name, value.detach().clone() if isinstance(value, torch.Tensor) else value
                )
                with sub.graph.inserting_after(ph):
                    got = sub.graph.get_attr(name)
                got.meta = dict(ph.meta)
                ph.replace_all_uses_with(got)
                sub.graph.erase_node(ph)
            else:
                keep.append(arg)
        call.args = tuple(keep)
        sub.graph.lint()
        sub.recompile()
    parts.graph.eliminate_dead_code()
    parts.recompile()


def _fetch(gm: torch.nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _segment_inputs(parts: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> dict[str, tuple[Any, ...]]:
    seen: dict[str, tuple[Any, ...]] = {}

    class Recorder(fx.Interpreter):
        def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
            seen[str(target)] = tuple(args)
            return super().call_module(target, args, kwargs)

    with torch.no_grad():
        Recorder(parts).run(*inputs)
    return seen


@dataclass
class PimArtifact:
    """A partitioned model: TVM libraries for the host segments, the simulator for the rest."""

    program: Program
    preset: PimPreset
    parts: fx.GraphModule
    sides: list[int]
    host: dict[int, Artifact] = field(default_factory=dict)
    lowering_seconds: float = 0.0
    host_model: HostModel | None = None  # the host cost model the placement used (saved with it)

    def __post_init__(self) -> None:
        if self.host_model is None:
            saved = self.program.annotations.figures.get("pim", {}).get("host_model")
            if not saved:
                raise ArtifactError(f"{self.program.name} has no host cost model; run the pim pass first")
            self.host_model = HostModel.from_dict(saved)

    @property
    def placement(self) -> dict[str, int]:
        return placement_of(self.program)

    def run(self, *inputs: Any) -> tuple[list[np.ndarray], Trace, float]:
        """Outputs, the modeled trace of one inference, and the measured host seconds."""
        tensors = (
            tuple(torch.as_tensor(np.asarray(x)) for x in inputs) if inputs else self.program.example_inputs
        )
        host_seconds = [0.0]
        artifact = self

        class Runner(fx.Interpreter):
            def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
                k = int(str(target).split("_")[-1])
                sub = getattr(artifact.parts, str(target))
                if artifact.sides[k] == PIM:
                    everything = {n.name: PIM for n in sub.graph.nodes}
                    sub_program = Program(sub, tuple(args))
                    return PartitionedRunner(sub_program, everything, artifact.preset).run(*args)
                if k in artifact.host:
                    start = time.perf_counter()
                    outs = artifact.host[k].run(*(a.numpy() for a in args))
                    host_seconds[0] += time.perf_counter() - start
                    result = [torch.from_numpy(np.asarray(o)) for o in outs]
                    return result[0] if len(result) == 1 and not _returns_tuple(sub) else tuple(result)
                start = time.perf_counter()
                out = super().call_module(target, args, kwargs)
                host_seconds[0] += time.perf_counter() - start
                return out

        with torch.no_grad():
            out = Runner(self.parts).run(*tensors)
        table = program_table(self.program, self.preset, self.host_model)
        trace = schedule(table, self.placement, sinks_of(self.program))
        return [t.numpy() for t in flat_outputs(out)], trace, host_seconds[0]

    def save(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        from optkit.ir.serialize import save_program

        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            save_program(self.program, tmp / "model.pt2")
            for k, art in self.host.items():
                art.save(tmp / f"host_{k}")
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                **_versions(),
                "preset": self.preset.to_dict(),
                "segments": [
                    {"id": k, "side": "pim" if s == PIM else "host"} for k, s in enumerate(self.sides)
                ],
                "lowering_seconds": self.lowering_seconds,
            }
            with atomic_file(tmp / "pim.json") as f:
                f.write_text(json.dumps(manifest, indent=2))
        return Path(out_dir)


def _returns_tuple(gm: fx.GraphModule) -> bool:
    out = next(n for n in gm.graph.nodes if n.op == "output")
    return isinstance(out.args[0], (tuple, list))


def lower_pim(
    program: Program,
    preset: str,
    objective: str = "latency",
    progress: Callable[[str], None] | None = None,
    placement: str = "optimal",
) -> PimArtifact:
    """Partition `program` for `preset` (unless already partitioned) and build its artifact."""
    from optkit.backends.lowering import lower
    from optkit.passes.pim import PimConfig, PimPartition

    say = progress or (lambda _m: None)
    start = time.perf_counter()
    device = resolve_preset(preset)
    figures = program.annotations.figures.get("pim", {})
    if not program.annotations.partition or figures.get("preset") != device.name:
        say(f"partition for {device.name}")
        program = (
            PimPartition(PimConfig(preset=preset, objective=objective, placement=placement))
            .run(program.clone())
            .program
        )  # type: ignore[arg-type]
    placed = placement_of(program)
    if not any(side == PIM for side in placed.values()):
        log.warning(
            "nothing of %s is placed on %s: the artifact runs on the host only", program.name, device.name
        )
    parts, sides = split(program, placed)
    inputs = _segment_inputs(parts, program.example_inputs)
    host: dict[int, Artifact] = {}
    for k, side in enumerate(sides):
        name = f"submod_{k}"
        if side != HOST or name not in inputs:
            continue
        say(f"compile host segment {k + 1} of {len(sides)}")
        sub = Program(
            getattr(parts, name),
            tuple(t for t in inputs[name] if isinstance(t, torch.Tensor)),
            name=f"{program.name}-host{k}",
        )
        host[k] = lower(sub, "cpu")
    return PimArtifact(program, device, parts, sides, host, time.perf_counter() - start)


def load_pim_artifact(path: str | Path) -> PimArtifact:
    """Read back a directory written by `PimArtifact.save`."""
    from optkit.ir.serialize import load_program

    path = Path(path)
    manifest = read_manifest(path, "pim.json", FORMAT, FORMAT_VERSION, "PIM artifact")
    try:
        data = dict(manifest["preset"])
        data["supports"] = tuple(data["supports"])
        data["sources"] = tuple(data.get("sources", ()))
        preset = PimPreset(**data)
    except (KeyError, TypeError) as err:
        raise ArtifactError(f"{path}/pim.json has a malformed preset: {err}") from None
    program = load_program(path / "model.pt2")
    parts, sides = split(program, placement_of(program))
    listed = [1 if s.get("side") == "pim" else 0 for s in manifest.get("segments", [])]
    if listed != sides:
        raise ArtifactError(f"{path}: the segments in pim.json do not match the saved model's partition")
    host = {
        k: load_artifact(path / f"host_{k}")
        for k, s in enumerate(sides)
        if s == HOST and (path / f"host_{k}").exists()
    }
    return PimArtifact(program, preset, parts, sides, host, float(manifest.get("lowering_seconds", 0.0)))


def is_pim_artifact(path: str | Path) -> bool:
    return (Path(path) / "pim.json").exists()
