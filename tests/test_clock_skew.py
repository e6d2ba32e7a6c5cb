"""A member whose wall clock disagrees with its peers' takes no writes (node/clock.py).

The rule on its own, then three real `allot serve` processes on 127.0.0.1, one of them started
with its clock a minute ahead (ALLOT_WALL_CLOCK_OFFSET_SECONDS): writes through it are refused
503 `unavailable` saying why and change nothing, reads through it still answer, and the other
two take writes as before. Once it runs with a right clock again it takes writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.cluster import Cluster, wait_until
from node import clock
from node.clock import WALL_CLOCK_OFFSET_ENV, clock_agrees, clock_skew_max_ms
from node.config import ConfigError

ACME = "acme/web"
offset_s = 60.0
status_wait_s = 30.0


def test_a_member_needs_a_majority_of_clocks_with_its_own() -> None:
    skew = clock_skew_max_ms
    assert clock_agrees(0, {"m2": skew, "m3": -skew}, 3), "within the bound, both ways"
    assert clock_agrees(0, {"m2": 5, "m3": 60_000}, 3), "one peer agreeing is a majority of three"
    assert not clock_agrees(0, {"m2": skew + 1, "m3": 60_000}, 3), "the odd one out"
    assert not clock_agrees(0, {"m2": 60_000}, 3), "a peer not heard counts against"
    assert not clock_agrees(0, {}, 3)
    assert clock_agrees(0, {}, 1), "a one-member cluster agrees with itself"
    assert not clock_agrees(0, {"m2": 1, "m3": 60_000, "m4": 60_000, "m5": 60_000}, 5)


def test_the_offset_variable_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    for good, nanoseconds in (("", 0), ("  ", 0), ("1.5", 1_500_000_000), ("-60", -60_000_000_000)):
        monkeypatch.setenv(WALL_CLOCK_OFFSET_ENV, good)
        clock.wall_clock_offset_ns.cache_clear()
        assert clock.wall_clock_offset_ns() == nanoseconds
    for bad in ("soon", "nan", "inf", "1e12"):
        monkeypatch.setenv(WALL_CLOCK_OFFSET_ENV, bad)
        clock.wall_clock_offset_ns.cache_clear()
        with pytest.raises(ConfigError, match=WALL_CLOCK_OFFSET_ENV):
            clock.wall_clock_offset_ns()
    monkeypatch.delenv(WALL_CLOCK_OFFSET_ENV)
    clock.wall_clock_offset_ns.cache_clear()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    members = Cluster(base_dir=tmp_path / "cluster")
    try:
        yield members
    finally:
        members.close()


def test_a_member_with_a_wrong_clock_takes_no_writes_until_it_is_right(cluster: Cluster) -> None:
    cluster.member_env["m3"] = {WALL_CLOCK_OFFSET_ENV: str(offset_s)}
    cluster.start()
    cluster.wait_for_leader()
    pool = {"name": "clocks", "spec": {"cidr": "10.41.0.0/24"}}
    assert cluster.request("m1", "POST", "/v1/ippools", body=pool).status == 201

    def offsets_seen() -> bool:
        status = cluster.status("m1")
        offset = (status or {}).get("peerClockOffsetsMs", {}).get("m3")
        return offset is not None and abs(offset - offset_s * 1000) < clock_skew_max_ms

    wait_until("m1 to see m3's clock a minute ahead", offsets_seen, status_wait_s, on_timeout=cluster.describe)
    revision = cluster.status("m1")["revision"]  # type: ignore[index]
    claim = {"name": "c1", "spec": {"poolRef": "clocks"}}
    refused = cluster.request("m3", "POST", "/v1/ipclaims", body=claim, token=cluster.tenant_tokens[ACME])
    assert refused.status == 503 and refused.body["error"]["code"] == "unavailable", refused
    message = refused.body["error"]["message"]
    assert "m3's clock disagrees" in message and "correct its clock" in message, message
    assert refused.headers.get("Retry-After"), refused.headers
    read = cluster.request("m3", "GET", "/v1/ippools/clocks")
    assert read.status == 200, "reads, linearizable ones included, still answer"
    assert cluster.status("m1")["revision"] == revision, "the refused write changed nothing"  # type: ignore[index]
    made = cluster.request("m2", "POST", "/v1/ipclaims", body=claim, token=cluster.tenant_tokens[ACME])
    assert made.status == 201, made

    del cluster.member_env["m3"]
    cluster.terminate("m3")
    cluster.start_member("m3")
    again = {"name": "c2", "spec": {"poolRef": "clocks"}}

    def accepted() -> bool:
        return cluster.request("m3", "POST", "/v1/ipclaims", body=again, token=cluster.tenant_tokens[ACME]).status in (
            200,
            201,
        )

    wait_until("m3 to take writes with a right clock", accepted, status_wait_s, on_timeout=cluster.describe)


def test_a_leader_with_a_wrong_clock_hands_leadership_to_a_member_whose_clock_agrees(cluster: Cluster) -> None:
    """A leader whose clock is wrong refuses its own decisions (NotReady transitions,
    evictions, pending sweeps: only a leader makes them), so it must not stay leader. m3 runs a
    minute ahead; leaders are killed until m3 wins an election (each election among two is
    even odds), and then leadership must leave it within seconds and stay away."""
    cluster.member_env["m3"] = {WALL_CLOCK_OFFSET_ENV: str(offset_s)}
    cluster.start()
    rounds_max, handover_wait_s = 20, 10.0

    def handovers() -> int:
        return int((cluster.status("m3") or {}).get("clockHandovers", 0))

    for _ in range(rounds_max):
        leader = cluster.wait_for_leader()
        if leader == "m3" or handovers() > 0:
            break
        cluster.kill(leader)  # m3 and the third member elect one of them
        survivor = cluster.wait_for_leader(member_ids=[member for member in cluster.member_ids if member != leader])
        cluster.start_member(leader)
        if survivor == "m3" or handovers() > 0:
            break
    else:
        pytest.fail(f"m3 won none of {rounds_max} elections")

    wait_until("m3 to ask a member whose clock agrees to lead", lambda: handovers() > 0, handover_wait_s)

    def led_elsewhere() -> bool:
        return cluster.leader() not in (None, "m3")

    wait_until("a member with a right clock to lead", led_elsewhere, handover_wait_s, on_timeout=cluster.describe)
    claim = {"name": "after", "spec": {"cidr": "10.42.0.0/24"}}
    assert cluster.request(cluster.wait_for_leader(), "POST", "/v1/ippools", body=claim).status == 201
    assert cluster.wait_for_leader() != "m3", "and it stays with them"
