"""`python -m dualtoken_lite.teacher`: Train the tiny world's teacher; see tools/teacher.py."""

import sys

from dualtoken_lite.settings import run_cli
from dualtoken_lite.tools.teacher import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
