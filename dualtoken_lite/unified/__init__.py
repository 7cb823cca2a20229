"""A tiny unified model that understands and generates from DualToken tokens (the paper's sections 3.3-4).

The paper's claim: a language model that reads and writes BOTH token types understands better (pixel tokens add
fine detail) and generates better (semantic tokens keep structure) than with one type. At tiny-world scale:

    questions.py            what a reader is asked (shape / colour / background / fill) and the answers
    token_cache.py          the tiny world encoded once by a trained tokenizer, in the LM token layout
    embedding.py            a grid position's code stack -> ONE vector: the sum of its code embeddings
    blocks.py               the pre-norm transformer block (with a key/value cache for sampling)
    reader.py               understanding: image tokens + question tokens -> answers (variants semantic/pixel/both)
    ar_generator.py         generation: class -> spatial transformer over positions + depth transformer over codes
    judge.py                generated pixels judged by the teacher: class accuracy, Frechet distance, ceiling
    prompts.py              class name -> samples -> decoded PNGs (`python -m dualtoken_lite generate`)
    fit.py                  the shared training loop (checkpoints, resume, metrics) from training/'s parts
    reader_training.py      `python -m dualtoken_lite train_reader`
    generator_training.py   `python -m dualtoken_lite train_generator`
    weights.py              model folders: config.json + model.safetensors, strict loading
    results.py              `python -m dualtoken_lite unified_results`: ship the models, write results.json
"""
