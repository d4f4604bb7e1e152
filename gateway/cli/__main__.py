"""`python -m gateway.cli`, as the tests and the benchmark start it."""

from __future__ import annotations

import sys

from gateway.cli import main

if __name__ == "__main__":
    sys.exit(main())
