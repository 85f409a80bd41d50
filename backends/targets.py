"""Targets: the names users give (`cpu`, `cuda`) resolved to TVM 0.27 `Target` objects.

TVM 0.27 takes targets as JSON dicts wrapped in `tvm.target.Target` (the old `"llvm -mcpu=..."`
strings are refused). The CPU target describes the host: LLVM's own host detection gives `mcpu`
(`znver4`, `skylake-avx512`, ...), with the /proc/cpuinfo flags as a fallback and `generic`
when neither works. CUDA code is compiled by nvcc (the wheel has no NVRTC bindings here), so the
CUDA target needs nvcc on PATH or in /usr/local/cuda/bin.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optkit.errors import BackendError, UnknownNameError
from optkit.host import cpu_flags

log = logging.getLogger(__name__)

TARGETS = ("cpu", "cuda")
DEFAULT_CUDA_ARCH = "sm_80"
_NVCC_PLACES = ("/usr/local/bin/nvcc", "/usr/local/cuda/bin/nvcc")
# /proc/cpuinfo flag -> the most generic LLVM cpu name that has it (checked best first).
_FLAG_CPUS = (("avx512f", "skylake-avx512"), ("avx2", "haswell"), ("sse4_2", "nehalem"))


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: the user's name, the TVM target as a JSON-able dict, and its device."""

    name: str
    config: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.config["kind"])

    def tvm_target(self) -> Any:
        import tvm

        return tvm.target.Target(dict(self.config))

    def device(self) -> Any:
        import tvm

        return tvm.cuda(0) if self.name == "cuda" else tvm.cpu(0)


def resolve_target(name: str, num_cores: int | None = None, cuda_arch: str = DEFAULT_CUDA_ARCH) -> TargetSpec:
    """`cpu` -> the host's LLVM target; `cuda` -> a CUDA target for `cuda_arch` (needs nvcc)."""
    if name not in TARGETS:
        raise UnknownNameError("target", name, TARGETS + ("pim:PRESET",))
    if name == "cpu":
        return TargetSpec("cpu", host_cpu_config(num_cores))
    if find_nvcc() is None:
        raise BackendError(
            "target cuda needs nvcc to compile the generated kernels, but nvcc is missing "
            f"(looked on PATH and in {', '.join(_NVCC_PLACES)}); install the CUDA toolkit or use --target cpu"
        )
    if not cuda_arch.startswith("sm_"):
        raise BackendError(f"cuda arch must look like sm_80, got {cuda_arch!r}")
    return TargetSpec("cuda", {"kind": "cuda", "arch": cuda_arch})


def host_cpu_config(num_cores: int | None = None) -> dict[str, Any]:
    """The host CPU as a TVM llvm target dict: detected `mcpu` and the number of cores to use."""
    cores = num_cores or len(os.sched_getaffinity(0))
    return {"kind": "llvm", "mcpu": host_mcpu(), "num-cores": int(cores)}


def host_mcpu() -> str:
    """LLVM's name for the host CPU, from LLVM host detection or /proc/cpuinfo; `generic` if unknown."""
    try:
        from tvm.target import codegen

        cpu = str(codegen.llvm_get_system_cpu())
        if cpu and cpu != "generic":
            return cpu
    except Exception as err:  # an LLVM-less build raises here; fall back to cpuinfo
        log.debug("LLVM host detection failed: %s", err)
    return _mcpu_from_cpuinfo(Path("/proc/cpuinfo"))


def _mcpu_from_cpuinfo(path: Path) -> str:
    flags = cpu_flags(path)
    return next((cpu for flag, cpu in _FLAG_CPUS if flag in flags), "generic")


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo, or '' where it cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def find_nvcc() -> str | None:
    """Path of nvcc (PATH first, then the usual install places), or None."""
    found = shutil.which("nvcc")
    if found:
        return found
    return next((p for p in _NVCC_PLACES if os.access(p, os.X_OK)), None)


def cuda_device_present() -> bool:
    """Whether a CUDA device is visible to TVM's runtime."""
    import tvm

    try:
        return bool(tvm.cuda(0).exist)
    except Exception:  # a runtime without the CUDA driver raises instead of answering False
        return False


@contextlib.contextmanager
def nvcc_compile_mode() -> Iterator[None]:
    """Make TVM compile CUDA kernels with nvcc (to fatbin) for the duration of the block.

    TVM 0.27 defaults to NVRTC through the `cuda-bindings` package, which this environment lacks;
    its compile callback reads `TVM_CUDA_COMPILE_MODE` and puts nvcc's directory on PATH.
    """
    nvcc = find_nvcc()
    saved = {k: os.environ.get(k) for k in ("TVM_CUDA_COMPILE_MODE", "PATH")}
    os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"
    if nvcc:
        os.environ["PATH"] = f"{Path(nvcc).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
