"""`python -m dualtoken_lite.train`: Train DualToken (docs/method.md §4); see training/loop.py."""

import sys

from dualtoken_lite.settings import run_cli
from dualtoken_lite.training.loop import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
