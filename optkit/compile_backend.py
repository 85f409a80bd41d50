"""`torch.compile(model, backend="optkit")`: optkit's passes and TVM lowering behind dynamo.

Dynamo hands the backend one FX graph per captured region (several when the model has graph
breaks) with its example inputs. Each graph is captured into a Program (`torch.export`,
non-strict, of the graph with its weights frozen in), optimized with the configured passes
(verified by the PassManager), lowered for the target (`cpu`, `cuda`; `eager` runs the optimized
graph in PyTorch) and returned as a callable that hands torch tensors to the compiled artifact
and returns torch tensors in the graph's output structure (zero-copy on the CPU where the
buffers allow).

Options come either through `torch.compile(model, backend="optkit", options={...})`, which
dynamo passes to the backend as `options=` when it compiles the first graph (so a bad option
fails at the first call, wrapped in dynamo's `BackendCompilerFailed`), or through the factory
`backend(passes=..., target=...)`, which checks them when it is called and returns the callable
to give as `backend=`. Both take the fields of `CompileOptions`.

Graphs optkit does not compile run as dynamo gave them, with a logged warning that says why:
symbolic (dynamic) shapes, inputs that need gradients, tensors on another device than the
target, or a capture / pass / lowering failure (the message names the op). Weights are read
once, when a graph compiles, as inductor's `freezing` does: after changing them in place call
`torch._dynamo.reset()`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils import _pytree as pytree

from optkit.errors import BackendError, ConfigError, UnknownNameError
from optkit.ir.capture import capture
from optkit.ir.program import Program
from optkit.pipeline import PassManager, build_passes

log = logging.getLogger(__name__)

LOWERED_TARGETS = ("cpu", "cuda")
TARGETS = (*LOWERED_TARGETS, "eager")
_SCHEDULES = ("default", "blas", "naive")  # backends/build.py SCHEDULES; checked again by lower()
# Dynamo names module paths after the frame's locals or globals: "L['self'].fc1", "G['model'].fc1".
_DYNAMO_ROOT = re.compile(r"^[LG]\['[^']*'\]\.?")

CompiledFn = Callable[..., Any]


@dataclass(frozen=True)
class CompileOptions:
    """What the optkit backend does with each graph dynamo gives it.

    `passes`: pass or pipeline names run in order (none by default; `cleanup`, `ptq`, ...);
    `pass_options`: per-pass option tables, as `optkit.optimize` takes them; `target`: `cpu`
    (default), `cuda`, or `eager` to run the optimized graph in PyTorch; `schedule` and
    `fast_math`: as `optkit.backends.lower` takes them; `fallback`: run a graph that cannot be
    captured, optimized or lowered as dynamo gave it, with a warning (default), or raise.
    """

    passes: tuple[str, ...] = ()
    pass_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    target: str = "cpu"
    schedule: str = "default"
    fast_math: bool = True
    fallback: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.passes, str) or not all(isinstance(p, str) for p in self.passes):
            raise ConfigError(f"passes must be a list of pass names, got {self.passes!r}")
        if not isinstance(self.pass_options, Mapping):
            raise ConfigError(f"pass_options must map pass names to option tables, got {self.pass_options!r}")
        if self.target not in TARGETS:
            raise UnknownNameError("target", self.target, TARGETS)
        if self.schedule not in _SCHEDULES:
            raise UnknownNameError("schedule", self.schedule, _SCHEDULES)
        for name in ("fast_math", "fallback"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.passes or self.pass_options:
            build_passes(self.passes, self.pass_options)  # unknown names and bad options fail here

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompileOptions:
        """Build the options from `torch.compile(..., options=data)`, naming any unknown key."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ConfigError(
                f"unknown optkit backend option(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
            )
        values = dict(data)
        if isinstance(values.get("passes"), list):
            values["passes"] = tuple(values["passes"])
        return cls(**values)


def backend(
    passes: Sequence[str] = (),
    target: str = "cpu",
    *,
    pass_options: Mapping[str, Mapping[str, Any]] | None = None,
    schedule: str = "default",
    fast_math: bool = True,
    fallback: bool = True,
) -> Callable[..., CompiledFn]:
    """A dynamo backend with these options, checked now: `torch.compile(model, backend=backend(["ptq"]))`.

    The arguments are the fields of `CompileOptions`. Unknown passes, targets or schedules raise
    `UnknownNameError` and bad pass options `ConfigError` here, before any compilation.
    """
    if isinstance(passes, str):
        raise ConfigError(f"passes must be a list of pass names, got {passes!r}")
    options = CompileOptions(tuple(passes), dict(pass_options or {}), target, schedule, fast_math, fallback)

    def optkit_configured(gm: fx.GraphModule, example_inputs: Sequence[Any], **kwargs: Any) -> CompiledFn:
        if kwargs.get("options"):
            raise ConfigError(
                "this backend was configured by optkit.compile_backend.backend(...); "
                "give options there, not to torch.compile"
            )
        _check_mode(kwargs.get("mode"))
        return compile_graph(gm, example_inputs, options)

    return optkit_configured


