"""This member's wall clock (the time envelopes carry) and whether it agrees with its peers'.

The state machine keeps time as the largest `ts_ms` any applied envelope carried (it never goes
back). A member whose clock runs ahead therefore moves the cluster's clock ahead for good: it
expires idempotency records early (they live `dedup_ttl_ms` of that clock), so a client's retry
after a 504 could be applied twice, and it stamps objects with times to come. CockroachDB stops
a node whose clock is too far from its peers' for the same reason. Here a member takes no
writes while its clock is more than `clock_skew_max_ms` from those of a majority of the members
(itself included), judged from the wall clock each peer sends in its keep-alives (every 0.1 s;
the network adds well under a millisecond on a LAN).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Mapping

from node.config import ConfigError

# Shifts this member's wall clock by this many seconds: a member whose clock is wrong, played
# by tests and chaos runs without touching the machine's clock.
WALL_CLOCK_OFFSET_ENV = "ALLOT_WALL_CLOCK_OFFSET_SECONDS"
wall_clock_offset_s_max = 10 * 365 * 86_400.0
# Ten seconds: far beyond what NTP leaves between machines (milliseconds), far inside the
# fifteen minutes an idempotency record is kept.
clock_skew_max_ms = 10_000


@functools.cache
def wall_clock_offset_ns() -> int:
    """The offset from WALL_CLOCK_OFFSET_ENV (0 when unset); ConfigError for a bad value."""
    text = os.environ.get(WALL_CLOCK_OFFSET_ENV, "").strip()
    if not text:
        return 0
    try:
        seconds = float(text)
    except ValueError:
        raise ConfigError(f"{WALL_CLOCK_OFFSET_ENV}={text!r} must be a number of seconds") from None
    if not abs(seconds) <= wall_clock_offset_s_max:  # also refuses nan
        raise ConfigError(f"{WALL_CLOCK_OFFSET_ENV}={text!r} must be within {wall_clock_offset_s_max:g} seconds")
    return int(seconds * 1e9)


def wall_clock_ms() -> int:
    """This member's wall clock in ms, the clock envelopes carry (`Envelope.ts_ms`)."""
    return (time.time_ns() + wall_clock_offset_ns()) // 1_000_000


def clock_agrees(own_ms: int, peer_ms: Mapping[str, int], members: int, skew_max_ms: int = clock_skew_max_ms) -> bool:
    """Whether this member's clock is within `skew_max_ms` of the clocks of enough peers that,
    with itself, they are a majority of the `members`. `peer_ms`: each peer heard lately, its
    clock now as estimated from its last keep-alive; a peer not heard counts against."""
    agreeing = 1 + sum(1 for clock_ms in peer_ms.values() if abs(clock_ms - own_ms) <= skew_max_ms)
    return 2 * agreeing > members
