"""`python -m dualtoken_lite.generate MODEL --prompt star --num 16 --out DIR`: Draw shapes with a unified generator; see unified/prompts.py."""

import sys

from dualtoken_lite.settings import run_cli
from dualtoken_lite.unified.prompts import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
