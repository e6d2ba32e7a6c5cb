"""How fast an idle cluster's log grows while a pod that fits nowhere waits.

    python -m bench.idle_log                  # 240 s
    python -m bench.idle_log --seconds 60

It starts its own three-member cluster (in a temporary directory, on free ports, as the test
clusters are), registers one node with one core and creates one pod that asks for 64, so the
pod stays Pending; then, with nothing else happening but a heartbeat for the node every 10 s,
it prints every 10 s how many entries the leader has applied since the pod was created. The
leader's timer sweeps of the pending queue (`scheduler.retry`) are those entries: every
`pending_retry_s` (2 s) until they back off (node/scheduling.py, `sweep_interval_s`), then up to
a minute apart. Prints numbers only.
"""

from __future__ import annotations

import argparse
import time

from bench.ipam_apply import machine_line
from chaos.cluster import Cluster

sample_every_s = 10.0
NODE = {"name": "n1", "spec": {"capacity": {"cpuMillis": 1000, "memoryBytes": 1 << 30, "pods": 10}, "podPool": "pods"}}
HUGE_POD = {"name": "huge", "spec": {"requests": {"cpuMillis": 64_000, "memoryBytes": 1 << 20}}}


def applied_index(cluster: Cluster, member_id: str) -> int:
    reply = cluster.request(member_id, "GET", "/v1/status")
    if reply.status != 200:
        raise SystemExit(f"/v1/status answered {reply.status}: {reply.body!r}")
    return int(reply.body["appliedIndex"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=240.0, help="how long to watch (default 240)")
    args = parser.parse_args(argv)
    print(f"# {machine_line()}; python -m bench.idle_log --seconds {args.seconds:g}", flush=True)
    with Cluster() as cluster:
        leader = cluster.wait_for_leader()
        for path, body, token in (
            ("/v1/ippools", {"name": "pods", "spec": {"cidr": "10.64.0.0/16"}}, None),
            ("/v1/nodes", NODE, None),
            ("/v1/pods", HUGE_POD, cluster.tenant_tokens["acme/web"]),
        ):
            reply = cluster.request(leader, "POST", path, body=body, token=token)
            if reply.status != 201:
                raise SystemExit(f"POST {path} answered {reply.status}: {reply.body!r}")
        print(f"pod huge: {reply.body['status']['phase']} ({reply.body['status']['message']})", flush=True)
        start_index, started = applied_index(cluster, leader), time.monotonic()
        print("seconds  entries applied since", flush=True)
        while (elapsed := time.monotonic() - started) < args.seconds:
            time.sleep(max(0.0, sample_every_s - elapsed % sample_every_s))
            cluster.request(leader, "POST", "/v1/nodes/n1/heartbeat")  # keeps n1 Ready: no condition entries
            print(f"{time.monotonic() - started:7.0f}  {applied_index(cluster, leader) - start_index}", flush=True)


if __name__ == "__main__":
    main()
