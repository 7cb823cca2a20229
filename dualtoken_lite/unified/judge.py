"""Judging the unified model on what a user sees: decoded pixels of its images, and the words of its answers.

Images (text -> image) are judged by two readers of pixels that were trained apart:

* the **teacher** (data/teacher/, the tiny SigLIP): its zero-shot classifier of each attribute
  (evaluation/zero_shot.py) reads each decoded sample; a sample prompted with "a red star on a photo" scores for
  shape when the teacher says star, for colour when it says red, for background when it says photo. Attributes a
  prompt does not name are not scored.
* the **classifier** (data/classifier/, tinyworld/classifier.py): a small CNN trained on the tiny world's labels,
  never on text and independently of the teacher, read the same way, so that sampling cannot just please one judge.
* a **Frechet distance** between teacher embeddings (the pooled MAP output) of the samples and of held-out
  images: ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the FID formula with the teacher in place of
  Inception (evaluation/external.build_fid with a custom feature). Samples that all look alike score badly even
  when each is read right.

The ceiling beside each figure: the same judges on the tokenizer's full-depth reconstructions of the held-out
images (``reconstruction_ceiling``): no model that decodes through this tokenizer can do better.

Answers (image -> text) are scored on held-out images by exact match: a question about one attribute is right when
the answer is that attribute's word alone (``answer_accuracy``); a caption scores per attribute it names
(``caption_accuracy``: how often it names each one, and how often what it names is true).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn

from dualtoken_lite.datasets.images import to_uint8
from dualtoken_lite.evaluation.external import build_fid
from dualtoken_lite.evaluation.zero_shot import attribute_heads
from dualtoken_lite.tinyworld.captions import CLASSIFIED, FIELDS, claim_code
from dualtoken_lite.tinyworld.drawing import make_samples, to_tensor
from dualtoken_lite.tinyworld.teacher import load_teacher
from dualtoken_lite.unified.sampling import write_answers
from dualtoken_lite.unified.sequences import ANSWER_IDS, CAPTION, QUESTION_IDS, QUESTIONS, TEXT_VOCABULARY
from dualtoken_lite.unified.token_cache import TokenSet

JUDGED = ("shape", "colour", "fill", "background")  # the attributes a prompt's samples are scored on


# ------------------------------------------------------------------------------------------------ answers
@torch.no_grad()
def answer_accuracy(model, held: TokenSet, batch_size: int = 256) -> dict[str, float]:
    """Exact-answer accuracy per question on held-out images: the answer must be the right word and nothing else."""
    out = {}
    for q in QUESTIONS:
        right = 0
        for i in range(0, len(held), batch_size):
            stacks = held.stacks[i : i + batch_size]
            answers = write_answers(model, stacks, torch.full((len(stacks),), QUESTION_IDS[q]))
            truth = held.attributes[i : i + batch_size, FIELDS.index(q)]
            right += sum(a == [ANSWER_IDS[q][int(t)]] for a, t in zip(answers, truth))
        out[q] = right / len(held)
    return out


@torch.no_grad()
def caption_accuracy(model, held: TokenSet, batch_size: int = 256) -> tuple[dict, list[str]]:
    """Per attribute of JUDGED: how often the model's captions of held-out images name it ("named") and how often
    what they name is true ("true"); and the captions themselves."""
    captions = []
    for i in range(0, len(held), batch_size):
        stacks = held.stacks[i : i + batch_size]
        captions += [TEXT_VOCABULARY.decode(a) for a in write_answers(model, stacks, torch.full((len(stacks),), CAPTION))]
    claims = torch.from_numpy(np.stack([claim_code(c) for c in captions]))  # (M, F), -1 where silent
    out = {}
    for a in JUDGED:
        f = FIELDS.index(a)
        named = claims[:, f] >= 0
        true = (claims[:, f] == held.attributes[:, f]) & named
        out[a] = {"named": float(named.float().mean()), "true": float(true.sum() / max(int(named.sum()), 1))}
    return out, captions


# ------------------------------------------------------------------------------------------------ prompts
@torch.no_grad()
def slot_losses(model, prompt: Tensor, stacks: Tensor) -> Tensor:
    """Teacher-forced nats per code of each stack slot, every position: prompt (B, P), stacks (B, N, S_all) -> (S,)."""
    import torch.nn.functional as F

    model.eval()
    h = model.image_contexts(prompt, stacks).flatten(0, 1)  # (B N, C)
    codes = model.image_embed.local_codes(stacks).flatten(0, 1)  # (B N, S)
    out = model.forward_depth(h, codes[:, :-1])  # (B N, S, C)
    return torch.stack([F.cross_entropy(logits, codes[:, s]) for s, logits in enumerate(model.slot_logits(out))])


def prompt_information(model, held: TokenSet, count: int = 256) -> dict[str, list[float]]:
    """How much a caption tells the model about its image, per stack slot: the teacher-forced nats per code of
    held-out images with the empty prompt minus with their full caption (caption 0). One model, the same images
    both ways: zero means the model draws the same whatever the caption says."""
    from dualtoken_lite.unified.sequences import caption_ids, prompt_block

    stacks = held.stacks[:count]
    captions = prompt_block([caption_ids(c) for c in held.captions[:count, 0]])
    empty = prompt_block([[]] * len(stacks))
    with_caption, without = slot_losses(model, captions, stacks), slot_losses(model, empty, stacks)
    return {"with_caption": with_caption.tolist(), "gain": (without - with_caption).tolist()}


# ------------------------------------------------------------------------------------------------ images
class TeacherFeatures(nn.Module):
    """uint8 images (B, 3, h, w) -> the teacher's pooled embedding (B, E): the Frechet distance's feature."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = copy.deepcopy(trunk)  # its own copy: torchmetrics casts its feature network to float64
        self.num_features = int(trunk(torch.zeros(1, 3, 64, 64)).shape[-1])  # E (torchmetrics asks for it)

    def forward(self, images: Tensor) -> Tensor:
        dtype = next(self.trunk.parameters()).dtype
        return self.trunk(images.to(dtype) / 127.5 - 1.0)  # [0, 255] -> [-1, 1] (tinyworld.to_tensor's scale)


