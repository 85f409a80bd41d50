import numpy as np
import pytest
import torch
from PIL import Image

from optkit.calib_data import load_calibration
from optkit.errors import ConfigError
from optkit.workload import Calibration

NAMES = ("x", "t")
EXAMPLE = (torch.zeros(2, 3, 4, 4), torch.zeros(2))


def test_npz_and_safetensors_files_are_cut_into_captured_batches(tmp_path):
    from safetensors.numpy import save_file

    x = np.random.randn(5, 3, 4, 4)  # float64: cast to the model's float32
    np.savez(tmp_path / "c.npz", x=x, t=np.arange(5, dtype=np.float32))
    save_file(
        {"x": x.astype(np.float32), "t": np.arange(5, dtype=np.float32)}, str(tmp_path / "c.safetensors")
    )
    for name in ("c.npz", "c.safetensors"):
        batches = load_calibration(Calibration("file", str(tmp_path / name)), NAMES, EXAMPLE)
        assert len(batches) == 2 and batches[1][0].dtype == torch.float32
        assert torch.equal(batches[1][1], torch.tensor([2.0, 3.0]))
    assert len(load_calibration(Calibration("file", str(tmp_path / "c.npz")), NAMES, EXAMPLE, limit=1)) == 1


def test_files_that_do_not_fit_are_refused_with_the_expected_inputs(tmp_path):
    cases = {
        "shape.npz": (
            {"x": np.zeros((4, 3, 5, 5)), "t": np.zeros(4)},
            r"shape \(4, 3, 5, 5\); the model takes \(x: \(N, 3, 4, 4\) float32",
        ),
        "dtype.npz": ({"x": np.zeros((4, 3, 4, 4), np.int64), "t": np.zeros(4)}, "dtype int64"),
        "missing.npz": ({"x": np.zeros((4, 3, 4, 4))}, "lacks input"),
        "few.npz": ({"x": np.zeros((1, 3, 4, 4)), "t": np.zeros(1)}, "at least 2"),
        "counts.npz": ({"x": np.zeros((4, 3, 4, 4)), "t": np.zeros(3)}, "different sample counts"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(ConfigError, match=message):
            load_calibration(Calibration("file", str(tmp_path / name)), NAMES, EXAMPLE)
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ConfigError, match="cannot read calibration file"):
        load_calibration(Calibration("file", str(tmp_path / "broken.npz")), NAMES, EXAMPLE)
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(ConfigError, match="holds no arrays"):
        load_calibration(Calibration("file", str(tmp_path / "empty.npz")), NAMES, EXAMPLE)


def test_image_folder_is_resized_and_normalized(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((9, 7, 3), 255 * (i % 2), np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    calibration = Calibration("images", str(tmp_path), mean=(0.5,), std=(0.5,))
    (batch,) = load_calibration(calibration, NAMES, (torch.zeros(2, 3, 4, 4), torch.full((2,), 7.0)))
    assert batch[0].shape == (2, 3, 4, 4)
    assert batch[0][0].min() == -1.0 and batch[0][1].max() == 1.0  # black and white after (v - 0.5) / 0.5
    assert torch.equal(batch[1], torch.full((2,), 7.0))  # other inputs repeat the example's
    with pytest.raises(ConfigError, match="first input is"):
        load_calibration(calibration, ("ids",), (torch.zeros(2, 8, dtype=torch.int64),))


def test_token_streams_become_rows_of_the_sequence_length(tmp_path):
    (tmp_path / "ids.txt").write_text(" ".join(str(i) for i in range(20)))
    np.save(tmp_path / "ids.npy", np.arange(20))
    example = (torch.zeros(2, 4, dtype=torch.int64), torch.ones(2, 4, dtype=torch.int64))
    for name in ("ids.txt", "ids.npy"):
        batches = load_calibration(Calibration("tokens", str(tmp_path / name)), ("ids", "mask"), example)
        assert len(batches) == 2  # 5 rows of 4 -> 2 batches of 2
        assert torch.equal(batches[0][0][1], torch.tensor([4, 5, 6, 7])) and batches[0][1].all()
    (tmp_path / "words.txt").write_text("hello world")
    with pytest.raises(ConfigError, match="cannot read token ids"):
        load_calibration(Calibration("tokens", str(tmp_path / "words.txt")), ("ids", "mask"), example)


def test_memory_batches_are_checked():
    good = Calibration.from_batches([(torch.ones(3, 3, 4, 4), torch.ones(3))])
    assert len(load_calibration(good, NAMES, EXAMPLE)) == 1
    bad = Calibration.from_batches([(torch.ones(3, 3, 4, 4),)])
    with pytest.raises(ConfigError, match="has 1 tensors"):
        load_calibration(bad, NAMES, EXAMPLE)
