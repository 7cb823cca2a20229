"""Every command of the package, one table: ``python -m dualtoken_lite <command> [args]``.

    python -m dualtoken_lite --help                 # this table
    python -m dualtoken_lite evaluate --help        # one command's flags

A command is a ``main(argv)`` somewhere in the chapters; this file only names it, imports it when asked and
runs it: a user error (``settings.UserError``) prints one line on stderr
and exits 2. Training keeps its module form too: ``python -m dualtoken_lite.train`` and
``torchrun ... -m dualtoken_lite.train`` run the same ``train`` command.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module holding main(argv), what it does); in the order a newcomer meets them
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("dualtoken_lite.training.loop", "train a DualToken tokenizer (also: python -m dualtoken_lite.train)"),
    "evaluate": ("dualtoken_lite.tools.evaluate", "PSNR, SSIM, codebook use, semantic accuracy (+ LPIPS, rFID) of a tokenizer"),
    "reconstruct": ("dualtoken_lite.tools.reconstruct", "images -> codes -> images, side by side with the originals"),
    "tokens": ("dualtoken_lite.tools.tokens", "encode images to a codes file a language model reads, or decode one"),
    "convert": ("dualtoken_lite.tools.convert", "convert a checkpoint of the original release to a model folder"),
    "ablation": ("dualtoken_lite.tools.ablation", "the paper's one-vs-two codebook ablation at small scale"),
    "tinyworld": ("dualtoken_lite.tinyworld.shards", "write the tiny world's shards (made on first use anyway)"),
    "teacher": ("dualtoken_lite.tools.teacher", "train the tiny world's teacher into a folder"),
    "classifier": ("dualtoken_lite.tools.classifier", "train the tiny world's attribute classifier (a second judge)"),
    "train_unified": ("dualtoken_lite.unified.trainer", "train the unified model: text -> image and image -> text"),
    "generate": ("dualtoken_lite.unified.generate", "draw images from a text prompt with a trained unified model"),
    "caption": ("dualtoken_lite.unified.caption", "caption image files, or answer a question about them"),
    "unified_results": ("dualtoken_lite.unified.results", "judge the unified runs, ship the models, write results.json"),
}


def usage() -> str:
    """The table as ``--help`` prints it."""
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items())
    return ("usage: python -m dualtoken_lite <command> [args]   (python -m dualtoken_lite <command> --help: its flags)"
            f"\n\ncommands:\n{rows}\n")


def run(argv: list[str]) -> int:
    """Run ``argv[0]``'s main on the rest of ``argv``; the exit code of the command (2 for a user error)."""
    from dualtoken_lite.settings import run_cli

    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; the commands are: {', '.join(COMMANDS)} "
              "(python -m dualtoken_lite --help)", file=sys.stderr)
        return 2
    module, _ = COMMANDS[name]
    sys.argv[0] = f"python -m dualtoken_lite {name}"  # what argparse prints as the command in usage lines
    return run_cli(importlib.import_module(module).main, argv[1:])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
