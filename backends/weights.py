"""Weights outside the library: constants lifted into one tuple parameter, and the weights file.

A Relax VM executable that holds its weights as constants embeds them in `model.so` when saved,
and TVM's `export_library` holds several copies of them while it does (serialized bytes, the
LLVM blob, the object file, the linker's): measured +6.4x the float weights at 142M parameters
(docs/benchmarks.md, bench_scale), which put an SD-1.5-size UNet at ~20 GB and an SDXL-size one
out of reach of a 24 GiB machine. Here every constant of at least `MIN_BYTES` (64 KiB) becomes an element
of one tuple parameter, `weights`, appended to each public function of the module after the
fusion passes (so constant folding has already run, and kernels are fused as before). The
library then holds only code; the weights are tensors the Artifact passes on every call (one
argument, the same tuple object each time) and writes to `weights.bin`, one tensor after the
other at 64-byte aligned offsets, which loading maps into memory instead of reading.

Equal weights are kept once (the cache step variants of a pipeline reuse the packed weights of
`main`; TVM's constant pool used to deduplicate them by structural equality): by data pointer,
then by content hash.

A lifted weight computed at compile time from a smaller one (`Derivation`: Winograd's transformed
conv weights, 16/9 or 4x the conv's own, `winograd.derived_weights`) is stored as that smaller
array, and its manifest entry names the function and options that compute it again when the
file is loaded (`DERIVATIONS`); loading runs the same numpy code on the same bytes, so the
weights are bit-identical to the compiled ones.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optkit.errors import ArtifactError

# Smaller constants (biases, norms, small layers) stay in the library: each lifted tensor costs
# the VM a tuple read per call (dit tiny, 109 tensors from 1 KiB: 1.04 ms a call against 0.98 ms
# embedded; from 64 KiB, 1 tensor: 0.94 ms), while the memory this saves is in the big ones.
MIN_BYTES = 64 * 1024
ALIGN = 64  # TVM's CPU kernels assume 64-byte aligned buffers
PARAM = "weights"


# a derivation's kind -> "module:function" computing the weight from its source and options
DERIVATIONS = {"winograd": "optkit.backends.winograd:derived_weights"}


class SpillFile:
    """An unnamed temporary file that arrays are appended to and read back from: they wait in
    the page cache, which the kernel can write out and evict, not in the process's memory
    (deleted when the last `Spilled` of it is gone)."""

    def __init__(self) -> None:
        self._file: Any = None
        self._end = 0

    def put(self, array: np.ndarray) -> Spilled:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="optkit-weights-")  # noqa: SIM115  closed with this object
        data = np.ascontiguousarray(array)
        view = memoryview(data.reshape(-1).view(np.uint8).data)
        written = 0
        while written < len(view):
            written += os.pwrite(self._file.fileno(), view[written:], self._end + written)
        spilled = Spilled(self, self._end, tuple(data.shape), str(data.dtype))
        self._end += len(view)
        return spilled

    def read(self, offset: int, nbytes: int) -> bytearray:
        out = bytearray(nbytes)
        view, done = memoryview(out), 0
        while done < nbytes:
            chunk = os.preadv(self._file.fileno(), [view[done:]], offset + done)
            if chunk <= 0:
                raise ArtifactError(f"the temporary file of derived weights ended at {offset + done} bytes")
            done += chunk
        return out


@dataclass(frozen=True)
class Spilled:
    """An array in a `SpillFile`."""

    file: SpillFile
    offset: int
    shape: tuple[int, ...]
    dtype: str

    def array(self) -> np.ndarray:
        nbytes = int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize
        return np.frombuffer(self.file.read(self.offset, nbytes), self.dtype).reshape(self.shape)


@dataclass(frozen=True)
class Derivation:
    """How a weight is computed from `source`, the smaller array stored in its place:
    `DERIVATIONS[kind](source, **options)` (options: JSON values). Between lowering and saving
    the source waits in a `SpillFile` (`LiftedWeights.derived`)."""

    kind: str
    options: dict[str, Any]
    source: np.ndarray | Spilled

    def array(self) -> np.ndarray:
        """The source as an array (read back if spilled)."""
        return self.source.array() if isinstance(self.source, Spilled) else self.source

    def compute(self) -> np.ndarray:
        return derive(self.kind, self.array(), self.options)


def derive(kind: str, source: np.ndarray, options: dict[str, Any]) -> np.ndarray:
    """`DERIVATIONS[kind](source, **options)`."""
    module, name = DERIVATIONS[kind].split(":")
    return np.asarray(getattr(importlib.import_module(module), name)(source, **options))


@dataclass
class LiftedWeights:
    """The tensors lifted out of a module, in the order of the `weights` tuple parameter, and
    for those computed from smaller arrays their `Derivation` (by position)."""

    tensors: list[Any] = field(default_factory=list)  # tvm.runtime.Tensor
    derivations: dict[int, Derivation] = field(default_factory=dict)
    _by_ptr: dict[tuple[int, tuple[int, ...], str], int] = field(default_factory=dict, repr=False)
    _by_digest: dict[tuple[str, tuple[int, ...], str], int] = field(default_factory=dict, repr=False)
    _pending: dict[tuple[int, tuple[int, ...], str], Derivation] = field(default_factory=dict, repr=False)
    _spill: SpillFile = field(default_factory=SpillFile, repr=False)

    def derived(self, data: Any, derivation: Derivation) -> None:
        """Note that the constant `data` (a tvm Tensor, not lifted yet) is `derivation` computed;
        its source is copied to the spill file, out of the process's memory: on an SD-1.5-size
        UNet, held in memory, the 3 x 3 sources of its Winograd weights raised the lowering
        peak from 5.94 to 6.95 GiB (1.76x to 2.07x the weights)."""
        spilled = Derivation(derivation.kind, derivation.options, self._spill.put(derivation.array()))
        self._pending[_ptr_key(torch.from_dlpack(data))] = spilled

    def index(self, data: Any) -> int:
        """The position of `data` (a tvm Tensor) in the tuple, adding it if no equal one is there."""
        view = torch.from_dlpack(data)
        ptr_key = _ptr_key(view)
        if (found := self._by_ptr.get(ptr_key)) is not None:
            return found
        digest = hashlib.blake2b(_bytes(view), digest_size=16).hexdigest()
        key = (digest, tuple(view.shape), str(view.dtype))
        if (found := self._by_digest.get(key)) is None:
            found = len(self.tensors)
            self.tensors.append(data)
            self._by_digest[key] = found
            if (derivation := self._pending.pop(ptr_key, None)) is not None:
                self.derivations[found] = derivation
        self._by_ptr[ptr_key] = found
        return found

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(t) for t in self.tensors)


def lift_pass(store: LiftedWeights, min_bytes: int = MIN_BYTES) -> Any:
    """A module pass: every constant of >= `min_bytes` in a public Relax function becomes
    `weights[i]` of a tuple parameter appended to that function; `store` collects the tensors.
    Every public function gets the same parameter (the whole tuple), so one tuple object serves
    all entry points of a library; a module without such constants is left as it is."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class _Lift(relax.PyExprMutator):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.used: dict[int, Any] = {}

        def visit_generic_const_(self, op: Any) -> Any:
            value = op.value
            if not isinstance(value, tvm.runtime.Tensor) or _nbytes(value) < min_bytes:
                return op
            i = store.index(value)
            if i not in self.used:
                self.used[i] = relax.Var(f"w{i}", op.ty)
            return self.used[i]

    @tvm.transform.module_pass(opt_level=0, name="OptkitLiftWeights")
    def _apply(mod: Any, _ctx: Any) -> Any:
        public = {}
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function) and func.attrs is not None and "global_symbol" in func.attrs:
                mutator = _Lift()
                public[gvar] = (func, mutator.visit_expr(func.body), mutator.used)
        if not store.tensors:
            return mod
        # Every public function takes the same tuple (the whole store, whatever it reads), so
        # the caller appends one object to the inputs of any entry point.
        tuple_type = relax.TupleType([relax.TensorType(list(t.shape), str(t.dtype)) for t in store.tensors])
        for gvar, (func, body, used) in public.items():
            param = relax.Var(PARAM, tuple_type)
            reads = [relax.VarBinding(var, relax.TupleGetItem(param, i)) for i, var in sorted(used.items())]
            blocks = [relax.BindingBlock(reads), *body.blocks] if reads else list(body.blocks)
            mod[gvar] = relax.Function(
                [*func.params, param],
                relax.SeqExpr(blocks, body.body),
                func.ret_ty,
                func.is_pure,
                func.attrs,
                func.span,
            )
        return mod

    return _apply


