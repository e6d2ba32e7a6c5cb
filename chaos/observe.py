"""Watching a cluster during a chaos run, and reading its state after it.

* `StatusPoller` asks every member for /v1/status every `interval_s`, one thread per member (a
  SIGSTOPped member must not delay the others' samples), and hands each answer to a
  `HistoryRecorder`, which keeps it only if something changed. Checks 5 (one digest per applied
  index) and 6 (one leader per term) read these samples.
* `collect_final_state` waits until every member has applied the same index with a current
  digest, then lists each member's pools, claims and allocations, and the scheduler's nodes,
  pods and quotas, with `consistency=stale` (exactly what that member holds) into
  `MemberState`s, with the exit codes of any of its processes that ended by themselves; with
  `inspect_stores=True` it then stops the members and runs `check_invariants` on each stored
  state. Lists are read as the admin without a tenant, which the API answers with every
  tenant's pods and quotas (`statemachine/queries.py`, `_segments`), one page of
  `final_page_limit` at a time, at most `Cluster.list_all`'s page bound.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from chaos.cluster import Cluster, Unreachable, converge_timeout_s
from chaos.history import HistoryRecorder, MemberState, member_state_from_objects

status_interval_s_default = 0.1
status_timeout_s = 0.5  # one status request
final_page_limit = 500  # objects per page of a final-state list (the API allows up to 1000)


class StatusPoller:
    """Samples every member's /v1/status in the background until `stop()`."""

    def __init__(
        self, cluster: Cluster, recorder: HistoryRecorder, *, interval_s: float = status_interval_s_default
    ) -> None:
        self.cluster = cluster
        self.recorder = recorder
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.samples_taken = 0
        self._count_lock = threading.Lock()

    def start(self) -> StatusPoller:
        for member_id in self.cluster.member_ids:
            thread = threading.Thread(
                target=self._poll, args=(member_id,), name=f"allot-status-{member_id}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        return self

    def _poll(self, member_id: str) -> None:
        # The interval is the sampling rate, not a wait for a condition.
        while not self._stop.wait(self.interval_s):
            member = self.cluster.members[member_id]
            if not member.running or member.stopped:
                continue
            status = self.cluster.status(member_id, timeout_s=status_timeout_s)
            if status is not None:
                self.recorder.record_status(member_id, status)
                with self._count_lock:
                    self.samples_taken += 1

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(status_timeout_s + self.interval_s + 5.0)

    def __enter__(self) -> StatusPoller:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def _held(cluster: Cluster, member_id: str, plural: str) -> list[dict[str, Any]]:
    """Every object of a kind the member holds, every tenant's (stale: no read barrier, so it is
    this member's own state), page by page up to `list_all`'s page bound."""
    return cluster.list_all(member_id, plural, consistency="stale", page_limit=final_page_limit)


settle_attempts_max = 20  # reads of every member's state until one is taken at rest


def _read_member(cluster: Cluster, member_id: str) -> tuple[MemberState, bool]:
    """The member's status and objects, and whether it applied nothing while they were being
    read (otherwise its lists need not be the state its status describes)."""
    status = cluster.status(member_id, timeout_s=5.0)
    if status is None:
        raise Unreachable(f"{member_id} did not answer /v1/status after converging")
    state = member_state_from_objects(
        member_id,
        status,
        _held(cluster, member_id, "ippools"),
        _held(cluster, member_id, "ipclaims"),
        _held(cluster, member_id, "ipallocations"),
        unexpected_exits=[code for member, code, _ in cluster.unexpected_exits if member == member_id],
        nodes=_held(cluster, member_id, "nodes"),
        pods=_held(cluster, member_id, "pods"),
        quotas=_held(cluster, member_id, "quotas"),
    )
    after = cluster.status(member_id, timeout_s=5.0)
    return state, after is not None and int(after.get("appliedIndex", -1)) == state.applied_index


def collect_final_state(
    cluster: Cluster,
    *,
    timeout_s: float = converge_timeout_s,
    inspect_stores: bool = False,
) -> list[MemberState]:
    """Every member's state once they have converged (the cluster must be healed and running).

    The cluster is not necessarily quiet when the workload stops: the leader's own timers
    propose entries (a sweep of the pending queue every few seconds while pods are pending, a
    node's condition). So every member is read until all were read at rest at one applied
    index (bounded: `settle_attempts_max`; the last reading is returned otherwise, and check 5
    reports the difference). With `inspect_stores`, the members are then stopped and each stored
    state is checked: `check_invariants`, and it must be the state the member reported, or a
    later one (a timer's entry may land between the reading and the stop) that agrees with every
    other member stopped at the same index."""
    states: list[MemberState] = []
    for _ in range(settle_attempts_max):
        cluster.wait_for_leader(timeout_s, member_ids=cluster.member_ids)
        cluster.wait_converged(timeout_s=timeout_s, member_ids=cluster.member_ids)
        readings = [_read_member(cluster, member_id) for member_id in cluster.member_ids]
        states = [state for state, _ in readings]
        if all(at_rest for _, at_rest in readings) and len({state.applied_index for state in states}) == 1:
            break
    if not inspect_stores:
        return states
    for member_id in cluster.member_ids:
        cluster.terminate(member_id)
    stored_states = {state.member: cluster.inspect_stored_state(state.member) for state in states}
    digests_at: dict[int, set[str]] = {}
    for stored in stored_states.values():
        digests_at.setdefault(stored.applied_index, set()).add(stored.digest)
    inspected: list[MemberState] = []
    for state in states:
        stored = stored_states[state.member]
        problems = list(stored.problems)
        reported = f"the member reported {state.applied_index} {(state.digest or '-')[:12]}"
        where = f"stored state is at index {stored.applied_index} digest {stored.digest[:12]}"
        if stored.applied_index < state.applied_index:
            problems.append(f"{where}: behind index {state.applied_index}, which the member reported before it stopped")
        elif stored.applied_index == state.applied_index and stored.digest != state.digest:
            problems.append(f"{where}, {reported}")
        if len(digests_at[stored.applied_index]) > 1:
            problems.append(f"{where}; another member stopped at that index stored another digest")
        inspected.append(dataclasses.replace(state, invariant_problems=tuple(problems)))
    return inspected
