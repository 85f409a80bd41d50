"""optkit: capture a PyTorch model into a graph, optimize it with composable passes, lower it
through Apache TVM, and measure what each step bought and cost.

The public Python API (the CLI calls nothing else):

    import optkit
    program = optkit.load_model("zoo:dit")                 # or optkit.capture(module, inputs)
    program.with_workload(optkit.Workload.from_toml("workload.toml"))  # how it is sampled, calibrated
    result = optkit.optimize(program, ["cleanup"])         # PassManager: verified after each pass
    report = optkit.optimize_file("zoo:dit", ["cleanup"], "out/dit")
"""

from __future__ import annotations

__version__ = "0.1.0"

from optkit.api import analyze, analyze_file, optimize, optimize_file  # noqa: E402  (needs the names above)
from optkit.errors import (
    ArtifactError,
    BackendError,
    BudgetMissed,
    CaptureError,
    ConfigError,
    ModelRefError,
    OptkitError,
    PassError,
    UnknownNameError,
)
from optkit.ir.capture import capture
from optkit.ir.onnx_io import OnnxModel, export_onnx, run_onnx
from optkit.ir.program import Annotations, Block, Program
from optkit.ir.serialize import load_program, save_program
from optkit.pipeline import (
    Pass,
    PassConfig,
    PassManager,
    PassResult,
    Tolerance,
    build_passes,
    register_pass,
    register_pipeline,
    registered_passes,
    registered_pipelines,
)
from optkit.refs import load_model, load_program_ref, parse_model_ref
from optkit.report import Figure, Report, Table
from optkit.sampling import SamplerSpec
from optkit.workload import Calibration, Diffusion, Workload

__all__ = [
    "Annotations",
    "ArtifactError",
    "BackendError",
    "BudgetMissed",
    "Block",
    "Calibration",
    "CaptureError",
    "ConfigError",
    "Diffusion",
    "Figure",
    "ModelRefError",
    "OnnxModel",
    "OptkitError",
    "Pass",
    "PassConfig",
    "PassError",
    "PassManager",
    "PassResult",
    "Program",
    "Report",
    "SamplerSpec",
    "Table",
    "Tolerance",
    "UnknownNameError",
    "Workload",
    "analyze",
    "analyze_file",
    "build_passes",
    "capture",
    "export_onnx",
    "load_model",
    "load_program",
    "load_program_ref",
    "optimize",
    "optimize_file",
    "parse_model_ref",
    "register_pass",
    "register_pipeline",
    "registered_passes",
    "registered_pipelines",
    "run_onnx",
    "save_program",
]
