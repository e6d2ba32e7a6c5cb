"""A Hypothesis stateful test of the scheduler against a naive model.

The machine runs random node registrations, condition changes, cordons, drains, evictions from
NotReady nodes, label, taint and cordon patches (node.update), evictions of pods whose
tolerationSeconds for a NoExecute taint ran out (node.evict_tainted), deletions, pod creations
(with and without a plan, with selectors, tolerations, priorities and policies), pod deletions,
quota changes and sweeps; pods give a priority, name a PriorityClass, or neither (and get the
global default's). Before every pod creation, the naive
model reads the state only through the public reads (`list_objects` / `get`, as a client would)
and works out, with its own code, written from the documented rules:

* the quota verdict (refused outright, pending on quota, or room);
* the set of feasible nodes (ready, schedulable, selector, taints, resources counting other
  pods' nominations of the same or a higher priority) — it must match the scheduler's exactly;
* the node the documented score picks (spread / binpack, integer, ties on the lowest name).

The real outcome must agree: bound to that node, or pending with a reason naming how many nodes
were examined, or refused with `quota_exceeded`. A plan naming a feasible node must be honoured.
Invariants are checked after every step.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from statemachine import Ok, Rejected
from statemachine.invariants import check_invariants
from statemachine.queries import get, list_objects
from statemachine.scheduler import Cluster, plan_pod
from tests.harness import ADMIN, Machine, member

NODE_NAMES = ["a1", "a2", "b1", "b2", "c1"]
TENANTS = [member("acme", "web"), member("acme", "db"), member("globex", "api")]
POD_NAMES = [f"p{number}" for number in range(12)]
# Pods give a priority, name one of these classes, or neither (and get the global default's).
PRIORITY_CLASSES = {"low": -1, "standard": 0, "high": 2}
DEFAULT_PRIORITY_CLASS = "standard"
LABELS = [{}, {"disk": "ssd"}, {"disk": "hdd"}, {"disk": "ssd", "gpu": "yes"}]
UNREACHABLE = {"key": "node.kubernetes.io/unreachable", "value": "", "effect": "NoExecute"}
EVICTION_TIMEOUT_MS = 60_000  # the leader's timeout for pods without a matching toleration
TAINTS: list[list[dict[str, str]]] = [[], [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]]
# node.update may also taint a node NoExecute, which evicts the pods that do not tolerate it.
UPDATE_TAINTS = [*TAINTS, [{"key": "dedicated", "value": "db", "effect": "NoExecute"}]]


def _tolerates(tolerations: list[dict[str, str]], taint: dict[str, str]) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") and toleration["effect"] != taint["effect"]:
            continue
        if toleration.get("operator") == "Exists":
            if not toleration.get("key") or toleration["key"] == taint["key"]:
                return True
        elif toleration.get("key") == taint["key"] and toleration.get("value", "") == taint["value"]:
            return True
    return False


def _tolerated_ms(tolerations: list[dict[str, Any]]) -> int | None:
    """How long a pod stays on an unreachable node, by Kubernetes' rule (None: for ever): the
    first matching toleration's seconds; without seconds, for ever; none, the timeout."""
    matching = [toleration for toleration in tolerations if _tolerates([toleration], UNREACHABLE)]
    if not matching:
        return EVICTION_TIMEOUT_MS
    seconds = matching[0].get("tolerationSeconds")
    return None if seconds is None else int(seconds) * 1000


def _stay_ms(tolerations: list[dict[str, Any]], taints: list[dict[str, str]]) -> int | None:
    """How long a pod tolerating all these NoExecute taints may stay (None: for ever): per
    taint its first matching toleration's seconds, the least over the taints."""
    times = []
    for taint in taints:
        first = next(toleration for toleration in tolerations if _tolerates([toleration], taint))
        if "tolerationSeconds" in first:
            times.append(int(first["tolerationSeconds"]) * 1000)
    return min(times) if times else None


