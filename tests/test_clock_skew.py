"""A member whose wall clock disagrees with its peers' takes no writes (node/clock.py).

The rule on its own, then three real `allot serve` processes on 127.0.0.1, one of them started
with its clock a minute ahead (ALLOT_WALL_CLOCK_OFFSET_SECONDS): writes through it are refused
503 `unavailable` saying why and change nothing, reads through it still answer, and the other
two take writes as before. Once it runs with a right clock again it takes writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chaos.cluster import Cluster, wait_until
from node import clock
from node.clock import WALL_CLOCK_OFFSET_ENV, clock_agrees, clock_skew_max_ms
from node.config import ConfigError
from node.replicated import ReplicatedMember

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


def test_a_leader_stopped_cleanly_hands_over_to_a_member_whose_clock_agrees(cluster: Cluster) -> None:
    """QA, 2026-12-08: pysyncobj's own choice of successor ignores clocks, and a leader stopped
    for a rolling restart handed over to the member whose clock was wrong, which then handed
    over again: two elections instead of one. The successor now is one whose clock agrees."""
    cluster.member_env["m3"] = {WALL_CLOCK_OFFSET_ENV: str(offset_s)}
    cluster.start()

    def led_by_a_right_clock() -> str | None:
        leader = cluster.leader()
        status = cluster.status("m1") or {}
        heard = "m3" in status.get("peerClockOffsetsMs", {}) and "m3" in (cluster.status("m2") or {}).get(
            "peerClockOffsetsMs", {}
        )
        return leader if leader in ("m1", "m2") and heard else None

    leader = wait_until("m1 or m2 to lead, with m3's clock heard", led_by_a_right_clock, status_wait_s)
    other = "m2" if leader == "m1" else "m1"
    assert cluster.terminate(leader) == 143, cluster.log_tail(leader)
    said = cluster.log_text(leader)
    assert f"handed leadership over before stopping (leader now: {other}," in said, said[-3000:]


def test_the_successor_is_linked_of_this_build_with_a_right_clock_and_the_most_log() -> None:
    """`ReplicatedMember._handover_target` on its own, with the member's state stubbed."""

    def member(peers: tuple[str, ...], builds: dict[str, str], matched: dict[str, int]) -> Any:
        addresses = {"m1": "a:1", "m2": "a:2", "m3": "a:3", "m4": "a:4", "m5": "a:5"}
        return SimpleNamespace(
            config=SimpleNamespace(members=addresses),
            member_id="m1",
            _raft_view=SimpleNamespace(peers_connected=peers),
            other_builds=lambda: builds,
            raft=SimpleNamespace(match_indexes=lambda: {addresses[m]: index for m, index in matched.items()}),
        )

    target = ReplicatedMember._handover_target
    wrong = offset_s * 1000
    everyone = ("m2", "m3", "m4", "m5")
    offsets = {"m2": 0, "m3": int(wrong), "m4": 5, "m5": 3}
    assert target(member(everyone, {}, {"m2": 9, "m3": 10, "m4": 10, "m5": 10}), offsets) == "m4", (
        "the most log among right clocks, lowest id on a tie; m3's clock is wrong"
    )
    assert target(member(everyone, {"m4": "other"}, {"m2": 9, "m3": 10, "m4": 10, "m5": 10}), offsets) == "m5"
    assert target(member(("m2", "m3"), {}, {"m2": 1, "m3": 10}), offsets) == "m2", "linked ones only"
    assert target(member(("m3",), {}, {"m3": 10}), offsets) is None
    assert target(member(everyone, {}, {}), {"m3": int(wrong)}) is None, "unheard clocks do not qualify"