def optkit_backend(
    gm: fx.GraphModule,
    example_inputs: Sequence[Any],
    *,
    options: Mapping[str, Any] | None = None,
    mode: str | None = None,
) -> CompiledFn:
    """The backend registered as `"optkit"`: dynamo calls it with each graph, its example inputs
    and the `options` dict given to `torch.compile` (fields of `CompileOptions`)."""
    _check_mode(mode)
    return compile_graph(gm, example_inputs, CompileOptions.from_dict(options or {}))


def compile_graph(gm: fx.GraphModule, example_inputs: Sequence[Any], options: CompileOptions) -> CompiledFn:
    """Capture, optimize and lower one dynamo graph; returns what dynamo calls in its place.

    Graphs optkit cannot compile come back as `gm.forward` with a warning (see the module
    docstring), unless `options.fallback` is False, in which case the error is raised.
    """
    reason = _why_not_compiled(gm, example_inputs, options.target)
    if reason is not None:
        log.warning("optkit backend: running a graph of %s in eager PyTorch: %s", _ops_summary(gm), reason)
        return gm.forward
    try:
        return _compile(gm, example_inputs, options)
    except Exception as err:  # capture, passes and TVM raise many types; each becomes a fallback
        if not options.fallback:
            raise
        first_line = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        log.warning(
            "optkit backend: running a graph of %s in eager PyTorch: %s: %s",
            _ops_summary(gm),
            type(err).__name__,
            first_line,
        )
        log.debug("optkit backend: the failure in full", exc_info=True)
        return gm.forward


class CompiledGraph:
    """A dynamo graph compiled by optkit: takes dynamo's arguments (weights included, ignored:
    they are frozen in), returns torch tensors in the graph's output structure."""

    def __init__(
        self, run: Callable[..., Sequence[Any]], user_inputs: tuple[int, ...], out_spec: Any
    ) -> None:
        self._run = run
        self.user_inputs = user_inputs
        self.out_spec = out_spec

    def __call__(self, *args: Any) -> Any:
        outputs = self._run(*(args[i] for i in self.user_inputs))
        return pytree.tree_unflatten(list(outputs), self.out_spec)


def _compile(gm: fx.GraphModule, example_inputs: Sequence[Any], options: CompileOptions) -> CompiledFn:
    frozen, user_inputs = _freeze_weights(gm, example_inputs)
    tensors = [example_inputs[i].detach() for i in user_inputs]
    program = capture(frozen, tensors, name="dynamo_graph")
    _check_functional(program)
    if options.passes:
        program = PassManager(build_passes(options.passes, options.pass_options)).run(program).program
    out_nodes, out_spec = pytree.tree_flatten(_output_node(gm).args[0])
    run = _eager_runner(program) if options.target == "eager" else _artifact_runner(program, options)
    outputs = run(*tensors)  # once at compile time, so that a failure falls back here, not later
    if len(outputs) != len(out_nodes):
        raise BackendError(f"the compiled graph gives {len(outputs)} outputs, dynamo's {len(out_nodes)}")
    log.info("optkit backend: compiled a graph of %s for %s", _ops_summary(gm), options.target)
    return CompiledGraph(run, user_inputs, out_spec)


def _eager_runner(program: Program) -> Callable[..., Sequence[torch.Tensor]]:
    module = program.graph_module

    def run(*inputs: torch.Tensor) -> Sequence[torch.Tensor]:
        return pytree.tree_leaves(module(*inputs))

    return run


def _artifact_runner(program: Program, options: CompileOptions) -> Callable[..., Sequence[torch.Tensor]]:
    from optkit.backends import lower

    artifact = lower(program, options.target, schedule=options.schedule, fast_math=options.fast_math)
    device = program.example_inputs[0].device

    def run(*inputs: torch.Tensor) -> Sequence[torch.Tensor]:
        # Artifact.run shares contiguous CPU buffers with TVM and returns views of TVM's outputs;
        # torch.from_dlpack keeps each view (and the TVM tensor under it) alive.
        outputs = [torch.from_dlpack(out) for out in artifact.run(*inputs)]
        return outputs if device.type == "cpu" else [out.to(device) for out in outputs]

    return run


