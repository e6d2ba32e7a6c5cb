"""The scheduler half's commands: each validates its body, then orchestrates nodes, pods,
quotas, IPAM and the pending queue in one apply, so a placement, its quota charge and its pod
address never disagree.

| command             | who    | body                                             |
|---------------------|--------|--------------------------------------------------|
| quota.set           | admin  | name (`org` or `org/project`), labels, spec      |
| quota.delete        | admin  | name                                             |
| node.register       | admin  | name, labels, spec (see nodes.py)                |
| node.delete         | admin  | name (refused while pods are bound: drain first) |
| node.condition      | admin  | name, ready (bool), reason                       |
| node.cordon         | admin  | name                                             |
| node.uncordon       | admin  | name                                             |
| node.drain          | admin  | name                                             |
| node.update         | admin  | name, metadata {labels}, spec {taints, unschedulable} (a merge patch) |
| node.evict_unready  | admin  | name, notReadyMillis, timeoutMillis (the leader) |
| node.evict_tainted  | admin  | name (the leader, when a tolerationSeconds runs out) |
| pod.create          | tenant | name, namespace, labels, spec, plan {nodeName}   |
| pod.delete          | tenant | name, namespace                                  |
| pod.update          | tenant | name, namespace, metadata {labels} (relabel.py)  |
| service.create      | tenant | name, namespace, labels, spec (see services.py)  |
| service.delete      | tenant | name, namespace                                  |
| service.update      | tenant | name, namespace, metadata {labels} (services.py) |
| scheduler.configure | admin  | policy (spread or binpack)                       |
| scheduler.retry     | admin  | pods (how many queue entries to search again)    |
"""

from __future__ import annotations

from typing import Any, Final

from statemachine import classes, keys, nodes, pods, priorities, quotas, relabel, scheduler
from statemachine.context import ADDED, MODIFIED, Context
from statemachine.errors import (
    CONFLICT,
    NOT_FOUND,
    UNSCHEDULABLE,
    InvariantViolation,
    Rejected,
    already_exists,
    changed_since_read,
    invalid,
    tenant_object_not_found,
)
from statemachine.fields import check_map, check_name, check_node_name, opt_bool, opt_choice, opt_int, opt_str
from statemachine.scheduler import Cluster
from statemachine.view import prefix_end

SCHEDULER_KIND: Final = "SchedulerStatus"

# ---- quotas --------------------------------------------------------------------------------------


