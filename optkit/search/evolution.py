"""Regularized evolution (Real et al., "Regularized Evolution for Image Classifier Architecture
Search", AAAI 2019) as an Optuna sampler, so it runs through the same ask/tell loop as NSGA-II.

The population is the `population` most recently finished trials (aging: the oldest leave
first). A new trial samples `tournament` members at random, takes the best as the parent and
mutates exactly one of its parameters to another value of that parameter's choices. The first
`population` trials are random. With several objectives, "best" is the member dominated by the
fewest others in the tournament (ties: the earlier trial), a minimal multi-objective reading of
the paper's single-objective tournament.

The sampler keeps no state outside the study: a study resumed from its journal evolves on
from the trials it holds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from optkit.errors import ConfigError
from optkit.search.pareto import dominates


class RegularizedEvolutionSampler(BaseSampler):
    """Aging evolution over categorical parameters; random for the first `population` trials."""

    def __init__(self, population: int = 32, tournament: int = 8, seed: int | None = None) -> None:
        if population < 2 or not 1 <= tournament <= population:
            raise ConfigError(
                f"evolution needs population >= 2 and 1 <= tournament <= population, got {population}, {tournament}"
            )
        self.population = population
        self.tournament = tournament
        self._rng = np.random.RandomState(seed)
        self._random = RandomSampler(seed=seed)
        self._space = IntersectionSearchSpace()

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random.reseed_rng()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {
            name: dist
            for name, dist in self._space.calculate(study).items()
            if isinstance(dist, CategoricalDistribution)
        }

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        if not search_space or len(done) < self.population:
            return {}
        members = sorted(done, key=lambda t: t.number)[-self.population :]
        picks = self._rng.choice(len(members), size=self.tournament, replace=False)
        sample = [members[i] for i in sorted(picks)]
        parent = min(sample, key=lambda t: (self._beaten_by(t, sample, study.directions), t.number))
        child = {name: parent.params[name] for name in search_space if name in parent.params}
        mutable = [n for n, d in search_space.items() if len(d.choices) > 1]  # type: ignore[attr-defined]
        if mutable:
            name = mutable[self._rng.randint(len(mutable))]
            choices = [c for c in search_space[name].choices if c != child.get(name)]  # type: ignore[attr-defined]
            child[name] = choices[self._rng.randint(len(choices))]
        return child

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    @staticmethod
    def _beaten_by(t: FrozenTrial, sample: list[FrozenTrial], directions: list[StudyDirection]) -> int:
        def as_min(x: FrozenTrial) -> list[float]:
            return [
                -v if d == StudyDirection.MAXIMIZE else v for v, d in zip(x.values, directions, strict=True)
            ]

        mine = as_min(t)
        return sum(dominates(as_min(o), mine) for o in sample if o is not t)
