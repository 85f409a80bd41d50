"""Model families users bring, written here with random weights (latency does not depend on them).

- `mobilenet_v2`: MobileNetV2 (Sandler et al. 2018, Table 2): a 3x3 stem, 17 inverted residual
  blocks (1x1 expand, 3x3 depthwise, 1x1 project; BatchNorm after every conv, ReLU6), a 1x1 conv
  to 1280 channels, global average pool, classifier. 52 BatchNorms. Deviation: `width` scales
  the channels (1.0 = the paper's).
- `resnet18`: ResNet-18 (He et al. 2016): 7x7 stem, max pool, four stages of two basic blocks
  (3x3 conv-BN-ReLU twice, 1x1 conv-BN shortcut where the shape changes).
- `vit_tiny`: a ViT-Ti/16-style encoder (Dosovitskiy et al. 2021; DeiT-Ti sizes: dim 192,
  3 heads, MLP 768): patch embedding conv, class token, learned positions, pre-norm blocks.
  Deviation: `depth` defaults to 6 (the paper's 12) to keep the benchmark short.
- `llama_64tok`, `llama_512tok`: a Llama-style decoder (Touvron et al. 2023: pre-norm blocks with
  RMSNorm, rotary position embeddings, causal attention, SwiGLU MLP; `optkit.zoo.textlm`'s
  blocks) at dim 512, 8 heads, SwiGLU width 1408, 4 layers, prefilling one sequence of 64 or
  512 tokens (batch 1 whatever `batch` says: a decoder serves one prompt at a time). Deviation:
  a 256-symbol byte vocabulary (textlm's), so the embedding and output head are small.
- `sd_unet`: a diffusers `UNet2DConditionModel` in Stable Diffusion's layout (cross-attention
  down blocks, a mid block, cross-attention up blocks, GroupNorm + SiLU ResNet blocks, a
  77-token text condition) called as a denoiser (latents, timestep, text embeddings), one
  guided step's batch of 2. Deviation: SD-1.5's channels (320, 640, 1280, 1280) and text width
  768 are scaled down to (64, 128, 256), one ResNet layer per block and width 256, on 32 x 32
  latents (SD-1.5 at 256 x 256 pixels), so that a row takes seconds; heads of 32 channels
  (SD-1.5's are 40); needs the `diffusers` extra.

BatchNorm running statistics are randomized so that folding them is not a no-op.

`HF_FAMILIES`: models users build from Hugging Face classes (the `hf` extra), from configs with
random weights (nothing downloaded), scaled down so that a row takes seconds:

- `vae_decoder`: a diffusers `AutoencoderKL`'s decoder in Stable Diffusion's layout (GroupNorm
  + SiLU ResNet blocks, a mid-block attention, nearest upsampling; channels (64, 128, 128, 128)
  against SD's (128, 256, 512, 512), one layer per block) decoding a 4 x 32 x 32 latent to a 256 x
  256 image;
- `clip_text`: a transformers `CLIPTextModel` (4 layers, width 256, 4 heads; SD-1.5's text
  encoder has 12 x 768), 77 tokens;
- `t5_encoder`: a transformers `T5EncoderModel` (4 layers, width 256, 4 heads, relative position
  bias), 77 tokens;
- `bert`: a transformers `BertModel` (4 layers, width 256, 4 heads), 128 tokens;
- `convnext`: a transformers `ConvNextModel` (widths 48-384, depths 1, 1, 3, 1: 7 x 7 depthwise
  convs, channel LayerNorm, GELU; layer scale 1), images at `batch` x `image` x `image`;
- `swin`: a transformers `SwinModel` (embed 48, depths 1, 1, 2, 1, window 7: shifted-window
  attention), one 224 x 224 image (its windows need 224).

and the denoisers of today's image and video pipelines, diffusers transformers at width 256 (8
heads of 32 channels; the originals are 1152 (PixArt-alpha) to 5120 (Wan 2.1 14B) wide),
called on one step's inputs with a 64-token text condition of width 256 (T5-XXL's is 4096):

- `pixart`: a `PixArtTransformer2DModel` (PixArt-alpha: DiT blocks with cross-attention and
  adaLN-single), 4 layers, 2 x 2 patches of a 4 x 32 x 32 latent (256 tokens), a guided step's
  batch of 2;
- `flux`: a `FluxTransformer2DModel` (Flux: MM-DiT, joint text-image attention with rotary
  positions over (t, h, w) axes), 2 double-stream and 4 single-stream blocks, a 32 x 32 latent
  packed 2 x 2 into 256 tokens of 64 channels, batch 1 (guidance distilled);
- `wan`: a `WanTransformer3DModel` (Wan 2.1: a video DiT with 3D rotary positions and
  cross-attention), 4 layers, FFN 1024, 1 x 2 x 2 patches of a 16 x 4 x 16 x 16 video latent
  (256 tokens), batch 1.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(
    cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=False))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand (skipped at ratio 1) -> 3x3 depthwise -> 1x1 linear projection (+ skip)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = [_conv_bn(cin, hidden, 1)] if expand != 1 else []
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, act=False)]
        self.body = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)  # (B, cout, H / stride, W / stride)
        return x + y if self.skip else y


class MobileNetV2(nn.Module):
    # (expansion t, channels c, repeats n, first stride s), the paper's Table 2
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, width: float = 1.0, classes: int = 1000) -> None:
        super().__init__()

        def ch(c: int) -> int:
            return max(8, int(c * width + 4) // 8 * 8)

        cin = ch(32)
        layers: list[nn.Module] = [_conv_bn(3, cin, 3, 2)]
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, ch(c), s if i == 0 else 1, t))
                cin = ch(c)
        layers.append(_conv_bn(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 1280, H / 32, W / 32)
        return self.classifier(x.mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3, act=False)
        self.shortcut = (
            _conv_bn(cin, cout, 1, stride, act=False) if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))  # (B, 512, H / 32, W / 32)
        return self.fc(x.mean(dim=(2, 3)))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = nn.functional.scaled_dot_product_attention(q, k, v)  # (B, heads, T, d / heads)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(
        self,
        image: int = 224,
        patch: int = 16,
        dim: int = 192,
        depth: int = 6,
        heads: int = 3,
        mlp: int = 768,
        classes: int = 1000,
    ) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, (image // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads, mlp) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)  # (B, T, D)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics and affine parameters for every BatchNorm; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            m.weight.data.copy_(0.5 + 0.5 * torch.rand(n, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=gen))
    return model.eval()


LLAMA_TOKENS = {"llama_64tok": 64, "llama_512tok": 512}


def llama(tokens: int) -> nn.Module:
    """The Llama-style decoder above, random weights, rotary tables for `tokens` positions."""
    from optkit.zoo.textlm import TextLMConfig, build

    return build(TextLMConfig(dim=512, depth=4, heads=8, hidden=1408, context=tokens)).eval()


class Denoiser(nn.Module):
    """A diffusers UNet2DConditionModel called as optkit's denoisers are: (x, t, text) -> eps."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=text, return_dict=False)[0]


