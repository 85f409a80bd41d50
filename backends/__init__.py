"""optkit.backends: lower a Program through Apache TVM (Relax) to CPU (LLVM) or CUDA.

`lower(program, target="cpu"|"cuda", tune_trials=0, work_dir=None) -> Artifact`;
`Artifact.run(*inputs) -> list[np.ndarray]`, `Artifact.save(dir)`, `load_artifact(dir)`.
See docs/backends.md.
"""

from optkit.backends.artifact import Artifact, load_artifact
from optkit.backends.lowering import lower
from optkit.backends.targets import TARGETS

__all__ = ["TARGETS", "Artifact", "load_artifact", "lower"]
