"""`python -m training <command> --key=value ...` (see training/cli.py)."""

from __future__ import annotations

import sys

from training.cli import main

if __name__ == "__main__":
    sys.exit(main())
