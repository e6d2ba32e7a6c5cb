"""The Allot server: everything that does I/O (stores, Raft, HTTP, processes)."""
