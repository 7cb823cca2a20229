"""dualtoken_lite: a compact, educational reference implementation of DualToken (arXiv 2503.14324)."""

__version__ = "0.1.0"
