"""The command-line tools of the tokenizer (``python -m dualtoken_lite evaluate | reconstruct | tokens | convert | ablation | teacher``)."""
