"""Pipeline: an optimized Program and its compiled step variants, sampled end to end in TVM code.

`lower_pipeline(program, target)` lowers the Program's `main` and, when the `cache` pass gave it
a schedule (`program.annotations.cache_schedule`), every distinct step variant the schedule
uses (`optkit.caching.variants`: ordinary Programs that take the reused blocks' cached values
as extra inputs and return the filled blocks' as extra outputs). `Pipeline.sample(seed)` runs
the whole sampler (noise, timesteps, classifier-free guidance with the null condition, cache
reuse or forecasting with scale-shift alignment) through `optkit.caching.CachedSampler`, whose `executors`
call the compiled libraries instead of the eager graphs: the caching logic exists once.

All of them are compiled into ONE library (`optkit.backends.lowering.lower_functions`), each a
function of it: the VM's constant pool keeps equal constants once, so every weight (packed) is
stored and loaded once however many variants use it. On the zoo's DiT with 13 step variants the
directory holds 2.4 MiB of library against 1.9 MiB for the model alone (16.8 MiB when each
variant was its own library).

A saved pipeline is one directory (`Pipeline.save`, written atomically; `load_pipeline`):

| path | what |
|---|---|
| `model.pt2`, `model.pt2.json` | the optimized Program: graph, workload, cache schedule, alignment |
| `main/` | the compiled library (`model.so` + `weights.bin` + `manifest.json`, as `Artifact.save` writes them): the Program as `main`, each step variant as a function of its own |
| `pipeline.json` | versions, target, each variant key (reused, filled block paths) -> its function and signature, SHA-256 and size of the library and of the Program |
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from optkit.backends.artifact import (
    LIBRARY,
    WEIGHTS,
    Artifact,
    _sha256,
    _versions,
    load_artifact,
    read_manifest,
)
from optkit.backends.lowering import lower_functions
from optkit.backends.targets import TargetSpec, cuda_device_present, resolve_target
from optkit.backends.tvm_import import TensorSpec

from optkit.caching.runner import (
    CachedSampler,
    Executor,
    VariantKey,
    cached_runner,
    cached_sample,
    variant_key,
)
from optkit.caching.schedule import uniform_schedule
from optkit.caching.variants import StepVariant
from optkit.errors import ArtifactError, BackendError, ConfigError
from optkit.fsutil import atomic_dir, member_path
from optkit.ir.program import Program
from optkit.ir.serialize import load_program, save_program

log = logging.getLogger(__name__)

FORMAT = "optkit-tvm-pipeline"
FORMAT_VERSION = 3  # 1: one library per step variant; 2: one library; 3: its weights in main/weights.bin
MANIFEST = "pipeline.json"
PROGRAM = "model.pt2"
MAIN = "main"
MAX_SEED = 2**63 - 1
NO_CACHE: VariantKey = ((), ())  # the variant that neither reuses nor fills: the Program itself

Progress = Callable[[str], None]


def check_target(target: str) -> TargetSpec:
    """Resolve `target` for a pipeline that is lowered *and sampled* here: an unknown name lists
    the known ones, `cuda` needs nvcc and a visible CUDA device. Cheap: call it before any work."""
    spec = resolve_target(target)
    if spec.name == "cuda" and not cuda_device_present():
        raise BackendError(
            "target cuda: no CUDA device (or driver) is visible here, and the compiled pipeline is "
            "sampled on it; use --target cpu, or `optkit lower --target cuda` to compile only"
        )
    return spec


def check_seed(seed: int) -> int:
    """`seed` if it is an int in [0, 2**63 - 1], else a ConfigError saying so."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    return seed


def _executor(artifact: Artifact) -> Executor:
    return artifact.run_torch


