"""A release checkpoint and config written from the layout documented in the release's source, for the converter's
tests (test_release.py, test_release_flags.py). No release code here: every key, shape and config field below is
read off the release's source (songweii/DualToken: modeling/rqvaesigliptransformer/rqvaesiglip/*.py and
model_config_*/config.json at HEAD 29e7c84; the early layout at b0f6f76):

* ``release_shapes``: each key and shape of ``RQVAESiglipModel.state_dict()``: the transformers SigLIP tower under
  ``siglip_model.vision_model.`` (q/k/v separate, MAP head with a fused in_proj), the text-image logit scalars,
  five AttnProjections (norm1/norm3 on the input, norm2 and the GeGLU's own norm on the output, qkv without bias,
  q/v biases and a zero k-bias buffer, attn.proj, proj) or, in the early layout, four ProjectResnetBlocks; per
  depth a codebook of K + 1 rows with its EMA buffers; the post-quant ResNet block and taming's decoder, whose
  ``up.i`` counts levels from the output resolution;
* ``release_config``: its ``config.json`` (``rqvaesiglip`` dict, or the early code's flat one);
* ``random_release_state``: those keys filled with random tensors, a shared codebook saved D times as one tensor.
"""

from __future__ import annotations

import torch

from dualtoken_lite.model.config import ModelConfig, model_preset
from dualtoken_lite.quantizers.residual import QuantizerConfig

V = "siglip_model.vision_model."
TEXT_KEYS = {"siglip_model.text_model.embeddings.token_embedding.weight": (100, 16),  # a stand-in text tower:
             "siglip_model.text_model.final_layer_norm.weight": (16,)}  # the release saves a whole SiglipModel


def conv_layout(cfg: ModelConfig) -> bool:
    """The early release's layout (ResNet-block projections) rather than the current one."""
    return cfg.projection == "conv"


