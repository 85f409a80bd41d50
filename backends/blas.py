"""Float32 matmuls on the CPU through BLAS, as a Relax `call_dps_packed` to a registered function.

The apache-tvm 0.27 wheel ships no BLAS or DNNL BYOC (`tvm.contrib.cblas.matmul`,
`relax.ext.dnnl` are absent), and untuned TVM matmuls are two orders of magnitude slower than
PyTorch. So the default CPU path rewrites every float32 `relax.matmul` with static shapes into a
destination-passing call to `optkit.blas.matmul`, a global function registered here that runs
`numpy.matmul` (OpenBLAS, or whatever BLAS numpy links) on zero-copy DLPack views of the VM's
tensors. Batched and broadcast matmuls (attention) go through the same call.

Consequence: a library compiled this way calls back into Python, so it runs where optkit is
importable (`load_artifact` registers the function before loading; the manifest lists it).
Everything else (bias, GELU, softmax, quantized kernels) stays compiled TVM code.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from optkit.backends.relax_exprs import rewrite_calls

log = logging.getLogger(__name__)

BLAS_MATMUL = "optkit.blas.matmul"


def _blas_matmul(a: Any, b: Any, out: Any) -> None:
    np.matmul(np.from_dlpack(a), np.from_dlpack(b), out=np.from_dlpack(out))


def register() -> None:
    """Register `optkit.blas.matmul` with TVM's global function table (idempotent)."""
    import tvm

    if tvm.get_global_func(BLAS_MATMUL, allow_missing=True) is None:
        tvm.register_global_func(BLAS_MATMUL, _blas_matmul, override=True)


def offload_matmuls(mod: Any) -> tuple[Any, int]:
    """Rewrite float32 static-shape `relax.matmul` calls in `mod` into BLAS calls; return the count."""
    mod, count = rewrite_calls(mod, "relax.matmul", _offloaded)
    if count:
        register()
    return mod, count


def _offloaded(call: Any, _builder: Any) -> Any:
    from tvm import relax

    if not _offloadable(call):
        return None
    return relax.call_dps_packed(BLAS_MATMUL, [call.args[0], call.args[1]], call.ty)


def _offloadable(call: Any) -> bool:
    from tvm import relax, tirx

    tys = [arg.ty for arg in call.args] + [call.ty]
    for ty in tys:
        if not isinstance(ty, relax.TensorType) or ty.dtype != "float32" or ty.shape is None:
            return False
        dims = list(ty.shape)
        if len(dims) < 2 or not all(isinstance(d, tirx.IntImm) for d in dims):
            return False
    return True
