"""Captions and the vocabulary: pure functions of (split, index), true of their image, turned with it, round trips."""

import numpy as np
import pytest
import torch

from dualtoken_lite import tinyworld as tw
from dualtoken_lite.tinyworld import captions as C
from dualtoken_lite.tinyworld.caption_batches import dihedral
from dualtoken_lite.tinyworld.drawing import mask_centroid
from dualtoken_lite.tinyworld.vocabulary import CONTEXT_LENGTH, END, PAD, UNK, VOCABULARY, Vocabulary


@pytest.mark.parametrize("split", sorted(tw.SPLITS))
def test_a_caption_is_a_pure_function_of_split_and_index(split):
    for index in (0, 5, 999):
        first = C.sample_captions(tw.make_sample(index, split)[1])
        again = C.sample_captions(tw.make_sample(index, split)[1])
        assert first == again and len(first) == C.CAPTIONS_PER_IMAGE
    assert C.sample_captions(tw.make_sample(3, split)[1]) != C.sample_captions(tw.make_sample(4, split)[1])


def test_captions_vary_in_wording_and_in_what_they_name():
    metas = [tw.make_sample(i, "train")[1] for i in range(200)]
    plans = [p for m in metas for p in C.plan_captions(m)]
    assert {p.frame for p in plans} == set(range(len(C.FRAMES)))
    assert len({p.named for p in plans}) > 20
    for m in metas:  # caption 0 names everything that can be named
        assert C.plan_captions(m)[0].named == C.nameable(C.attribute_values(m))


def test_every_caption_is_true_of_its_image_and_says_what_it_claims():
    for i in range(300):
        meta = tw.make_sample(i, "eval")[1]
        values = C.attribute_values(meta)
        for plan, text in zip(C.plan_captions(meta), C.sample_captions(meta)):
            claims = C.claim_code(text)
            assert C.true_of(claims[None], C.image_code(values)[None]).all(), text
            named = {f for f, v in zip(C.FIELDS, claims) if v >= 0}  # what the words claim is what the plan named
            want = {a for a in plan.named if a != "position"}
            assert {f for f in named if f not in ("horizontal", "vertical")} == want, text
            assert ("position" in plan.named) == bool(named & {"horizontal", "vertical"}), text


def test_no_word_names_two_attributes():
    words = [w for values in C.CLASSIFIED.values() for w in values] + list(C.SIZE_WORDS)
    assert len(words) == len(set(words))


def test_size_and_position_words_are_read_off_the_drawing():
    for i in range(40):
        image, mask, meta = tw.make_sample_with_mask(i, "train")
        x, y = mask_centroid(mask / 255.0)
        assert (meta["x"], meta["y"]) == (pytest.approx(x, abs=1e-4), pytest.approx(y, abs=1e-4))
        assert 0.2 <= meta["radius"] <= 0.43


@pytest.mark.parametrize("code", range(8))
def test_turning_an_image_turns_its_position_words(code):
    """The augmentation's flips/turns move the shape; turn_values moves the words the same way."""
    checked = 0
    for i in range(60):
        _, mask, meta = tw.make_sample_with_mask(i, "train")
        turned = dihedral(torch.from_numpy(mask / 255.0).float()[None, None].repeat(1, 3, 1, 1),
                          torch.tensor([code]))[0, 0].numpy()
        x, y = mask_centroid(turned)
        want = C.attribute_values({**meta, "x": x, "y": y})["position"]
        got = C.turn_values(C.attribute_values(meta), code)["position"]
        assert got == want, (i, code)
        checked += got != (None, None)
    assert checked > 20


def test_vocabulary_round_trip_covers_every_caption():
    for i in range(100):
        for text in C.sample_captions(tw.make_sample(i, "train")[1]):
            ids = VOCABULARY.encode(text)
            assert UNK not in ids and ids[-1] == END and len(ids) <= CONTEXT_LENGTH
            assert VOCABULARY.decode(ids) == text.replace(",", "")


def test_unknown_words_become_unk_and_punctuation_and_case_are_dropped():
    ids = VOCABULARY.encode("A RED zebra, on a photo!")
    assert ids == [VOCABULARY.ids[w] for w in ("a", "red")] + [UNK] + [VOCABULARY.ids[w] for w in
                                                                       ("on", "a", "photo")] + [END]
    assert VOCABULARY.decode(ids) == "a red <unk> on a photo"
    assert (C.claim_code("a red zebra") == C.claim_code("a red shape")).all()  # an unknown word claims nothing


def test_batches_are_padded_and_long_texts_keep_their_end():
    tokens = VOCABULARY(["a star", " ".join(["star"] * 40)])
    assert tokens.shape == (2, CONTEXT_LENGTH) and tokens.dtype == torch.long
    assert tokens[0, :3].tolist() == [VOCABULARY.ids["a"], VOCABULARY.ids["star"], END]
    assert (tokens[0, 3:] == PAD).all() and tokens[1, -1] == END


def test_vocabulary_refuses_duplicates():
    with pytest.raises(ValueError, match="unique"):
        Vocabulary(["a", "a"])
    assert len(np.unique(VOCABULARY.words)) == len(VOCABULARY)
