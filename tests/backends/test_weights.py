"""Weights outside the library: lifted into a tuple parameter, saved to weights.bin, mapped back."""

import json

import numpy as np
import pytest
import torch
from optkit.backends import load_artifact, lower
from optkit.backends.lowering import lower_functions
from optkit.backends.weights import ALIGN, load_weights, save_weights
from torch import nn

from optkit.errors import ArtifactError
from optkit.ir.capture import capture
from tests.backends.conftest import outputs_of


@pytest.fixture
def wide():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 8)).eval()
    return capture(model, (torch.randn(2, 512),), name="wide")


def test_library_holds_code_and_weights_file_holds_weights(wide, tmp_path):
    artifact = lower(wide, "cpu", num_cores=1)
    weight_bytes = 512 * 512 * 4  # the 512 x 8 layer (16 KiB) stays in the library: under MIN_BYTES
    assert artifact.info["weight_tensors"] == 1
    assert artifact.info["weight_bytes"] >= weight_bytes  # packed panels may pad
    path = artifact.save(tmp_path / "art")
    assert (path / "model.so").stat().st_size < weight_bytes / 2  # 1 MiB of weights is not in the .so
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["weights"]["bytes"] == (path / "weights.bin").stat().st_size >= weight_bytes
    assert all(t["offset"] % ALIGN == 0 for t in manifest["weights"]["tensors"])
    (got,) = load_artifact(path).run(wide.example_inputs[0])
    np.testing.assert_allclose(got, outputs_of(wide)[0], rtol=1e-4, atol=1e-4)


def test_functions_sharing_weights_store_them_once(wide):
    one = lower(wide, "cpu", num_cores=1)
    both = lower_functions({"main": wide, "again": wide}, "cpu", num_cores=1)
    assert both["main"].info["weight_bytes"] == one.info["weight_bytes"]
    x = wide.example_inputs[0]
    np.testing.assert_array_equal(both["again"].run(x)[0], both["main"].run(x)[0])


def test_corrupt_truncated_or_missing_weights_are_refused(wide, tmp_path):
    path = lower(wide, "cpu", num_cores=1).save(tmp_path / "art")
    weights = path / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the hash"):
        load_artifact(path)
    weights.unlink()
    with pytest.raises(ArtifactError, match="weights file weights.bin is missing"):
        load_artifact(path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int8, torch.bool])
def test_weights_file_round_trip(tmp_path, dtype):
    import tvm

    torch.manual_seed(0)
    values = [torch.randn(3, 5).to(dtype), torch.randn(7).to(dtype), torch.randn(2, 2, 2).to(dtype)]
    info = save_weights([tvm.runtime.from_dlpack(v) for v in values], tmp_path / "w.bin")
    assert [e["offset"] % ALIGN for e in info["tensors"]] == [0, 0, 0]
    loaded, derivations = load_weights(tmp_path / "w.bin", info)
    assert derivations == {}
    for want, got in zip(values, loaded, strict=True):
        assert torch.equal(torch.from_dlpack(got), want)
    (tmp_path / "w.bin").write_bytes((tmp_path / "w.bin").read_bytes()[:-1])
    with pytest.raises(ArtifactError, match="truncated"):
        load_weights(tmp_path / "w.bin", info)


def test_release_weights_frees_what_packing_replaced(wide):
    x = wide.example_inputs[0]
    want = outputs_of(wide)[0]
    params = wide.parameters()
    artifact = lower(wide, "cpu", num_cores=1, release_weights=True)
    # The two matmul weights were packed and freed; the biases are read as they are and stay.
    freed = {name for name, t in params.items() if t.untyped_storage().nbytes() == 0}
    assert {name.rsplit(".", 1)[-1] for name in freed} == {"weight"}
    assert artifact.info["released_weight_bytes"] == (512 * 512 + 512 * 8) * 4
    np.testing.assert_allclose(artifact.run(x)[0], want, rtol=1e-4, atol=1e-4)


def test_weights_of_a_loaded_program_are_released_too(wide, tmp_path):
    # torch.export.load wraps the archive's buffers, which cannot be resized; load_program gives
    # each weight its own storage so `optkit lower model.pt2` frees what packing replaced.
    from optkit.ir.serialize import load_program, save_program

    save_program(wide, tmp_path / "wide.pt2")
    loaded = load_program(tmp_path / "wide.pt2")
    assert all(t.untyped_storage().resizable() for t in loaded.parameters().values())
    artifact = lower(loaded, "cpu", num_cores=1, release_weights=True)
    assert artifact.info["released_weight_bytes"] == (512 * 512 + 512 * 8) * 4


def test_a_derived_weight_is_stored_as_its_source_and_computed_on_loading(tmp_path):
    import tvm
    from optkit.backends import winograd
    from optkit.backends.weights import Derivation

    rng = np.random.default_rng(0)
    source = rng.standard_normal((3, 3, 16, 32)).astype(np.float32)
    options = {"m": 2, "arith": "fma512"}
    full = winograd.derived_weights(source, **options)
    plain = rng.standard_normal(5).astype(np.float32)
    tensors = [tvm.runtime.tensor(plain), tvm.runtime.tensor(full)]
    info = save_weights(tensors, tmp_path / "w.bin", {1: Derivation("winograd", options, source)})
    assert info["tensors"][1]["shape"] == [3, 3, 16, 32]
    assert info["tensors"][1]["derived"]["shape"] == list(full.shape)
    loaded, derivations = load_weights(tmp_path / "w.bin", info)
    np.testing.assert_array_equal(loaded[0].numpy(), plain)
    np.testing.assert_array_equal(loaded[1].numpy(), full)  # bit-identical
    assert list(derivations) == [1] and derivations[1].options == options
    for bad, message in (({"kind": "magic"}, "derived by 'magic'"), ({"shape": [1, 2]}, "manifest says")):
        broken = json.loads(json.dumps(info))
        broken["tensors"][1]["derived"].update(bad)
        with pytest.raises(ArtifactError, match=message):
            load_weights(tmp_path / "w.bin", broken)


def test_the_spill_file_gives_back_what_was_put():
    from optkit.backends.weights import SpillFile

    spill = SpillFile()
    arrays = [np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.array([-3, 7], np.int8), np.zeros((0, 5))]
    spilled = [spill.put(a) for a in arrays]
    for want, got in zip(arrays, spilled, strict=True):
        np.testing.assert_array_equal(got.array(), want)
        assert got.array().dtype == want.dtype
