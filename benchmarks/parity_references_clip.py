"""Reference models for the parity checks of fivewsi's non-plain-timm recipes.

One function per recipe (:data:`REFERENCES`): ``reference_<recipe>(folder, small=True)`` builds
the model the way its authors publish it — through the library that defines it (transformers
``ViTModel`` / ``Dinov2Model`` / ``CLIPModel``, timm ``VisionTransformer`` / Swin,
torchvision ``resnet50``) or, where the authors' code is not on PyPI (CONCH, CTransPath), from
those libraries plus a forward written from the authors' published code — with random weights,
saves the weights into ``folder`` in the published file format and key names, and returns a
:class:`Reference`: the reference forward, the authors' torchvision eval transform, the path to
hand to ``create_encoder(name, weights=...)`` and the ``arch_overrides`` that shrink fivewsi's
model to the same reduced size (empty at full size).

Used by ``tests/test_encoder_recipes_clip.py`` (``small=True``) and by the full-size benchmark
(``small=False``: the published sizes, one patch, not run in CI).

Example (needs timm, torchvision and transformers)::

    ref = REFERENCES["conch"](Path("/tmp/conch"), small=True)
    expected = ref.features([PIL.Image.open("patch.png")])
    encoder = create_encoder("conch", weights=ref.weights, arch_overrides=ref.arch_overrides)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


@dataclass
class Reference:
    """A published model, its eval transform and where its saved weights are."""

    model: Callable[[torch.Tensor], torch.Tensor]  # normalised [B, 3, H, W] → [B, D]
    transform: Callable[[Any], torch.Tensor]  # PIL image → normalised [3, H, W]
    weights: Path  # what --weights takes (file or folder)
    arch_overrides: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def features(self, images: Sequence[Any], transform: Callable | None = None) -> torch.Tensor:
        """Reference features of PIL ``images`` (optionally through another ``transform``)."""
        batch = torch.stack([(transform or self.transform)(image) for image in images])
        return self.model(batch).float()


def _tv_transform(resize: int | tuple[int, int], mean_std: tuple, crop: int | None = None,
                  interpolation: str = "bilinear") -> Callable:
    from torchvision import transforms as T

    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}
    steps = [T.Resize(resize, interpolation=mode[interpolation])]
    steps += [T.CenterCrop(crop)] if crop else []
    return T.Compose([*steps, T.ToTensor(), T.Normalize(*mean_std)])


def _randomise(module: nn.Module, seed: int) -> None:
    """Random values everywhere (LayerNorm/BN affine and running stats included), small enough
    that deep random nets stay finite."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif name.endswith(("weight", "gamma")) and tensor.ndim == 1:
                tensor.copy_(1 + 0.1 * torch.randn(tensor.shape, generator=gen))
            elif "attn_mask" not in name and "relative_position_index" not in name:
                fan_in = tensor[0].numel() if tensor.ndim > 1 else 1
                scale = 0.02 if tensor.ndim == 1 else fan_in ** -0.5
                tensor.copy_(scale * torch.randn(tensor.shape, generator=gen))


# --- transformers: Phikon, Phikon-v2, PLIP ------------------------------------------------


def reference_phikon(folder: Path, small: bool = True) -> Reference:
    """owkin/phikon: transformers ``ViTModel`` (ViT-B/16), class token of the last hidden state;
    TRIDENT's transform (Resize((224, 224)) bilinear, ImageNet)."""
    import transformers

    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64) if small else {}
    config = transformers.ViTConfig(image_size=224, patch_size=16, **size)
    torch.manual_seed(1)
    model = transformers.ViTModel(config).eval()  # the hub file also holds the pooler
    _randomise(model, 1)
    model.save_pretrained(folder)
    return Reference(
        lambda x: model(pixel_values=x).last_hidden_state[:, 0],
        _tv_transform((224, 224), IMAGENET), folder,
    )


def reference_phikon_v2(folder: Path, small: bool = True) -> Reference:
    """owkin/phikon-v2: DINOv2 ViT-L/16 (transformers ``Dinov2Model``, loaded with AutoModel),
    class token; TRIDENT's transform (Resize(224), CenterCrop(224), ImageNet)."""
    import transformers

    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                mlp_ratio=2) if small else dict(hidden_size=1024, num_hidden_layers=24,
                                                 num_attention_heads=16)
    config = transformers.Dinov2Config(image_size=224, patch_size=16, **size)
    torch.manual_seed(2)
    model = transformers.Dinov2Model(config).eval()
    _randomise(model, 2)
    model.save_pretrained(folder)
    return Reference(
        lambda x: model(pixel_values=x).last_hidden_state[:, 0],
        _tv_transform(224, IMAGENET, crop=224), folder,
    )