def weight_tuple(tensors: list[Any], device: Any) -> Any:
    """The runtime tuple the functions take as their last argument (tensors moved to `device`)."""
    import tvm

    if device.dlpack_device_type() != 1:  # not the CPU: one copy per weight, once
        tensors = [t.copyto(device) for t in tensors]
    return tvm.runtime.convert(list(tensors))


def save_weights(
    tensors: list[Any], path: Path, derivations: dict[int, Derivation] | None = None
) -> dict[str, Any]:
    """Write `tensors` one after the other at 64-byte aligned offsets, a derived one as its
    `Derivation`'s source; returns the manifest entry (file name, SHA-256, bytes, and per tensor
    its offset, shape and dtype as stored, and for a derived one `derived`: the kind, options,
    shape and dtype it computes)."""
    derivations = derivations or {}
    digest = hashlib.sha256()
    entries = []
    offset = 0
    with path.open("wb") as fh:
        for i, t in enumerate(tensors):
            derivation = derivations.get(i)
            view = torch.from_dlpack(t) if derivation is None else torch.from_numpy(derivation.array())
            pad = -offset % ALIGN
            if pad:
                fh.write(b"\0" * pad)
                digest.update(b"\0" * pad)
                offset += pad
            data = _bytes(view)
            fh.write(data)
            digest.update(data)
            entry: dict[str, Any] = {"offset": offset, "shape": list(view.shape), "dtype": _dtype_name(view)}
            if derivation is not None:
                full = torch.from_dlpack(t)
                entry["derived"] = {
                    "kind": derivation.kind,
                    "options": derivation.options,
                    "shape": list(full.shape),
                    "dtype": _dtype_name(full),
                }
            entries.append(entry)
            offset += len(data)
    return {"file": path.name, "sha256": digest.hexdigest(), "bytes": offset, "tensors": entries}


