"""The tokenizer (notebooks 03-04): config, SigLIP-layout tower, projections, decoder, DualToken, save/load, LM token layout."""
