"""Members of different builds (node/build_identity.py): real `allot serve` processes on 127.0.0.1.

A member stops, before changing anything, at the first log entry proposed by a member of
another build, since the two builds may compute different states from it; entries it applied
already are skipped as always, so a whole-cluster upgrade (README, Upgrading) passes. The other
build here is a copy of this checkout's server sources with one comment added: the smallest
change that makes another build."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.cluster import Cluster, wait_until
from node.build_identity import build_id, compute_build_id
from node.raft import EXIT_INVARIANT
from node.store import DATA_FILE
from tests.test_build_identity import copy_sources

stop_deadline_s = 60.0  # a member of another build joining until it stops itself
ACME = "acme/web"


@pytest.fixture(scope="module")
def other_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_sources(tmp_path_factory.mktemp("other-build"))
    with (root / "statemachine" / "machine.py").open("a") as source:
        source.write("# another build: the same rules, but nothing can tell from the outside\n")
    assert compute_build_id(root) != build_id()
    return root


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    members = Cluster(base_dir=tmp_path / "cluster")  # started by each test, member by member
    try:
        yield members
    finally:
        members.close()


def create_pool(cluster: Cluster, member_id: str, name: str) -> None:
    body = {"name": name, "spec": {"cidr": "10.40.0.0/16"}}
    reply = cluster.request(member_id, "POST", "/v1/ippools", body=body, timeout_s=10.0)
    assert reply.status == 201, (reply.status, reply.body)


def create_claim(cluster: Cluster, member_id: str, pool: str, name: str) -> str:
    body = {"name": name, "spec": {"poolRef": pool}}
    token = cluster.tenant_tokens[ACME]
    reply = cluster.request(member_id, "POST", "/v1/ipclaims", token=token, body=body, timeout_s=10.0)
    assert reply.status == 201, (reply.status, reply.body)
    return str(reply.body["status"]["allocatedCIDR"])


def claims_on(cluster: Cluster, member_id: str) -> dict[str, str]:
    items = cluster.list_all(member_id, "ipclaims", token=cluster.tenant_tokens[ACME], consistency="linearizable")
    return {item["metadata"]["name"]: item["status"]["allocatedCIDR"] for item in items}


def test_a_member_of_another_build_stops_before_applying_anything(cluster: Cluster, other_build: Path) -> None:
    for member_id in ("m1", "m2"):
        cluster.start_member(member_id, wait=False)
    for member_id in ("m1", "m2"):
        cluster.wait_member_up(member_id)
    cluster.wait_for_leader(member_ids=["m1", "m2"])
    create_pool(cluster, "m1", "gate")
    first = create_claim(cluster, "m2", "gate", "before")

    cluster.source_roots["m3"] = other_build
    cluster.start_member("m3", wait=False)
    process = cluster.members["m3"].process
    assert process is not None
    code = wait_until("m3 to stop itself", process.poll, stop_deadline_s, on_timeout=cluster.describe)
    assert code == EXIT_INVARIANT, cluster.log_tail("m3")
    log = cluster.log_text("m3")
    other_id = compute_build_id(other_build)
    assert f"running build {build_id()}, and this member runs build {other_id}" in log, log
    assert "applied nothing from it" in log
    cluster.terminate("m3")
    assert cluster.inspect_stored_state("m3").applied_index == 0  # not one entry of the other build

    # The two members of one build go on, and m3 on this checkout's build catches up.
    second = create_claim(cluster, "m1", "gate", "during")
    del cluster.source_roots["m3"]
    cluster.start_member("m3")
    converged = cluster.wait_converged()
    assert converged.applied_index > 0
    assert claims_on(cluster, "m3") == {"before": first, "during": second}
    for member_id in ("m1", "m2", "m3"):
        status = cluster.status(member_id)
        assert status is not None and status["buildId"] == build_id()
    assert [(member_id, code) for member_id, code, _ in cluster.unexpected_exits] == [("m3", EXIT_INVARIANT)]


def test_a_whole_cluster_upgrade_replays_what_the_old_build_applied(cluster: Cluster, other_build: Path) -> None:
    """The README's upgrade: every member applies the whole log on the old build, all stop,
    all start on the new one. Their journals hold only entries of the old build, all applied
    already, so no member stops; the data is all there."""
    for member_id in cluster.member_ids:
        cluster.source_roots[member_id] = other_build
    cluster.start()
    create_pool(cluster, "m1", "upgrade")
    written = {
        f"c{number}": create_claim(cluster, f"m{number % 3 + 1}", "upgrade", f"c{number}") for number in range(6)
    }
    before = cluster.wait_converged()
    for member_id in cluster.member_ids:
        status = cluster.status(member_id)
        assert status is not None and status["buildId"] == compute_build_id(other_build)
    for member_id in cluster.member_ids:
        # A clean stop on SIGTERM exits 143, as a process killed by SIGTERM would.
        assert cluster.terminate(member_id) == 128 + signal.SIGTERM, cluster.log_tail(member_id)

    cluster.source_roots.clear()
    cluster.start()
    after = cluster.wait_converged()
    assert after.digest == before.digest and after.applied_index >= before.applied_index
    assert claims_on(cluster, "m2") == written
    written["after-upgrade"] = create_claim(cluster, "m3", "upgrade", "after-upgrade")
    assert len(set(written.values())) == len(written)

    # The first entry of the new build made every member dump its state, so the old build's
    # entries are no longer needed to rebuild one: not from a member's own dump and journal
    # (its store lost, as a power loss can), nor from the leader (a wiped member).
    def dumped_past_the_old_build() -> bool:
        statuses = cluster.statuses()
        return all(
            status is not None and status["snapshotIndex"] >= before.applied_index for status in statuses.values()
        )

    wait_until(
        "every member to dump its state", dumped_past_the_old_build, stop_deadline_s, on_timeout=cluster.describe
    )
    cluster.terminate("m2")
    (cluster.members["m2"].data_dir / "state" / DATA_FILE).unlink()
    cluster.start_member("m2")
    cluster.wipe_and_restart("m3")
    cluster.wait_converged()
    for member_id in cluster.member_ids:
        assert claims_on(cluster, member_id) == written
    assert cluster.unexpected_exits == []
