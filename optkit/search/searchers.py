"""Searchers by name: Optuna samplers that the study's ask/tell loop drives.

`nsga2` (NSGA-II, Deb et al. 2002) for several objectives, `tpe` (tree-structured Parzen
estimator; Optuna's multi-objective variant when given several), `evolution` (regularized
evolution, `evolution.py`) and `random`, the baseline. All are seeded, so a search with the
same seed and the same trial batches asks the same candidates.
"""

from __future__ import annotations

from typing import Any

from optkit.errors import UnknownNameError

SEARCHERS = ("nsga2", "tpe", "evolution", "random")


def make_sampler(name: str, seed: int, population: int = 16) -> Any:
    """The Optuna sampler of searcher `name` (`population`: NSGA-II's and evolution's size)."""
    import optuna

    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(population, 10))
    if name == "evolution":
        from optkit.search.evolution import RegularizedEvolutionSampler

        return RegularizedEvolutionSampler(
            population=population, tournament=max(2, population // 4), seed=seed
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UnknownNameError("searcher", name, SEARCHERS)
