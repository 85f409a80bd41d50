"""transformers save_pretrained folders -> Programs returning logits, with their Workloads.

Tiny models (20k-30k parameters) with random weights, saved into tmp_path: nothing is fetched.
"""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from optkit import load_model  # noqa: E402
from optkit.errors import ModelRefError  # noqa: E402


def llama():
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return transformers.LlamaForCausalLM(config)


def gpt2():
    config = transformers.GPT2Config(
        vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config)


def vit():
    config = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=10,
    )
    return transformers.ViTForImageClassification(config)


@pytest.mark.parametrize(
    "make, tokens",
    [(llama, 64), (gpt2, 32)],  # 64 tokens, or fewer when the model has fewer positions
    ids=["LlamaForCausalLM", "GPT2LMHeadModel"],
)
def test_causal_lm_returns_logits_with_a_perplexity_workload(tmp_path, make, tokens):
    model = make().eval()
    model.save_pretrained(tmp_path / "lm")
    program = load_model(str(tmp_path / "lm"))
    (ids,) = program.example_inputs
    assert program.input_names() == ["input_ids"] and ids.shape == (1, tokens)
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits
    torch.testing.assert_close(program.run(), expected)
    assert program.workload.inputs == ("input_ids",) and program.workload.metric == "perplexity"
    assert program.workload.diffusion is None
    assert program.meta["task"] == "causal-lm"


def test_vit_classifier_returns_logits_with_a_top1_workload(tmp_path):
    model = vit().eval()
    model.save_pretrained(tmp_path / "vit")
    program = load_model(str(tmp_path / "vit"), batch=3)
    (pixels,) = program.example_inputs
    assert program.input_names() == ["pixel_values"] and pixels.shape == (3, 3, 16, 16)
    with torch.no_grad():
        expected = model(pixels).logits
    torch.testing.assert_close(program.run(), expected)
    assert program.workload.metric == "top1"


def test_pickled_weights_load_only_when_trusted(tmp_path):
    model = gpt2().eval()
    model.save_pretrained(tmp_path / "lm")
    # transformers 5 saves safetensors only; older checkpoints hold a pickled state dict.
    (tmp_path / "lm" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "lm" / "pytorch_model.bin")
    with pytest.raises(ModelRefError, match="refusing to load .*pytorch_model.bin"):
        load_model(str(tmp_path / "lm"))
    assert load_model(str(tmp_path / "lm"), trust_pickle=True).input_names() == ["input_ids"]


def test_an_architecture_transformers_does_not_define(tmp_path):
    model = gpt2()
    model.save_pretrained(tmp_path / "lm")
    config = json.loads((tmp_path / "lm" / "config.json").read_text())
    config["architectures"] = ["NoSuchModelForCausalLM"]
    (tmp_path / "lm" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelRefError, match="has no class 'NoSuchModelForCausalLM'"):
        load_model(str(tmp_path / "lm"))
