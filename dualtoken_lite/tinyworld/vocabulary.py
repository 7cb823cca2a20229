"""The tiny world's word-level vocabulary and its tokenizer (docs/method.md §9).

SigLIP's own tokenizer has 32,000 sentencepiece units (open_clip's CLIP BPE 49,408): an embedding table larger than
the whole tiny model, for a language of about fifty words. The tiny world's captions (``captions.py``) are made
from a closed list of words, so each word is one token:

    ids 0..3   <pad> <unk> <end> <start>     padding, an unknown word, the end of a caption, the start of one
    ids 4..    the caption words, sorted      ("a", "at", "background", ... "yellow")

The rules, all of them:
    1. lowercase the text; a word is a run of letters a-z; every other character (space, comma, digit) separates
       words and is dropped;
    2. a word in the vocabulary is its id; **any other word is <unk>** (one id for all of them; it claims nothing);
    3. the ids are followed by <end>, then padded with <pad> to ``context_length``; a caption with more than
       context_length - 1 words keeps its first context_length - 1 (the <end> always fits).

    ids = VOCABULARY.encode("A red star, on a photo.")      # [4, 27, 33, 22, 4, 24, 2]: words, then <end>
    VOCABULARY.decode(ids)                                  # "a red star on a photo"
    tokens = VOCABULARY(["a red star", "a disc"])           # (2, CONTEXT_LENGTH) int64, padded

``<start>`` is unused by the text tower (it reads the whole caption at once); it is there for models that write
captions word by word.
"""

from __future__ import annotations

import re

import torch

from dualtoken_lite.tinyworld.captions import (
    BACKGROUND_WORDS,
    CLASSIFIED,
    FILL_WORDS,
    FRAMES,
    SIZE_WORDS,
)

SPECIALS = ("<pad>", "<unk>", "<end>", "<start>")
PAD, UNK, END, START = range(len(SPECIALS))
CONTEXT_LENGTH = 20  # tokens per caption, <end> included (the longest caption is 16 words)
WORD = re.compile(r"[a-z]+")


def caption_words() -> list[str]:
    """Every word a caption can use: the attributes' words and the frames' and phrases' glue words, sorted."""
    words = set()
    for values in CLASSIFIED.values():
        words.update(values)
    words.update(FILL_WORDS.values(), BACKGROUND_WORDS.values(), SIZE_WORDS)
    words.update("left right top bottom middle at the on in a background shape".split())
    for frame in FRAMES:
        words.update(WORD.findall(frame.lower().replace("{np}", " ").replace("{bg}", " ").replace("{pos}", " ")))
    return sorted(words)


class Vocabulary:
    """Words <-> ids by the module's three rules; calling it tokenizes a batch of texts (open_clip's interface)."""

    def __init__(self, words: list[str], context_length: int = CONTEXT_LENGTH):
        if len(set(words)) != len(words) or set(words) & set(SPECIALS):
            raise ValueError("vocabulary words must be unique and must not repeat the special tokens")
        self.words = list(SPECIALS) + list(words)
        self.ids = {w: i for i, w in enumerate(self.words)}
        self.context_length = context_length

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str, context_length: int | None = None) -> list[int]:
        """A text -> word ids (unknown words -> <unk>) followed by <end>; unpadded, at most context_length ids."""
        ids = [self.ids.get(w, UNK) for w in WORD.findall(text.lower())]
        return ids[: (context_length or self.context_length) - 1] + [END]

    def decode(self, ids) -> str:
        """Ids -> words joined by spaces, up to the first <end>; padding and <start> are skipped."""
        words = []
        for i in (int(i) for i in ids):
            if i == END:
                break
            if i not in (PAD, START):
                words.append(self.words[i])
        return " ".join(words)

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        """Texts -> (B, context_length) int64 ids, each row words + <end> + <pad>s."""
        texts = [texts] if isinstance(texts, str) else texts
        length = context_length or self.context_length
        out = torch.full((len(texts), length), PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text, length)
            out[row, : len(ids)] = torch.tensor(ids)
        return out


VOCABULARY = Vocabulary(caption_words())  # the tiny world's vocabulary (docs: data/README.md lists it)
