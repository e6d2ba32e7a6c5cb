"""The Allot server: everything that does I/O (stores, Raft, HTTP, processes)."""

from node.accelerate import use_compiled_build

# Before anything imports the state machine: run its compiled build when a fresh one is there.
use_compiled_build()