def release_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every key of a release checkpoint of this config, with its shape, in the release's own names."""
    b = cfg.backbone
    C, N, mlp, p = b.width, b.grid**2, round(b.width * b.mlp_ratio), b.patch_size
    s: dict[str, tuple[int, ...]] = {"siglip_model.logit_scale": (1,), "siglip_model.logit_bias": (1,)}

    def linear(name, o, i, bias=True):
        s[name + ".weight"] = (o, i)
        if bias:
            s[name + ".bias"] = (o,)

    def norm(name, c):
        s[name + ".weight"], s[name + ".bias"] = (c,), (c,)

    def resblock(name, c_in, c_out, k=3):
        norm(name + ".norm1", c_in)
        s[name + ".conv1.weight"], s[name + ".conv1.bias"] = (c_out, c_in, k, k), (c_out,)
        norm(name + ".norm2", c_out)
        s[name + ".conv2.weight"], s[name + ".conv2.bias"] = (c_out, c_out, 3, 3), (c_out,)
        if c_in != c_out:
            s[name + ".nin_shortcut.weight"], s[name + ".nin_shortcut.bias"] = (c_out, c_in, 1, 1), (c_out,)

    s[V + "embeddings.patch_embedding.weight"], s[V + "embeddings.patch_embedding.bias"] = (C, 3, p, p), (C,)
    s[V + "embeddings.position_embedding.weight"] = (N, C)
    for i in range(b.layers):
        layer = f"{V}encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            linear(layer + "self_attn." + proj, C, C)
        norm(layer + "layer_norm1", C), norm(layer + "layer_norm2", C)
        linear(layer + "mlp.fc1", mlp, C), linear(layer + "mlp.fc2", C, mlp)
    norm(V + "post_layernorm", C)
    s[V + "head.probe"] = (1, 1, C)
    s[V + "head.attention.in_proj_weight"], s[V + "head.attention.in_proj_bias"] = (3 * C, C), (3 * C,)
    linear(V + "head.attention.out_proj", C, C), norm(V + "head.layernorm", C)
    linear(V + "head.mlp.fc1", mlp, C), linear(V + "head.mlp.fc2", C, mlp)
    d_pix, d_sem = cfg.pixel_quantizer.code_dim, cfg.semantic_quantizer.code_dim
    if conv_layout(cfg):  # modules.py ProjectResnetBlock: 1x1 conv first, 3x3 second
        for name, (i, o) in {"prequant_visual": (C, d_pix), "prequant_semantic": (C, d_sem),
                             "postquant_visual": (d_pix, C), "postquant_semantic": (d_sem, C)}.items():
            resblock(name, i, o, k=1)
        quantizers = {"quantizer": cfg.pixel_quantizer, "quantizer_semantic": cfg.semantic_quantizer}
    else:
        projections = {"prequant_pix": (C, d_pix), "prequant_sem": (C, d_sem), "postquant_pix": (d_pix, C),
                       "postquant_sem": (d_sem, C)}
        if cfg.shortcut_layer is not None:
            projections["prequant_shortcut"] = (C, d_pix)
        for name, (i, o) in projections.items():
            wide = max(i, o)  # AttentionBlock: the attention runs at the wide size
            norm(f"{name}.norm1", i), norm(f"{name}.norm3", i), norm(f"{name}.norm2", o)
            for bias in ("q_bias", "v_bias", "zero_k_bias"):
                s[f"{name}.attn.{bias}"] = (wide,)
            linear(f"{name}.attn.qkv", 3 * wide, i, bias=False)
            linear(f"{name}.attn.proj", o, o)  # AttentionBlock.proj = Linear(out_dim, out_dim)
            linear(f"{name}.proj", o, i)
            norm(f"{name}.mlp.norm", o)
            linear(f"{name}.mlp.w0", 2 * o, o), linear(f"{name}.mlp.w1", 2 * o, o), linear(f"{name}.mlp.w2", o, 2 * o)
        quantizers = {"quantizer_pix": cfg.pixel_quantizer, "quantizer_sem": cfg.semantic_quantizer}
    for name, q in quantizers.items():
        for d in range(q.depth):
            s[f"{name}.codebooks.{d}.weight"] = (q.codebook_size + 1, q.code_dim)
            s[f"{name}.codebooks.{d}.cluster_size_ema"] = (q.codebook_size,)
            s[f"{name}.codebooks.{d}.embed_ema"] = (q.codebook_size, q.code_dim)

    def attn(name, c):
        norm(name + ".norm", c)
        for part in ("q", "k", "v", "proj_out"):
            s[f"{name}.{part}.weight"], s[f"{name}.{part}.bias"] = (c, c, 1, 1), (c,)

    c_in, widths = cfg.decoder_in_channels, [cfg.decoder_channels * m for m in cfg.decoder_channel_mult]
    resblock("post_quant_conv", C, c_in, k=1)
    s["decoder.conv_in.weight"], s["decoder.conv_in.bias"] = (widths[0], c_in, 3, 3), (widths[0],)
    resblock("decoder.mid.block_1", widths[0], widths[0]), attn("decoder.mid.attn_1", widths[0])
    resblock("decoder.mid.block_2", widths[0], widths[0])
    levels = len(widths)
    for i in range(levels):  # taming: up.0 is the output resolution, up.{levels-1} the decoder's input grid
        level = levels - 1 - i
        for j in range(cfg.decoder_res_blocks + 1):
            resblock(f"decoder.up.{i}.block.{j}", widths[max(level - 1, 0)] if j == 0 else widths[level], widths[level])
            if level == 0:
                attn(f"decoder.up.{i}.attn.{j}", widths[level])
        if i != 0:
            s[f"decoder.up.{i}.upsample.conv.weight"] = (widths[level], widths[level], 3, 3)
            s[f"decoder.up.{i}.upsample.conv.bias"] = (widths[level],)
    norm("decoder.norm_out", widths[-1])
    s["decoder.conv_out.weight"], s["decoder.conv_out.bias"] = (3, widths[-1], 3, 3), (3,)
    return s