def reference_plip(folder: Path, small: bool = True) -> Reference:
    """vinid/plip: transformers ``CLIPModel`` (ViT-B/32), ``get_image_features``; CLIP's
    processor as torchvision (Resize(224) bicubic, CenterCrop(224), OpenAI mean/std)."""
    import transformers

    if small:
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, image_size=224, patch_size=32)
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, vocab_size=64, max_position_embeddings=16)
        config = transformers.CLIPConfig(text_config=text, vision_config=vision,
                                         projection_dim=24)
    else:
        config = transformers.CLIPConfig(vision_config=dict(patch_size=32), projection_dim=512)
    torch.manual_seed(3)
    model = transformers.CLIPModel(config).eval()
    _randomise(model, 3)
    model.save_pretrained(folder)

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = model.get_image_features(pixel_values=x)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    return Reference(forward, _tv_transform(224, OPENAI_CLIP, crop=224, interpolation="bicubic"),
                     folder)


# --- CONCH v1 ------------------------------------------------------------------------------


class _ConchPoolerLND(nn.Module):
    """CONCH's AttentionalPooler as its code runs it (sequence-first MultiheadAttention)."""

    def __init__(self, d_model: int, context_dim: int, n_head: int, n_queries: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_k(x).permute(1, 0, 2)
        q = self.ln_q(self.query).unsqueeze(1).repeat(1, x.shape[1], 1)
        return self.attn(q, x, x, need_weights=False)[0].permute(1, 0, 2)


class _ConchVisual(nn.Module):
    """CONCH's VisualModel (contrastive + caption poolers) around a timm trunk."""

    def __init__(self, trunk: nn.Module, dim: int, dim_caption: int, heads: int,
                 caption_queries: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.attn_pool_contrast = _ConchPoolerLND(dim, trunk.num_features, heads, 1)
        self.ln_contrast = nn.LayerNorm(dim)
        self.proj_contrast = nn.Parameter(torch.randn(dim, dim) * trunk.num_features ** -0.5)
        self.attn_pool_caption = _ConchPoolerLND(dim_caption, trunk.num_features, heads,
                                                 caption_queries)
        self.ln_caption = nn.LayerNorm(dim_caption)

    def forward_no_head(self, x: torch.Tensor) -> torch.Tensor:
        """``encode_image(x, proj_contrast=False, normalize=False)``."""
        tokens = self.trunk.forward_features(x)
        return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])


def conch_text_keys(width: int = 768, layers: int = 12, vocab: int = 32007, context: int = 128,
                    embed_dim: int = 512) -> dict[str, tuple[int, ...]]:
    """Names and shapes of CONCH v1's text tower, decoder and logit scale (MahmoodLab/CONCH
    transformer.py TextTransformer / MultimodalTransformer, conch_ViT-B-16.json)."""
    block = {
        "ln_1.weight": (width,), "ln_1.bias": (width,),
        "attn.in_proj_weight": (3 * width, width), "attn.in_proj_bias": (3 * width,),
        "attn.out_proj.weight": (width, width), "attn.out_proj.bias": (width,),
        "ln_2.weight": (width,), "ln_2.bias": (width,),
        "mlp.c_fc.weight": (4 * width, width), "mlp.c_fc.bias": (4 * width,),
        "mlp.c_proj.weight": (width, 4 * width), "mlp.c_proj.bias": (width,),
    }
    keys: dict[str, tuple[int, ...]] = {
        "logit_scale": (),
        "text.text_projection": (width, embed_dim),
        "text.cls_emb": (width,),
        "text.token_embedding.weight": (vocab, width),
        "text.positional_embedding": (context, width),
        "text.ln_final.weight": (width,), "text.ln_final.bias": (width,),
        "text_decoder.ln_final.weight": (width,), "text_decoder.ln_final.bias": (width,),
        "text_decoder.text_projection": (width, vocab),
    }
    for i in range(layers):
        for name, shape in block.items():
            keys[f"text.transformer.resblocks.{i}.{name}"] = shape
            keys[f"text_decoder.resblocks.{i}.{name}"] = shape
            keys[f"text_decoder.cross_attn.{i}.{name}"] = shape
        keys[f"text_decoder.cross_attn.{i}.ln_1_kv.weight"] = (width,)
        keys[f"text_decoder.cross_attn.{i}.ln_1_kv.bias"] = (width,)
    return keys


