"""Self-attention sites of a Program: the attention op, its Q/K/V/O projections and token layout.

A site is found from an attention node (`aten.scaled_dot_product_attention`, including the one
`nn.MultiheadAttention` captures to, or a spelled-out `softmax(Q K^T) V`):

- Q, K and V are the tensors (B, heads, N, head_dim) the attention reads; walking back from
  them through layout ops (and elementwise ops such as RoPE) reaches the projection Linears.
- It is *self*-attention when the Q and K projections read the same tensor; that tensor, in
  batch-first layout (B, N, D_in), is the site's `source`. Cross-attention (K from text) is
  left alone.
- Walking forward from the attention output through layout ops reaches the output projection;
  its value, in batch-first layout (B, N, D_out), is the site's `result`: what a replacement
  block computes from `source`.

Masked or causal attention is reported as skipped, with the reason: a token mixer that replaces
it would drop the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

from optkit.ir.ops import op_kind, op_name
from optkit.ir.program import Program, module_path

# Ops that only move or select values; walks pass through them without changing what a value is.
LAYOUT_OPS = frozenset(
    {
        "view", "reshape", "_unsafe_view", "permute", "transpose", "t", "unsqueeze", "squeeze",
        "flatten", "unflatten", "contiguous", "clone", "select", "getitem", "unbind", "split",
        "split_with_sizes", "chunk", "expand", "slice", "alias", "detach", "dropout",
    }
)  # fmt: skip
_WALK_DEPTH = 16


@dataclass(frozen=True)
class AttentionSite:
    """One self-attention site (see the module docstring); shapes from capture."""

    path: str
    node: fx.Node  # the SDPA node, or the softmax of a spelled-out attention
    query: fx.Node  # (B, h, N, Dh)
    key: fx.Node  # (B, h, N, Dh), or (B, h, Dh, N) when `key_transposed`
    value: fx.Node  # (B, h, N, Dh)
    attended: fx.Node  # attention output (B, h, N, Dh)
    source: fx.Node  # (B, N, D_in)
    result: fx.Node  # (B, N, D_out)
    projections: tuple[str, ...]  # module paths of the Q/K/V and output Linears
    key_transposed: bool
    heads: int
    head_dim: int
    tokens: int
    dim_in: int
    dim_out: int

    def watched(self) -> list[fx.Node]:
        """The nodes whose values distillation reads, in a fixed order."""
        return [self.source, self.result, self.query, self.key, self.value, self.attended]


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    val = node.meta.get("val")
    return tuple(int(s) for s in val.shape) if isinstance(val, torch.Tensor) else None


def _is_layout(node: fx.Node) -> bool:
    return node.op == "call_function" and op_name(node) in LAYOUT_OPS


def _linears_behind(node: fx.Node) -> list[fx.Node]:
    # Linear nodes reached walking back from `node`, not crossing a Linear, matmul or attention.
    found: list[fx.Node] = []
    frontier, seen = [node], {node}
    for _ in range(_WALK_DEPTH):
        nxt = []
        for n in frontier:
            if op_kind(n) == "linear":
                found.append(n)
                continue
            if n is not node and op_kind(n) in ("matmul", "attention", "softmax"):
                continue
            for arg in n.all_input_nodes:
                if arg not in seen and arg.op == "call_function":
                    seen.add(arg)
                    nxt.append(arg)
        frontier = nxt
    return found


def _batch_first(node: fx.Node, shape: tuple[int, int], forward: bool) -> fx.Node | None:
    # Follow layout ops (back to the producer, or forward through single users) until the value
    # has shape (B, N, D).
    cur = node
    for _ in range(6):
        s = _shape(cur)
        if s is not None and len(s) == 3 and s[:2] == shape:
            return cur
        if forward:
            users = list(cur.users)
            if len(users) != 1 or not _is_layout(users[0]):
                return None
            cur = users[0]
        else:
            if not _is_layout(cur) or not cur.all_input_nodes:
                return None
            cur = cur.all_input_nodes[0]
    return None


def _after(node: fx.Node) -> fx.Node | None:
    # The output projection: through single-user layout ops to a Linear that reads the value.
    cur = node
    for _ in range(8):
        users = list(cur.users)
        if len(users) != 1:
            return None
        user = users[0]
        if op_kind(user) == "linear" and user.args[0] is cur:
            return user
        if not _is_layout(user):
            return None
        cur = user
    return None


def _spelled_out(node: fx.Node) -> tuple[fx.Node, fx.Node, fx.Node, fx.Node, bool] | None:
    # softmax node -> (q, k^T, v, attended, masked) of softmax(q @ k^T) @ v.
    users = [u for u in node.users if op_kind(u) == "matmul"]
    if len(users) != 1 or users[0].args[0] is not node:
        return None
    attended = users[0]
    cur, masked = node.all_input_nodes[0], False
    for _ in range(5):
        if op_kind(cur) == "matmul":
            q, kt = cur.args[0], cur.args[1]
            if isinstance(q, fx.Node) and isinstance(kt, fx.Node) and isinstance(attended.args[1], fx.Node):
                return q, kt, attended.args[1], attended, masked
            return None
        inputs = cur.all_input_nodes
        if not inputs:
            return None
        masked = masked or any(a.op != "get_attr" for a in inputs[1:])
        cur = inputs[0]
    return None


def find_attention_sites(program: Program) -> tuple[list[AttentionSite], list[tuple[str, str]]]:
    """Self-attention sites of `program` in graph order, and the attention nodes left alone as
    (module path, reason) pairs: cross-attention, masks, no projections, unexpected layouts."""
    sites: list[AttentionSite] = []
    skipped: list[tuple[str, str]] = []
    for node in program.attention_sites():
        path = module_path(node)
        if op_kind(node) == "attention":
            q, k, v = node.args[:3]
            attended, key_t = node, False
            mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
            causal = (node.args[5] if len(node.args) > 5 else node.kwargs.get("is_causal", False)) is True
            if mask is not None or causal:
                skipped.append((path, "masked or causal attention"))
                continue
        else:
            parts = _spelled_out(node)
            if parts is None:
                skipped.append((path, "softmax not in a softmax(QK^T)V pattern"))
                continue
            q, k, v, attended, masked = parts
            key_t = True
            if masked:
                skipped.append((path, "masked attention"))
                continue
        assert isinstance(q, fx.Node) and isinstance(k, fx.Node) and isinstance(v, fx.Node)
        qs, vs = _shape(q), _shape(v)
        if qs is None or vs is None or len(qs) != 4:
            skipped.append((path, f"query shape {qs} is not (B, heads, N, head_dim)"))
            continue
        bsz, heads, tokens, head_dim = qs
        q_lin, k_lin, v_lin = _linears_behind(q), _linears_behind(k), _linears_behind(v)
        if not q_lin or not k_lin or not v_lin:
            skipped.append((path, "no Q/K/V projection found"))
            continue
        q_src = {n.args[0] for n in q_lin}
        k_src = {n.args[0] for n in k_lin}
        if len(q_src) != 1 or q_src != k_src:
            skipped.append((path, "cross-attention (queries and keys read different tensors)"))
            continue
        src = next(iter(q_src))
        out_lin = _after(attended)
        source = _batch_first(src, (bsz, tokens), forward=False) if isinstance(src, fx.Node) else None
        result = _batch_first(out_lin, (bsz, tokens), forward=True) if out_lin is not None else None
        if source is None or result is None or out_lin is None:
            skipped.append((path, "no (B, N, D) input or output projection around the attention"))
            continue
        s_in, s_out = _shape(source), _shape(result)
        assert s_in is not None and s_out is not None
        linears = {module_path(n): None for n in (*q_lin, *k_lin, *v_lin, out_lin)}
        sites.append(
            AttentionSite(
                path, node, q, k, v, attended, source, result, tuple(linears), key_t,
                heads, head_dim, tokens, s_in[2], s_out[2],
            )
        )  # fmt: skip
    return sites, skipped
