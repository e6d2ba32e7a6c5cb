"""Allot's tests.

The test process runs the state machine from its sources: `statemachine` is imported here,
before anything imports `node` (which would choose the compiled build, node/accelerate.py),
because some tests wrap or count calls through module attributes, and the compiled build's
modules call each other past those. Members and other processes the tests start run the
compiled build when a fresh one is there; tests/test_compiled.py checks that both builds apply
logs alike.
"""

import statemachine  # noqa: F401 -- first, see above
