"""`python -m dualtoken_lite.train_generator`: Train one class-conditional generator of DualToken tokens; see unified/generator_training.py."""

import sys

from dualtoken_lite.settings import run_cli
from dualtoken_lite.unified.generator_training import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
