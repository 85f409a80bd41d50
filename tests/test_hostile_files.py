"""Hostile inputs on the command line: truncated, corrupted and wrong-format files, tampered
artifacts, badly typed TOML, archives whose members escape, pickles under another name.

Each case runs one `optkit` command in-process and must end the same way: exit code 2, one line
on stderr naming the file, no output written, and no code from the file run.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper
from optkit.backends.artifact import FORMAT, FORMAT_VERSION, LIBRARY, MANIFEST, _sha256, _versions
from torch import nn

from optkit.cli.main import cli
from optkit.ir.capture import capture
from optkit.ir.serialize import save_program

CANARY = "optkit-hostile-canary"


class _Plant:
    """Unpickling this writes a file: the proof that a loader ran code from a file."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "pwned"))


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return make_good(tmp_path_factory.mktemp("good"))


def make_good(root: Path) -> Path:
    """A directory with a small valid Program (`model.pt2` + sidecar) and inputs for it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    save_program(capture(model, (torch.randn(2, 8),), name="mlp"), root / "model.pt2")
    np.savez(root / "inputs.npz", arr_0=np.zeros((2, 8), np.float32))
    return root


def _copy_program(good: Path, dst: Path, name: str = "model.pt2") -> Path:
    target = dst / name
    target.write_bytes((good / "model.pt2").read_bytes())
    (dst / f"{name}.json").write_text((good / "model.pt2.json").read_text())
    return target


def _tiny_onnx() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _fake_artifact(root: Path, lib_bytes: bytes = b"\x7fELF not really", **changes) -> Path:
    """An artifact directory whose manifest is well-formed and matches its (fake) library."""
    art = root / "art"
    art.mkdir()
    (art / LIBRARY).write_bytes(lib_bytes)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **_versions(),
        "target": "cpu",
        "target_config": {},
        "inputs": [{"name": "x", "shape": [2, 8], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [2, 4], "dtype": "float32"}],
        "library": {"file": LIBRARY, "sha256": _sha256(art / LIBRARY), "bytes": len(lib_bytes)},
    }
    manifest.update(changes)
    (art / MANIFEST).write_text(json.dumps(manifest))
    return art


# -- the cases: each builds its files under `tmp` and returns the CLI arguments ------------------
def _optimize(model: Path | str, *extra: str) -> list[str]:
    return ["optimize", str(model), "--passes", "cleanup", "--no-onnx", "-o", "OUT", *extra]


def pt2_truncated(tmp: Path, good: Path) -> list[str]:
    path = _copy_program(good, tmp)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return _optimize(path)


def pt2_empty(tmp: Path, good: Path) -> list[str]:
    (tmp / "model.pt2").write_bytes(b"")
    return _optimize(tmp / "model.pt2")


def pt2_corrupted(tmp: Path, good: Path) -> list[str]:
    path = _copy_program(good, tmp)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for i in rng.integers(64, len(data) - 64, size=len(data) // 50):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return _optimize(path)


def pt2_is_text(tmp: Path, good: Path) -> list[str]:
    (tmp / "model.pt2").write_text("this is not a model\n")
    return _optimize(tmp / "model.pt2")


def pt2_is_onnx(tmp: Path, good: Path) -> list[str]:
    onnx.save(_tiny_onnx(), str(tmp / "model.pt2"))
    return _optimize(tmp / "model.pt2")


def pt2_is_pickle(tmp: Path, good: Path) -> list[str]:
    (tmp / "model.pt2").write_bytes(pickle.dumps(_Plant(str(tmp / CANARY))))
    return _optimize(tmp / "model.pt2")


def pt2_is_torch_save(tmp: Path, good: Path) -> list[str]:
    torch.save({"model": _Plant(str(tmp / CANARY))}, tmp / "model.pt2")
    return _optimize(tmp / "model.pt2")


def pt2_zip_escape(tmp: Path, good: Path) -> list[str]:
    path = _copy_program(good, tmp)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("../../" + CANARY, "escaped")
        zf.writestr("/tmp/" + CANARY, "absolute")
    return _optimize(path)


def pt2_zip_only_escapes(tmp: Path, good: Path) -> list[str]:
    with zipfile.ZipFile(tmp / "model.pt2", "w") as zf:
        zf.writestr("../../" + CANARY, "escaped")
    return _optimize(tmp / "model.pt2")


def _swap_members(good: Path, tmp: Path, swap: Callable[[str], bool]) -> Path:
    # A real archive whose chosen members are replaced by a pickle that plants a file.
    src, path = good / "model.pt2", tmp / "model.pt2"
    (tmp / "model.pt2.json").write_text((good / "model.pt2.json").read_text())
    buf = io.BytesIO()
    torch.save(_Plant(str(tmp / CANARY)), buf)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, buf.getvalue() if swap(item.filename) else zin.read(item.filename))
    return path


def pt2_pickled_sample_inputs(tmp: Path, good: Path) -> list[str]:
    # torch.export.load falls back to weights_only=False for the sample inputs.
    return _optimize(_swap_members(good, tmp, lambda name: "sample_inputs" in name))


def pt2_pickled_weight(tmp: Path, good: Path) -> list[str]:
    path = _swap_members(good, tmp, lambda name: name.endswith("/weights/weight_0"))
    # Mark the weight as pickled, as torch.export.save does for tensors it cannot store raw.
    with zipfile.ZipFile(path) as zin:
        members = {i.filename: zin.read(i.filename) for i in zin.infolist()}
    config_name = next(n for n in members if n.endswith("model_weights_config.json"))
    config = json.loads(members[config_name])
    for entry in config["config"].values():
        if entry.get("path_name") == "weight_0":
            entry["use_pickle"] = True
    members[config_name] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as zout:
        for name, data in members.items():
            zout.writestr(name, data)
    return _optimize(path)


def sidecar_not_json(tmp: Path, good: Path) -> list[str]:
    path = _copy_program(good, tmp)
    (tmp / "model.pt2.json").write_text("{not json")
    return _optimize(path)


def sidecar_is_list(tmp: Path, good: Path) -> list[str]:
    path = _copy_program(good, tmp)
    (tmp / "model.pt2.json").write_text("[1, 2, 3]")
    return _optimize(path)


def sidecar_binary(tmp: Path, good: Path) -> list[str]:
    path = _copy_program(good, tmp)
    (tmp / "model.pt2.json").write_bytes(b"\xff\xfe\x00garbage")
    return _optimize(path)


def sidecar_truncated(tmp: Path, good: Path) -> list[str]:
    path = _copy_program(good, tmp)
    text = (tmp / "model.pt2.json").read_text()
    (tmp / "model.pt2.json").write_text(text[: len(text) // 2])
    return _optimize(path)


def sidecar_other_format(tmp: Path, good: Path) -> list[str]:
    path = _copy_program(good, tmp)
    side = json.loads((tmp / "model.pt2.json").read_text())
    (tmp / "model.pt2.json").write_text(json.dumps({**side, "format": 99}))
    return _optimize(path)


def sidecar_bad_annotations(tmp: Path, good: Path) -> list[str]:
    path = _copy_program(good, tmp)
    side = json.loads((tmp / "model.pt2.json").read_text())
    (tmp / "model.pt2.json").write_text(json.dumps({**side, "annotations": [1, "x"]}))
    return _optimize(path)


def sidecar_bad_annotation_types(tmp: Path, good: Path) -> list[str]:
    path = _copy_program(good, tmp)
    side = json.loads((tmp / "model.pt2.json").read_text())
    side["annotations"] = {"blocks": 7, "precision": "int8", "cache_schedule": [None]}
    (tmp / "model.pt2.json").write_text(json.dumps(side))
    return _optimize(path)


def sidecar_bad_workload(tmp: Path, good: Path) -> list[str]:
    path = _copy_program(good, tmp)
    side = json.loads((tmp / "model.pt2.json").read_text())
    side["workload"] = {"diffusion": {"sampler": "ddim", "steps": "ten"}, "inputs": 5}
    (tmp / "model.pt2.json").write_text(json.dumps(side))
    return _optimize(path)


def sidecar_bad_name(tmp: Path, good: Path) -> list[str]:
    path = _copy_program(good, tmp)
    side = json.loads((tmp / "model.pt2.json").read_text())
    (tmp / "model.pt2.json").write_text(json.dumps({**side, "name": {"a": 1}, "meta": [1]}))
    return _optimize(path)


def onnx_truncated(tmp: Path, good: Path) -> list[str]:
    data = _tiny_onnx().SerializeToString()
    (tmp / "model.onnx").write_bytes(data[: len(data) // 2])
    return ["analyze", str(tmp / "model.onnx")]


def onnx_garbage(tmp: Path, good: Path) -> list[str]:
    (tmp / "model.onnx").write_bytes(np.random.default_rng(1).bytes(4096))
    return ["analyze", str(tmp / "model.onnx")]


def onnx_empty(tmp: Path, good: Path) -> list[str]:
    (tmp / "model.onnx").write_bytes(b"")
    return ["analyze", str(tmp / "model.onnx")]


def onnx_is_pickle(tmp: Path, good: Path) -> list[str]:
    (tmp / "model.onnx").write_bytes(pickle.dumps(_Plant(str(tmp / CANARY))))
    return ["analyze", str(tmp / "model.onnx")]


def onnx_external_data_escape(tmp: Path, good: Path) -> list[str]:
    model = _tiny_onnx()
    (tmp / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (tmp / "sub").mkdir()
    init = model.graph.initializer[0]
    init.ClearField("float_data")
    init.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        entry = init.external_data.add()
        entry.key, entry.value = key, value
    (tmp / "sub" / "model.onnx").write_bytes(model.SerializeToString())
    return ["analyze", str(tmp / "sub" / "model.onnx")]


def onnx_optimized(tmp: Path, good: Path) -> list[str]:
    onnx.save(_tiny_onnx(), str(tmp / "model.onnx"))
    return _optimize(tmp / "model.onnx")


def calib_safetensors_truncated(tmp: Path, good: Path) -> list[str]:
    from safetensors.numpy import save_file

    save_file({"x": np.zeros((2, 8), np.float32)}, str(tmp / "calib.safetensors"))
    data = (tmp / "calib.safetensors").read_bytes()
    (tmp / "calib.safetensors").write_bytes(data[: len(data) - 20])
    return _optimize(good / "model.pt2", "--calib", str(tmp / "calib.safetensors"))


def calib_safetensors_huge_header(tmp: Path, good: Path) -> list[str]:
    (tmp / "calib.safetensors").write_bytes((1 << 62).to_bytes(8, "little") + b"{}")
    return _optimize(good / "model.pt2", "--calib", str(tmp / "calib.safetensors"))


def calib_safetensors_is_pickle(tmp: Path, good: Path) -> list[str]:
    (tmp / "calib.safetensors").write_bytes(pickle.dumps(_Plant(str(tmp / CANARY))))
    return _optimize(good / "model.pt2", "--calib", str(tmp / "calib.safetensors"))


def calib_npz_with_pickle(tmp: Path, good: Path) -> list[str]:
    np.savez(tmp / "calib.npz", x=np.array([_Plant(str(tmp / CANARY))], dtype=object))
    return _optimize(good / "model.pt2", "--calib", str(tmp / "calib.npz"))


def calib_npz_truncated(tmp: Path, good: Path) -> list[str]:
    np.savez(tmp / "calib.npz", x=np.zeros((2, 8), np.float32))
    data = (tmp / "calib.npz").read_bytes()
    (tmp / "calib.npz").write_bytes(data[: len(data) // 2])
    return _optimize(good / "model.pt2", "--calib", str(tmp / "calib.npz"))


def checkpoint_safetensors_is_pickle(tmp: Path, good: Path) -> list[str]:
    (tmp / "w.safetensors").write_bytes(pickle.dumps(_Plant(str(tmp / CANARY))))
    return ["zoo", "eval", "dit", "--checkpoint", str(tmp / "w.safetensors"), "--samples", "1"]


def model_pt_without_trust(tmp: Path, good: Path) -> list[str]:
    torch.save(_Plant(str(tmp / CANARY)), tmp / "model.pt")
    return _optimize(tmp / "model.pt")


def config_wrong_types(tmp: Path, good: Path) -> list[str]:
    (tmp / "run.toml").write_text('passes = "cleanup"\n')
    return _optimize(good / "model.pt2", "--config", str(tmp / "run.toml"))


def config_pass_option_wrong_type(tmp: Path, good: Path) -> list[str]:
    (tmp / "run.toml").write_text('passes = ["ptq"]\n[ptq]\nwbits = "eight"\n')
    return ["optimize", str(good / "model.pt2"), "--config", str(tmp / "run.toml"), "--no-onnx", "-o", "OUT"]


def config_pass_option_list(tmp: Path, good: Path) -> list[str]:
    (tmp / "run.toml").write_text('passes = ["ptq"]\n[ptq]\nwbits = [8]\nsmooth = "yes"\n')
    return ["optimize", str(good / "model.pt2"), "--config", str(tmp / "run.toml"), "--no-onnx", "-o", "OUT"]


def config_not_toml(tmp: Path, good: Path) -> list[str]:
    (tmp / "run.toml").write_bytes(b"\x80\x81 [[[ = ")
    return _optimize(good / "model.pt2", "--config", str(tmp / "run.toml"))


def config_require_wrong_type(tmp: Path, good: Path) -> list[str]:
    (tmp / "run.toml").write_text('passes = ["cleanup"]\nrequire = [3]\n')
    return _optimize(good / "model.pt2", "--config", str(tmp / "run.toml"))


def workload_wrong_types(tmp: Path, good: Path) -> list[str]:
    (tmp / "w.toml").write_text('inputs = "x"\nmetric = 5\n')
    return _optimize(good / "model.pt2", "--workload", str(tmp / "w.toml"))


def workload_diffusion_wrong_types(tmp: Path, good: Path) -> list[str]:
    (tmp / "w.toml").write_text('[diffusion]\nsampler = "ddim"\nsteps = "ten"\nguidance_scale = "x"\n')
    return _optimize(good / "model.pt2", "--workload", str(tmp / "w.toml"))


def workload_sampler_wrong_types(tmp: Path, good: Path) -> list[str]:
    (tmp / "w.toml").write_text(
        '[diffusion]\nsampler = { name = "ddim", train_steps = "many", beta_start = [1] }\n'
    )
    return _optimize(good / "model.pt2", "--workload", str(tmp / "w.toml"))


def workload_calibration_wrong_types(tmp: Path, good: Path) -> list[str]:
    (tmp / "w.toml").write_text('calibration = "file"\n')
    return _optimize(good / "model.pt2", "--workload", str(tmp / "w.toml"))


def workload_calibration_table_wrong_types(tmp: Path, good: Path) -> list[str]:
    (tmp / "w.toml").write_text('[calibration]\nsource = 3\npath = ["a"]\nstd = "x"\n')
    return _optimize(good / "model.pt2", "--workload", str(tmp / "w.toml"))


def artifact_tampered_library(tmp: Path, good: Path) -> list[str]:
    art = _fake_artifact(tmp)
    (art / LIBRARY).write_bytes(b"\x7fELF tampered")
    return ["run", str(art), "--inputs", str(good / "inputs.npz"), "-o", str(tmp / "OUT")]


def artifact_foreign_library(tmp: Path, good: Path) -> list[str]:
    art = _fake_artifact(tmp, lib_bytes=np.random.default_rng(2).bytes(2048))
    return ["run", str(art), "--inputs", str(good / "inputs.npz"), "-o", str(tmp / "OUT")]


def artifact_library_is_pickle(tmp: Path, good: Path) -> list[str]:
    art = _fake_artifact(tmp, lib_bytes=pickle.dumps(_Plant(str(tmp / CANARY))))
    return ["run", str(art), "--inputs", str(good / "inputs.npz"), "-o", str(tmp / "OUT")]


def artifact_manifest_not_json(tmp: Path, good: Path) -> list[str]:
    art = _fake_artifact(tmp)
    (art / MANIFEST).write_text("{")
    return ["run", str(art), "--inputs", str(good / "inputs.npz"), "-o", str(tmp / "OUT")]


def artifact_manifest_wrong_types(tmp: Path, good: Path) -> list[str]:
    art = _fake_artifact(tmp, inputs=5, outputs={"y": 1}, target_config=[1])
    return ["run", str(art), "--inputs", str(good / "inputs.npz"), "-o", str(tmp / "OUT")]


def artifact_manifest_bad_specs(tmp: Path, good: Path) -> list[str]:
    art = _fake_artifact(tmp, inputs=[{"name": 1, "shape": "big", "dtype": None}])
    return ["run", str(art), "--inputs", str(good / "inputs.npz"), "-o", str(tmp / "OUT")]


def artifact_manifest_library_not_table(tmp: Path, good: Path) -> list[str]:
    art = _fake_artifact(tmp, library="model.so")
    return ["run", str(art), "--inputs", str(good / "inputs.npz"), "-o", str(tmp / "OUT")]


def artifact_library_path_escape(tmp: Path, good: Path) -> list[str]:
    art = _fake_artifact(tmp)
    outside = tmp / "evil.so"
    outside.write_bytes(b"\x7fELF outside")
    manifest = json.loads((art / MANIFEST).read_text())
    manifest["library"] = {"file": "../evil.so", "sha256": _sha256(outside)}
    (art / MANIFEST).write_text(json.dumps(manifest))
    return ["run", str(art), "--inputs", str(good / "inputs.npz"), "-o", str(tmp / "OUT")]


def artifact_other_version(tmp: Path, good: Path) -> list[str]:
    art = _fake_artifact(tmp, tvm_version="0.1")
    return ["run", str(art), "--inputs", str(good / "inputs.npz"), "-o", str(tmp / "OUT")]


def artifact_manifest_is_list(tmp: Path, good: Path) -> list[str]:
    art = _fake_artifact(tmp)
    (art / MANIFEST).write_text("[]")
    return ["run", str(art), "--inputs", str(good / "inputs.npz"), "-o", str(tmp / "OUT")]


def pipeline_variant_escape(tmp: Path, good: Path) -> list[str]:
    from optkit.backends.pipeline import FORMAT as PFORMAT
    from optkit.backends.pipeline import FORMAT_VERSION as PVERSION
    from optkit.backends.pipeline import MANIFEST as PMANIFEST
    from optkit.backends.pipeline import PROGRAM

    pipe = tmp / "pipe"
    pipe.mkdir()
    _copy_program(good, pipe, PROGRAM)
    manifest = {
        "format": PFORMAT,
        "format_version": PVERSION,
        **_versions(),
        "program": {
            "sha256": _sha256(pipe / PROGRAM),
            "sidecar_sha256": _sha256(pipe / f"{PROGRAM}.json"),
        },
        "main": {"dir": "../..", "sha256": "0"},
        "variants": [],
    }
    (pipe / PMANIFEST).write_text(json.dumps(manifest))
    return ["sample", str(pipe), "--seeds", "0", "-o", str(tmp / "OUT")]


def inputs_npz_pickle(tmp: Path, good: Path) -> list[str]:
    art = _fake_artifact(tmp)
    np.savez(tmp / "in.npz", arr_0=np.array([_Plant(str(tmp / CANARY))], dtype=object))
    return ["run", str(art), "--inputs", str(tmp / "in.npz"), "-o", str(tmp / "OUT")]


def inputs_npz_truncated(tmp: Path, good: Path) -> list[str]:
    art = _fake_artifact(tmp)
    data = (good / "inputs.npz").read_bytes()
    (tmp / "in.npz").write_bytes(data[: len(data) // 2])
    return ["run", str(art), "--inputs", str(tmp / "in.npz"), "-o", str(tmp / "OUT")]


def report_dir_corrupt(tmp: Path, good: Path) -> list[str]:
    (tmp / "rep").mkdir()
    (tmp / "rep" / "report.json").write_text('{"figures": 5, "tables": "x"')
    return ["report", str(tmp / "rep")]


def report_dir_wrong_types(tmp: Path, good: Path) -> list[str]:
    (tmp / "rep").mkdir()
    (tmp / "rep" / "report.json").write_text('{"figures": 5, "tables": "x", "title": []}')
    return ["report", str(tmp / "rep")]


CASES: list[Callable[[Path, Path], list[str]]] = [
    pt2_truncated,
    pt2_empty,
    pt2_corrupted,
    pt2_is_text,
    pt2_is_onnx,
    pt2_is_pickle,
    pt2_is_torch_save,
    pt2_zip_escape,
    pt2_zip_only_escapes,
    pt2_pickled_sample_inputs,
    pt2_pickled_weight,
    sidecar_not_json,
    sidecar_is_list,
    sidecar_binary,
    sidecar_truncated,
    sidecar_other_format,
    sidecar_bad_annotations,
    sidecar_bad_annotation_types,
    sidecar_bad_workload,
    sidecar_bad_name,
    onnx_truncated,
    onnx_garbage,
    onnx_empty,
    onnx_is_pickle,
    onnx_external_data_escape,
    onnx_optimized,
    calib_safetensors_truncated,
    calib_safetensors_huge_header,
    calib_safetensors_is_pickle,
    calib_npz_with_pickle,
    calib_npz_truncated,
    checkpoint_safetensors_is_pickle,
    model_pt_without_trust,
    config_wrong_types,
    config_pass_option_wrong_type,
    config_pass_option_list,
    config_not_toml,
    config_require_wrong_type,
    workload_wrong_types,
    workload_diffusion_wrong_types,
    workload_sampler_wrong_types,
    workload_calibration_wrong_types,
    workload_calibration_table_wrong_types,
    artifact_tampered_library,
    artifact_foreign_library,
    artifact_library_is_pickle,
    artifact_manifest_not_json,
    artifact_manifest_wrong_types,
    artifact_manifest_bad_specs,
    artifact_manifest_library_not_table,
    artifact_library_path_escape,
    artifact_other_version,
    artifact_manifest_is_list,
    pipeline_variant_escape,
    inputs_npz_pickle,
    inputs_npz_truncated,
    report_dir_corrupt,
    report_dir_wrong_types,
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_case(case: Callable[[Path, Path], list[str]], work: Path, good: Path) -> tuple[bool, str]:
    """Run one case in `work` (the current directory); (handled cleanly, the error line or why not)."""
    args = case(work, good)
    before, good_before = _tree(work), _tree(good)
    result = CliRunner().invoke(cli, ["--quiet", *args])
    lines = result.stderr.strip().splitlines()
    if result.exit_code != 2:
        return False, f"exit code {result.exit_code}: {result.exception!r} {result.stderr}{result.stdout}"
    if len(lines) != 1 or not lines[0].startswith("optkit: error: "):
        return False, f"not one error line: {result.stderr!r}"
    if (work / CANARY).exists() or (work.parent / CANARY).exists() or Path("/tmp", CANARY).exists():
        return False, "code from the file ran"
    if _tree(work) != before or _tree(good) != good_before:
        return False, "a failed run wrote files"
    if "escape" in case.__name__ and "outside" not in lines[0]:
        return False, f"an escaping path not named as such: {lines[0]}"
    if case.__name__.startswith("inputs_npz") and "npz" not in lines[0]:
        return False, f"the inputs file is not the one named: {lines[0]}"
    return True, lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_hostile_file_fails_cleanly(case, good, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    handled, why = run_case(case, work, good)
    assert handled, why


def test_cases_cover_every_kind_of_file():
    kinds = {c.__name__.split("_")[0] for c in CASES}
    assert kinds >= {"pt2", "sidecar", "onnx", "calib", "config", "workload", "artifact", "pipeline"}
    assert len(CASES) >= 50
