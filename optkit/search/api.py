"""`run_search`: the whole co-design search, as `optkit search` runs it.

1. Train the weight-sharing supernet once on the `fit` split (or load it from `OUT/supernet.pt`
   when resuming, so a resumed search scores with the same weights); likewise keep the cost
   model's host side in `OUT/host_model.json` (`search_host`). The supernet's initialization,
   its training and the sampler are seeded by `config.seed`, so the same seed, problem, host
   model and torch thread count give the same trials and front in any process.
2. Score candidates of the joint space (`space.py`) with inherited weights and the PIM cost
   model (`scoring.py`), through the searcher's ask/tell loop (`study.py`), in this process, on
   a local process pool, or on Ray (`executors.py`, `ray_executor.py`).
3. Write every trial and the Pareto front (`trials.json`, `pareto.json`, `pareto.png`).
4. Train the front's best candidates alone (up to `retrain` of them), and the hand-designed
   DLRM and DCN-v2 (`baselines.py`), with the same recipe; report their test AUC beside their
   modeled cost on the preset's own knobs (`retrained.json`).

The problem (supernet sizes and data splits) comes from the caller: `optkit.zoo.recsys.
search_problem()` for `zoo:recsys`. Nothing here imports the zoo.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from optkit.backends.pim.cost import HostModel
from optkit.backends.pim.presets import resolve_preset
from optkit.errors import ConfigError
from optkit.fsutil import atomic_file
from optkit.nn.supernet import RecSupernet, SupernetConfig
from optkit.search.baselines import BASELINES, train_subnet_alone
from optkit.search.executors import Executor, PoolExecutor, SerialExecutor
from optkit.search.pareto import pareto_front
from optkit.search.scoring import CandidateScorer
from optkit.search.searchers import SEARCHERS, make_sampler
from optkit.search.space import Candidate, HardwareChoice, SearchSpace
from optkit.search.study import OBJECTIVES, TrialRecord, open_study, parse_objectives, run_trials
from optkit.search.training import Data, train_supernet

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
CALIBRATIONS = ("auto", "quick", "full")
HOST_MODEL = "host_model.json"  # the host model a search in OUT prices with


@dataclass(frozen=True)
class SearchProblem:
    """What to search: the supernet's sizes and the data (`fit`, `validation`, `test` splits)."""

    name: str
    supernet: SupernetConfig
    splits: dict[str, Data]


