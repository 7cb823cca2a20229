"""Where the tiny world lives, and the names that stand for it on the command line (docs/method.md §9).

The one place that knows these paths: the shards (``data/tinyworld/``, eval committed, train written on first
use), the shipped teacher (``data/teacher/``, a tiny SigLIP), the shipped tiny tokenizer (``data/tokenizer/``) and
the unified models (``data/unified/``) with the tokenizer they read and write and the shape classifier that judges
them, all under the repository's top-level ``data/`` folder.

``shards.resolve_data`` turns those names into shard paths; nothing else in the package spells these paths.
"""

from __future__ import annotations

from pathlib import Path

DATA_ROOT = Path(__file__).resolve().parents[2] / "data"  # the repository's data/ folder
TINYWORLD_ROOT = DATA_ROOT / "tinyworld"  # {train,eval}-NNNN.tar
TEACHER_DIR = DATA_ROOT / "teacher"  # teacher.safetensors + teacher.json
TOKENIZER_DIR = DATA_ROOT / "tokenizer"  # the shipped tiny tokenizer: what `make demo` trains (save_pretrained folder)
UNIFIED_DIR = DATA_ROOT / "unified"  # the shipped unified models (readers, generators) and results.json
UNIFIED_TOKENIZER_DIR = UNIFIED_DIR / "tokenizer"  # the tokenizer whose codes the unified models were trained on
SHAPE_CLASSIFIER_DIR = UNIFIED_DIR / "shape_classifier"  # the 8-way shape classifier that judges generated images
SOURCE_NAMES = {"tinyworld": "train", "tinyworld-eval": "eval"}  # command-line name -> split
