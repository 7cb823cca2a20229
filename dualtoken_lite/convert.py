"""`python -m dualtoken_lite.convert`: Convert a released DualToken checkpoint; see tools/convert.py."""

import sys

from dualtoken_lite.tools.convert import main

if __name__ == "__main__":
    sys.exit(main())