@dataclass(frozen=True)
class SearchConfig:
    """Settings of one search (`optkit search` options)."""

    objectives: tuple[str, ...] = ("auc", "latency", "energy")
    preset: str = "hbm-pim"
    trials: int = 64
    searcher: str = "nsga2"
    workers: int = 1
    ray_address: str | None = None
    seed: int = 0
    batch: int = 8  # trials asked per round, whatever the number of workers
    population: int = 16  # NSGA-II's and evolution's
    supernet_steps: int = 1500
    batch_size: int = 256
    lr: float = 1e-3
    cost_batch: int = 256  # rows per inference the cost model prices
    retrain: int = 2  # front candidates trained alone (0: none, nor the baselines)
    retrain_steps: int = 2000
    # host model: quick | full | auto (full if cached, else quick) | a saved host model (.json)
    calibration: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "objectives", parse_objectives(self.objectives))
        if self.searcher not in SEARCHERS:
            from optkit.errors import UnknownNameError

            raise UnknownNameError("searcher", self.searcher, SEARCHERS)
        resolve_preset(self.preset)
        for name in (
            "trials",
            "workers",
            "batch",
            "supernet_steps",
            "batch_size",
            "cost_batch",
            "retrain_steps",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.population < 2 or self.retrain < 0 or self.lr <= 0:
            raise ConfigError(f"need population >= 2, retrain >= 0 and lr > 0, got {self}")
        if self.calibration not in CALIBRATIONS and not self.calibration.endswith(".json"):
            raise ConfigError(
                f"calibration must be {', '.join(CALIBRATIONS)} or a saved host model (.json), "
                f"got {self.calibration!r}"
            )

    def journal_settings(self) -> dict[str, Any]:
        """The settings a resumed search must share with the journal it resumes."""
        return {
            "objectives": list(self.objectives),
            "preset": self.preset,
            "searcher": self.searcher,
            "seed": self.seed,
            "supernet_steps": self.supernet_steps,
            "cost_batch": self.cost_batch,
        }


@dataclass
class SearchResult:
    """The trials, the front and the retrained models of a search."""

    config: SearchConfig
    trials: list[TrialRecord]
    front: list[int]  # indices into the successful trials
    retrained: list[dict[str, Any]] = field(default_factory=list)
    output: Path | None = None

    @property
    def scored(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.scores is not None]

    def front_trials(self) -> list[TrialRecord]:
        scored = self.scored
        return [scored[i] for i in self.front]

    def to_dict(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        cfg["objectives"] = list(self.config.objectives)
        return {
            "config": cfg,
            "trials": len(self.trials),
            "failed": sum(t.scores is None for t in self.trials),
            "front": [t.to_dict() for t in self.front_trials()],
            "retrained": self.retrained,
        }

    def summary(self) -> str:
        lines = [
            f"{len(self.trials)} trials ({sum(t.scores is None for t in self.trials)} failed), "
            f"{len(self.front)} on the Pareto front of {', '.join(self.config.objectives)}:"
        ]
        for t in sorted(self.front_trials(), key=lambda r: -r.scores["auc"])[:10]:  # type: ignore[index]
            s = t.scores or {}
            lines.append(
                f"  #{t.number}: AUC {s['auc']:.4f}, {s['latency_us']:.1f} us, {s['energy_uj']:.1f} uJ  {t.candidate.describe()}"
            )
        for r in self.retrained:
            lines.append(
                f"  trained alone: {r['label']}: test AUC {r['test_auc']:.4f}, {r['latency_us']:.1f} us, {r['energy_uj']:.1f} uJ"
            )
        return "\n".join(lines)


def load_or_train_supernet(
    problem: SearchProblem, config: SearchConfig, out: Path, progress: Progress | None = None
) -> RecSupernet:
    """The supernet in `out/supernet.pt` if a previous run left one, else trained and saved."""
    path = out / "supernet.pt"
    # Seeded before the supernet is built: its initial weights come from torch's global generator,
    # whose state depends on what ran before it (and which starts from a different seed in every
    # process with the torch of this project's constraints).
    torch.manual_seed(config.seed)
    supernet = RecSupernet(problem.supernet)
    if path.exists():
        state = torch.load(path, weights_only=True)
        supernet.load_state_dict(state)
        supernet.eval()
        return supernet
    if progress:
        progress(f"training the supernet ({config.supernet_steps} steps)")
    gen = torch.Generator().manual_seed(config.seed)
    train_supernet(supernet, problem.splits["fit"], config.supernet_steps, config.batch_size, config.lr, gen)
    with atomic_file(path) as tmp:
        torch.save(supernet.state_dict(), tmp)
    return supernet


def search_host(config: SearchConfig, out: Path, host: HostModel | None = None) -> HostModel:
    """The host side of the cost model that the search in `out` prices every candidate with.

    A calibration is measured, so two calibrations of one machine differ (two quick ones priced
    the DLRM baseline at 76 and 314 us): the model a search starts with is kept in
    `out/host_model.json` and a resumed search prices with it, whatever the machine's cache
    holds now. Otherwise:
    `host` if given, else `config.calibration`: a saved host model (a `host_model.json` of an
    earlier search, or a cached calibration) or this machine's cached calibration (calibrated
    first if there is none). A given `host` or saved file that differs from the kept one fails.
    """
    from optkit.backends.pim.calibrate import cache_path, host_model

    kept_path = out / HOST_MODEL
    if host is None and config.calibration not in CALIBRATIONS:
        host = _read_host(Path(config.calibration).expanduser())
    if kept_path.exists():
        kept = _read_host(kept_path)
        if host is not None and host.to_dict() != kept.to_dict():
            raise ConfigError(
                f"{kept_path} holds the host model this search was priced with, and the one given "
                "differs; resume with that file, or use another output directory"
            )
        return kept
    if host is None:
        full = config.calibration == "full" or (config.calibration == "auto" and cache_path(False).exists())
        host = host_model(quick=not full)
    host.save(kept_path)
    return host


def _read_host(path: Path) -> HostModel:
    if not path.is_file():
        raise ConfigError(f"no saved host model at {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the host model {path}: {err}") from None
    return HostModel.from_dict(data)


def make_executor(scorer: CandidateScorer, config: SearchConfig) -> Executor:
    """Ray when `ray_address` is given, or when `workers > 1` and Ray is installed; else a local
    process pool for `workers > 1`; else this process."""
    if config.ray_address or config.workers > 1:
        try:
            import ray  # noqa: F401

            has_ray = True
        except ImportError:
            has_ray = False
        if config.ray_address or has_ray:
            from optkit.search.ray_executor import RayExecutor

            return RayExecutor(scorer, workers=config.workers, address=config.ray_address)
        return PoolExecutor(scorer, config.workers)
    return SerialExecutor(scorer)


def preflight(config: SearchConfig) -> None:
    """Checks that fail fast, before any data is loaded or trained: the Ray address answers and
    Ray is installed when it is needed, Optuna is installed."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("optkit search needs Optuna: pip install 'optkit[search]'") from None
    if config.ray_address:
        from optkit.search.ray_executor import check_reachable, require_ray

        require_ray()
        check_reachable(config.ray_address)


def run_search(
    problem: SearchProblem,
    config: SearchConfig,
    out: str | Path,
    host: HostModel | None = None,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> SearchResult:
    """Run (or resume) the search of `problem` into directory `out`; see the module docstring.

    `host`: the host side of the cost model (default: `config.calibration`; `search_host` says
    which one a resumed search uses); `executor`: where to score (default: `make_executor`).
    """
    preflight(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    preset = resolve_preset(config.preset)
    space = SearchSpace(problem.supernet, preset)
    host = search_host(config, out, host)
    sampler = make_sampler(config.searcher, config.seed, config.population)
    study = open_study(out, config.objectives, sampler, config.journal_settings())
    supernet = load_or_train_supernet(problem, config, out, progress)
    placement_objective = (
        "latency" if "latency" in config.objectives or "energy" not in config.objectives else "energy"
    )
    scorer = CandidateScorer(
        supernet, problem.splits["validation"], preset, host, config.cost_batch, placement_objective
    )
    own = executor is None
    executor = executor or make_executor(scorer, config)
    try:
        tick = (lambda done, total: progress(f"{done}/{total} trials")) if progress else None
        trials = run_trials(study, space, executor, config.objectives, config.trials, config.batch, tick)
    finally:
        if own:
            executor.close()
    scored = [t for t in trials if t.scores is not None]
    directions = [OBJECTIVES[o][1] for o in config.objectives]
    front = pareto_front([t.values(config.objectives) for t in scored], directions)
    result = SearchResult(config, trials, front, output=out)
    _write_json(out / "trials.json", [t.to_dict() for t in trials])
    _write_json(out / "pareto.json", result.to_dict())
    if scored:
        from optkit.search.plots import pareto_png

        pareto_png(
            [t.scores or {} for t in scored],
            front,
            out / "pareto.png",
            title=f"{problem.name} on {preset.name}",
        )
    if config.retrain:
        result.retrained = retrain_front(problem, config, scorer, result, progress)
        _write_json(out / "retrained.json", result.retrained)
        _write_json(out / "pareto.json", result.to_dict())
    return result


def retrain_front(
    problem: SearchProblem,
    config: SearchConfig,
    scorer: CandidateScorer,
    result: SearchResult,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Train alone the `config.retrain` front candidates of highest inherited AUC (distinct
    architectures) and the DLRM and DCN-v2 baselines; baselines are costed on the preset's own
    knobs with the `optimal` placement."""
    picks: list[TrialRecord] = []
    for t in sorted(result.front_trials(), key=lambda r: -(r.scores or {})["auc"]):
        if all(p.candidate.choice != t.candidate.choice for p in picks):
            picks.append(t)
        if len(picks) == config.retrain:
            break
    jobs = [(f"search #{t.number}", t.candidate, t.scores or {}) for t in picks]
    for name, make in BASELINES.items():
        cand = Candidate(make(problem.supernet), HardwareChoice())
        jobs.append((name, cand, scorer.score(cand)))
    rows = []
    for label, cand, scores in jobs:
        if progress:
            progress(f"training {label} alone ({config.retrain_steps} steps)")
        trained = train_subnet_alone(
            problem.supernet, cand.choice, problem.splits, config.retrain_steps, config.seed
        )
        rows.append(
            {
                "label": label,
                "name": cand.describe(),
                "candidate": cand.to_dict(),
                "inherited_auc": scores.get("auc"),
                "latency_us": scores.get("latency_us"),
                "energy_uj": scores.get("energy_uj"),
                **trained,
            }
        )
    return rows


def _write_json(path: Path, data: Any) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))