# -- what dynamo's graph holds -------------------------------------------------------------------
def _why_not_compiled(gm: fx.GraphModule, example_inputs: Sequence[Any], target: str) -> str | None:
    """Why this graph must run as dynamo gave it, or None when optkit can take it."""
    from torch.fx.experimental.symbolic_shapes import free_symbols

    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, value in zip(placeholders, example_inputs, strict=False):
        fake = node.meta.get("example_value")
        if not isinstance(value, torch.Tensor) or (fake is not None and free_symbols(fake)):
            return (
                f"input {node.name!r} has a symbolic shape or is a number, and optkit compiles static "
                "shapes only; give torch.compile dynamic=False"
            )
    tensors = [v for v in example_inputs if isinstance(v, torch.Tensor)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return (
            "it runs with gradients, and optkit compiles for inference only; call the model under "
            "torch.no_grad() or torch.inference_mode()"
        )
    wanted = "cpu" if target in ("cpu", "eager") else "cuda"
    if target != "eager" and any(t.device.type != wanted for t in tensors):
        devices = sorted({t.device.type for t in tensors})
        return f"its tensors are on {', '.join(devices)}, and the target {target!r} takes {wanted} tensors"
    out_leaves = pytree.tree_leaves(_output_node(gm).args[0])
    if not all(
        isinstance(n, fx.Node) and isinstance(n.meta.get("example_value"), torch.Tensor) for n in out_leaves
    ):
        return "it returns values that are not tensors"
    return None


def _freeze_weights(
    gm: fx.GraphModule, example_inputs: Sequence[Any]
) -> tuple[fx.GraphModule, tuple[int, ...]]:
    """A copy of `gm` whose parameter and buffer inputs are constants, and the indices of the
    inputs that stay inputs. Dynamo lifts weights to inputs; passes (PTQ, constant folding) and
    TVM's weight packing need them as constants."""
    graph = fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))  # nodes and their meta (shallow), not the weights
    root = nn.Module()
    user_inputs = []
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for i, (node, value) in enumerate(zip(placeholders, example_inputs, strict=True)):
        if not _is_weight(node, value):
            user_inputs.append(i)
            continue
        root.register_buffer(node.name, value.detach())
        with graph.inserting_before(node):
            constant = graph.get_attr(node.name)
        constant.meta = dict(node.meta)
        node.replace_all_uses_with(constant)
        graph.erase_node(node)
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack:  # a new dict: the copied node's meta shares values with dynamo's graph
            node.meta["nn_module_stack"] = {
                key: (_DYNAMO_ROOT.sub("", str(path)), kind) for key, (path, kind) in stack.items()
            }
    return fx.GraphModule(root, graph), tuple(user_inputs)


def _is_weight(node: fx.Node, value: Any) -> bool:
    if isinstance(value, nn.Parameter):
        return True
    source = getattr(node.meta.get("grapharg"), "source", None)
    if source is None:
        return False
    try:  # dynamo's sources are private API; a weight it lifted is read from a module's _parameters/_buffers
        from torch._dynamo.source import is_from_unspecialized_param_buffer_source

        return bool(is_from_unspecialized_param_buffer_source(source))
    except ImportError:
        return "_buffers" in source.name or "_parameters" in source.name


def _check_functional(program: Program) -> None:
    # An exported graph that writes into its inputs ends in copy_ ops; a compiled artifact
    # returns new tensors instead, so the write would be lost.
    for node in program.graph_module.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op == "call_function" and schema is not None and schema.is_mutable:
            raise BackendError(f"the graph writes into a tensor in place with {node.target}")


def _output_node(gm: fx.GraphModule) -> fx.Node:
    return next(n for n in reversed(gm.graph.nodes) if n.op == "output")


def _ops_summary(gm: fx.GraphModule) -> str:
    calls = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")]
    names = list(dict.fromkeys(_op_label(n) for n in calls))
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    return f"{len(calls)} ops ({shown or 'none'})"


def _op_label(node: fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _check_mode(mode: str | None) -> None:
    if mode not in (None, "default"):
        raise ConfigError(
            f"torch.compile mode={mode!r} means nothing to the optkit backend; give options={{...}} "
            "(passes, pass_options, target, schedule, fast_math, fallback) instead"
        )
