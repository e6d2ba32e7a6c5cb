"""The Allot server: everything that does I/O (stores, Raft, HTTP, processes)."""

from node.accelerate import use_compiled_build
from node.build_identity import build_id

# Before anything imports the state machine: run its compiled build when a fresh one is there.
use_compiled_build()
# And read the build id now, from the sources the process is about to run: computed later (when
# a member starts), sources changed on disk in between would name a build this process is not.
build_id()
