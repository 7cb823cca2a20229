"""The release's forward pass written from its source's description, reading every tensor by its release key.

Independent of dualtoken_lite's modules (only ``torch.nn.functional``) and of the converter's renames: this is
what the release computes in eval mode (``RQVAESiglipModel.encode_image`` and ``decode`` in songweii/DualToken's
modeling/rqvaesigliptransformer/rqvaesiglip/modeling_rqvaesiglip.py, with modules.py and quantizations.py beside
it: at HEAD 29e7c84 for the current layout, at the early history's b0f6f76 for ``prequant_visual`` checkpoints).
test_release.py compares a converted model's outputs with these.

    out = release_forward(state, settings, images)   # codes_pix, codes_sem (B, H, W, D), recon, pooled
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

V = "siglip_model.vision_model."


def linear(sd: dict, name: str, x: Tensor) -> Tensor:
    """``nn.Linear`` by key (bias when the checkpoint has one)."""
    return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias"))


def layer_norm(sd: dict, name: str, x: Tensor, eps: float) -> Tensor:
    """``nn.LayerNorm`` by key."""
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)


def group_norm(sd: dict, name: str, x: Tensor) -> Tensor:
    """modules.py ``Normalize``: GroupNorm(32 groups, eps 1e-6)."""
    return F.group_norm(x, 32, sd[name + ".weight"], sd[name + ".bias"], 1e-6)


def conv(sd: dict, name: str, x: Tensor) -> Tensor:
    """A stride-1 conv with 'same' padding, by key."""
    weight = sd[name + ".weight"]
    return F.conv2d(x, weight, sd[name + ".bias"], padding=weight.shape[-1] // 2)


def heads_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, causal: bool = False) -> Tensor:
    """softmax(q k^T / sqrt(hd)) v over ``heads`` heads: (B, Nq, W) x (B, N, W) -> (B, heads, Nq, hd)."""
    B, W = q.shape[0], q.shape[-1]
    q, k, v = (t.reshape(B, t.shape[1], heads, W // heads).transpose(1, 2) for t in (q, k, v))
    logits = q @ k.transpose(-1, -2) / (W // heads) ** 0.5
    if causal:
        n = logits.shape[-1]
        logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return logits.softmax(-1) @ v


# ------------------------------------------------------------------------------------------------ SigLIP tower
def siglip_layer(sd: dict, i: int, x: Tensor, heads: int) -> Tensor:
    """transformers' SiglipEncoderLayer: x + attn(LN1 x), then + MLP(LN2 x) with tanh GELU (hidden_act default)."""
    p = f"{V}encoder.layers.{i}."
    h = layer_norm(sd, p + "layer_norm1", x, 1e-6)
    q, k, v = (linear(sd, f"{p}self_attn.{n}_proj", h) for n in "qkv")
    a = heads_attention(q, k, v, heads).transpose(1, 2).flatten(2)
    x = x + linear(sd, p + "self_attn.out_proj", a)
    h = layer_norm(sd, p + "layer_norm2", x, 1e-6)
    return x + linear(sd, p + "mlp.fc2", F.gelu(linear(sd, p + "mlp.fc1", h), approximate="tanh"))


def siglip_pool(sd: dict, x: Tensor, heads: int) -> Tensor:
    """post_layernorm, then the MAP head: a probe attends over x (fused in_proj), + MLP(LN h); (B, C)."""
    x = layer_norm(sd, V + "post_layernorm", x, 1e-6)
    C = x.shape[-1]
    w, b = sd[V + "head.attention.in_proj_weight"], sd[V + "head.attention.in_proj_bias"]
    probe = sd[V + "head.probe"].expand(x.shape[0], 1, C)
    q, k, v = F.linear(probe, w[:C], b[:C]), F.linear(x, w[C:2 * C], b[C:2 * C]), F.linear(x, w[2 * C:], b[2 * C:])
    h = linear(sd, V + "head.attention.out_proj", heads_attention(q, k, v, heads).transpose(1, 2).flatten(2))
    m = layer_norm(sd, V + "head.layernorm", h, 1e-6)
    return (h + linear(sd, V + "head.mlp.fc2", F.gelu(linear(sd, V + "head.mlp.fc1", m), approximate="tanh")))[:, 0]


