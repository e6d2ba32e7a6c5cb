"""`python -m chaos`: the same as `allot chaos` (chaos/runner.py)."""

import sys

from chaos.runner import main

sys.exit(main(prog="python -m chaos"))