def reference_conch(folder: Path, small: bool = True) -> Reference:
    """MahmoodLab/CONCH: CoCa image tower (timm ``VisionTransformer`` built as CONCH's
    ``_build_vision_tower`` does, 448 px) + attentional pooler, saved as the full
    ``pytorch_model.bin`` (``visual.*`` + text tower + decoder + logit scale)."""
    from timm.models.vision_transformer import VisionTransformer

    width, depth, heads, dim, dim_cap, pool_heads = (
        (32, 1, 2, 16, 24, 2) if small else (768, 12, 12, 512, 768, 8))
    torch.manual_seed(4)
    trunk = VisionTransformer(embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=4,
                              img_size=448, patch_size=16, num_classes=0, dynamic_img_size=True)
    visual = _ConchVisual(trunk, dim, dim_cap, pool_heads, 4 if small else 256).eval()
    _randomise(visual, 4)
    state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    text = conch_text_keys(width=16, layers=1, vocab=40, context=8, embed_dim=dim) if small \
        else conch_text_keys()
    gen = torch.Generator().manual_seed(5)
    state.update({k: torch.randn(shape, generator=gen) for k, shape in text.items()})
    weights = folder / "pytorch_model.bin"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, weights)
    overrides = (dict(embed_dim=width, depth=depth, num_heads=heads, pool_dim=dim,
                      pool_heads=pool_heads) if small else {})
    return Reference(visual.forward_no_head,
                     _tv_transform(448, OPENAI_CLIP, crop=448, interpolation="bicubic"),
                     weights, overrides)


# --- CONCH v1.5 ----------------------------------------------------------------------------


