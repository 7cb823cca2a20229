"""The questions a reader answers about an image, and their answers, read from the tiny world's description.

Four question types: one that needs semantics and three that need appearance (the paper's split between
understanding that a semantic encoder serves and fine detail that pixel tokens keep):

    question     answers                                                  what it needs
    shape        disc square triangle plus star ring crescent heart       the shape: semantics
    colour       red yellow green cyan blue magenta grey                  the paint's hue bin: appearance
    background   flat gradient stripes photo                              the ground's kind: appearance
    fill         flat gradient stripes checks                             the paint's texture: appearance

Every answer of every question gets one id in a single answer vocabulary (the reader's output classes), in the
table's order: shape answers 0..7, colour 8..14, background 15..18, fill 19..22. A reader's prediction for a
question is its argmax over the whole vocabulary, so naming an answer of another question counts as wrong.

    labels = describe(make_sample(i, "train")[1])      # (Q,) answer ids, one per question, in QUESTIONS order
"""

from __future__ import annotations

import torch

from dualtoken_lite.tinyworld.drawing import BACKGROUNDS, CLASSES, FILLS, HUES

# question -> (the description's key, its answers in order)
QUESTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "shape": ("class", CLASSES),
    "colour": ("hue", HUES),
    "background": ("background", BACKGROUNDS),
    "fill": ("fill", FILLS),
}
QUESTION_NAMES = tuple(QUESTIONS)  # Q question types, in their token order
NEEDS = {"shape": "semantics", "colour": "appearance", "background": "appearance", "fill": "appearance"}


def answer_offsets() -> dict[str, int]:
    """Where each question's answers start in the shared answer vocabulary."""
    offsets, start = {}, 0
    for name, (_, answers) in QUESTIONS.items():
        offsets[name] = start
        start += len(answers)
    return offsets


NUM_ANSWERS = sum(len(answers) for _, answers in QUESTIONS.values())  # 23: the reader's output classes
ANSWER_NAMES = tuple(f"{q}={a}" for q, (_, answers) in QUESTIONS.items() for a in answers)


def describe(description: dict) -> list[int]:
    """A tiny-world description (make_sample's dict) -> the answer id of each question, in QUESTIONS order."""
    offsets, labels = answer_offsets(), []
    for name, (key, answers) in QUESTIONS.items():
        if description.get(key) not in answers:
            raise ValueError(f"description {description.get('index')} has {key}={description.get(key)!r}, not one "
                             f"of {answers}: was it made by a tiny-world generator without that field?")
        labels.append(offsets[name] + answers.index(description[key]))
    return labels



def majority_baseline(train_labels: torch.Tensor, eval_labels: torch.Tensor) -> dict[str, float]:
    """Accuracy of always answering a question's most frequent training answer (what a blind reader scores)."""
    out = {}
    for q, name in enumerate(QUESTION_NAMES):
        common = torch.mode(train_labels[:, q]).values
        out[name] = float((eval_labels[:, q] == common).float().mean())
    return out
