"""One tiny unified model that reads and writes both text and DualToken images (the paper's sections 3.3-4).

The paper's claim: a language model that reads and writes BOTH token types understands better (pixel tokens add
fine detail) and generates better (semantic tokens keep structure) than with one type. At tiny-world scale, one
decoder-only transformer does text -> image and image -> text in the same run:

    data        token_cache.py   the tiny world encoded once by the tokenizer, with captions; held-out combinations
                sequences.py     the vocabulary (words + markers) and the two sequence layouts
    model       embedding.py     a grid position's code stack -> ONE vector: the sum of its code embeddings
                blocks.py        the causal transformer block (with a key/value cache for sampling)
                rotary.py        the 2-D rotary position embedding: attention that reads grid offsets
                model.py         the main transformer over words and image positions + the depth transformer
                weights.py       model folders: config.json + model.safetensors, strict loading
    training    fit.py           the loop on training/'s run folder (checkpoints, resume, NaN stop)
                trainer.py       `python -m dualtoken_lite train_unified`
    sampling    sampling.py      text -> code stacks, image -> words, with key/value caches
                generate.py      `python -m dualtoken_lite generate MODEL --prompt "a red star" --out DIR`
                caption.py       `python -m dualtoken_lite caption MODEL IMAGES [--question colour]`
    judging     judge.py         decoded pixels read by the teacher and an independent classifier; answers scored
                results.py       `python -m dualtoken_lite unified_results`: judge every run, ship, results.json
"""
