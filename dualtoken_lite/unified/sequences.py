"""What the unified model reads and writes: one vocabulary of words and markers, and the two sequence layouts.

The model is one decoder-only transformer over a sequence that holds caption words and image positions. Words are
ids of ``TEXT_VOCABULARY`` (the tiny world's 45 caption words and its specials, tinyworld/vocabulary.py, plus the
markers below); an image position is not an id of that vocabulary but a *stack* of codes (every pixel depth and, in
the "both" variant, every semantic depth, model/token_layout.py), embedded as the sum of its codes' embeddings
(unified/embedding.py): the paper fuses the two token types per position instead of lengthening the sequence.

Two tasks, each with a fixed layout (P = PROMPT_LENGTH, N = 64 grid positions, A = ANSWER_LENGTH):

    text -> image   [<pad> .. <pad> <start> w_1 .. w_k <end>] [<boi>] [x_0 x_1 .. x_{N-1}]
                     '---------- prompt: P slots, left-padded ---'           image positions
                    the output at <boi> predicts stack x_0, the output at x_{n-1} predicts x_n

    image -> text   [<boi>] [x_0 .. x_{N-1}] [<caption> w_1 .. w_k <end> <pad> ..]
                                             [<shape?> star <end> <pad> ..]
                                              '- answer: A slots, right-padded --'
                    the output at the marker predicts w_1, at w_j predicts w_{j+1}; pads are not scored

Attention is causal and nothing is masked: a left-padded prompt's <pad>s are tokens like any other (a model learns
to ignore them), so the full forward pass and the key/value-cached sampler see exactly the same thing. The prompt
is left-padded so the image always starts at the same place; a dropped prompt (classifier-free guidance) is all
<pad> then <start> <end>.

Questions ask about one attribute with one marker each (``<shape?>`` ...) and are answered with one caption word
("star", "red", "striped", "photo"), then <end>.
"""

from __future__ import annotations

import torch

from dualtoken_lite.settings import UserError
from dualtoken_lite.tinyworld.captions import CLASSIFIED
from dualtoken_lite.tinyworld.vocabulary import END, PAD, START, VOCABULARY, Vocabulary

QUESTIONS = ("shape", "colour", "fill", "background")  # what a question may ask; answers: CLASSIFIED[question]
MARKERS = ("<boi>", "<caption>") + tuple(f"<{q}?>" for q in QUESTIONS)  # appended after the caption words


class TextVocabulary(Vocabulary):
    """The caption vocabulary with the unified model's markers appended (their ids follow the words')."""

    def __init__(self, base: Vocabulary, markers: tuple[str, ...]):
        super().__init__(base.words[4:], base.context_length)  # rebuilds the specials and the words, same ids
        self.words += list(markers)
        self.ids = {w: i for i, w in enumerate(self.words)}

    def check_words(self, text: str) -> None:
        """Refuse a text with a word outside the vocabulary, naming the word and the vocabulary."""
        from dualtoken_lite.tinyworld.vocabulary import WORD

        unknown = [w for w in WORD.findall(text.lower()) if w not in self.ids]
        if unknown:
            words = " ".join(w for w in self.words if not w.startswith("<"))
            raise UserError(f"unknown word(s) {', '.join(repr(w) for w in unknown)} in {text!r}: the tiny world's "
                            f"vocabulary is: {words}")
        if not WORD.findall(text.lower()):
            raise UserError(f"the prompt {text!r} has no words; write e.g. 'a small red star on stripes'")


TEXT_VOCABULARY = TextVocabulary(VOCABULARY, MARKERS)
BOI, CAPTION = TEXT_VOCABULARY.ids["<boi>"], TEXT_VOCABULARY.ids["<caption>"]
QUESTION_IDS = {q: TEXT_VOCABULARY.ids[f"<{q}?>"] for q in QUESTIONS}  # question -> its marker id
ANSWER_IDS = {q: [TEXT_VOCABULARY.ids[w] for w in CLASSIFIED[q]] for q in QUESTIONS}  # question -> answer ids
PROMPT_LENGTH = 18  # prompt slots: <start> + at most 16 words (the longest caption) + <end>
ANSWER_LENGTH = 18  # answer slots: the marker + at most 16 words + <end>
IGNORE = -100  # target of an unscored slot (F.cross_entropy's ignore_index)


def word_ids(text: str, limit: int) -> list[int]:
    """A text -> its word ids (no specials), at most ``limit`` of them; unknown words are refused."""
    TEXT_VOCABULARY.check_words(text)
    ids = TEXT_VOCABULARY.encode(text)[:-1]  # drop the <end> encode adds
    if len(ids) > limit:
        raise UserError(f"the text {text!r} has {len(ids)} words; at most {limit} fit")
    return ids


def prompt_block(texts: list[list[int]] | list[str], drop: torch.Tensor | None = None) -> torch.Tensor:
    """Prompts (word-id lists or strings) -> (B, P) left-padded [<pad>.. <start> words <end>]; rows where ``drop``
    (B,) bool is true become the empty prompt [<pad>.. <start> <end>] (classifier-free guidance)."""
    out = torch.full((len(texts), PROMPT_LENGTH), PAD, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = word_ids(text, PROMPT_LENGTH - 2) if isinstance(text, str) else list(text)
        if drop is not None and bool(drop[row]):
            ids = []
        seq = [START, *ids, END]
        out[row, PROMPT_LENGTH - len(seq):] = torch.tensor(seq)
    return out


def answer_block(markers: torch.Tensor, answers: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Markers (B,) and answer word ids -> inputs (B, A) [marker words <end> <pad>..] and targets (B, A): the next
    id at every slot whose next id is a word or <end>, IGNORE elsewhere."""
    B = len(answers)
    inputs = torch.full((B, ANSWER_LENGTH), PAD, dtype=torch.long)
    targets = torch.full((B, ANSWER_LENGTH), IGNORE, dtype=torch.long)
    for row, ids in enumerate(answers):
        seq = [int(markers[row]), *ids, END][:ANSWER_LENGTH]
        inputs[row, : len(seq)] = torch.tensor(seq)
        targets[row, : len(seq) - 1] = torch.tensor(seq[1:])  # slot j predicts slot j + 1
    return inputs, targets


def caption_ids(padded: torch.Tensor) -> list[int]:
    """One caption's padded ids (as the token cache stores them: words, <end>, <pad>s) -> its word ids."""
    ids = padded.tolist()
    return ids[: ids.index(END)] if END in ids else [i for i in ids if i != PAD]
