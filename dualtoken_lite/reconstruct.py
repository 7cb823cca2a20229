"""`python -m dualtoken_lite.reconstruct`: Reconstruct images through the codes; see tools/reconstruct.py."""

import sys

from dualtoken_lite.settings import run_cli
from dualtoken_lite.tools.reconstruct import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
