"""``sqla-sync demo``: placeholder until the example backend ships with the package."""

from __future__ import annotations

import sys

__all__ = ["run_demo"]


def run_demo() -> int:
    """Explain that the demo needs the repository's example server (for now)."""
    print("sqla-sync demo: not available yet; see README.md for what works today",
          file=sys.stderr)
    return 1
