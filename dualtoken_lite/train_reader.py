"""`python -m dualtoken_lite.train_reader`: Train one understanding reader on DualToken tokens; see unified/reader_training.py."""

import sys

from dualtoken_lite.settings import run_cli
from dualtoken_lite.unified.reader_training import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