def release_config(cfg: ModelConfig) -> dict:
    """The release's config.json for this config: the current code's (nested under ``rqvaesiglip``) or the early
    code's (flat, no taps unless they differ from its hard-coded blocks L - 21 and L - 1)."""
    b, g = cfg.backbone, cfg.decoder_latent_grid
    ddconfig = {"attn_resolutions": [g], "ch": cfg.decoder_channels, "ch_mult": list(reversed(cfg.decoder_channel_mult)),
                "decoder_in_channels": cfg.decoder_in_channels, "double_z": False, "dropout": 0.0, "in_channels": 3,
                "num_res_blocks": cfg.decoder_res_blocks, "out_ch": 3, "resolution": b.image_size}

    def vq(q: QuantizerConfig, kind: str) -> dict:
        return {"bottleneck_type": kind, "ckpt_path": None, "code_shape": [b.grid, b.grid, q.depth], "decay": 0.99,
                "embed_dim": q.code_dim, "latent_shape": [b.grid, b.grid, q.code_dim], "n_embed": q.codebook_size,
                "restart_unused_codes": True, "shared_codebook": q.shared_codebook}

    if conv_layout(cfg):
        settings = {**vq(cfg.pixel_quantizer, "rq"), "hidden_size": b.width, "ddconfig": ddconfig,
                    "decoder_latent_shape": [g, g], "model_type": "rqvaesiglip_model",
                    "pretrained_model": "/your/path/to/siglip-so400m-patch14-384"}
        if (cfg.pixel_layer, cfg.semantic_layer) != (b.layers - 21, b.layers - 1):
            settings |= {"layer_recon": cfg.pixel_layer, "layer_sem": cfg.semantic_layer}
        return {"architectures": ["RQVAESIGLIPTransformer"], "hidden_size": b.width, "rqvaesiglip": settings}
    settings = {"layer_recon": cfg.pixel_layer, "layer_sem": cfg.semantic_layer, "layer_shortcut": cfg.shortcut_layer,
                "weight_shortcut": cfg.shortcut_weight, "model_type": "rqvaesiglip_model", "hidden_size": b.width,
                "ddconfig": ddconfig, "decoder_latent_shape": [g, g], "checkpointing": True, "ignore_keys": None,
                "vq_sem": vq(cfg.semantic_quantizer, "rq_ema"), "vq_pix": vq(cfg.pixel_quantizer, "rq"),
                "pretrained_model": "$PATH_TO_YOUR_MODELS/siglip2-so400m-patch14-384"}
    return {"architectures": ["RQVAESIGLIPTransformer"], "hidden_size": b.width,
            "model_type": "rqvaesigliptransformer_model", "rqvaesiglip": settings}


def random_release_state(cfg: ModelConfig, seed: int = 0, text_tower: bool = True) -> dict[str, torch.Tensor]:
    """Random tensors in the release layout; a shared codebook is one tensor saved D times, its last row pads."""
    gen = torch.Generator().manual_seed(seed)
    state, shared = {}, {}
    shapes = release_shapes(cfg) | (TEXT_KEYS if text_tower else {})
    for key, shape in shapes.items():
        if ".codebooks." in key:
            name, rest = key.split(".codebooks.")
            depth, leaf = rest.split(".")
            is_shared = (cfg.pixel_quantizer if name in ("quantizer_pix", "quantizer") else cfg.semantic_quantizer
                         ).shared_codebook
            slot = (name, leaf) if is_shared else (name, depth, leaf)
            if slot not in shared:
                value = torch.rand(shape, generator=gen) * 5 if leaf == "cluster_size_ema" else torch.randn(shape, generator=gen)
                if leaf == "weight":
                    value[-1] = 0  # the padding row
                shared[slot] = value
            state[key] = shared[slot]
        elif key.endswith("zero_k_bias"):
            state[key] = torch.zeros(shape)
        else:
            state[key] = 0.2 * torch.randn(shape, generator=gen) + (1.0 if "norm" in key and key.endswith("weight") else 0)
    return state


def small_cfg(code_dim: int = 32, semantic_code_dim: int | None = None, shared: bool = True,
              conv: bool = False) -> ModelConfig:
    """The tiny tower with the release's structure at small size: taps 2 / 1 / 5 (no shortcut in the early
    layout), depth 3, K 64, the release's GroupNorm (32 groups) and tanh GELU."""
    cfg = model_preset("tiny")
    cfg.pixel_layer, cfg.shortcut_layer = 2, (None if conv else 1)
    cfg.projection = "conv" if conv else "attention"
    cfg.backbone.activation, cfg.decoder_norm_groups = "gelu_tanh", 32
    cfg.pixel_quantizer = QuantizerConfig(code_dim=code_dim, depth=3, codebook_size=64, shared_codebook=shared)
    cfg.semantic_quantizer = QuantizerConfig(code_dim=semantic_code_dim or code_dim, depth=3, codebook_size=64,
                                             shared_codebook=shared)
    C = cfg.backbone.width
    cfg.proj_head_dim = C // (C // code_dim)
    semantic = C // (C // (semantic_code_dim or code_dim))
    cfg.semantic_proj_head_dim = semantic if semantic != cfg.proj_head_dim else None
    return cfg
