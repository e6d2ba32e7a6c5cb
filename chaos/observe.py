"""Watching a cluster during a chaos run, and reading its state after it.

* `StatusPoller` asks every member for /v1/status every `interval_s`, one thread per member (a
  SIGSTOPped member must not delay the others' samples), and hands each answer to a
  `HistoryRecorder`, which keeps it only if something changed. Checks 5 (one digest per applied
  index) and 6 (one leader per term) read these samples.
* `collect_final_state` waits until every member has applied the same index with a current
  digest, then lists each member's pools, claims and allocations with `consistency=stale`
  (exactly what that member holds) into `MemberState`s, with the exit codes of any of its
  processes that ended by themselves; with `inspect_stores=True` it then stops the members and
  runs `check_invariants` on each stored state.
"""

from __future__ import annotations

import dataclasses
import threading

from chaos.cluster import Cluster, Unreachable, converge_timeout_s
from chaos.history import HistoryRecorder, MemberState, member_state_from_objects

status_interval_s_default = 0.1
status_timeout_s = 0.5  # one status request


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


def collect_final_state(
    cluster: Cluster,
    *,
    timeout_s: float = converge_timeout_s,
    inspect_stores: bool = False,
) -> list[MemberState]:
    """Every member's state once they have converged (the cluster must be healed and running)."""
    cluster.wait_for_leader(timeout_s, member_ids=cluster.member_ids)
    cluster.wait_converged(timeout_s=timeout_s, member_ids=cluster.member_ids)
    states: list[MemberState] = []
    for member_id in cluster.member_ids:
        status = cluster.status(member_id, timeout_s=5.0)
        if status is None:
            raise Unreachable(f"{member_id} did not answer /v1/status after converging")
        states.append(
            member_state_from_objects(
                member_id,
                status,
                cluster.list_all(member_id, "ippools"),
                cluster.list_all(member_id, "ipclaims"),
                cluster.list_all(member_id, "ipallocations"),
                unexpected_exits=[code for member, code, _ in cluster.unexpected_exits if member == member_id],
            )
        )
    if not inspect_stores:
        return states
    for member_id in cluster.member_ids:
        cluster.terminate(member_id)
    inspected: list[MemberState] = []
    for state in states:
        stored = cluster.inspect_stored_state(state.member)
        problems = list(stored.problems)
        if (stored.applied_index, stored.digest) != (state.applied_index, state.digest):
            problems.append(
                f"stored state is at index {stored.applied_index} digest {stored.digest[:12]}, the member "
                f"reported {state.applied_index} {(state.digest or '-')[:12]}"
            )
        inspected.append(dataclasses.replace(state, invariant_problems=tuple(problems)))
    return inspected
