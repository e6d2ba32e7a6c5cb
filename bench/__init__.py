"""Benchmarks: they print numbers and never gate CI."""

from node.accelerate import use_compiled_build

use_compiled_build()  # measure the build a member runs (node/accelerate.py)