# ------------------------------------------------------------------------------------------------ projections
def attn_projection(sd: dict, name: str, x: Tensor, causal: bool) -> Tensor:
    """The current release's AttnProjection: proj(norm3 x) + attn(norm1 x), then + GeGLU(norm2 y).

    AttentionBlock: qkv with bias (q_bias, zero_k_bias, v_bias); C // d heads; squeeze averages the heads,
    widen concatenates them; then attn.proj. GeGluMlp: its own LayerNorm (eps 1e-6), w2(gelu_tanh(w0 u) * w1 u).
    """
    bias = torch.cat([sd[f"{name}.attn.q_bias"], sd[f"{name}.attn.zero_k_bias"], sd[f"{name}.attn.v_bias"]])
    h = layer_norm(sd, name + ".norm1", x, 1e-5)
    qkv = F.linear(h, sd[f"{name}.attn.qkv.weight"], bias)
    wide, in_dim, out_dim = qkv.shape[-1] // 3, x.shape[-1], sd[name + ".proj.weight"].shape[0]
    heads = wide // min(in_dim, out_dim)
    a = heads_attention(*qkv.split(wide, -1), heads, causal)  # (B, heads, N, hd)
    a = a.mean(1) if in_dim > out_dim else a.transpose(1, 2).flatten(2)
    y = linear(sd, name + ".proj", layer_norm(sd, name + ".norm3", x, 1e-5)) + linear(sd, name + ".attn.proj", a)
    u = layer_norm(sd, name + ".mlp.norm", layer_norm(sd, name + ".norm2", y, 1e-5), 1e-6)
    gated = F.gelu(linear(sd, name + ".mlp.w0", u), approximate="tanh") * linear(sd, name + ".mlp.w1", u)
    return y + linear(sd, name + ".mlp.w2", gated)


def resnet_block(sd: dict, name: str, x: Tensor) -> Tensor:
    """modules.py ResnetBlock / PostQuantResnetBlock / ProjectResnetBlock on (B, C, H, W)."""
    h = conv(sd, name + ".conv1", F.silu(group_norm(sd, name + ".norm1", x)))
    h = conv(sd, name + ".conv2", F.silu(group_norm(sd, name + ".norm2", h)))
    return (conv(sd, name + ".nin_shortcut", x) if name + ".nin_shortcut.weight" in sd else x) + h


def conv_projection(sd: dict, name: str, x: Tensor) -> Tensor:
    """The early release's ProjectResnetBlock on the token grid: (B, N, c_in) -> (B, N, c_out)."""
    B, N, c = x.shape
    g = int(round(N**0.5))
    return resnet_block(sd, name, x.transpose(1, 2).reshape(B, c, g, g)).flatten(2).transpose(1, 2)


# ------------------------------------------------------------------------------------------------ quantizer
def residual_quantize(sd: dict, name: str, z: Tensor) -> tuple[Tensor, Tensor]:
    """RQBottleneck: depth d looks its residual up in codebooks.d (rows 0..K-1; row K pads) -> (sum, codes)."""
    depth = len({k.split(".")[2] for k in sd if k.startswith(name + ".codebooks.") and k.endswith(".weight")})
    residual, total, codes = z.detach().clone(), torch.zeros_like(z), []
    for d in range(depth):
        book = sd[f"{name}.codebooks.{d}.weight"][:-1]  # (K, dim)
        flat = residual.reshape(-1, z.shape[-1])
        distances = flat.pow(2).sum(1, keepdim=True) + book.pow(2).sum(1)[None] - 2 * flat @ book.T
        code = distances.argmin(-1).reshape(z.shape[:-1])
        chosen = book[code]
        residual, total = residual - chosen, total + chosen
        codes.append(code)
    return total, torch.stack(codes, -1)


# ------------------------------------------------------------------------------------------------ decoder
def attn_block(sd: dict, name: str, x: Tensor) -> Tensor:
    """taming's AttnBlock: one head over all positions, softmax(q^T k / sqrt(C)), residual."""
    B, C, H, W = x.shape
    h = group_norm(sd, name + ".norm", x)
    q, k, v = (conv(sd, f"{name}.{n}", h).flatten(2).transpose(1, 2) for n in "qkv")
    a = heads_attention(q, k, v, 1)[:, 0]  # (B, HW, C)
    return x + conv(sd, name + ".proj_out", a.transpose(1, 2).reshape(B, C, H, W))