def load_weights(path: Path, info: dict[str, Any]) -> tuple[list[Any], dict[int, Derivation]]:
    """The tensors of a weights file written by `save_weights`, memory-mapped (copy on write: the
    pages are read when a kernel first touches them and shared with the page cache), derived
    ones computed from their stored source; and those `Derivation`s, by position."""
    import tvm

    size = path.stat().st_size
    if size != info.get("bytes"):
        raise ArtifactError(
            f"{path} has {size} bytes, its manifest says {info.get('bytes')}: the file is truncated or was replaced"
        )
    mapped = np.memmap(path, dtype=np.uint8, mode="c") if size else np.zeros(0, np.uint8)
    tensors = []
    derivations: dict[int, Derivation] = {}
    try:
        for i, entry in enumerate(info["tensors"]):
            dtype = getattr(torch, str(entry["dtype"]))
            shape = [int(d) for d in entry["shape"]]
            count = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
            start = int(entry["offset"])
            if start % ALIGN or start + count > size:
                raise ArtifactError(
                    f"{path}: tensor at offset {start} ({count} bytes) is misaligned or outside the file"
                )
            raw = torch.from_numpy(mapped[start : start + count]).view(dtype).reshape(shape)
            if "derived" in entry:  # computed into TVM's own (aligned) memory
                derivations[i], value = _derived(path, i, raw.numpy(), entry["derived"])
                tensors.append(tvm.runtime.tensor(value))
            else:
                tensors.append(tvm.runtime.from_dlpack(raw))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ArtifactError(f"{path}: a weight entry in the manifest is malformed: {err}") from err
    return tensors, derivations


