"""Benchmark: SIGKILL the leader under load, again and again; time to the first acknowledged write.

    python -m bench.failover                  # 20 kills
    python -m bench.failover --kills 5
    python -m bench.failover --signal term    # SIGTERM instead: a clean stop, as in a rolling restart

It starts its own three-member cluster (temporary directory, free ports on 127.0.0.1). Writer
threads claim single addresses through every member all the time (each claim retried with the
same Idempotency-Key on 503/504 or a lost connection). For each kill: wait until the cluster is
whole and a write has been acknowledged, SIGKILL the leader, and record the time from the kill
to the first claim *sent after the kill* that was acknowledged; then start the killed member
again. Prints each kill, the median and the worst, and what the writers saw. Asserts nothing.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from bench.ipam_apply import machine_line
from chaos.cluster import Cluster, Unreachable, http_request, wait_until

writer_threads = 6
request_timeout_s = 2.0
attempts_max = 50


@dataclass
class Writers:
    cluster: Cluster
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    acknowledged: list[tuple[float, float]] = field(default_factory=list)  # (sent, acknowledged)
    answers: Counter[str] = field(default_factory=Counter)
    failed: int = 0

    def run(self, slot: int) -> None:
        token = self.cluster.tenant_tokens["acme/web"]
        member_ids = self.cluster.member_ids
        number = 0
        while not self.stop.is_set():
            number += 1
            name = f"w{slot}-{number}"
            sent = time.monotonic()
            for attempt in range(attempts_max):
                if self.stop.is_set():
                    return
                member_id = member_ids[(slot + number + attempt) % len(member_ids)]
                try:
                    reply = http_request(
                        self.cluster.address(member_id),
                        "POST",
                        "/v1/ipclaims",
                        token=token,
                        body={"name": name, "spec": {"poolRef": "failover"}},
                        headers={"Idempotency-Key": f"failover-{name}"},
                        timeout_s=request_timeout_s,
                    )
                    answer = str(reply.status)
                except Unreachable:
                    answer = "unreachable"
                with self.lock:
                    self.answers[answer] += 1
                if answer in ("200", "201"):
                    with self.lock:
                        self.acknowledged.append((sent, time.monotonic()))
                    break
                if answer not in ("503", "504", "unreachable"):
                    raise SystemExit(f"claim {name} answered {answer}: {reply.body!r}")
                time.sleep(0.01)
            else:
                with self.lock:
                    self.failed += 1

    def first_acknowledged_after(self, moment: float) -> float | None:
        with self.lock:
            times = [acked for sent, acked in self.acknowledged if sent >= moment]
        return min(times) if times else None


def member_ready(cluster: Cluster, member_id: str) -> bool:
    try:
        return http_request(cluster.address(member_id), "GET", "/readyz", timeout_s=1.0).status == 200
    except Unreachable:
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline of each wait (seconds)")
    parser.add_argument(
        "--signal",
        choices=("kill", "term"),
        default="kill",
        help="kill: SIGKILL (a crash); term: SIGTERM (a clean stop: the leader hands leadership over first)",
    )
    args = parser.parse_args(argv)
    print(f"# {machine_line()}; python -m bench.failover --kills {args.kills} --signal {args.signal}", flush=True)
    signal_name = "SIGKILL" if args.signal == "kill" else "SIGTERM"
    with Cluster() as cluster:
        leader = cluster.wait_for_leader()
        reply = cluster.request(
            leader, "POST", "/v1/ippools", body={"name": "failover", "spec": {"cidr": "10.0.0.0/8"}}
        )
        if reply.status not in (200, 201):
            raise SystemExit(f"creating the pool answered {reply.status}: {reply.body!r}")
        writers = Writers(cluster)
        threads = [threading.Thread(target=writers.run, args=(slot,), daemon=True) for slot in range(writer_threads)]
        for thread in threads:
            thread.start()
        failovers: list[float] = []
        try:
            for kill in range(1, args.kills + 1):
                # Not ensure_all_running: it waits for equal digests, which never happens while
                # the writers keep the state moving. Every member ready is what a kill needs.
                for member_id in cluster.member_ids:
                    wait_until(
                        f"{member_id} ready",
                        functools.partial(member_ready, cluster, member_id),
                        args.timeout,
                        on_timeout=cluster.describe,
                    )
                leader = cluster.wait_for_leader(timeout_s=args.timeout)
                warm = time.monotonic()
                wait_until(
                    "a write before the kill",
                    functools.partial(writers.first_acknowledged_after, warm),
                    args.timeout,
                )
                killed_at = time.monotonic()
                if args.signal == "kill":
                    cluster.kill(leader)
                else:
                    cluster.terminate(leader)  # returns once it exited; the writers go on meanwhile
                first = wait_until(
                    "the first acknowledged write after the kill",
                    functools.partial(writers.first_acknowledged_after, killed_at),
                    args.timeout,
                )
                failovers.append(first - killed_at)
                print(
                    f"kill {kill:2d}: leader {leader} sent {signal_name}; "
                    f"first write acknowledged after {failovers[-1]:.3f} s",
                    flush=True,
                )
                cluster.start_member(leader)
        finally:
            writers.stop.set()
            for thread in threads:
                thread.join(timeout=request_timeout_s * 2)
        cluster.wait_converged(member_ids=cluster.member_ids)
        print(
            f"failover    {len(failovers)} kills: median {statistics.median(failovers):.3f} s, "
            f"worst {max(failovers):.3f} s, best {min(failovers):.3f} s"
        )
        print(
            f"writers     {len(writers.acknowledged)} claims acknowledged, {writers.failed} gave up; "
            f"answers seen: {dict(sorted(writers.answers.items()))}"
        )


if __name__ == "__main__":
    main()
