"""`python -m dualtoken_lite.teacher`: Train the tiny world's teacher; see tinyworld/teacher.py."""

import sys

from dualtoken_lite.settings import run_cli
from dualtoken_lite.tinyworld.teacher import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
