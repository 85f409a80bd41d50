"""Capture: `nn.Module` + example inputs -> Program, through `torch.export` (non-strict).

When capture fails, the error names the construct that failed, the module path where it
happened (tracked with forward hooks during tracing) and a hint on how to fix the model.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from optkit.errors import CaptureError, ConfigError
from optkit.ir.program import Annotations, Program, remove_unused_attributes

log = logging.getLogger(__name__)

# (substring of the exception text, what it means, how to fix it). First match wins.
_DIAGNOSES: tuple[tuple[str, str, str], ...] = (
    (
        "data-dependent",
        "data-dependent control flow (Python branching or a shape that depends on tensor values)",
        "replace `if tensor...:` with torch.where / torch.cond, or make the shape static",
    ),
    (
        "GuardOnDataDependentSymNode",
        "data-dependent control flow (Python branching on a tensor value)",
        "replace `if tensor...:` with torch.where / torch.cond",
    ),
    (
        ".item()",
        "a `.item()` / `.tolist()` call that turns a tensor into a Python number",
        "keep the value as a tensor",
    ),
    (
        "not supported",
        "an operation torch.export does not support",
        "rewrite it with standard torch ops, or keep it outside the captured forward",
    ),
    (
        "Unsupported",
        "an operation torch.export does not support",
        "rewrite it with standard torch ops, or keep it outside the captured forward",
    ),
)


def capture(
    model: nn.Module,
    example_inputs: Sequence[Any] | torch.Tensor = (),
    name: str = "model",
    *,
    kwargs: Mapping[str, Any] | None = None,
) -> Program:
    """Capture `model` called on `example_inputs` (and keyword `kwargs`) into a Program.

    `example_inputs` are positional tensors of `model.forward`. Keyword inputs are bound by
    name: tensor keywords become graph inputs after the positional ones, in the order given
    (`program.input_names()` lists them), and non-tensor keywords (`return_dict=False`) are
    fixed at their value. The model is put in eval mode. Raises `CaptureError` naming the
    failing construct and module path when `torch.export` cannot trace the model.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"capture needs a torch.nn.Module, got {type(model).__name__}")
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    for i, value in enumerate(inputs):
        if not isinstance(value, torch.Tensor):
            raise ConfigError(
                f"example input {i} is a {type(value).__name__}; capture takes tensors only "
                "(pass flags such as return_dict as keyword inputs, or bind them with functools.partial)"
            )
    keywords = dict(kwargs or {})
    for key, value in keywords.items():
        if isinstance(value, (list, tuple, dict)) and any(
            isinstance(v, torch.Tensor) for v in _leaves(value)
        ):
            raise ConfigError(
                f"keyword input {key!r} nests tensors in a {type(value).__name__}; give tensors directly"
            )
    if not inputs and not any(isinstance(v, torch.Tensor) for v in keywords.values()):
        raise ConfigError("capture needs at least one example input tensor")
    model = model.eval()
    tracker = _ModuleTracker(model)
    try:
        with warnings.catch_warnings(), tracker:
            warnings.simplefilter("ignore")
            exported = torch.export.export(model, inputs, keywords, strict=False)
    except Exception as err:  # torch raises many unrelated types here; all become CaptureError
        raise _capture_error(err, tracker.failed_at, type(model).__name__) from err
    gm = exported.module()
    _drop_guards(gm)
    tensors = inputs
    if keywords:
        tensors = positional_inputs(gm, (inputs, keywords))
    _drop_unread_weights(gm)
    log.info("captured %s: %d nodes", name, len(gm.graph.nodes))
    return Program(gm, tuple(t.detach().clone() for t in tensors), Annotations(), name)


def positional_inputs(gm: fx.GraphModule, args_and_kwargs: Any) -> tuple[torch.Tensor, ...]:
    """Make an exported module positional: its graph inputs are the tensor leaves of
    `(args, kwargs)` in pytree order; non-tensor inputs (fixed at export) are dropped. Returns
    the tensors in the new input order."""
    leaves = torch.utils._pytree.tree_leaves(args_and_kwargs)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(leaves) != len(placeholders):
        raise CaptureError(
            f"the exported graph has {len(placeholders)} inputs for {len(leaves)} example values; "
            "give tensors and flags only"
        )
    tensors = []
    for node, value in zip(placeholders, leaves, strict=True):
        if isinstance(value, torch.Tensor):
            tensors.append(value)
        elif node.users:
            raise CaptureError(f"input {node.target!r} is a {type(value).__name__} the graph computes with")
        else:
            gm.graph.erase_node(node)
    gm.graph.set_codegen(fx.graph.CodeGen())  # plain positional forward(self, *inputs)
    gm._forward_pre_hooks.clear()  # export's input check expects the original (args, kwargs)
    gm.graph.lint()
    gm.recompile()
    return tuple(tensors)


def _leaves(value: Any) -> list[Any]:
    return torch.utils._pytree.tree_leaves(value)


def _drop_guards(gm: fx.GraphModule) -> None:
    # ep.module() inserts a `_guards_fn` call that re-checks input shapes; passes and exporters
    # do not want it, and the shapes are fixed by the example inputs anyway.
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards_fn"):
            node.replace_all_uses_with(None)  # type: ignore[arg-type]
            gm.graph.erase_node(node)
    for attr in [a for a, _ in gm.named_children() if a.startswith("_guards_fn")]:
        delattr(gm, attr)
    gm.graph.lint()
    gm.recompile()


def _drop_unread_weights(gm: fx.GraphModule) -> None:
    # torch.export lifts every parameter of the module, used or not (a latent diffusion model's
    # autoencoder rides along with its denoiser); weights no op reads would inflate sizes and files.
    dead = [n for n in gm.graph.nodes if n.op == "get_attr" and not n.users]
    for node in dead:
        gm.graph.erase_node(node)
    if dead:
        gm.recompile()
    remove_unused_attributes(gm)


def _capture_error(err: Exception, path: str | None, model_type: str) -> CaptureError:
    text = f"{type(err).__name__}: {err}"
    first_line = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
    what, hint = "an unsupported construct", "see --debug for the full trace"
    for needle, meaning, fix in _DIAGNOSES:
        if needle in text:
            what, hint = meaning, fix
            break
    where = f"module '{path}'" if path else f"the top-level forward of {model_type}"
    return CaptureError(f"capture failed in {where}: {what} ({first_line[:200]}). Hint: {hint}.")


class _ModuleTracker:
    """Forward hooks that remember the innermost module running when tracing fails."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stack: list[str] = []
        self.failed_at: str | None = None
        self.handles: list[Any] = []

    def __enter__(self) -> _ModuleTracker:
        for path, module in self.model.named_modules():
            if not path:
                continue
            self.handles.append(module.register_forward_pre_hook(self._pre(path)))
            # No always_call: on an exception the stack keeps the chain of modules that were running.
            self.handles.append(module.register_forward_hook(self._post(path)))
        return self

    def _pre(self, path: str) -> Any:
        def hook(_module: nn.Module, _args: Any) -> None:
            self.stack.append(path)

        return hook

    def _post(self, path: str) -> Any:
        def hook(_module: nn.Module, _args: Any, _out: Any) -> None:
            if self.stack and self.stack[-1] == path:
                self.stack.pop()

        return hook

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and self.failed_at is None:
            self.failed_at = self.stack[-1] if self.stack else None
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
