"""Where the tiny world lives, and the names that stand for it on the command line (docs/method.md §9).

The one place that knows these paths: the shards (``data/tinyworld/``, eval committed, train written on first
use), the shipped teacher (``data/teacher/``, a tiny SigLIP), the shipped tiny tokenizer (``data/tokenizer/``) and
the unified models (``data/unified/``), the attribute classifier that judges their images beside the teacher
(``data/classifier/``) and the first teacher, a shape classifier (``data/shape_classifier/``), all under the
repository's top-level ``data/`` folder.

``shards.resolve_data`` turns those names into shard paths; nothing else in the package spells these paths.
"""

from __future__ import annotations

from pathlib import Path

DATA_ROOT = Path(__file__).resolve().parents[2] / "data"  # the repository's data/ folder
TINYWORLD_ROOT = DATA_ROOT / "tinyworld"  # {train,eval}-NNNN.tar
TEACHER_DIR = DATA_ROOT / "teacher"  # teacher.safetensors + teacher.json
TOKENIZER_DIR = DATA_ROOT / "tokenizer"  # the shipped tiny tokenizer: what `make demo` trains (save_pretrained folder)
UNIFIED_DIR = DATA_ROOT / "unified"  # the shipped unified models (both/, pixel/) and results.json
SHAPE_CLASSIFIER_DIR = DATA_ROOT / "shape_classifier"  # the first tiny teacher: an 8-way shape classifier (notebook 03)
SOURCE_NAMES = {"tinyworld": "train", "tinyworld-eval": "eval"}  # command-line name -> split