class NaiveScheduler:
    """The documented rules, over what a client can read."""

    def __init__(self, machine: Machine) -> None:
        self.store = machine.store

    def nodes(self) -> list[dict[str, Any]]:
        return list(list_objects(self.store, ADMIN, "nodes", limit=1000)["items"])

    def reserved(self, node: dict[str, Any], priority: int) -> tuple[int, int, int]:
        """What the node's nominee reserves against a new pod of this priority: everything
        for pods of its priority or lower, nothing for higher ones."""
        nominee = node["status"].get("nominatedPod")
        if nominee is None:
            return 0, 0, 0
        org, project, namespace, name = nominee.split("/")
        pod = get(self.store, member(org, project), "pods", name, namespace)
        if priority > pod["spec"]["priority"]:
            return 0, 0, 0
        requests = pod["spec"]["requests"]
        return requests["cpuMillis"], requests["memoryBytes"], 1

    def feasible(self, node: dict[str, Any], spec: dict[str, Any], cpu: int, memory: int, priority: int) -> bool:
        status, node_spec = node["status"], node["spec"]
        labels = {**node["metadata"]["labels"], "kubernetes.io/hostname": node["metadata"]["name"]}
        if not status["ready"] or node_spec["unschedulable"]:
            return False
        if any(labels.get(key) != value for key, value in spec.get("nodeSelector", {}).items()):
            return False
        if not all(_tolerates(spec.get("tolerations", []), taint) for taint in node_spec["taints"]):
            return False
        extra_cpu, extra_memory, extra_pods = self.reserved(node, priority)
        used, capacity = status["allocated"], node_spec["capacity"]
        return bool(
            used["pods"] + extra_pods + 1 <= capacity["pods"]
            and used["cpuMillis"] + extra_cpu + cpu <= capacity["cpuMillis"]
            and used["memoryBytes"] + extra_memory + memory <= capacity["memoryBytes"]
        )

    def score(self, node: dict[str, Any], cpu: int, memory: int, priority: int, policy: str) -> int:
        extra_cpu, extra_memory, extra_pods = self.reserved(node, priority)
        used, capacity = node["status"]["allocated"], node["spec"]["capacity"]
        after = [
            (used["cpuMillis"] + extra_cpu + cpu, capacity["cpuMillis"]),
            (used["memoryBytes"] + extra_memory + memory, capacity["memoryBytes"]),
            (used["pods"] + extra_pods + 1, capacity["pods"]),
        ]
        if policy == "binpack":
            return sum(taken * 1000 // total for taken, total in after)
        return sum((total - taken) * 1000 // total for taken, total in after)

    def quota(self, org: str, project: str, cpu: int) -> str:
        """ "refuse", "wait" or "room" for a pod of `cpu` millicores (one pod)."""
        verdict = "room"
        for quota_name in (f"{org}/{project}", org):
            try:
                quota = get(self.store, ADMIN, "quotas", quota_name)
            except Rejected:
                continue
            spec, used = quota["spec"], quota["status"]["used"]
            for resource, wanted in (("cpuMillis", cpu), ("pods", 1)):
                if resource in spec and wanted:
                    if wanted > spec[resource]:
                        return "refuse"
                    if used[resource] + wanted > spec[resource]:
                        verdict = "wait"
        return verdict


class SchedulerModel(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.machine = Machine()
        self.model = NaiveScheduler(self.machine)
        self.machine.ok(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.0.0.0/16"}})
        for class_name, value in PRIORITY_CLASSES.items():
            spec = {"value": value, "globalDefault": class_name == DEFAULT_PRIORITY_CLASS}
            self.machine.ok(ADMIN, "priorityclass.create", {"name": class_name, "spec": spec})
        self.created = 0
        self.bound = 0

    @rule(
        name=st.sampled_from(NODE_NAMES),
        cpu=st.sampled_from([1000, 2000, 4000]),
        pods=st.integers(1, 4),
        labels=st.sampled_from(LABELS),
        taints=st.sampled_from(TAINTS),
    )
    def register(self, name: str, cpu: int, pods: int, labels: dict[str, str], taints: list[dict[str, str]]) -> None:
        spec = {
            "capacity": {"cpuMillis": cpu, "memoryBytes": 4 << 30, "pods": pods},
            "podPool": "pods",
            "podCIDRPrefixLength": 28,
            "taints": taints,
        }
        self.machine.run(ADMIN, "node.register", {"name": name, "labels": labels, "spec": spec})

    @rule(
        name=st.sampled_from(NODE_NAMES),
        action=st.sampled_from(["cordon", "uncordon", "drain", "delete", "ready", "notready", "evict"]),
        not_ready_ms=st.sampled_from([0, 30_000, 60_000, 120_000]),  # evict: how long NotReady
    )
    def node_action(self, name: str, action: str, not_ready_ms: int) -> None:
        if action in ("ready", "notready"):
            self.machine.run(ADMIN, "node.condition", {"name": name, "ready": action == "ready"})
        elif action == "evict":
            body = {"name": name, "notReadyMillis": not_ready_ms, "timeoutMillis": EVICTION_TIMEOUT_MS}
            outcome = self.machine.run(ADMIN, "node.evict_unready", body)
            if isinstance(outcome.result, Ok):  # what stays bound tolerates the unreachable taint longer
                left = list_objects(self.machine.store, ADMIN, "pods", field_selector=f"spec.nodeName={name}")
                for pod in left["items"]:
                    tolerated = _tolerated_ms(pod["spec"]["tolerations"])
                    assert tolerated is None or tolerated > not_ready_ms, (not_ready_ms, pod)
        else:
            self.machine.run(ADMIN, f"node.{action}", {"name": name})

    @rule(
        name=st.sampled_from(NODE_NAMES),
        labels=st.one_of(
            st.none(), st.dictionaries(st.sampled_from(["disk", "gpu"]), st.sampled_from([None, "ssd", "yes"]))
        ),
        taints=st.one_of(st.none(), st.sampled_from(UPDATE_TAINTS)),
        unschedulable=st.one_of(st.none(), st.booleans()),
    )
    def update_node(
        self,
        name: str,
        labels: dict[str, str | None] | None,
        taints: list[dict[str, str]] | None,
        unschedulable: bool | None,
    ) -> None:
        """A merge patch: labels merge (None removes), taints replace, unschedulable cordons. Bound
        pods that do not tolerate a NoExecute taint leave at once; the others stay bound."""
        try:
            before = get(self.machine.store, ADMIN, "nodes", name)
        except Rejected:
            before = None
        on_node_before = list_objects(self.machine.store, ADMIN, "pods", field_selector=f"spec.nodeName={name}")
        body: dict[str, Any] = {"name": name, "metadata": {}, "spec": {}}
        if labels is not None:
            body["metadata"]["labels"] = labels
        if taints is not None:
            body["spec"]["taints"] = taints
        if unschedulable is not None:
            body["spec"]["unschedulable"] = unschedulable
        result = self.machine.run(ADMIN, "node.update", body).result
        if before is None:
            assert isinstance(result, Rejected) and result.code == "not_found", result
            return
        assert isinstance(result, Ok), result
        expected_labels = dict(before["metadata"]["labels"])
        for key, value in (labels or {}).items():
            if value is None:
                expected_labels.pop(key, None)
            else:
                expected_labels[key] = value
        after = get(self.machine.store, ADMIN, "nodes", name)
        assert after["metadata"]["labels"] == expected_labels
        assert after["spec"]["taints"] == (before["spec"]["taints"] if taints is None else taints)
        no_execute = [taint for taint in after["spec"]["taints"] if taint["effect"] == "NoExecute"]
        stayed = {
            pod["metadata"]["uid"]
            for pod in list_objects(self.machine.store, ADMIN, "pods", field_selector=f"spec.nodeName={name}")["items"]
        }
        for pod in on_node_before["items"]:
            tolerated = all(_tolerates(pod["spec"]["tolerations"], taint) for taint in no_execute)
            assert (pod["metadata"]["uid"] in stayed) == tolerated, (no_execute, pod)

    @rule(name=st.sampled_from(NODE_NAMES), wait_s=st.sampled_from([1, 20, 40]))
    def expire_tolerations(self, name: str, wait_s: int) -> None:
        """node.evict_tainted after `wait_s` seconds: only pods that tolerate the node's
        NoExecute taints for a time leave, and every time left is still to come."""
        before = list_objects(self.machine.store, ADMIN, "pods", field_selector=f"spec.nodeName={name}")["items"]
        result = self.machine.run(ADMIN, "node.evict_tainted", {"name": name}, advance_ms=wait_s * 1000).result
        if isinstance(result, Rejected):
            assert result.code == "not_found", result
            return
        assert isinstance(result, Ok), result
        upcoming = result.value["status"]["nextTaintEvictionMillis"]
        assert upcoming is None or upcoming > self.machine.ts_ms, (upcoming, self.machine.ts_ms)
        after = list_objects(self.machine.store, ADMIN, "pods", field_selector=f"spec.nodeName={name}")["items"]
        left = {(pod["metadata"]["uid"], pod["status"]["podIP"]) for pod in after}
        node = get(self.machine.store, ADMIN, "nodes", name)
        no_execute = [taint for taint in node["spec"]["taints"] if taint["effect"] == "NoExecute"]
        for pod in before:
            if (pod["metadata"]["uid"], pod["status"]["podIP"]) not in left:  # evicted: it had a time
                assert _stay_ms(pod["spec"]["tolerations"], no_execute) is not None, (no_execute, pod)

    @rule(
        who=st.sampled_from(TENANTS),
        name=st.sampled_from(POD_NAMES),
        cpu=st.sampled_from([0, 250, 500, 1000, 1500, 3000]),
        memory=st.sampled_from([0, 1 << 30, 3 << 30]),
        selector=st.sampled_from([{}, {"disk": "ssd"}, {"gpu": "yes"}]),
        tolerate=st.sampled_from([False, True, "timed"]),
        stays_if_unreachable=st.sampled_from([None, "always", 0, 30, 120]),
        catch_all=st.sampled_from([None, "first", "last"]),
        priority=st.one_of(st.integers(-2, 2), st.sampled_from([*PRIORITY_CLASSES, None])),
        policy=st.sampled_from([None, "spread", "binpack"]),
        use_plan=st.booleans(),
    )
    def create_pod(
        self,
        who: Any,
        name: str,
        cpu: int,
        memory: int,
        selector: dict[str, str],
        tolerate: bool | str,
        stays_if_unreachable: str | int | None,
        catch_all: str | None,
        priority: int | str | None,
        policy: str | None,
        use_plan: bool,
    ) -> None:
        spec: dict[str, Any] = {"requests": {"cpuMillis": cpu, "memoryBytes": memory}, "nodeSelector": selector}
        if isinstance(priority, int):
            spec["priority"] = priority
        else:  # a class's value, or the global default's when the pod names neither
            if priority is not None:
                spec["priorityClassName"] = priority
            priority = PRIORITY_CLASSES[priority or DEFAULT_PRIORITY_CLASS]
        spec["tolerations"] = [{"key": "dedicated", "operator": "Exists"}] if tolerate is True else []
        if tolerate == "timed":  # the NoSchedule taint for ever, the NoExecute one for 30 s
            spec["tolerations"] = [
                {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "dedicated", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
            ]
        if stays_if_unreachable is not None:
            stays: dict[str, Any] = {"key": UNREACHABLE["key"], "operator": "Exists", "effect": "NoExecute"}
            if stays_if_unreachable != "always":
                stays["tolerationSeconds"] = stays_if_unreachable
            spec["tolerations"].append(stays)
        # A toleration of every taint, for ever: first, it decides for every taint; last, only
        # for the taints no earlier toleration matches (Kubernetes' first-match rule).
        if catch_all == "first":
            spec["tolerations"].insert(0, {"operator": "Exists"})
        elif catch_all == "last":
            spec["tolerations"].append({"operator": "Exists"})
        if policy is not None:
            spec["schedulingPolicy"] = policy
        try:
            get(self.machine.store, who, "pods", name)
            exists = True
        except Rejected:
            exists = False
        quota = self.model.quota(who.org, who.project, cpu)
        nodes = self.model.nodes()
        feasible = [node for node in nodes if self.model.feasible(node, spec, cpu, memory, priority)]
        cluster_policy = self.machine_policy()
        chosen: str | None = None
        best = -1
        for node in feasible:  # in name order: only a strictly better score replaces
            node_score = self.model.score(node, cpu, memory, priority, policy or cluster_policy)
            if node_score > best:
                chosen, best = node["metadata"]["name"], node_score
        planned = plan_pod(self.machine.store, spec, who)
        assert planned == (chosen if quota == "room" else None), (planned, chosen, quota)
        body: dict[str, Any] = {"name": name, "spec": spec}
        plan_name = None
        if use_plan and feasible and quota == "room":
            plan_name = feasible[-1]["metadata"]["name"]  # feasible, if not the best: must be honoured
            body["plan"] = {"nodeName": plan_name}
        result = self.machine.run(who, "pod.create", body).result
        if exists:
            return
        if quota == "refuse":
            assert isinstance(result, Rejected) and result.code == "quota_exceeded", result
            return
        assert isinstance(result, Ok), result
        self.created += 1
        status = result.value["status"]
        if quota == "wait":
            assert status["phase"] == "Pending" and status["reason"] == "QuotaExceeded", status
        elif chosen is None:
            assert status["phase"] == "Pending" and status["reason"] == "Unschedulable", status
            assert status["message"].startswith(f"0/{len(nodes)} nodes available"), status
        else:
            self.bound += 1
            expected = plan_name or chosen
            assert result.value["spec"]["nodeName"] == expected, (result.value["spec"]["nodeName"], expected)

    def machine_policy(self) -> str:
        return Cluster.load(self.machine.store).policy

    @rule(who=st.sampled_from(TENANTS), name=st.sampled_from(POD_NAMES))
    def delete_pod(self, who: Any, name: str) -> None:
        self.machine.run(who, "pod.delete", {"name": name})

    @rule(
        quota_name=st.sampled_from(["acme", "acme/web", "globex/api"]),
        cpu=st.one_of(st.none(), st.sampled_from([500, 2000, 6000])),
        pods=st.one_of(st.none(), st.integers(0, 4)),
        remove=st.booleans(),
    )
    def quota(self, quota_name: str, cpu: int | None, pods: int | None, remove: bool) -> None:
        if remove:
            self.machine.run(ADMIN, "quota.delete", {"name": quota_name})
            return
        spec = {key: value for key, value in (("cpuMillis", cpu), ("pods", pods)) if value is not None}
        self.machine.run(ADMIN, "quota.set", {"name": quota_name, "spec": spec})

    @rule(policy=st.sampled_from(["spread", "binpack"]), pods=st.integers(1, 4))
    def scheduler_commands(self, policy: str, pods: int) -> None:
        self.machine.run(ADMIN, "scheduler.configure", {"policy": policy})
        self.machine.run(ADMIN, "scheduler.retry", {"pods": pods})

    @invariant()
    def sound(self) -> None:
        if hasattr(self, "machine"):
            check_invariants(self.machine.store)


SchedulerModel.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestSchedulerModel = SchedulerModel.TestCase
