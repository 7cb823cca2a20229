"""`python -m dualtoken_lite.unified_results`: Ship the unified runs' models and write their results table; see unified/results.py."""

import sys

from dualtoken_lite.settings import run_cli
from dualtoken_lite.unified.results import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
