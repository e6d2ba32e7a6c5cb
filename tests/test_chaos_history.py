"""The chaos history (chaos/history.py): recording from many threads, limits, JSON lines.

A history saved and loaded again is equal to the original and checks the same; the recorder
is safe to share between workers and refuses to grow past its limit; status samples are kept
only when something changed; final states (claims, allocations, and the scheduler's nodes,
pods and quotas) are built from the objects the HTTP API returns (here produced by the real
state machine, in-process).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from chaos.checks import check_scheduler_invariants, run_checks
from chaos.checks import main as check_main
from chaos.history import (
    FaultRecord,
    History,
    HistoryFull,
    HistoryRecorder,
    Kind,
    MemberState,
    NodeState,
    Outcome,
    PodState,
    QuotaState,
    claim_key,
    claim_key_of,
    member_state_from_objects,
    pod_key,
    pod_key_of,
    pods_pool,
)
from chaos.linearizability import PoolModel, pool_model
from node.memstore import MemoryStore
from statemachine import Envelope, Principal, apply, encode_envelope, queries

ADMIN = Principal("root", "", "", "admin")
TENANT = Principal("alice", "acme", "web", "member")


class TickingClock:
    """A clock for the recorder that moves 1 ms per reading: deterministic histories."""

    def __init__(self) -> None:
        self.now_ns = 0
        self.lock = threading.Lock()

    def __call__(self) -> int:
        with self.lock:
            self.now_ns += 1_000_000
            return self.now_ns


def test_recorder_records_invoke_and_outcome() -> None:
    recorder = HistoryRecorder(clock_ns=TickingClock())
    first = recorder.invoke("w1", Kind.CLAIM, "p", claim="acme/web/default/a", args={"prefixLength": 32}, key="k1")
    second = recorder.invoke("w2", Kind.RELEASE, "p", claim="acme/web/default/b", deadline_s=2.5)
    third = recorder.invoke("w3", Kind.CLAIM, "p", claim="acme/web/default/c")
    recorder.ok(first, {"cidr": "10.0.0.0/32", "uid": "u1"})
    recorder.fail(second, "not_found")
    recorder.unknown(third, "timeout")
    ops = recorder.history().ops
    assert [op.outcome for op in ops] == [Outcome.OK, Outcome.FAIL, Outcome.UNKNOWN]
    assert ops[0].cidr == "10.0.0.0/32" and ops[0].key == "k1" and ops[0].args == {"prefixLength": 32}
    assert ops[1].code == "not_found" and ops[1].deadline_ns == 2_500_000_000
    assert all(op.complete_ns is not None and op.complete_ns > op.invoke_ns for op in ops)
    with pytest.raises(ValueError, match="complete already"):
        recorder.ok(first)
    assert recorder.history_op(third).code == "timeout"


def test_recorder_is_bounded() -> None:
    recorder = HistoryRecorder(ops_max=3, status_samples_max=2)
    for _ in range(3):
        recorder.invoke("w", Kind.LIST, "p")
    with pytest.raises(HistoryFull):
        recorder.invoke("w", Kind.LIST, "p")
    for term in range(5):
        recorder.record_status("m1", {"role": "follower", "term": term, "leader": "m2"})
    assert len(recorder.history().statuses) == 2 and recorder.status_samples_dropped == 3


def test_recorder_keeps_only_changed_status_samples() -> None:
    recorder = HistoryRecorder()
    status = {"role": "leader", "term": 3, "leader": "m1", "appliedIndex": 7, "digestIndex": 7, "digest": "ab"}
    recorder.record_status("m1", status)
    recorder.record_status("m1", {**status, "appliedIndex": 8})  # only the applied index moved
    recorder.record_status("m2", {**status, "role": "follower"})
    recorder.record_status("m1", {**status, "term": 4})
    samples = recorder.history().statuses
    assert [(sample.member, sample.term, sample.role) for sample in samples] == [
        ("m1", 3, "leader"),
        ("m2", 3, "follower"),
        ("m1", 4, "leader"),
    ]


def test_recorder_is_safe_to_share_between_threads() -> None:
    recorder = HistoryRecorder()
    per_thread = 500

    def work(number: int) -> None:
        for count in range(per_thread):
            op_id = recorder.invoke(f"w{number}", Kind.CLAIM, "p", claim=f"acme/web/default/w{number}-{count}")
            recorder.ok(op_id, {"cidr": "10.0.0.1/32"})

    threads = [threading.Thread(target=work, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    ops = recorder.history().ops
    assert len(ops) == 8 * per_thread
    assert [op.op_id for op in ops] == list(range(len(ops)))
    assert all(op.outcome is Outcome.OK for op in ops)
    assert len({op.claim for op in ops}) == len(ops)


def sample_history() -> History:
    recorder = HistoryRecorder(clock_ns=TickingClock())
    claim = recorder.invoke("w1", Kind.CLAIM, "p", claim="acme/web/default/a", args={"prefixLength": 32}, key="k")
    recorder.ok(claim, {"cidr": "10.0.0.0/32", "uid": "u"})
    lost = recorder.invoke("w2", Kind.CLAIM, "p", claim="acme/web/default/b", args={"prefixLength": 32})
    recorder.unknown(lost, "timeout")
    listing = recorder.invoke("w1", Kind.LIST, "p")
    recorder.ok(listing, {"claims": {"acme/web/default/a": "10.0.0.0/32"}})
    recorder.invoke("w3", Kind.READ, "p", claim="acme/web/default/a")  # still pending
    recorder.record_status("m1", {"role": "leader", "term": 2, "leader": "m1", "digestIndex": 4, "digest": "d"})
    recorder.record_fault(FaultRecord(1, "pause-leader", ("m1",), 10, 20, 30, "m1", "m2", "SIGSTOP m1", None))
    final = MemberState("m1", 4, 4, "d", (), (), {"p": "default"}, ("one problem",))
    return recorder.history(meta={"seed": 7, "pools": [pool_model("p", "10.0.0.0/30").to_json()]}, final=[final])


def test_history_round_trips_through_json_lines(tmp_path: Path) -> None:
    history = sample_history()
    path = tmp_path / "history.jsonl"
    history.dump(path)
    lines = path.read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["meta", "op", "op", "op", "op", "status", "fault", "final"]
    loaded = History.load(path)
    assert loaded == history
    assert [result.report() for result in run_checks(loaded)] == [result.report() for result in run_checks(history)]
    assert PoolModel.from_json(loaded.meta["pools"][0]) == pool_model("p", "10.0.0.0/30")


def test_history_load_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps({"type": "meta", "format": 99}) + "\n")
    with pytest.raises(ValueError, match="format 99"):
        History.load(path)
    path.write_text(json.dumps({"type": "meta", "format": 1}) + "\n" + json.dumps({"type": "gossip"}) + "\n")
    with pytest.raises(ValueError, match="unknown record type"):
        History.load(path)


def test_a_saved_history_is_checked_again_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "history.jsonl"
    sample_history().dump(path)
    assert check_main([str(path)]) == 1  # the planted invariant problem fails check 5
    out = capsys.readouterr().out
    assert "FAIL" in out and "one problem" in out and "4 operations" in out


def run(store: MemoryStore, index: int, principal: Principal, command: str, body: dict[str, Any]) -> Any:
    outcome = apply(store, encode_envelope(Envelope(command, body, principal, None, 1_767_225_600_000)), index)
    store.apply_writes(outcome.writes)
    return outcome.result


def test_member_state_is_built_from_the_objects_the_api_returns() -> None:
    store = MemoryStore()
    run(store, 1, ADMIN, "pool.create", {"name": "edge", "spec": {"cidr": "10.0.0.0/29"}})
    run(store, 2, ADMIN, "pool.create", {"name": "blue", "spec": {"cidr": "10.0.0.0/29", "addressSpace": "vrf-b"}})
    run(store, 3, TENANT, "claim.create", {"name": "a", "spec": {"poolRef": "edge", "prefixLength": 30}})
    run(store, 4, TENANT, "claim.create", {"name": "b", "spec": {"poolRef": "blue"}})

    def listed(plural: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = queries.list_objects(store, ADMIN, plural)["items"]
        return items

    status = {"appliedIndex": 4, "digestIndex": 4, "digest": "abc", "role": "leader", "term": 1}
    state = member_state_from_objects("m1", status, listed("ippools"), listed("ipclaims"), listed("ipallocations"))
    a, b = claim_key("acme", "web", "default", "a"), claim_key("acme", "web", "default", "b")
    assert {(claim.key, claim.pool, claim.cidr) for claim in state.claims} == {
        (a, "edge", "10.0.0.0/30"),
        (b, "blue", "10.0.0.0/32"),
    }
    assert {(item.claim, item.cidr, item.phase) for item in state.allocations} == {
        (a, "10.0.0.0/30", "Bound"),
        (b, "10.0.0.0/32", "Bound"),
    }
    assert state.address_spaces == {"edge": "default", "blue": "vrf-b"}
    assert (state.applied_index, state.digest_index, state.digest) == (4, 4, "abc")
    assert state.claims_of_pool("edge") == {a: "10.0.0.0/30"}
    assert claim_key_of(listed("ipclaims")[0]) in {a, b}
    history = History(final=[state])
    assert all(result.passed for result in run_checks(history)[:3])  # the same block in two spaces is fine


def scheduler_member_state() -> MemberState:
    node = NodeState("n1", 2000, 8 << 30, 8, 500, 1 << 20, 1, True, "Registered", False, "10.244.0.0/24")
    pods = (
        PodState(pod_key("acme", "web", "default", "a"), "u-a", "Bound", "n1", "10.244.0.1", 500, 1 << 20),
        PodState(pod_key("acme", "web", "default", "b"), "u-b", "Pending", None, None, 9000, 0),
    )
    quota = QuotaState(
        "acme/web",
        "acme",
        "web",
        {"cpuMillis": 4000, "addressesByClass": {"gold": 2}},
        {"cpuMillis": 500, "memoryBytes": 1 << 20, "pods": 1, "pendingPods": 1, "addressesByClass": {}},
    )
    return MemberState("m1", 9, 9, "d", (), (), {}, (), (), (node,), pods, (quota,), True)


def test_scheduler_state_round_trips_and_old_histories_still_load(tmp_path: Path) -> None:
    recorder = HistoryRecorder(clock_ns=TickingClock())
    create = recorder.invoke(
        "w1", Kind.POD_CREATE, pods_pool("acme", "web"), claim=pod_key("acme", "web", "default", "a"), key="p1"
    )
    recorder.ok(create, {"phase": "Bound", "node": "n1", "podIP": "10.244.0.1"})
    delete = recorder.invoke(
        "w1", Kind.POD_DELETE, pods_pool("acme", "web"), claim=pod_key("acme", "web", "default", "z")
    )
    recorder.unknown(delete, "timeout")
    history = recorder.history(final=[scheduler_member_state()])
    path = tmp_path / "history.jsonl"
    history.dump(path)
    loaded = History.load(path)
    assert loaded == history
    assert loaded.ops[0].is_write and loaded.ops[0].is_pod and loaded.ops[1].kind is Kind.POD_DELETE
    assert "ok Bound on n1 10.244.0.1" in loaded.ops[0].describe()
    assert loaded.pools() == [] and loaded.pod_ops() == loaded.ops  # pod tenants are not IP pools
    assert check_scheduler_invariants(loaded).passed
    old = json.loads(path.read_text().splitlines()[-1])
    for name in ("nodes", "pods", "quotas", "scheduler_observed"):
        del old[name]  # a final record written before pods were recorded
    old.pop("type")
    state = MemberState.from_json(old)
    assert (state.nodes, state.pods, state.quotas, state.scheduler_observed) == ((), (), (), False)


def test_pod_keys_and_pools_follow_the_claim_convention() -> None:
    assert pod_key("acme", "web", "ns", "a") == "acme/web/ns/a" == claim_key("acme", "web", "ns", "a")
    assert pod_key_of({"metadata": {"org": "acme", "project": "web", "name": "a"}}) == "acme/web/default/a"
    assert pods_pool("acme", "web") == "pods:acme/web"


def test_member_state_reads_nodes_pods_and_quotas_from_the_api_objects() -> None:
    store = MemoryStore()
    run(store, 1, ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.244.0.0/16"}})
    run(store, 2, ADMIN, "pool.create", {"name": "vips", "spec": {"cidr": "10.96.0.0/24"}})
    for index, name in ((3, "n1"), (4, "n2")):
        capacity = {"cpuMillis": 2000, "memoryBytes": 8 << 30, "pods": 8}
        run(store, index, ADMIN, "node.register", {"name": name, "spec": {"capacity": capacity, "podPool": "pods"}})
    run(store, 5, ADMIN, "quota.set", {"name": "acme", "spec": {"cpuMillis": 20000, "pods": 20}})
    run(store, 6, ADMIN, "quota.set", {"name": "acme/web", "spec": {"cpuMillis": 10000, "services": 4}})
    created: dict[str, dict[str, Any]] = {
        name: run(store, index, TENANT, "pod.create", {"name": name, "spec": {"requests": {"cpuMillis": cpu}}}).value
        for index, name, cpu in ((7, "a", 1500), (8, "b", 1500), (9, "wide", 3000))
    }
    other = Principal("bob", "acme", "db", "member")
    run(store, 10, other, "pod.create", {"name": "x", "spec": {"requests": {"cpuMillis": 100, "memoryBytes": 64}}})
    run(store, 11, TENANT, "service.create", {"name": "s1", "spec": {"poolRef": "vips"}})
    run(store, 12, ADMIN, "node.cordon", {"name": "n2"})

    def listed(plural: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = queries.list_objects(store, ADMIN, plural)["items"]
        return items

    status = {"appliedIndex": 12, "digestIndex": 12, "digest": "abc", "role": "leader", "term": 1}
    with pytest.raises(ValueError, match="together"):
        member_state_from_objects("m1", status, [], [], [], nodes=listed("nodes"), pods=listed("pods"))
    state = member_state_from_objects(
        "m1", status, listed("ippools"), [], [], nodes=listed("nodes"), pods=listed("pods"), quotas=listed("quotas")
    )
    assert state.scheduler_observed
    assert [(node.name, node.capacity_cpu_millis, node.cordoned, node.ready) for node in state.nodes] == [
        ("n1", 2000, False, True),
        ("n2", 2000, True, True),
    ]
    pods = {pod.key: pod for pod in state.pods}
    assert set(pods) == {pod_key_of(obj) for obj in listed("pods")} and len(pods) == 4  # both tenants
    wide = pods[pod_key("acme", "web", "default", "wide")]
    assert (wide.phase, wide.node, wide.pod_ip, wide.cpu_millis) == ("Pending", None, None, 3000)
    bound = pods[pod_key("acme", "web", "default", "a")]
    assert (bound.node, bound.pod_ip) == (created["a"]["spec"]["nodeName"], created["a"]["status"]["podIP"])
    assert sum(node.allocated_pods for node in state.nodes) == 3
    quotas = {quota.scope: quota for quota in state.quotas}
    assert quotas["acme/web"].limits == {"cpuMillis": 10000, "services": 4}
    assert quotas["acme/web"].used["cpuMillis"] == 3000 and quotas["acme/web"].used["services"] == 1
    assert quotas["acme"].used["pods"] == 3 and quotas["acme"].used["pendingPods"] == 1
    # The real server's objects, and the creates as the runner records them, pass check 7.
    recorder = HistoryRecorder(clock_ns=TickingClock())
    for name, obj in created.items():
        op_id = recorder.invoke("w1", Kind.POD_CREATE, pods_pool("acme", "web"), claim=pod_key_of(obj), key=name)
        recorder.ok(
            op_id, {"phase": obj["status"]["phase"], "node": obj["spec"]["nodeName"], "podIP": obj["status"]["podIP"]}
        )
    result = check_scheduler_invariants(recorder.history(final=[state]))
    assert result.passed and not result.evidence, result.report()