class Judge:
    """The teacher's and the classifier's reading of images, and the Frechet distance to one reference set."""

    def __init__(self, reference: np.ndarray, teacher_dir=None, classifier_dir=None, batch_size: int = 256):
        from dualtoken_lite.tinyworld.classifier import classify, load_classifier  # only a judge needs them

        self.teacher = load_teacher(teacher_dir)
        self.heads = attribute_heads(self.teacher, attributes=JUDGED)
        self.classifier, self.classify = load_classifier(classifier_dir), classify
        self.batch_size = batch_size
        self.fid = build_fid(feature=TeacherFeatures(self.teacher.trunk))
        self.fid.reset_real_features = False  # the reference statistics are computed once, kept across calls
        for chunk in self.chunks(reference):
            self.fid.update(chunk, real=True)
        self.reference_count = len(reference)

    def chunks(self, images: np.ndarray):
        """uint8 (B, h, w, 3) -> uint8 tensors (b, 3, h, w) of at most batch_size images."""
        for i in range(0, len(images), self.batch_size):
            yield torch.from_numpy(np.ascontiguousarray(images[i : i + self.batch_size])).permute(0, 3, 1, 2)

    @torch.no_grad()
    def teacher_reads(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 images (B, h, w, 3) -> the teacher's zero-shot label of each JUDGED attribute, (B,) each."""
        pooled = torch.cat([self.teacher.encode_image(to_tensor(images[i : i + self.batch_size]))
                            for i in range(0, len(images), self.batch_size)])
        return {a: head(pooled).argmax(-1).numpy() for a, head in self.heads.items()}

    @torch.no_grad()
    def frechet(self, images: np.ndarray) -> float:
        """Frechet distance of the teacher embeddings of ``images`` to the reference set's."""
        self.fid.reset()
        for chunk in self.chunks(images):
            self.fid.update(chunk, real=False)
        return float(self.fid.compute())

    def __call__(self, images: np.ndarray, asked: np.ndarray, frechet: bool = True) -> dict:
        """uint8 images (B, h, w, 3) and the attribute codes each was asked for (B, F), -1 where not asked ->
        per judge and attribute, the share of images that show what they were asked for (and how many were asked)."""
        reads = {"teacher": self.teacher_reads(images), "classifier": self.classify(self.classifier, images)}
        out = {"count": len(images)}
        for judge, labels in reads.items():
            out[judge] = {}
            for a in JUDGED:
                want = asked[:, FIELDS.index(a)]
                sel = want >= 0
                if sel.any():
                    out[judge][a] = float((np.asarray(labels[a])[sel] == want[sel]).mean())
        out["asked"] = {a: int((asked[:, FIELDS.index(a)] >= 0).sum()) for a in JUDGED}
        if frechet:
            out["frechet"] = self.frechet(images)
        return out


@torch.no_grad()
def reconstruct(tokenizer, images: np.ndarray, depths: int | None = None, batch_size: int = 128) -> np.ndarray:
    """uint8 images (B, h, w, 3) -> the tokenizer's reconstructions from their first ``depths`` pixel depths
    (default: all of them), uint8 (B, h, w, 3)."""
    out = []
    for i in range(0, len(images), batch_size):
        pixel, _ = tokenizer.encode(to_tensor(images[i : i + batch_size]))  # (b, H, W, D_pix)
        out.append(to_uint8(tokenizer.decode(pixel, depths=depths), channels_last=True).numpy())
    return np.concatenate(out)


def held_out(start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Eval-split images start .. start+count-1, uint8 (B, h, w, 3), and their attribute codes (B, F)."""
    from dualtoken_lite.tinyworld.captions import attribute_values, image_code

    images, metas = make_samples(start, count, "eval")
    return images, np.stack([image_code(attribute_values(m)) for m in metas])


def reconstruction_ceiling(judge: Judge, tokenizer, images: np.ndarray, codes: np.ndarray,
                           depths: tuple[int, ...] = (1,)) -> dict:
    """The judges on the tokenizer's full-depth reconstructions of held-out images (scored on every JUDGED
    attribute, against the image's own), on the originals, and on reconstructions from the first d depths."""
    asked = np.where(np.isin(np.arange(len(FIELDS)), [FIELDS.index(a) for a in JUDGED])[None], codes, -1)
    out = {"reconstructions": judge(reconstruct(tokenizer, images), asked), "originals": judge(images, asked)}
    for d in depths:
        out[f"reconstructions_depth{d}"] = judge(reconstruct(tokenizer, images, d), asked)
    return out


def attribute_words(codes: np.ndarray) -> list[str]:
    """Attribute codes (F,) -> the words of the JUDGED attributes, for a figure's caption."""
    return [CLASSIFIED[a][int(codes[FIELDS.index(a)])] for a in JUDGED if codes[FIELDS.index(a)] >= 0]