def _derived(path: Path, i: int, source: np.ndarray, spec: dict[str, Any]) -> tuple[Derivation, np.ndarray]:
    """Weight `i`, stored as `source`, computed by its manifest entry's `derived` spec."""
    kind, options = str(spec["kind"]), dict(spec["options"])
    if kind not in DERIVATIONS:
        raise ArtifactError(
            f"{path}: weight {i} is derived by {kind!r}; this optkit knows {sorted(DERIVATIONS)}"
        )
    derivation = Derivation(kind, options, source)  # the mapped bytes: the loaded Artifact's record
    value = np.ascontiguousarray(derivation.compute())
    if list(value.shape) != list(spec["shape"]) or str(value.dtype) != spec["dtype"]:
        raise ArtifactError(
            f"{path}: weight {i} derived by {kind!r} has shape {list(value.shape)} and dtype {value.dtype}, "
            f"its manifest says {spec['shape']} and {spec['dtype']}"
        )
    return derivation, value


def _ptr_key(view: torch.Tensor) -> tuple[int, tuple[int, ...], str]:
    return (view.data_ptr(), tuple(view.shape), str(view.dtype))


def _dtype_name(view: torch.Tensor) -> str:
    return str(view.dtype).removeprefix("torch.")


def _nbytes(data: Any) -> int:
    import tvm

    kind = tvm.runtime.DataType(str(data.dtype))
    return int(np.prod(data.shape)) * max(kind.bits * kind.lanes // 8, 1)


def _bytes(view: torch.Tensor) -> memoryview:
    flat = view.contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().data if flat.numel() else memoryview(b"")


class WeightReleaser:
    """Frees a Program's weight storage as packing replaces its last use (`optkit lower`'s
    `release_weights`: a model's float weights and their packed panels are then not held
    together, so lowering peaks near one copy of the weights instead of two).

    The imported constants are the Program's own tensors (DLPack views), so a storage is freed
    (`resize_(0)`) when every constant of the module that points into it has been consumed;
    storages no constant points into (weights the compiled graph does not read, or read
    through a converted copy) are freed at once. Storages that cannot be resized (numpy-backed)
    are left alone. The Program cannot run afterwards.
    """

    def __init__(self, tensors: list[torch.Tensor], mod: Any) -> None:
        import tvm
        from tvm import relax

        storages: dict[int, Any] = {}
        for t in tensors:
            storage = t.untyped_storage()
            if storage.nbytes():
                storages[storage.data_ptr()] = storage
        self._starts = sorted(storages)
        self._storages = storages
        self.uses = dict.fromkeys(storages, 0)
        self.freed_bytes = 0

        def count(expr: Any) -> None:
            if isinstance(expr, tvm.ir.expr.GenericConst) and (key := self._owner(expr.value)) is not None:
                self.uses[key] += 1

        for func in mod.functions.values():
            if isinstance(func, relax.Function):
                relax.analysis.post_order_visit(func, count)
        for key, n in list(self.uses.items()):
            if n == 0:
                self._free(key)

    def consumed(self, value: Any) -> None:
        """One use of the constant `value` (a tvm Tensor) is gone; free its storage if it was the last."""
        key = self._owner(value)
        if key is None or key not in self.uses:
            return
        self.uses[key] -= 1
        if self.uses[key] == 0:
            self._free(key)

    def _owner(self, value: Any) -> int | None:
        import bisect

        try:
            ptr = torch.from_dlpack(value).data_ptr()
        except (BufferError, RuntimeError, TypeError):
            return None
        i = bisect.bisect_right(self._starts, ptr) - 1
        if i < 0:
            return None
        start = self._starts[i]
        return start if ptr < start + self._storages[start].nbytes() else None

    def _free(self, key: int) -> None:
        storage = self._storages[key]
        size = storage.nbytes()
        try:
            storage.resize_(0)
        except RuntimeError:  # not resizable (numpy-backed): it stays
            return
        self.uses.pop(key, None)
        self.freed_bytes += size
