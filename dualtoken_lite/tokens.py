"""`python -m dualtoken_lite.tokens`: Images to language-model tokens and back; see tools/tokens.py."""

import sys

from dualtoken_lite.settings import run_cli
from dualtoken_lite.tools.tokens import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
