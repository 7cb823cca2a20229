"""The tiny world's teacher: a tiny SigLIP, an image tower and a text tower trained together here (docs/method.md §9).

DualToken distils its semantic branch from a frozen, pretrained SigLIP and scores understanding with SigLIP's
text tower, zero-shot (docs/method.md §3, §6). No pretrained weights reach this machine, so the tiny world trains
its own SigLIP on its captions (``captions.py``, ``vocabulary.py``):

    image tower   the tiny preset's trunk, exactly as the tokenizer's backbone builds it (``build_tiny_trunk``:
                  a timm ViT in SigLIP's layout, 64 px, 8 x 8 patches, no class token, MAP head); its pooled
                  embedding (B, C) is the image embedding, as in SigLIP (no projection). The tokenizer starts
                  from these weights as the paper's starts from SigLIP's
    text tower    open_clip's ``TextTransformer``, small: bidirectional (SigLIP's text tower has no causal
                  mask), padding masked out, pooled at the <end> token, a linear projection with bias to C
    t', b         learnable temperature and bias of the sigmoid loss (``losses/siglip.py``), at log 10 and -10

    model = load_teacher()                                    # data/teacher/, frozen, eval mode
    x = model.encode_image(images, normalize=True)            # (B, 3, 64, 64) in [-1, 1] -> (B, C), unit norm
    y = model.encode_text(VOCABULARY(texts), normalize=True)  # (T, L) ids -> (T, C), unit norm
    model.trunk                                               # the image tower alone (what the tokenizer taps)

Why not open_clip's ``CustomTextCLIP``: its vision side wraps a timm model created by name (``TimmModel``), with
its own key prefix and an optional head, while the tokenizer's tower is built by ``build_tiny_trunk``; keeping that
very module as the image tower means one set of weights, loadable by the backbone (``trunk.*`` keys), and no
projection between the MAP head and the embedding. The text tower, the loss exchange and the zero-shot classifier
builder are open_clip's.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from open_clip.transformer import TextTransformer
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from dualtoken_lite.losses.siglip import INIT_LOGIT_BIAS, INIT_LOGIT_SCALE
from dualtoken_lite.model.backbone import build_tiny_trunk
from dualtoken_lite.model.config import BackboneConfig
from dualtoken_lite.settings import from_dict
from dualtoken_lite.tinyworld.paths import TEACHER_DIR
from dualtoken_lite.tinyworld.vocabulary import CONTEXT_LENGTH, END, PAD, VOCABULARY

WEIGHTS_FILE, CARD_FILE = "teacher.safetensors", "teacher.json"


@dataclass
class TextConfig:
    """The text tower: a small bidirectional transformer over word ids (open_clip's ``TextTransformer``)."""

    vocab_size: int = len(VOCABULARY)  # word ids (tinyworld/vocabulary.py)
    context_length: int = CONTEXT_LENGTH  # ids per caption, <end> and padding included
    width: int = 128  # transformer width
    layers: int = 2  # transformer blocks
    heads: int = 4  # attention heads
    mlp_ratio: float = 4.0  # MLP hidden size = mlp_ratio * width
    pool: str = "eos"  # the caption's embedding: the output at <end> ("eos") or the mean over its words ("mean")
    token_init: float = 0.02  # std of the word embeddings at init (open_clip's: 0.02)


class TinySigLIP(nn.Module):
    """Image tower (trunk) + text tower + the sigmoid loss's temperature and bias; open_clip's encode_* interface."""

    def __init__(self, backbone: BackboneConfig | None = None, text: TextConfig | None = None):
        super().__init__()
        self.backbone, self.text_cfg = backbone or BackboneConfig(), text or TextConfig()
        self.trunk = build_tiny_trunk(self.backbone)
        t = self.text_cfg
        self.text = TextTransformer(
            context_length=t.context_length, vocab_size=t.vocab_size, width=t.width, heads=t.heads, layers=t.layers,
            mlp_ratio=t.mlp_ratio, output_dim=self.backbone.width, no_causal_mask=True, use_pad_mask=True,
            pad_id=PAD, eos_id=END, pool_type="eos" if t.pool == "eos" else "none", proj_bias=True,
        )
        nn.init.normal_(self.text.token_embedding.weight, std=t.token_init)
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))  # t'
        self.logit_bias = nn.Parameter(torch.tensor(INIT_LOGIT_BIAS))  # b

    def encode_image(self, images: Tensor, normalize: bool = False) -> Tensor:
        """Images (B, 3, h, w) in [-1, 1] -> pooled MAP embeddings (B, C)."""
        x = self.trunk(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: Tensor, normalize: bool = False) -> Tensor:
        """Word ids (T, L) -> text embeddings (T, C)."""
        y = self.text(text)  # (T, C), or (T, L, C) per token for the mean
        if self.text_cfg.pool == "mean":
            valid = (text != PAD).unsqueeze(-1).to(y.dtype)  # (T, L, 1): words and <end>
            y = (y * valid).sum(1) / valid.sum(1)
        return F.normalize(y, dim=-1) if normalize else y

    def forward(self, images: Tensor, text: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Unit-norm image (B, C) and text (T, C) features, t = exp(t') and b: the sigmoid loss's inputs."""
        return (self.encode_image(images, normalize=True), self.encode_text(text, normalize=True),
                self.logit_scale.exp(), self.logit_bias)


def fingerprint_weights(state: dict[str, Tensor]) -> str:
    """A short hash of a state dict's names, shapes and float16 values: the same weights, the same fingerprint."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu", torch.float16).contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


def teacher_fingerprint(folder: str | os.PathLike | None = None) -> str:
    """The fingerprint of the teacher in ``folder`` (default: the shipped one), read from its weights file."""
    weights = os.path.join(folder or TEACHER_DIR, WEIGHTS_FILE)
    if not os.path.exists(weights):
        raise FileNotFoundError(f"teacher file {weights} is missing; train a teacher with `python -m dualtoken_lite "
                                "teacher --out RUN` and give RUN/model (or copy RUN/model/teacher.* there)")
    return fingerprint_weights(load_file(weights))


def save_teacher(model: TinySigLIP, card: dict, folder: str | os.PathLike) -> str:
    """Write ``teacher.safetensors`` (float16: half the bytes, figures measured on it) and ``teacher.json``
    (configs, recipe, figures, fingerprint); returns the fingerprint."""
    os.makedirs(folder, exist_ok=True)
    weights = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(weights, os.path.join(folder, WEIGHTS_FILE))
    card = {**card, "backbone": asdict(model.backbone), "text": asdict(model.text_cfg),
            "vocabulary": VOCABULARY.words, "fingerprint": fingerprint_weights(weights)}
    with open(os.path.join(folder, CARD_FILE), "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    return card["fingerprint"]


def read_card(folder: str | os.PathLike | None = None) -> dict:
    """The teacher card (``teacher.json``) of ``folder`` (default: the shipped teacher)."""
    card = os.path.join(folder or TEACHER_DIR, CARD_FILE)
    if not os.path.exists(card):
        raise FileNotFoundError(f"teacher file {card} is missing; train a teacher with `python -m dualtoken_lite "
                                "teacher --out RUN` and give RUN/model (or copy RUN/model/teacher.* there)")
    with open(card) as f:
        return json.load(f)


def load_teacher(path: str | os.PathLike | None = None) -> TinySigLIP:
    """The shipped (or a given folder's) teacher, frozen, in eval mode, computing in float32."""
    folder = path or TEACHER_DIR
    info = read_card(folder)
    if "text" not in info:
        raise ValueError(f"{folder} holds a teacher without a text tower (a shape classifier); the tiny world's "
                         "teacher is a tiny SigLIP: train one with `python -m dualtoken_lite teacher`")
    if info.get("vocabulary", VOCABULARY.words) != VOCABULARY.words:
        raise ValueError(f"the teacher in {folder} was trained with another vocabulary than "
                         "tinyworld/vocabulary.py's; retrain it with `python -m dualtoken_lite teacher`")
    model = TinySigLIP(from_dict(BackboneConfig, info["backbone"]), from_dict(TextConfig, info["text"]))
    weights = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.exists(weights):
        raise FileNotFoundError(f"teacher file {weights} is missing; train a teacher with `python -m dualtoken_lite "
                                "teacher --out RUN` and give RUN/model (or copy RUN/model/teacher.* there)")
    state = {k: v.float() for k, v in load_file(weights).items()}  # stored float16, computed in float32
    model.load_state_dict(state, strict=True)  # a mismatch raises, listing the keys
    return model.eval().requires_grad_(False)