@dataclass
class Pipeline:
    """A compiled sampling pipeline: `sample(seed)`, `save(dir)`.

    `program` is the optimized Program (it carries the workload, the cache schedule and the
    alignment); `main` its compiled graph; `variants` the compiled step variant of each variant
    key the schedule uses (empty without a schedule; the key `((), ())`, if used, maps to `main`).
    """

    program: Program
    main: Artifact
    variants: dict[VariantKey, Artifact] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    _runner: CachedSampler | None = field(default=None, repr=False)

    @property
    def target(self) -> TargetSpec:
        return self.main.target

    @property
    def cached(self) -> bool:
        """Whether sampling follows a cache schedule."""
        return bool(self.program.annotations.cache_schedule)

    def libraries(self) -> list[Artifact]:
        """The distinct compiled libraries: `main`'s (every variant is a function of it)."""
        return [self.main]

    def runner(self) -> CachedSampler:
        """The CachedSampler whose executors are the compiled libraries (built once)."""
        if self._runner is None:
            if self.cached:
                runner = cached_runner(self.program)
                runner.executors = {k: _executor(a) for k, a in self.variants.items()}
            else:
                diffusion = self.program.workload.diffusion
                if diffusion is None:
                    raise ConfigError(
                        f"{self.program.name}'s workload has no [diffusion] sampler to sample with"
                    )
                # An empty schedule: the compiled main as the denoiser, in chunks of its batch.
                schedule = uniform_schedule([], diffusion.steps, 1)
                runner = CachedSampler(self.program, schedule, [], executors={NO_CACHE: _executor(self.main)})
            self._runner = runner
        return self._runner

    def sample(
        self,
        seed: int,
        *,
        cond: Sequence[torch.Tensor] | None = None,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """One batch of samples for `seed`, every denoiser call in compiled code.

        The sampler, steps, guidance scale and null condition are the workload's (those the
        `cache` pass used, when it ran); `cond` defaults to the Program's example conditioning
        inputs and must have their shapes (the libraries are compiled for them).
        """
        check_seed(seed)
        runner = self.runner()
        cond = tuple(cond) if cond is not None else None
        if self.cached:
            return cached_sample(
                self.program, seed=seed, cond=cond, guidance_scale=guidance_scale, runner=runner
            )
        diffusion = self.program.workload.diffusion
        assert diffusion is not None  # runner() checked it
        x, _t, *example_cond = self.program.example_inputs
        cond = cond if cond is not None else tuple(example_cond)
        guidance, uncond = diffusion.guidance(cond, guidance_scale)
        return runner.sample(
            tuple(x.shape),
            sampler=diffusion.sampler,
            seed=seed,
            cond=cond,
            uncond=uncond,
            guidance_scale=guidance,
        )

    # -- saving ----------------------------------------------------------------------------
    def save(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        """Write the Program, the library and `pipeline.json` into `out_dir` atomically."""
        out_dir = Path(out_dir)
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            save_program(self.program, tmp / PROGRAM)
            self.main.save(tmp / MAIN)
            lib = tmp / MAIN / LIBRARY
            library = {"sha256": _sha256(lib), "bytes": lib.stat().st_size}
            # What the compiled pipeline weighs: the code and the weights beside it.
            total = library["bytes"] + (tmp / MAIN / WEIGHTS).stat().st_size
            manifest = {
                **self.info,
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                **_versions(),
                "target": self.target.name,
                "model": self.program.name,
                "program": {
                    "file": PROGRAM,
                    "sha256": _sha256(tmp / PROGRAM),
                    "sidecar_sha256": _sha256(tmp / f"{PROGRAM}.json"),
                },
                "main": {"dir": MAIN, **library},
                "variants": [
                    {
                        "reuse": list(reuse),
                        "fill": list(fill),
                        "function": a.entry,
                        "inputs": [spec.to_dict() for spec in a.inputs],
                        "outputs": [spec.to_dict() for spec in a.outputs],
                    }
                    for (reuse, fill), a in self.variants.items()
                ],
                "library_bytes_total": total,
                "weights": "one library: the Program and every step variant are functions of it, each weight stored once",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        self.info["library_bytes_total"] = total
        log.info("saved pipeline (%d step variants in one library) to %s", len(self.variants), out_dir)
        return out_dir

    @property
    def library_bytes(self) -> int:
        """Bytes of the library and its weights file once saved (recorded by `save`/`load_pipeline`)."""
        return int(self.info.get("library_bytes_total", 0))


def lower_pipeline(
    program: Program, target: str = "cpu", progress: Progress | None = None, **options: Any
) -> Pipeline:
    """Lower `program` and every step variant its cache schedule uses for `target`, into one
    library (`main` and a function per variant).

    `options` go to `optkit.backends.lowering.lower_functions` (`tune_trials`, `schedule`,
    `fast_math`, ...). `progress` is told each step (`import into Relax (2/14)`, `build for cpu`).
    """
    say = progress or (lambda _msg: None)
    check_target(target)
    start = time.perf_counter()
    variants = cached_runner(program).variants() if program.annotations.cache_schedule else []
    # The variant that neither reuses nor fills is the Program itself: its function is `main`.
    todo = [v for v in variants if _key(v) != NO_CACHE]
    names = {_key(v): f"variant_{i + 1:02d}" for i, v in enumerate(todo)}
    compiled = lower_functions(
        {MAIN: program, **{names[_key(v)]: v.program for v in todo}}, target, progress=say, **options
    )
    main = compiled[MAIN]
    steps: dict[VariantKey, Artifact] = {key: compiled[name] for key, name in names.items()}
    if any(_key(v) == NO_CACHE for v in variants):
        steps[NO_CACHE] = main
    seconds = round(time.perf_counter() - start, 2)
    log.info("lowered %s and %d step variants in %.1f s", program.name, len(variants), seconds)
    return Pipeline(program, main, steps, {"lowering_seconds": seconds})


def _key(variant: StepVariant) -> VariantKey:
    return variant_key(variant.reuse, variant.fill)


def load_pipeline(path: str | Path) -> Pipeline:
    """Load a directory written by `Pipeline.save`, checking versions, every file's SHA-256 and
    that the library's functions fit the Program's schedule; ArtifactError names what is wrong."""
    path = Path(path)
    manifest = read_manifest(path, MANIFEST, FORMAT, FORMAT_VERSION, "pipeline")
    try:
        program_info = dict(manifest["program"])
        main_info = dict(manifest["main"])
        entries = [
            (
                (tuple(v["reuse"]), tuple(v["fill"])),
                str(v["function"]),
                tuple(TensorSpec.from_dict(d) for d in v["inputs"]),
                tuple(TensorSpec.from_dict(d) for d in v["outputs"]),
            )
            for v in manifest["variants"]
        ]
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{path / MANIFEST} lacks a field or has a bad one: {err}") from err
    _check_file(path / PROGRAM, program_info.get("sha256"))
    _check_file(path / f"{PROGRAM}.json", program_info.get("sidecar_sha256"))
    folder = member_path(path, str(main_info.get("dir", MAIN)))
    _check_file(folder / LIBRARY, main_info.get("sha256"))
    main = load_artifact(folder)
    program = load_program(path / PROGRAM)
    variants = {
        key: main if function == MAIN else main.entry_point(function, inputs, outputs)
        for key, function, inputs, outputs in entries
    }
    for key, function, _inputs, _outputs in entries:
        try:
            variants[key]._main()
        except Exception as err:  # TVM raises its own error for a function the library lacks
            raise ArtifactError(
                f"{path}: the library has no function {function!r} that {MANIFEST} names"
            ) from err
    runner = _check_fits(program, variants, path)
    known = {"format", "format_version", "optkit_version", "tvm_version", "program", "main", "variants"}
    info = {k: v for k, v in manifest.items() if k not in known}
    pipeline = Pipeline(program, main, variants, info)
    if runner is not None:  # built for the check; keep it (it clones the graph)
        runner.executors = {k: _executor(a) for k, a in variants.items()}
        pipeline._runner = runner
    return pipeline


def _check_file(file: Path, digest: Any) -> None:
    if not file.is_file():
        raise ArtifactError(f"{file} is missing: the pipeline directory is incomplete")
    if _sha256(file) != digest:
        raise ArtifactError(
            f"{file} does not match the hash in {MANIFEST}: the file is corrupt or was replaced"
        )


def _check_fits(program: Program, variants: dict[VariantKey, Artifact], path: Path) -> CachedSampler | None:
    """Every step of the schedule has a library, and each library takes the inputs it will get;
    returns the cached runner built for the check (None without a schedule)."""
    if not program.annotations.cache_schedule:
        if variants:
            raise ArtifactError(
                f"{path}: {MANIFEST} lists step variants but the Program has no cache schedule"
            )
        return None
    runner = cached_runner(program)
    for step in range(runner.schedule.steps):
        reuse, fill = runner.plan(step)
        key = variant_key(reuse, fill)
        if key not in variants:
            raise ArtifactError(
                f"{path}: step {step} needs the variant reusing {list(key[0])} and filling {list(key[1])}, "
                f"which {MANIFEST} does not list"
            )
        expected = len(program.example_inputs) + sum(len(u.cached) for u in reuse)
        if len(variants[key].inputs) != expected:
            raise ArtifactError(
                f"{path}: the library for step {step} takes {len(variants[key].inputs)} inputs, "
                f"the schedule feeds it {expected}"
            )
    return runner
