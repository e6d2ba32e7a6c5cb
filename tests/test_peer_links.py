"""A member logs a peer it has had no Raft link to for a while (node.replicated: `_check_peer_links`)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from node import replicated
from node.config import MemberConfig

MEMBERS = {"m1": "127.0.0.1:7001", "m2": "127.0.0.1:7002", "m3": "127.0.0.1:7003"}


def test_a_peer_without_a_link_is_warned_about_once_and_its_return_noted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = MemberConfig("m1", MEMBERS, "127.0.0.1:8001", Path("d"), Path("cluster.secret"), Path("t"))
    member: Any = SimpleNamespace(config=config, _peer_down_since={}, _peers_warned=set())
    clock = [100.0]
    monkeypatch.setattr("node.replicated.time.monotonic", lambda: clock[0])
    up, down = 2, 0  # pysyncobj's partner_node_status_server_<address>: 2 is connected

    def check(m2: int, m3: int) -> tuple[str, ...]:
        status = {f"partner_node_status_server_{MEMBERS['m2']}": m2, f"partner_node_status_server_{MEMBERS['m3']}": m3}
        result: tuple[str, ...] = replicated.ReplicatedMember._check_peer_links(member, status)
        return result

    with caplog.at_level(logging.INFO, logger="allot.member"):
        assert check(up, down) == ("m2",)
        clock[0] += replicated.peer_link_warn_s - 1
        assert check(up, down) == ("m2",)
        assert "no Raft link" not in caplog.text  # not yet: a restart or an election is no outage
        clock[0] += 1
        check(up, down)
        check(up, down)
        assert caplog.text.count("no Raft link to m3") == 1
        assert "cluster.secret" in caplog.text  # the likeliest silent cause is named
        assert check(up, up) == ("m2", "m3")
        assert "Raft link to m3 (127.0.0.1:7003) is up again" in caplog.text
