"""`python -m dualtoken_lite.ablation`: The paper's ablation at small scale; see tools/ablation.py."""

import sys

from dualtoken_lite.settings import run_cli
from dualtoken_lite.tools.ablation import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
