"""Architecture x PIM hardware co-design search (`optkit search`).

Search spaces (`space.py`), searchers through Optuna's ask/tell (`searchers.py`,
`evolution.py`), executors (`executors.py`: this process or a local pool; `ray_executor.py`:
Ray tasks), the study loop with its journal (`study.py`), Pareto fronts (`pareto.py`) and the
entry point `run_search` (`api.py`). Needs `optkit[search]`; Ray needs `optkit[distributed]`.
"""

from optkit.search.api import SearchConfig, SearchProblem, SearchResult, run_search
from optkit.search.pareto import hypervolume, pareto_front
from optkit.search.space import Candidate, HardwareChoice, SearchSpace

__all__ = [
    "Candidate",
    "HardwareChoice",
    "SearchConfig",
    "SearchProblem",
    "SearchResult",
    "SearchSpace",
    "hypervolume",
    "pareto_front",
    "run_search",
]
