"""A release checkpoint's layout written from its description, for the converter's tests (test_release.py,
test_release_flags.py): ``release_shapes`` lists every key and shape (docs/method.md §2 and the converter's
docstring: SigLIP tower in transformers' layout, projections with norm1/norm2/norm3 and a zero k bias, D copies of
one codebook with a padding row, taming's decoder counted from the output); ``random_release_state`` fills it;
``load_by_hand`` puts each tensor into our modules by attribute, independently of the converter's key renames.
"""

from __future__ import annotations

import torch

from dualtoken_lite.model.config import ModelConfig, model_preset
from dualtoken_lite.model.dualtoken import DualToken
from dualtoken_lite.quantizers.residual import QuantizerConfig

V = "siglip_model.vision_model."


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
    for name, (i, o) in {"prequant_pix": (C, d_pix), "prequant_shortcut": (C, d_pix), "prequant_sem": (C, d_sem),
                         "postquant_pix": (d_pix, C), "postquant_sem": (d_sem, C)}.items():
        squeeze = i > o
        norm(f"{name}.norm1", i), norm(f"{name}.norm3", i), norm(f"{name}.norm2", o)
        for bias in ("q_bias", "v_bias", "zero_k_bias"):
            s[f"{name}.attn.{bias}"] = (C,)
        linear(f"{name}.attn.qkv", 3 * C, i, bias=False)
        linear(f"{name}.attn.proj", o if squeeze else C, o if squeeze else C)  # squeeze: (heads pooled to d) -> d
        linear(f"{name}.proj", o, i)
        norm(f"{name}.mlp.norm", o)
        linear(f"{name}.mlp.w0", 2 * o, o), linear(f"{name}.mlp.w1", 2 * o, o), linear(f"{name}.mlp.w2", o, 2 * o)
    for name, q in (("quantizer_pix", cfg.pixel_quantizer), ("quantizer_sem", cfg.semantic_quantizer)):
        for d in range(q.depth):
            s[f"{name}.codebooks.{d}.weight"] = (q.codebook_size + 1, q.code_dim)
            s[f"{name}.codebooks.{d}.cluster_size_ema"] = (q.codebook_size,)
            s[f"{name}.codebooks.{d}.embed_ema"] = (q.codebook_size, q.code_dim)

    def resblock(name, c_in, c_out, k=3):
        norm(name + ".norm1", c_in)
        s[name + ".conv1.weight"], s[name + ".conv1.bias"] = (c_out, c_in, k, k), (c_out,)
        norm(name + ".norm2", c_out)
        s[name + ".conv2.weight"], s[name + ".conv2.bias"] = (c_out, c_out, 3, 3), (c_out,)
        if c_in != c_out:
            s[name + ".nin_shortcut.weight"], s[name + ".nin_shortcut.bias"] = (c_out, c_in, 1, 1), (c_out,)

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