def sd_unet(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The scaled-down Stable Diffusion UNet above, random weights, and one guided step's inputs."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(64, 128, 256),
        layers_per_block=1,
        attention_head_dim=(2, 4, 8),  # diffusers reads this as heads per block: 32 channels each
        cross_attention_dim=256,
        norm_num_groups=32,
    )
    gen = torch.Generator().manual_seed(seed)
    inputs = (
        torch.randn(2, 4, 32, 32, generator=gen),
        torch.tensor([500.0, 500.0]),
        torch.randn(2, 77, 256, generator=gen),
    )
    return Denoiser(unet).eval(), inputs


class Keywords(nn.Module):
    """A diffusers transformer called with its inputs by keyword, returning its first output."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs, strict=True)), return_dict=False)[0]


def diffusion_transformer(name: str, gen: torch.Generator) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The `pixart`, `flux` or `wan` family (module docstring) and one guided step's inputs."""
    import diffusers

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    if name == "pixart":
        model = diffusers.PixArtTransformer2DModel(
            num_attention_heads=8,
            attention_head_dim=32,
            in_channels=4,
            out_channels=8,
            num_layers=4,
            cross_attention_dim=256,
            sample_size=32,
            patch_size=2,
            caption_channels=256,
            use_additional_conditions=False,
        )
        names: tuple[str, ...] = ("hidden_states", "encoder_hidden_states", "timestep")
        inputs = (randn(2, 4, 32, 32), randn(2, 64, 256), torch.tensor([500, 500]))
    elif name == "flux":
        model = diffusers.FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=2,
            num_single_layers=4,
            attention_head_dim=32,
            num_attention_heads=8,
            joint_attention_dim=256,
            pooled_projection_dim=128,
            axes_dims_rope=(8, 12, 12),
        )
        image, text = 16, 64  # a 32 x 32 latent packed 2 x 2: 16 x 16 tokens of 64 channels
        ids = torch.zeros(image * image, 3)
        ids[:, 1], ids[:, 2] = torch.arange(image * image) // image, torch.arange(image * image) % image
        names = (
            "hidden_states",
            "encoder_hidden_states",
            "pooled_projections",
            "timestep",
            "img_ids",
            "txt_ids",
        )
        inputs = (
            randn(1, image * image, 64),
            randn(1, text, 256),
            randn(1, 128),
            torch.tensor([0.5]),
            ids,
            torch.zeros(text, 3),
        )
    else:
        model = diffusers.WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=8,
            attention_head_dim=32,
            in_channels=16,
            out_channels=16,
            text_dim=256,
            freq_dim=64,
            ffn_dim=1024,
            num_layers=4,
            rope_max_seq_len=256,
        )
        names = ("hidden_states", "encoder_hidden_states", "timestep")
        inputs = (randn(1, 16, 4, 16, 16), randn(1, 64, 256), torch.tensor([500]))
    return Keywords(model, names).eval(), inputs


