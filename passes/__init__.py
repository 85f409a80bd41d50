"""optkit's passes, one per file; each registers itself with `optkit.pipeline.register_pass`.

Installed as `optkit.passes` (the top-level `passes/` folder, mapped in pyproject.toml).
"""

from optkit.pipeline import register_pipeline

# Named pipelines of the passes in this package. Later passes add theirs in their own files.
register_pipeline("cleanup", ["fold-constants", "fold-batchnorm", "dce"])
