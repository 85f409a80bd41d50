"""The one error hierarchy of optkit.

Every error a user can cause derives from `OptkitError`; its message names the bad value and
what is allowed. The CLI turns these into one line on stderr and the error's `exit_code`: 2 for
bad input, 3 for a run that finished but missed what it was required to meet (`BudgetMissed`).
"""

from __future__ import annotations


class OptkitError(Exception):
    """Base class of every error optkit raises on bad input or a failed step."""

    exit_code = 2


class ConfigError(OptkitError, ValueError):
    """A configuration value is out of range or of the wrong kind."""


class ModelRefError(OptkitError):
    """A model reference (zoo name, file path, `pkg.module:factory`) cannot be resolved."""


class CaptureError(OptkitError):
    """`torch.export` could not capture the model; names the op or construct and module path."""


class PassError(OptkitError):
    """A pass failed or broke the graph; names the pass and the passes that ran before it."""


class UnknownNameError(OptkitError, KeyError):
    """A name (pass, pipeline, zoo model, target) is not registered; lists the known ones."""

    def __init__(self, kind: str, name: str, known: list[str] | tuple[str, ...]) -> None:
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(self.known) or '(none)'}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ArtifactError(OptkitError):
    """A saved Program, report or compiled artifact is missing, corrupt or from another version."""


class BackendError(OptkitError):
    """Lowering or running on a backend failed (unsupported op, missing toolchain, bad input)."""


class ResourceError(OptkitError):
    """A run would need more memory than the machine has; says how much and what to change."""


class BudgetMissed(OptkitError):
    """A run finished and wrote its outputs, but missed a budget it was given (`--require`) or,
    for `optkit compare --fail-on-regression`, regressed. The CLI exits with code 3."""

    exit_code = 3


class DistributedError(OptkitError):
    """A distributed run (`optkit search --ray ADDRESS`) cannot reach or use its cluster."""