class _Conch15Reference(nn.Module):
    """CONCH v1.5 as TRIDENT's conchv1_5.py runs it: iBOT-style ViT-L/16 built at 224 px (its
    weights in a timm ``VisionTransformer`` with the same key names), DINO position-embedding
    interpolation, einsum attentional pooler, ``ln_contrast``."""

    def __init__(self, width: int, depth: int, heads: int, dim: int, pool_heads: int) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.trunk = VisionTransformer(img_size=224, patch_size=16, embed_dim=width, depth=depth,
                                       num_heads=heads, mlp_ratio=4, qkv_bias=True,
                                       init_values=1.0, num_classes=0)
        pool = nn.Module()
        pool.query = nn.Parameter(torch.randn(1, dim))
        pool.ln_k = nn.LayerNorm(width)
        pool.ln_q = nn.LayerNorm(dim)
        pool.to_q = nn.Linear(dim, dim, bias=False)
        pool.to_kv = nn.Linear(width, 2 * dim, bias=False)
        pool.to_out = nn.Linear(dim, dim, bias=False)
        self.attn_pool_contrast = pool
        self.pool_heads = pool_heads
        self.ln_contrast = nn.LayerNorm(dim)

    def _interpolate(self, x: torch.Tensor, w: int, h: int) -> torch.Tensor:
        pos = self.trunk.pos_embed
        npatch, n = x.shape[1] - 1, pos.shape[1] - 1
        if npatch == n and w == h:
            return pos
        w0 = w // 16 + 0.1
        h0 = h // 16 + 0.1
        side = int(math.sqrt(n))
        grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=(w0 / side, h0 / side), mode="bicubic")
        grid = grid.permute(0, 2, 3, 1).view(1, -1, pos.shape[-1])
        return torch.cat((pos[:, :1], grid), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        _, _, w, h = x.shape
        tokens = t.patch_embed.proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat((t.cls_token.expand(x.shape[0], -1, -1), tokens), dim=1)
        tokens = tokens + self._interpolate(tokens, w, h)
        tokens = t.norm(t.blocks(tokens))
        p = self.attn_pool_contrast
        kv = p.ln_k(tokens.unsqueeze(1))  # b 1 n d
        q = p.ln_q(p.query.expand(x.shape[0], 1, -1, -1))  # b 1 1 d
        q = p.to_q(q)
        k, v = p.to_kv(kv).chunk(2, dim=-1)

        def split(z: torch.Tensor) -> torch.Tensor:  # b t n (h d) -> b h t n d
            b, tt, n, _ = z.shape
            return z.reshape(b, tt, n, self.pool_heads, -1).permute(0, 3, 1, 2, 4)

        q, k, v = split(q), split(k), split(v)
        q = q * (q.shape[-1] ** -0.5)
        sim = torch.einsum("...id,...jd->...ij", q, k)
        sim = sim - sim.amax(dim=-1, keepdim=True)
        out = torch.einsum("...ij,...jd->...id", sim.softmax(dim=-1), v)
        b, hh, tt, n, d = out.shape
        out = p.to_out(out.permute(0, 2, 3, 1, 4).reshape(b, tt, n, hh * d)).squeeze(1)
        return self.ln_contrast(out[:, 0])


def reference_conch_v15(folder: Path, small: bool = True) -> Reference:
    """MahmoodLab/conchv1_5 ``pytorch_model_vision.bin`` (image tower only, no prefix);
    TRIDENT's transform (Resize(448) bilinear, CenterCrop(448), ImageNet)."""
    width, depth, heads, dim, pool_heads = (32, 1, 2, 16, 2) if small else (1024, 24, 16, 768, 8)
    torch.manual_seed(6)
    model = _Conch15Reference(width, depth, heads, dim, pool_heads).eval()
    _randomise(model, 6)
    weights = folder / "pytorch_model_vision.bin"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    overrides = (dict(embed_dim=width, depth=depth, num_heads=heads, pool_dim=dim,
                      pool_heads=pool_heads) if small else {})
    return Reference(model, _tv_transform(448, IMAGENET, crop=448), weights, overrides)


# --- CTransPath ----------------------------------------------------------------------------


class _TransPathStem(nn.Module):
    """TransPath ctran.py's ConvStem, emitting NHWC for current timm's Swin."""

    def __init__(self, img_size: Any = 224, patch_size: Any = 4, in_chans: int = 3,
                 embed_dim: int = 96, norm_layer: Any = None, **_: Any) -> None:
        super().__init__()
        size = img_size if isinstance(img_size, int) else img_size[0]
        self.img_size, self.patch_size = (size, size), (4, 4)
        self.grid_size = (size // 4, size // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        stem: list[nn.Module] = []
        c_in, c_out = in_chans, embed_dim // 8
        for _ in range(2):
            stem += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                     nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in, c_out = c_out, c_out * 2
        stem.append(nn.Conv2d(c_in, embed_dim, kernel_size=1))
        self.proj = nn.Sequential(*stem)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


def to_transpath_layout(model: nn.Module) -> dict[str, torch.Tensor]:
    """Current timm Swin → the released ctranspath.pth layout (timm 0.5): patch merging at the
    end of the previous stage, relative position indices and shifted-window masks stored."""
    state = {}
    for key, value in [*model.state_dict().items(), *model.named_buffers()]:
        if key.endswith(("relative_position_index", "attn_mask")) and value is None:
            continue
        key = re.sub(r"^layers\.(\d+)\.downsample",
                     lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        state[key] = value
    return {k: v for k, v in state.items() if v is not None}


def reference_ctranspath(folder: Path, small: bool = True) -> Reference:
    """Xiyue-Wang/TransPath ``ctranspath.pth``: timm ``swin_tiny_patch4_window7_224`` with the
    ConvStem, head removed; TransPath's transform (Resize(224), ImageNet)."""
    import timm

    size = dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2)) if small else {}
    torch.manual_seed(7)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0,
                              embed_layer=_TransPathStem, **size).eval()
    _randomise(model, 7)
    weights = folder / "ctranspath.pth"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": to_transpath_layout(model)}, weights)
    return Reference(model, _tv_transform(224, IMAGENET), weights, dict(size))


# --- resnet50-trunc ------------------------------------------------------------------------


def reference_resnet50_trunc(folder: Path, small: bool = False) -> Reference:
    """torchvision ``resnet50`` (IMAGENET1K_V1 layout) with layer4 and fc removed + average
    pooling; CLAM's transform (Resize(224), ImageNet). Always full size (a 25M-parameter CNN)."""
    import torchvision

    torch.manual_seed(8)
    net = torchvision.models.resnet50(weights=None).eval()
    _randomise(net, 8)
    weights = folder / "resnet50-0676ba61.pth"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), weights)
    trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                          net.layer3, nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    return Reference(trunk, _tv_transform(224, IMAGENET), weights)


REFERENCES: dict[str, Callable[..., Reference]] = {
    "phikon": reference_phikon,
    "phikon-v2": reference_phikon_v2,
    "plip": reference_plip,
    "conch": reference_conch,
    "conch-v1.5": reference_conch_v15,
    "ctranspath": reference_ctranspath,
    "resnet50-trunc": reference_resnet50_trunc,
}