def quota_set(ctx: Context, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    quota, created, loosened = quotas.set_quota(ctx, body)
    if loosened:
        metadata = quota["metadata"]
        scheduler.retry_heads(ctx, (metadata["org"], metadata["project"]))
        quota = quotas.render(ctx.ov, quota)  # retried pods may have bound: show usage after them
    return quota, created


def quota_delete(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    quota, org, project = quotas.delete_quota(ctx, body)
    scheduler.retry_heads(ctx, (org, project))
    return quota


# ---- nodes ---------------------------------------------------------------------------------------


def _node(
    ctx: Context, body: dict[str, Any], extra_fields: tuple[str, ...] = ()
) -> tuple[str, dict[str, Any], nodes.NodeState]:
    classes.require_platform_admin(ctx.principal, "change nodes")
    check_map(body, "", ("name", *extra_fields))
    name = check_node_name(body.get("name"), "name")
    node = nodes.load(ctx.ov, name)
    if node is None:
        raise Rejected(NOT_FOUND, f"Node {name} not found", {"kind": nodes.KIND, "name": name})
    state = nodes.load_state(ctx.ov, name)
    if state is None or not nodes.same_uid(node, state):
        raise InvariantViolation(f"node {name} has no matching scheduling record")
    return name, node, state


def node_register(ctx: Context, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    classes.require_platform_admin(ctx.principal, "register a Node")
    name, labels, spec = nodes.check_body(body)
    existing = nodes.load(ctx.ov, name)
    if existing is not None:
        wanted = {**spec, "unschedulable": existing["spec"]["unschedulable"]}
        if wanted.get("podCIDRPrefixLength") is None:
            wanted["podCIDRPrefixLength"] = existing["spec"]["podCIDRPrefixLength"]
        # Stored with the built-in labels (or, by builds before 2026-12-07, without them); a
        # zone label that differs is the spec's difference, not the labels'.
        same_spec = existing["spec"] == wanted
        with_builtin = nodes.matching_labels(name, labels, existing["spec"]["zone"])
        same_labels = existing["metadata"]["labels"] in (with_builtin, labels)
        if same_spec and same_labels:
            return nodes.render(ctx.ov, existing), False
        if {**wanted, "taints": existing["spec"]["taints"]} == existing["spec"]:  # labels or taints only
            update = f"with node.update (PATCH /v1/nodes/{name})"
            remedy = f"change them {update}"
            if not same_spec:
                also = "" if same_labels else " and the labels"
                remedy = f"the spec differs only in its taints: change them{also} {update}"
        else:
            remedy = "delete it first to change its spec (drain it if pods are bound)"
        raise already_exists(f"Node {name} is already registered", same_spec, same_labels, remedy, name=name)
    nodes.check_new_zone_label(labels, spec["zone"])
    cluster = Cluster.load(ctx.ov)
    if cluster.nodes >= nodes.nodes_max:
        raise Rejected(CONFLICT, f"the cluster already has {nodes.nodes_max} nodes, the most it may have")
    node, state = nodes.new_object(ctx, name, labels, spec)
    nodes.save_state(ctx, name, state)
    ctx.write_object(keys.node_key(name), nodes.KIND, node, ADDED)
    cluster.nodes += 1
    cluster.save(ctx)
    scheduler.retry_on_nodes(ctx, [name])
    return nodes.render(ctx.ov, node), True


def node_delete(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    name, node, state = _node(ctx, body)
    if state.pods_used:
        raise Rejected(
            CONFLICT,
            f"Node {name} still has {state.pods_used} bound pod(s); drain it first (node.drain)",
            {"name": name, "pods": state.pods_used},
        )
    scheduler.release_nomination(ctx, name, state)
    rendered = nodes.render(ctx.ov, node)
    # The nomination was just released (in `state`, which is not saved: its record goes). The
    # record render read still names it, and the DELETED event every tenant may watch would
    # name another tenant's pod (code review, 2026-12-08).
    rendered["status"].pop("nominatedPod", None)
    nodes.release_pod_cidr(ctx, node, state)
    ctx.ov.delete(keys.node_state_key(name))
    ctx.delete_object(keys.node_key(name), nodes.KIND, rendered)
    cluster = Cluster.load(ctx.ov)
    cluster.nodes -= 1
    cluster.save(ctx)
    return rendered


def _rewrite(ctx: Context, name: str, node: dict[str, Any], state: nodes.NodeState) -> dict[str, Any]:
    nodes.save_state(ctx, name, state)
    ctx.write_object(keys.node_key(name), nodes.KIND, node, MODIFIED)
    return node


def node_condition(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    """The leader's verdict from its heartbeat timers: one replicated transition, never a
    heartbeat. No change, no write."""
    name, node, state = _node(ctx, body, ("ready", "reason"))
    ready = opt_bool(body, "ready", "ready")
    if ready is None:
        raise invalid("ready (true or false) is required", "ready")
    reason = opt_str(body, "reason", "reason", nodes.reason_chars_max) or ("Ready" if ready else "NotReady")
    if state.ready == ready:
        return nodes.render(ctx.ov, node)
    state.ready = ready
    if not ready:
        scheduler.release_nomination(ctx, name, state)
    node["status"]["ready"] = ready
    node["status"]["conditionReason"] = reason
    node["status"]["lastTransitionTimestamp"] = ctx.timestamp
    _rewrite(ctx, name, node, state)
    if ready:
        scheduler.retry_on_nodes(ctx, [name])
    return nodes.render(ctx.ov, node)


def _set_schedulable(ctx: Context, body: dict[str, Any], schedulable: bool) -> dict[str, Any]:
    name, node, state = _node(ctx, body)
    if state.schedulable == schedulable:
        return nodes.render(ctx.ov, node)
    state.schedulable = schedulable
    if not schedulable:
        scheduler.release_nomination(ctx, name, state)
    node["spec"]["unschedulable"] = not schedulable
    _rewrite(ctx, name, node, state)
    if schedulable:
        scheduler.retry_on_nodes(ctx, [name])
    return nodes.render(ctx.ov, node)


def node_cordon(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    return _set_schedulable(ctx, body, False)


def node_uncordon(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    return _set_schedulable(ctx, body, True)


def node_drain(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    """Cordon the node and send every pod bound to it back to the queue (Pending, reason
    Evicted, `status.evictedFrom` naming the node, keeping its place by priority and age); then
    the queue heads get a full search, so evicted pods land elsewhere when there is room."""
    name, node, state = _node(ctx, body)
    scheduler.release_nomination(ctx, name, state)
    state.schedulable = False
    node["spec"]["unschedulable"] = True
    nodes.save_state(ctx, name, state)
    evicted, _ = _evict(ctx, name, f"evicted from node {name} by a drain", None)
    ctx.write_object(keys.node_key(name), nodes.KIND, node, MODIFIED)
    # A drain frees no capacity anywhere else: its pods need the sweeps to reach them, and
    # moving the cursor back would only cut short a pass that is walking the queue now.
    scheduler.retry_heads(ctx, rewind=False)
    rendered = nodes.render(ctx.ov, node)
    rendered["status"] = {**rendered["status"], "evictedPods": evicted}
    return rendered


def node_evict_unready(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    """Kubernetes' taint-based eviction, proposed by the leader's timers (node/scheduling.py)
    for a NotReady node: Kubernetes taints a node whose kubelet stopped reporting
    `node.kubernetes.io/unreachable:NoExecute` and evicts each pod once it has tolerated the
    taint as long as it may (`pods.toleration_ms`: its own `tolerationSeconds`, for ever, or
    `timeoutMillis`, the cluster's default, when it has no matching toleration). The node has
    been NotReady for `notReadyMillis` as the leader measured it. The pods whose time is up go
    back to the queue as a drain sends them (reason Evicted, `status.evictedFrom`), so they
    land on nodes that are alive; the others stay bound. The answer says when the next may go
    (`nextEvictionMillis`, of NotReady time; None when none will). The node is not cordoned:
    heard again, it becomes Ready and takes pods as before. A node that is Ready again is
    refused (`conflict`): the leader's decision came too late, and nothing is evicted."""
    name, node, state = _node(ctx, body, ("notReadyMillis", "timeoutMillis"))
    not_ready_ms = opt_int(body, "notReadyMillis", "notReadyMillis", 0, eviction_millis_max)
    timeout_ms = opt_int(body, "timeoutMillis", "timeoutMillis", 0, eviction_millis_max)
    if not_ready_ms is None or timeout_ms is None:
        raise invalid("notReadyMillis and timeoutMillis (milliseconds) are required", "notReadyMillis")
    if state.ready:
        raise Rejected(CONFLICT, f"Node {name} is Ready: only a NotReady node's pods are evicted", {"name": name})
    message = (
        f"evicted from node {name}: NotReady for {not_ready_ms // 1000} s, longer than the pod tolerates "
        f"{nodes.UNREACHABLE_TAINT}:NoExecute"
    )
    evicted, next_ms = _evict(ctx, name, message, (not_ready_ms, timeout_ms))
    if evicted:
        scheduler.retry_heads(ctx, rewind=False)  # as after a drain: no node a pod can use gained room
    rendered = nodes.render(ctx.ov, node)
    rendered["status"] = {**rendered["status"], "evictedPods": evicted, "nextEvictionMillis": next_ms}
    return rendered


eviction_millis_max = 100 * 365 * 86_400_000  # how long a node may have been NotReady, as a command says


def _evict(
    ctx: Context,
    name: str,
    message: str,
    unready: tuple[int, int] | None,
    no_execute: list[list[str]] | None = None,
    only: list[bytes] | None = None,
) -> tuple[int, int | None]:
    """Send the pods bound to node `name` back to the queue: all of them (or those in `only`);
    or, with `unready` = (ms the node has been NotReady, the default toleration in ms), those
    that tolerate the unreachable taint no longer; or, with `no_execute` (the node's NoExecute
    taints), those that do not tolerate one of them (the message then names it). Returns how
    many went, and the least NotReady time at which one that stays would go (None: none would)."""
    if only is None:
        prefix = keys.pods_on_node_prefix(name)
        only = [keys.pod_of_node_index(index_key, name) for index_key, _ in ctx.ov.scan(prefix, prefix_end(prefix))]
    cluster = Cluster.load(ctx.ov)
    evicted = 0
    next_ms: int | None = None
    for pod_key in only:  # at most capacity.pods <= nodes.node_pods_max
        pod = pods.load(ctx.ov, pod_key)
        if pod is None:
            raise InvariantViolation(f"node {name} indexes missing pod {pod_key!r}")
        reason = message
        if unready is not None:
            tolerated_ms = pods.toleration_ms(pod["spec"], nodes.UNREACHABLE_TAINT, nodes.NO_EXECUTE, unready[1])
            if tolerated_ms is None:
                continue
            if tolerated_ms > unready[0]:
                next_ms = tolerated_ms if next_ms is None else min(next_ms, tolerated_ms)
                continue
        if no_execute is not None:
            if pods.no_execute_ms(pod["spec"], no_execute) != pods.NOT_TOLERATED:
                continue
            tolerations = pods.Needs.of(pod["spec"]).tolerations
            key, value, _ = next(row for row in no_execute if not pods.tolerated(tolerations, row[0], row[1], row[2]))
            reason = (
                f"{message} {key}{'=' + value if value else ''}:{nodes.NO_EXECUTE}, which the pod does not tolerate"
            )
        tenant = quotas.Tenant(ctx.ov, pod["metadata"]["org"], pod["metadata"]["project"])
        scheduler.unbind(ctx, pod, pod_key, tenant)
        pod["spec"]["nodeName"] = None
        pod["status"] = scheduler.pending_status()
        pod["status"].update(reason=scheduler.REASON_EVICTED, message=reason, evictedFrom=name)
        scheduler.enqueue(ctx, pod, pod_key, tenant, cluster)
        ctx.write_object(pod_key, pods.KIND, pod, MODIFIED)
        evicted += 1
    if evicted:
        cluster.save(ctx)
    return evicted, next_ms


def _time_taint_evictions(
    ctx: Context, name: str, state: nodes.NodeState, no_execute: list[list[str]] | None, due_by_ms: int | None
) -> list[bytes]:
    """The times of the pods bound to node `name` (the values of its pods-by-node index):
    with `no_execute` (the node's NoExecute taints after a change), set each: now plus the time
    it tolerates them for, unless it had a time already, which stands (Kubernetes keeps an
    eviction it has scheduled); none when it tolerates them for ever, or not at all (those are
    evicted next). Sets `state.taint_eviction_ms` to the earliest time left after `due_by_ms`
    (the caller saves `state`) and returns the pods whose time is at or before `due_by_ms`."""
    prefix = keys.pods_on_node_prefix(name)
    due: list[bytes] = []
    earliest: int | None = None
    for index_key, value in list(ctx.ov.scan(prefix, prefix_end(prefix))):  # at most capacity.pods
        pod_key = keys.pod_of_node_index(index_key, name)
        had_ms = nodes.index_due_ms(value)
        due_ms = had_ms
        if no_execute is not None:
            pod = pods.load(ctx.ov, pod_key)
            if pod is None:
                raise InvariantViolation(f"node {name} indexes missing pod {pod_key!r}")
            stay_ms = pods.no_execute_ms(pod["spec"], no_execute)
            if stay_ms is None or stay_ms == pods.NOT_TOLERATED:
                due_ms = None
            elif had_ms is None:
                due_ms = ctx.now_ms + stay_ms
            if due_ms != had_ms:
                ctx.ov.put(index_key, nodes.index_value(due_ms))
        if due_ms is not None and due_by_ms is not None and due_ms <= due_by_ms:
            due.append(pod_key)
        else:
            earliest = nodes.earlier(due_ms, earliest)
    state.taint_eviction_ms = earliest
    return due


def node_evict_tainted(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    """Kubernetes' NoExecute taint eviction for pods that tolerate the node's taints for a
    time (`tolerationSeconds`), proposed by the leader's timers (node/scheduling.py) when the
    node's earliest time comes (`NodeState.taint_eviction_ms`; each pod's time is in the
    pods-by-node index, set at bind and by node.update). The pods whose time is at or before
    this command's time go back to the queue as a drain sends them (reason Evicted,
    `status.evictedFrom`). The answer's `nextTaintEvictionMillis` is the earliest time left
    (None: none). Nothing due and the earliest time right: nothing written."""
    name, node, state = _node(ctx, body)
    recorded_ms = state.taint_eviction_ms
    evicted = 0
    if recorded_ms is not None and recorded_ms != nodes.UNTIMED:
        due = _time_taint_evictions(ctx, name, state, None, ctx.now_ms)
        if due or state.taint_eviction_ms != recorded_ms:  # (unchanged: a timed pod left since)
            nodes.save_state(ctx, name, state)  # before the unbinds, which keep it
        if due:
            message = f"evicted from node {name}: its tolerationSeconds for the node's NoExecute taints ran out"
            evicted, _ = _evict(ctx, name, message, None, None, due)
            scheduler.retry_heads(ctx, rewind=False)  # as after a drain: no node a pod can use gained room
            state = nodes.load_state(ctx.ov, name) or state  # pods may have bound here again
    rendered = nodes.render(ctx.ov, node)
    upcoming = None if state.taint_eviction_ms == nodes.UNTIMED else state.taint_eviction_ms
    rendered["status"] = {**rendered["status"], "evictedPods": evicted, "nextTaintEvictionMillis": upcoming}
    return rendered


def node_update(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    """Change a node's labels, taints or cordon: a JSON merge patch, as `kubectl label`,
    `kubectl taint` and `kubectl cordon` send (nodes.check_update). Bound pods stay where they
    are when their node selector or affinity no longer matches (Kubernetes'
    IgnoredDuringExecution) and when a NoSchedule taint comes; a NoExecute taint sends the
    pods that do not tolerate it back to the queue at once, as a drain does (reason Evicted).
    A nomination the node no longer satisfies is dropped. Labels and taints that could let a
    pending pod fit (a label added or changed, a taint removed, an uncordon) retry the queue
    on this node, as a registration does. No change, no write."""
    name, node, state = _node(ctx, body, ("metadata", "spec"))
    # A node registered before its object showed the built-in labels gains them with its
    # first label change.
    zone = node["spec"]["zone"]
    update = nodes.check_update(body, nodes.matching_labels(name, node["metadata"]["labels"], zone), zone)
    current_version = node["metadata"]["resourceVersion"]
    if update.resource_version is not None and update.resource_version != current_version:
        # Checked before anything else, an identical patch too, as Kubernetes does: the caller
        # computed its patch from a node that is no longer there (a read-modify-write race).
        raise changed_since_read(f"Node {name}", nodes.KIND, name, current_version, update.resource_version)
    labels_before = node["metadata"]["labels"]
    labels = labels_before if update.labels is None else update.labels
    taints = node["spec"]["taints"] if update.taints is None else update.taints
    unschedulable = node["spec"]["unschedulable"] if update.unschedulable is None else update.unschedulable
    if labels == labels_before and taints == node["spec"]["taints"] and unschedulable == node["spec"]["unschedulable"]:
        return nodes.render(ctx.ov, node)
    rows_before = state.taints
    no_execute_before = nodes.no_execute_rows(state)
    untimed = state.taint_eviction_ms == nodes.UNTIMED  # a record of an earlier build: time every pod now
    node_was_cordoned = not state.schedulable
    state.labels = nodes.matching_labels(name, labels, node["spec"]["zone"])
    state.taints = nodes.taint_rows(taints)
    state.schedulable = not unschedulable
    no_execute = nodes.no_execute_rows(state)
    if untimed or no_execute != no_execute_before:  # who may stay, and how long
        _time_taint_evictions(ctx, name, state, no_execute, None)
    if state.nominee is not None:
        nominee = pods.load(ctx.ov, state.nominee)
        if nominee is None:
            raise InvariantViolation(f"node {name} is nominated by missing pod {state.nominee!r}")
        if scheduler.static_fit(state, pods.Needs.of(nominee["spec"])) is not None:
            scheduler.release_nomination(ctx, name, state)
    node["metadata"]["labels"] = labels
    node["spec"]["taints"] = taints
    node["spec"]["unschedulable"] = unschedulable
    nodes.save_state(ctx, name, state)
    evicted = 0
    if no_execute and no_execute != no_execute_before:  # who must go now
        evicted, _ = _evict(ctx, name, f"evicted from node {name}: it was tainted", None, no_execute)
    ctx.write_object(
        keys.node_key(name), nodes.KIND, node, MODIFIED, labels_before if labels != labels_before else None
    )
    grew = labels != labels_before or any(row not in state.taints for row in rows_before)
    if state.schedulable and (grew or node_was_cordoned):
        scheduler.retry_on_nodes(ctx, [name])
    if evicted:  # they need a full search: this node may not take them
        scheduler.retry_heads(ctx, rewind=False)
    rendered = nodes.render(ctx.ov, node)
    if no_execute:
        rendered["status"] = {**rendered["status"], "evictedPods": evicted}
    return rendered


# ---- pods ----------------------------------------------------------------------------------------


def pod_create(ctx: Context, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    name, namespace, labels, spec, own_requests, own_priority, planned = pods.check_body(body)
    named_class = spec.get("priorityClassName")
    principal = ctx.principal
    if not principal.has_tenant:
        raise invalid(
            "a Pod belongs to a project: act for a tenant (?org=...&project=..., the CLI's --as ORG/PROJECT)",
            "principal",
        )
    key = keys.pod_key(principal.org, principal.project, namespace, name)
    tenant = quotas.Tenant(ctx.ov, principal.org, principal.project)
    existing = pods.load(ctx.ov, key)
    # The same create again asks for the defaults the pod got, not today's: a retry after the
    # project's defaultRequests changed is still the same request (as with priorities). Only
    # the requests the defaults filled in (spec.defaultedRequests, as Kubernetes' LimitRanger
    # notes on a pod) are taken from the pod: one it gave itself is another request.
    if existing is None:  # the common case, kept short: it is on every pod's apply
        filled = scheduler.fill_default_requests(spec, own_requests, tenant)
        if filled:
            spec["defaultedRequests"] = filled
    else:
        kept = [field for field in existing["spec"].get("defaultedRequests", ()) if field not in own_requests]
        for field in kept:
            spec["requests"][field] = existing["spec"]["requests"][field]
        filled = scheduler.fill_default_requests(spec, (*own_requests, *kept), tenant)
        defaulted = [field for field in quotas.REQUEST_FIELDS if field in kept or field in filled]
        if defaulted:
            spec["defaultedRequests"] = defaulted
    priorities.resolve(ctx.ov, spec, own_priority, None if existing is None else existing["spec"])
    if existing is not None:
        same_spec = {**existing["spec"], "nodeName": None} == spec
        same_labels = existing["metadata"]["labels"] == labels
        if same_spec and same_labels:
            return existing, False
        raise already_exists(
            f"Pod {namespace}/{name} already exists",
            same_spec,
            same_labels,
            "a Pod's spec cannot be changed: delete it first",
            labels_patchable=True,
            name=name,
            namespace=namespace,
        )
    # A pod that could never fit the quota, even with nothing else running, is refused outright;
    # one that would fit once other pods go waits in the queue.
    if tenant.limited:
        class_name = spec.get("priorityClassName")
        if class_name is None:
            source = "spec.priority"
        elif named_class is None:
            source = f"the global default PriorityClass {class_name}: the pod names no class or priority"
        else:
            source = f"PriorityClass {class_name}"
        impossible = (
            tenant.priority_refusal(spec["priority"], source)
            or tenant.unrequested_refusal(scheduler.unrequested(own_requests, tenant))
            or tenant.shortfall(scheduler.charge_of(spec), alone="the pod")
        )
        if impossible is not None:
            raise impossible
    pod: dict[str, Any] = {
        "kind": pods.KIND,
        "metadata": ctx.metadata(
            name, ctx.new_uid(), labels, namespace=namespace, org=principal.org, project=principal.project
        ),
        "spec": spec,
        "status": scheduler.pending_status(),
    }
    if not scheduler.place(ctx, pod, key, planned, tenant):
        cluster = Cluster.load(ctx.ov)  # only a pending pod changes the scheduler record
        org, project = principal.org, principal.project
        for scope, limit, pending, said in (
            ("cluster", scheduler.pending_pods_max, cluster.pending, "the pending queue is full"),
            ("org", scheduler.pending_pods_per_org_max, tenant.org_ledger.pending, f"org {org} is at its limit"),
            (
                "project",
                scheduler.pending_pods_per_project_max,
                tenant.project_ledger.pending,
                f"project {org}/{project} is at its limit",
            ),
        ):
            if pending >= limit:
                details: dict[str, Any] = {"scope": scope, "limit": limit, "reason": pod["status"]["reason"]}
                if scope != "cluster":  # the cluster's count is every tenant's, not this one's business
                    details["pending"] = pending
                raise Rejected(
                    UNSCHEDULABLE,
                    f"{said} of {limit} pending pods, and the pod does not fit now: {pod['status']['message']}",
                    details,
                )
        scheduler.enqueue(ctx, pod, key, tenant, cluster)
        cluster.save(ctx)
    ctx.write_object(key, pods.KIND, pod, ADDED)
    return pod, True


def pod_update(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    """Change the pod's labels (relabel.py). Nothing the scheduler reads changes: a pod's labels
    select nothing here (there is no pod affinity), so a pending pod stays where it is in the
    queue and a bound one on its node."""
    patch = relabel.check_patch(body, pods.KIND, namespaced=True, default_namespace=pods.DEFAULT_NAMESPACE)
    name = check_name(patch.name, "name")
    namespace = patch.namespace
    principal = ctx.principal
    key = keys.pod_key(principal.org, principal.project, namespace, name)
    pod = pods.load(ctx.ov, key)
    if pod is None:
        raise tenant_object_not_found(pods.KIND, namespace, name, principal.acts_for_platform, False)
    relabel.apply_patch(ctx, key, pod, patch, f"Pod {namespace}/{name}")
    return pod


def pod_delete(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    check_map(body, "", ("name", "namespace"))
    name = check_name(body.get("name"), "name")
    namespace = check_name(body.get("namespace", pods.DEFAULT_NAMESPACE), "namespace")
    principal = ctx.principal
    key = keys.pod_key(principal.org, principal.project, namespace, name)
    pod = pods.load(ctx.ov, key)
    if pod is None:
        raise tenant_object_not_found(pods.KIND, namespace, name, principal.acts_for_platform, False)
    tenant = quotas.Tenant(ctx.ov, principal.org, principal.project)
    freed: list[str] = []
    if pod["spec"]["nodeName"] is not None:
        freed.append(scheduler.unbind(ctx, pod, key, tenant))
    else:
        cluster = Cluster.load(ctx.ov)
        scheduler.dequeue(ctx, pod, tenant, cluster)
        cluster.save(ctx)
        nominated = pod["status"]["nominatedNodeName"]
        if nominated is not None:
            state = nodes.load_state(ctx.ov, nominated)
            if state is None or state.nominee != key:
                raise InvariantViolation(f"pod {namespace}/{name} nominated node {nominated}, which disagrees")
            scheduler.clear_reservation(state)
            nodes.save_state(ctx, nominated, state)
            freed.append(nominated)
    ctx.delete_object(key, pods.KIND, pod)
    if freed:
        scheduler.retry_on_nodes(ctx, freed)
    return pod


# ---- the scheduler -------------------------------------------------------------------------------


def _scheduler_status(cluster: Cluster, **extra: int) -> dict[str, Any]:
    return {
        "kind": SCHEDULER_KIND,
        "policy": cluster.policy,
        "nodes": cluster.nodes,
        "pendingPods": cluster.pending,
        **extra,
    }


def scheduler_configure(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    classes.require_platform_admin(ctx.principal, "configure the scheduler")
    check_map(body, "", ("policy",))
    policy = opt_choice(body, "policy", "policy", pods.POLICIES)
    if policy is None:
        raise invalid(f"policy is required: one of {', '.join(pods.POLICIES)}", "policy")
    cluster = Cluster.load(ctx.ov)
    if cluster.policy != policy:
        cluster.policy = policy
        cluster.save(ctx)
    return _scheduler_status(cluster)


def scheduler_retry(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    """A sweep of the pending queue: what the leader issues on a timer while pods are pending."""
    classes.require_platform_admin(ctx.principal, "retry pending pods")
    check_map(body, "", ("pods",))
    count = opt_int(body, "pods", "pods", 1, scheduler.sweep_pods_max) or scheduler.sweep_pods_max
    examined, bound = scheduler.sweep(ctx, count)
    return _scheduler_status(Cluster.load(ctx.ov), examined=examined, bound=bound)
