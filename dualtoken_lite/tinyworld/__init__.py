"""The tiny world: a procedural, captioned 64 px image set and its tiny SigLIP teacher, the small-scale stand-in
for ImageNet and SigLIP that lets every code path run on a CPU (docs/method.md §9).

    drawing.py          draws sample i of a split from its own seed: one light shape of 8 classes on a darker ground
    shards.py           writes and reads the samples as plain WebDataset tar shards
    paths.py            where the shards and the shipped teacher live; "tinyworld" / "tinyworld-eval" on the command line
    captions.py         each sample's captions, from its own description; which attributes a caption claims
    vocabulary.py       the 45-word vocabulary and its one-screen tokenizer
    caption_batches.py  a teacher training step's images, captions and prompts, with the keys the loss reads
    teacher.py          the tiny SigLIP (image + text tower) and its loading (data/teacher/); tools/teacher.py trains it

``from dualtoken_lite import tinyworld as tw`` gives the drawing and the shards' public names.
"""

from dualtoken_lite.tinyworld.drawing import (
    BACKGROUNDS,
    CLASSES,
    FILLS,
    PHOTOS,
    SPLITS,
    TinyWorldConfig,
    make_batch,
    make_sample,
    make_sample_with_mask,
    sample_rng,
    shape_mask,
    shape_outlines,
    to_tensor,
)
from dualtoken_lite.tinyworld.paths import TEACHER_DIR, TINYWORLD_ROOT
from dualtoken_lite.tinyworld.shards import (
    DEFAULT_COUNTS,
    encode_png,
    ensure_tinyworld,
    load_split,
    write_shards,
    write_split_shard,
)

__all__ = [
    "BACKGROUNDS", "CLASSES", "DEFAULT_COUNTS", "FILLS", "PHOTOS", "SPLITS", "TEACHER_DIR", "TINYWORLD_ROOT",
    "TinyWorldConfig", "encode_png", "ensure_tinyworld", "load_split", "make_batch", "make_sample",
    "make_sample_with_mask", "sample_rng", "shape_mask", "shape_outlines", "to_tensor",
    "write_shards", "write_split_shard",
]
