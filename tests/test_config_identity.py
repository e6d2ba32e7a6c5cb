"""A member's data dir records which cluster and member it belongs to (node.config.check_cluster_identity)."""

from __future__ import annotations

import errno
import json
import logging
import socket
from pathlib import Path

import pytest

from node.config import (
    IDENTITY_FILE,
    ConfigError,
    MemberConfig,
    check_cluster_identity,
    check_port_free,
    warn_if_secret_exposed,
)

SECRET = "s" * 40
MEMBERS = {"m1": "127.0.0.1:7001", "m2": "127.0.0.1:7002", "m3": "127.0.0.1:7003"}


def member(
    tmp_path: Path, member_id: str = "m3", members: dict[str, str] = MEMBERS, secret: str = SECRET
) -> MemberConfig:
    secret_file = tmp_path / f"secret-{len(secret)}-{secret[:1]}"
    secret_file.write_text(secret)
    return MemberConfig(member_id, dict(members), "127.0.0.1:8001", tmp_path / "data", secret_file, tmp_path / "tokens")


def test_the_first_start_records_the_identity_and_the_same_configuration_starts_again(tmp_path: Path) -> None:
    config = member(tmp_path)
    check_cluster_identity(config)
    recorded = json.loads((config.data_dir / IDENTITY_FILE).read_text())
    assert recorded["memberId"] == "m3" and recorded["members"] == MEMBERS
    assert SECRET not in json.dumps(recorded)  # a digest names the secret, never the secret itself
    check_cluster_identity(config)
    assert json.loads((config.data_dir / IDENTITY_FILE).read_text()) == recorded


def test_a_member_restarted_with_another_member_list_is_refused(tmp_path: Path) -> None:
    """The split brain exploratory testing found: m3 restarted listing only itself led a cluster
    of one on the replicated data, then overwrote writes the majority had acknowledged."""
    check_cluster_identity(member(tmp_path))
    for members in ({"m3": MEMBERS["m3"]}, {**MEMBERS, "m4": "127.0.0.1:7004", "m5": "127.0.0.1:7005"}):
        with pytest.raises(ConfigError, match="belongs to a cluster of members m1, m2, m3, but --members lists"):
            check_cluster_identity(member(tmp_path, members=members))


def test_another_members_or_another_clusters_data_is_refused(tmp_path: Path) -> None:
    check_cluster_identity(member(tmp_path))
    with pytest.raises(ConfigError, match="holds member m3's data, not m1's"):
        check_cluster_identity(member(tmp_path, member_id="m1"))
    with pytest.raises(ConfigError, match="belongs to a cluster with another secret"):
        check_cluster_identity(member(tmp_path, secret="t" * 40))


def test_members_moved_together_to_new_addresses_are_followed(tmp_path: Path) -> None:
    check_cluster_identity(member(tmp_path))
    moved = {member_id: f"127.0.0.1:{9000 + number}" for number, member_id in enumerate(MEMBERS)}
    config = member(tmp_path, members=moved)
    check_cluster_identity(config)
    assert json.loads((config.data_dir / IDENTITY_FILE).read_text())["members"] == moved


def test_a_damaged_record_is_refused_with_its_path(tmp_path: Path) -> None:
    config = member(tmp_path)
    config.data_dir.mkdir()
    (config.data_dir / IDENTITY_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match=f"{IDENTITY_FILE} is not valid JSON"):
        check_cluster_identity(config)
    (config.data_dir / IDENTITY_FILE).write_text(json.dumps({"memberId": "m3"}))
    with pytest.raises(ConfigError, match="is not a cluster identity of format 1"):
        check_cluster_identity(config)


def test_a_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    config = member(tmp_path)
    config.data_dir.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot be used"):
        check_cluster_identity(config)


def test_a_secret_file_open_to_others_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = member(tmp_path)
    config.secret_file.chmod(0o600)
    assert not warn_if_secret_exposed(config)
    config.secret_file.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert warn_if_secret_exposed(config)
    assert "chmod 600" in caplog.text


def test_an_address_of_another_machine_is_named_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_here(self: socket.socket, address: object) -> None:
        raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")

    monkeypatch.setattr(socket.socket, "bind", not_here)
    with pytest.raises(ConfigError, match=r"192\.0\.2\.1 is not an address of this machine"):
        check_port_free("192.0.2.1:7001", "Raft address")