def random_release_state(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in the release layout; the D codebook entries are one shared tensor, its last row pads."""
    gen = torch.Generator().manual_seed(seed)
    state, shared = {}, {}
    for key, shape in release_shapes(cfg).items():
        if ".codebooks." in key:
            name, leaf = key.split(".codebooks.")[0], key.rsplit(".", 1)[1]
            if (name, leaf) not in shared:
                value = torch.rand(shape, generator=gen) * 5 if leaf == "cluster_size_ema" else torch.randn(shape, generator=gen)
                if leaf == "weight":
                    value[-1] = 0  # the padding row
                shared[name, leaf] = value
            state[key] = shared[name, leaf]
        elif key.endswith("zero_k_bias"):
            state[key] = torch.zeros(shape)
        else:
            state[key] = 0.2 * torch.randn(shape, generator=gen) + (1.0 if "norm" in key and key.endswith("weight") else 0)
    return state


@torch.no_grad()
def load_by_hand(model: DualToken, sd: dict[str, torch.Tensor]) -> DualToken:
    """Every release tensor copied into our modules by attribute (no key renaming)."""
    def put(param, value):
        assert param.shape == value.shape, (tuple(param.shape), tuple(value.shape))
        param.copy_(value)

    def pair(module, name):
        put(module.weight, sd[name + ".weight"])
        if getattr(module, "bias", None) is not None:
            put(module.bias, sd[name + ".bias"])

    t = model.encoder.trunk
    pair(t.patch_embed.proj, V + "embeddings.patch_embedding")
    put(t.pos_embed, sd[V + "embeddings.position_embedding.weight"][None])
    for i, block in enumerate(t.blocks):
        a = f"{V}encoder.layers.{i}."
        for leaf in ("weight", "bias"):
            put(getattr(block.attn.qkv, leaf), torch.cat([sd[f"{a}self_attn.{n}_proj.{leaf}"] for n in "qkv"]))
        pair(block.attn.proj, a + "self_attn.out_proj"), pair(block.norm1, a + "layer_norm1")
        pair(block.norm2, a + "layer_norm2"), pair(block.mlp.fc1, a + "mlp.fc1"), pair(block.mlp.fc2, a + "mlp.fc2")
    pair(t.norm, V + "post_layernorm")
    pool, C = t.attn_pool, t.embed_dim
    put(pool.latent, sd[V + "head.probe"])
    put(pool.q.weight, sd[V + "head.attention.in_proj_weight"][:C]), put(pool.q.bias, sd[V + "head.attention.in_proj_bias"][:C])
    put(pool.kv.weight, sd[V + "head.attention.in_proj_weight"][C:]), put(pool.kv.bias, sd[V + "head.attention.in_proj_bias"][C:])
    pair(pool.proj, V + "head.attention.out_proj"), pair(pool.norm, V + "head.layernorm")
    pair(pool.mlp.fc1, V + "head.mlp.fc1"), pair(pool.mlp.fc2, V + "head.mlp.fc2")
    for ours, theirs in ((model.pixel_proj, "prequant_pix"), (model.shortcut_proj, "prequant_shortcut"),
                         (model.semantic_proj, "prequant_sem"), (model.pixel_post_proj, "postquant_pix"),
                         (model.semantic_post_proj, "postquant_sem")):
        pair(ours.norm_attn, theirs + ".norm1"), pair(ours.norm_lin, theirs + ".norm3")
        pair(ours.norm_mlp, theirs + ".norm2"), pair(ours.lin, theirs + ".proj")
        put(ours.attn.qkv.weight, sd[theirs + ".attn.qkv.weight"])
        put(ours.attn.q_bias, sd[theirs + ".attn.q_bias"]), put(ours.attn.v_bias, sd[theirs + ".attn.v_bias"])
        pair(ours.attn.proj, theirs + ".attn.proj")
        for part in ("norm", "w0", "w1", "w2"):
            pair(getattr(ours.mlp, part), f"{theirs}.mlp.{part}")
    for quantizer, theirs in ((model.pixel_quantizer, "quantizer_pix"), (model.semantic_quantizer, "quantizer_sem")):
        (codebook,) = quantizer.codebooks
        put(codebook.embed, sd[theirs + ".codebooks.0.weight"][:-1])
        put(codebook.cluster_size, sd[theirs + ".codebooks.0.cluster_size_ema"])
        put(codebook.embed_avg, sd[theirs + ".codebooks.0.embed_ema"])
        codebook.initialised.fill_(True)

    def resblock(ours, theirs):
        for part in ("norm1", "conv1", "norm2", "conv2"):
            pair(getattr(ours, part), f"{theirs}.{part}")
        if not isinstance(ours.skip, torch.nn.Identity):
            pair(ours.skip, theirs + ".nin_shortcut")

    def attn(ours, theirs):
        for part in ("norm", "q", "k", "v", "proj_out"):
            pair(getattr(ours, part), f"{theirs}.{part}")

    dec = model.decoder
    resblock(model.post_quant_block, "post_quant_conv")
    pair(dec.conv_in, "decoder.conv_in"), pair(dec.norm_out, "decoder.norm_out"), pair(dec.conv_out, "decoder.conv_out")
    resblock(dec.mid[0], "decoder.mid.block_1"), attn(dec.mid[1], "decoder.mid.attn_1")
    resblock(dec.mid[2], "decoder.mid.block_2")
    for k, level in enumerate(dec.levels):
        i = len(dec.levels) - 1 - k
        for j, block in enumerate(level.blocks):
            resblock(block, f"decoder.up.{i}.block.{j}")
            if level.attns is not None:
                attn(level.attns[j], f"decoder.up.{i}.attn.{j}")
        if level.upsample is not None:
            pair(level.upsample.conv, f"decoder.up.{i}.upsample.conv")
    return model.eval()


def small_cfg(code_dim: int) -> ModelConfig:
    """The tiny preset with release-sized quantizer shapes scaled down: depth 3, K 64, code dim ``code_dim``."""
    cfg = model_preset("tiny")
    cfg.pixel_layer, cfg.shortcut_layer = 2, 1  # the release has a shortcut projection
    cfg.pixel_quantizer = QuantizerConfig(code_dim=code_dim, depth=3, codebook_size=64)
    cfg.semantic_quantizer = QuantizerConfig(code_dim=code_dim, depth=3, codebook_size=64)
    return cfg