def decode(sd: dict, z: Tensor) -> Tensor:
    """post_quant_conv and taming's Decoder on (B, C, g, g): levels up.{L-1} .. up.0, upsampling between them."""
    h = conv(sd, "decoder.conv_in", resnet_block(sd, "post_quant_conv", z))
    h = resnet_block(sd, "decoder.mid.block_2", attn_block(sd, "decoder.mid.attn_1",
                                                             resnet_block(sd, "decoder.mid.block_1", h)))
    levels = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("decoder.up."))
    for i in reversed(range(levels)):
        j = 0
        while f"decoder.up.{i}.block.{j}.conv1.weight" in sd:
            h = resnet_block(sd, f"decoder.up.{i}.block.{j}", h)
            if f"decoder.up.{i}.attn.{j}.q.weight" in sd:
                h = attn_block(sd, f"decoder.up.{i}.attn.{j}", h)
            j += 1
        if i != 0:
            h = conv(sd, f"decoder.up.{i}.upsample.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return conv(sd, "decoder.conv_out", F.silu(group_norm(sd, "decoder.norm_out", h)))


# ------------------------------------------------------------------------------------------------ the model
@torch.no_grad()
def release_forward(sd: dict, settings: dict, images: Tensor, heads: int) -> dict[str, Tensor]:
    """encode_image + decode of either layout: codes (B, H, W, D) of both branches, recon (B, 3, h, w), pooled."""
    early = "prequant_visual.conv1.weight" in sd
    patch = sd[V + "embeddings.patch_embedding.weight"]
    x = F.conv2d(images, patch, sd[V + "embeddings.patch_embedding.bias"], stride=patch.shape[-1])
    x = x.flatten(2).transpose(1, 2) + sd[V + "embeddings.position_embedding.weight"]  # (B, N, C)
    B, N, C = x.shape
    g = int(round(N**0.5))
    layers = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith(V + "encoder.layers."))
    recon_tap = settings.get("layer_recon", layers - 21)  # the early code: blocks L - 21 and L - 1
    sem_tap = settings.get("layer_sem", layers - 1)
    shortcut_tap = None if early else settings["layer_shortcut"]
    project = (lambda name, h, causal: conv_projection(sd, name, h)) if early else \
        (lambda name, h, causal: attn_projection(sd, name, h, causal))
    names = ("prequant_visual", "prequant_semantic", "postquant_visual", "postquant_semantic", "quantizer",
             "quantizer_semantic") if early else ("prequant_pix", "prequant_sem", "postquant_pix", "postquant_sem",
                                                  "quantizer_pix", "quantizer_sem")
    pre_pix, pre_sem, post_pix, post_sem, q_pix, q_sem = names
    out = {}
    for i in range(layers):
        x = siglip_layer(sd, i, x, heads)
        if i + 1 == recon_tap:
            pixel = project(pre_pix, x, False)
        if shortcut_tap is not None and i + 1 == shortcut_tap:
            shortcut = project("prequant_shortcut", x, False)
        if i + 1 == sem_tap:
            if shortcut_tap is not None:
                pixel = pixel + settings["weight_shortcut"] * shortcut
            zq_pix, out["codes_pix"] = residual_quantize(sd, q_pix, pixel.reshape(B, g, g, -1))
            zq_sem, out["codes_sem"] = residual_quantize(sd, q_sem, project(pre_sem, x, False).reshape(B, g, g, -1))
            x = project(post_sem, zq_sem.reshape(B, N, -1), True)  # replaces the hidden state
    out["pooled"] = siglip_pool(sd, x, heads)
    h = project(post_pix, zq_pix.reshape(B, N, -1), True).transpose(1, 2).reshape(B, C, g, g)
    latent = settings.get("decoder_latent_shape")
    if latent is not None:
        h = F.interpolate(h, size=tuple(latent), mode="bilinear")
    out["recon"] = decode(sd, h)
    return out
