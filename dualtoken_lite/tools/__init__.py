"""The command-line tools behind python -m dualtoken_lite.{evaluate,reconstruct,tokens,ablation}."""
