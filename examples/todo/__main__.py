"""``python -m examples.todo``: run the todo command line (see :mod:`examples.todo`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
