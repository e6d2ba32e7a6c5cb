"""Allot's chaos suite: real members on 127.0.0.1, faults, a recorded history, and checks.

`cluster` runs the members (and proxies their Raft links when partitions are wanted), `proxy`
is the cuttable TCP proxy, `nemesis` plans and injects faults from a seed, `history` records
what clients saw, `observe` samples statuses and reads the final state, `checks` and
`linearizability` judge a history. docs/chaos.md describes them.
"""
