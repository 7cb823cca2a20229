"""`python -m dualtoken_lite.evaluate`: Evaluate a tokenizer; see tools/evaluate.py."""

import sys

from dualtoken_lite.settings import run_cli
from dualtoken_lite.tools.evaluate import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