class Output(nn.Module):
    """A Hugging Face model called with its input name, returning one tensor."""

    def __init__(self, model: nn.Module, call: str) -> None:
        super().__init__()
        self.model, self.call = model, call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.call == "decode":
            return self.model.decode(x).sample
        key = "pixel_values" if self.call == "pixels" else "input_ids"
        return self.model(**{key: x}).last_hidden_state


def hf_family(
    name: str, batch: int, image: int, gen: torch.Generator
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The `HF_FAMILIES` model `name` (module docstring) and its example inputs."""
    import transformers

    tokens = {"clip_text": 77, "t5_encoder": 77, "bert": 128}
    if name in DIFFUSION_TRANSFORMERS:
        return diffusion_transformer(name, gen)
    if name == "vae_decoder":
        from diffusers import AutoencoderKL

        vae = AutoencoderKL(
            block_out_channels=(64, 128, 128, 128),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=32,
        )
        return Output(vae, "decode").eval(), (torch.randn(1, 4, 32, 32, generator=gen),)
    if name in tokens:
        width = {
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
        }
        model = {
            "clip_text": lambda: transformers.CLIPTextModel(
                transformers.CLIPTextConfig(**width, max_position_embeddings=77, vocab_size=1000)
            ),
            "bert": lambda: transformers.BertModel(transformers.BertConfig(**width, vocab_size=1000)),
            "t5_encoder": lambda: transformers.T5EncoderModel(
                transformers.T5Config(
                    d_model=256, d_ff=1024, num_layers=4, num_heads=4, d_kv=64, vocab_size=1000
                )
            ),
        }[name]()
        return Output(model, "ids").eval(), (torch.randint(0, 1000, (1, tokens[name]), generator=gen),)
    if name == "convnext":
        # layer scale 1 (its default 1e-6 leaves the random blocks' outputs out of the sums)
        config = transformers.ConvNextConfig(
            hidden_sizes=[48, 96, 192, 384], depths=[1, 1, 3, 1], layer_scale_init_value=1.0
        )
        model, x = transformers.ConvNextModel(config), torch.randn(batch, 3, image, image, generator=gen)
    elif name == "swin":
        config = transformers.SwinConfig(
            image_size=224, embed_dim=48, depths=[1, 1, 2, 1], num_heads=[2, 2, 4, 8], window_size=7
        )
        model, x = transformers.SwinModel(config), torch.randn(1, 3, 224, 224, generator=gen)
    else:
        raise KeyError(f"unknown family {name!r}; known: {', '.join(FAMILIES + HF_FAMILIES)}")
    return Output(model, "pixels").eval(), (x,)


def family(name: str, batch: int, image: int, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """(model in eval mode, example inputs) of family `name`: images `batch` x 3 x `image` x
    `image`, for the decoders one sequence of token ids, for `sd_unet` its denoiser inputs, for
    `HF_FAMILIES` as the module docstring says."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if name in HF_FAMILIES:
        return hf_family(name, batch, image, gen)
    if name in LLAMA_TOKENS:
        from optkit.zoo.textlm import VOCAB

        tokens = LLAMA_TOKENS[name]
        return llama(tokens), (torch.randint(0, VOCAB, (1, tokens), generator=gen),)
    if name == "sd_unet":
        return sd_unet(seed)
    builders = {"mobilenet_v2": MobileNetV2, "resnet18": ResNet18, "vit_tiny": lambda: ViT(image=image)}
    if name not in builders:
        raise KeyError(f"unknown family {name!r}; known: {', '.join(FAMILIES + HF_FAMILIES)}")
    model = randomize_batchnorm(builders[name](), seed)
    return model, (torch.randn(batch, 3, image, image, generator=gen),)


FAMILIES = ("mobilenet_v2", "resnet18", "vit_tiny", *LLAMA_TOKENS, "sd_unet")
DIFFUSION_TRANSFORMERS = ("pixart", "flux", "wan")
HF_FAMILIES = ("vae_decoder", "clip_text", "t5_encoder", "bert", "convnext", "swin", *DIFFUSION_TRANSFORMERS)
CNN_FAMILIES = ("mobilenet_v2", "resnet18")
