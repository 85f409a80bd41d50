"""Hugging Face folders as model references: detection by files and the errors for bad folders.

These need neither diffusers nor transformers: folders are judged, and refused, before either
is imported.
"""

import json
import sys

import pytest

from optkit.errors import ModelRefError
from optkit.interop import directory_format
from optkit.interop.hf import weight_options
from optkit.refs import FORMS, load_model, parse_model_ref


def _write(folder, name, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize(
    "name, data, kind",
    [
        (
            "model_index.json",
            {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"]},
            "diffusers",
        ),
        ("config.json", {"_class_name": "UNet2DModel", "sample_size": 8}, "diffusers"),
        ("config.json", {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "transformers"),
    ],
)
def test_folders_are_recognized_by_their_files(tmp_path, name, data, kind):
    folder = _write(tmp_path / "m", name, data)
    assert directory_format(folder) == kind
    assert parse_model_ref(str(folder)).kind == kind


def test_a_folder_that_is_neither_names_what_was_looked_for(tmp_path):
    with pytest.raises(ModelRefError, match="not a Hugging Face model: looked for model_index.json"):
        load_model(str(tmp_path))
    _write(tmp_path, "config.json", {"hidden_size": 8})
    with pytest.raises(ModelRefError, match="neither a diffusers class .* nor transformers `architectures`"):
        parse_model_ref(str(tmp_path))
    assert "save_pretrained folder" in FORMS


def test_a_missing_package_says_how_to_install_it(tmp_path, monkeypatch):
    folder = _write(tmp_path / "m", "config.json", {"_class_name": "UNet2DModel"})
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    with pytest.raises(ModelRefError, match=r"pip install 'optkit\[hf\]'"):
        load_model(str(folder))


def test_unknown_diffusers_class_lists_the_supported_ones(tmp_path):
    folder = _write(tmp_path / "vae", "config.json", {"_class_name": "AutoencoderKL"})
    with pytest.raises(
        ModelRefError, match="'AutoencoderKL' is not supported as a denoiser; supported: UNet2DModel"
    ):
        load_model(str(folder))
    pipe = _write(
        tmp_path / "pipe", "model_index.json", {"_class_name": "X", "vae": ["diffusers", "AutoencoderKL"]}
    )
    with pytest.raises(ModelRefError, match="no denoiser folder .* unet/ or transformer/"):
        load_model(str(pipe))


def test_pickled_weights_need_trust(tmp_path):
    folder = _write(tmp_path / "m", "config.json", {"_class_name": "UNet2DModel"})
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelRefError, match="refusing to load .*diffusion_pytorch_model.bin.*--trust-pickle"):
        load_model(str(folder))
    empty = _write(tmp_path / "e", "config.json", {"architectures": ["GPT2LMHeadModel"]})
    with pytest.raises(ModelRefError, match="holds no weights: expected model.safetensors"):
        load_model(str(empty))


@pytest.mark.parametrize(
    "config, match",
    [
        (
            {"architectures": ["BertForMaskedLM"]},
            "'BertForMaskedLM' is not supported; supported: \\*ForCausalLM",
        ),
        (
            {"architectures": ["MyForCausalLM"], "auto_map": {"AutoModelForCausalLM": "m.MyForCausalLM"}},
            "custom",
        ),
    ],
)
def test_transformers_folders_optkit_cannot_load(tmp_path, config, match):
    folder = _write(tmp_path / "m", "config.json", config)
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelRefError, match=match):
        load_model(str(folder))


@pytest.mark.parametrize(
    "files, options",
    [
        (["diffusion_pytorch_model.safetensors"], {"use_safetensors": True}),
        (["diffusion_pytorch_model.safetensors.index.json"], {"use_safetensors": True}),
        (["diffusion_pytorch_model.fp16.safetensors"], {"use_safetensors": True, "variant": "fp16"}),
        (["diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors"], {"use_safetensors": True}),
    ],
)
def test_weights_are_read_from_safetensors(tmp_path, files, options):
    for name in files:
        (tmp_path / name).write_bytes(b"")
    stem = "diffusion_pytorch_model"
    assert weight_options(tmp_path, stem, stem, trust_pickle=False) == options
