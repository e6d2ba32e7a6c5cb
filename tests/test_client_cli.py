"""`allot`'s operator commands as a user runs them: `python -m node.cli ...` subprocesses against a
running three-member cluster, checking output (tables, `-o json`) and the documented exit codes.
Also the README's client example, run against the same cluster, and the command line's pure
parts (dispatch, token files, the exit code table) in-process."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chaos.cluster import REPO_ROOT, Cluster, free_ports
from client import Node, Taint, cli, errors
from node.cli import main as node_cli_main
from node.tokens import new_token

README = REPO_ROOT / "README.md"
command_timeout_s = 60.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster() as running:
        yield running


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty working directory: no ./.allot/tokens.json unless a test puts one there."""
    return tmp_path_factory.mktemp("allot-cli")


def endpoints(cluster: Cluster) -> str:
    return ",".join(f"http://{cluster.address(member_id)}" for member_id in cluster.member_ids)


def allot(
    cluster: Cluster, workdir: Path, *args: str, token: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("ALLOT_") and key != "COLUMNS"}
    environment.update(
        ALLOT_ENDPOINTS=endpoints(cluster),
        ALLOT_TOKEN=token if token is not None else cluster.admin_token,
        COLUMNS="200",
        PYTHONPATH=str(REPO_ROOT),
    )
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=command_timeout_s,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def failed(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The error line on stderr of a command that exited with `code`."""
    assert result.returncode == code, f"exit {result.returncode}, wanted {code}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("allot: "), f"not one clear error line: {result.stderr!r}"
    return lines[0]


# ---- against the cluster --------------------------------------------------------------------------


def test_status(cluster: Cluster, workdir: Path) -> None:
    table = ok(allot(cluster, workdir, "status"))
    leader = cluster.wait_for_leader()
    for member_id in cluster.member_ids:
        assert re.search(rf"│ {member_id}\s+│ http://{re.escape(cluster.address(member_id))}", table), table
    assert table.count("ready") == 3 and "leader" in table and "unreachable" not in table
    reports = json.loads(ok(allot(cluster, workdir, "status", "-o", "json")))
    assert [report["status"]["memberId"] for report in reports] == cluster.member_ids
    assert all(report["reachable"] and report["ready"] for report in reports)
    assert {report["status"]["leader"] for report in reports} == {leader}
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    partial = allot(
        cluster, workdir, "status", "--timeout", "1", env={"ALLOT_ENDPOINTS": f"{endpoints(cluster)},{dead}"}
    )
    assert "unreachable" in ok(partial) and dead in partial.stdout, "a member that does not answer is marked"
    down = allot(cluster, workdir, "status", "--timeout", "1", env={"ALLOT_ENDPOINTS": dead})
    assert down.returncode == cli.EXIT_UNAVAILABLE and "is the cluster running" in down.stdout, down


def test_pool_and_claim_lifecycle(cluster: Cluster, workdir: Path) -> None:
    created = ok(allot(cluster, workdir, "pool", "create", "cli-edge", "--cidr", "10.201.0.0/29", "--label", "env=cli"))
    assert created.strip() == "ippool/cli-edge created 10.201.0.0/29"
    claim = ok(allot(cluster, workdir, "claim", "create", "cli-c1", "--pool", "cli-edge", "--as", "acme/web"))
    assert claim.strip() == "ipclaim/cli-c1 created 10.201.0.0/32"
    tenant = cluster.tenant_tokens["acme/web"]
    second = allot(
        cluster,
        workdir,
        "claim",
        "create",
        "cli-c2",
        "--pool",
        "cli-edge",
        "--prefix-length",
        "30",
        "-o",
        "json",
        token=tenant,
    )
    assert json.loads(ok(second))["status"]["allocatedCIDR"] == "10.201.0.4/30"

    table = ok(allot(cluster, workdir, "pool", "list"))
    row = next(line for line in table.splitlines() if "cli-edge" in line)
    assert "10.201.0.0/29" in row and "62.50%" in row and "5/8" in row and "/31" in row, row
    assert "UTILISATION" in table and "FREE" in table and "VISIBILITY" in table
    assert [cell.strip() for cell in row.split("│")][2:4] == ["platform", "platform"], row  # SCOPE, VISIBILITY
    listed = json.loads(ok(allot(cluster, workdir, "pool", "list", "-o", "json", "-l", "env=cli")))
    assert [item["metadata"]["name"] for item in listed["items"]] == ["cli-edge"]
    assert listed["items"][0]["status"]["capacity"] == {"allocated": 5, "available": 3, "reserved": 0, "total": 8}
    described = ok(allot(cluster, workdir, "pool", "get", "cli-edge"))
    assert re.search(r"largest free\s+/31", described) and re.search(r"free\s+3\b", described), described
    assert re.search(r"address space\s+default", described), described
    # The same block in another address space: the list tells the two apart.
    ok(allot(cluster, workdir, "pool", "create", "cli-edge-b", "--cidr", "10.201.0.0/29", "--address-space", "vrf2"))
    table = ok(allot(cluster, workdir, "pool", "list"))
    assert "10.201.0.0/29 (vrf2)" in next(line for line in table.splitlines() if "cli-edge-b" in line), table
    assert re.search(r"address space\s+vrf2", ok(allot(cluster, workdir, "pool", "get", "cli-edge-b")))
    ok(allot(cluster, workdir, "pool", "delete", "cli-edge-b"))
    claims = ok(allot(cluster, workdir, "claim", "list", token=tenant))
    assert "cli-c1" in claims and "10.201.0.4/30" in claims
    allocations = json.loads(ok(allot(cluster, workdir, "alloc", "list", "-o", "json", "--as", "acme/web")))
    assert {item["spec"]["cidr"] for item in allocations["items"]} >= {"10.201.0.0/32", "10.201.0.4/30"}
    in_pool = json.loads(ok(allot(cluster, workdir, "alloc", "list", "--pool", "cli-edge", "-o", "json", token=tenant)))
    assert {item["spec"]["cidr"] for item in in_pool["items"]} == {"10.201.0.0/32", "10.201.0.4/30"}
    claimed = json.loads(ok(allot(cluster, workdir, "claim", "list", "--pool", "cli-edge", "-o", "json", token=tenant)))
    assert sorted(item["metadata"]["name"] for item in claimed["items"]) == ["cli-c1", "cli-c2"]
    none = ok(allot(cluster, workdir, "alloc", "list", "--pool", "cli-edge", "--phase", "Released", token=tenant))
    assert "cli-c1" not in none

    more = allot(
        cluster, workdir, "claim", "create", "cli-c3", "--pool", "cli-edge", "--prefix-length", "30", token=tenant
    )
    exhausted = failed(more, cli.EXIT_NO_ROOM)
    assert "pool_exhausted" in exhausted and "/31" in exhausted, "the error says the largest free prefix"
    other_spec = allot(
        cluster, workdir, "claim", "create", "cli-c1", "--pool", "cli-edge", "--prefix-length", "31", token=tenant
    )
    assert "already_exists" in failed(other_spec, cli.EXIT_CONFLICT)
    assert ok(allot(cluster, workdir, "claim", "delete", "cli-c1", token=tenant)).startswith("ipclaim/cli-c1 deleted")
    assert "not_found" in failed(allot(cluster, workdir, "claim", "get", "cli-c1", token=tenant), cli.EXIT_NOT_FOUND)


def test_repeating_a_create_says_the_object_already_existed(cluster: Cluster, workdir: Path) -> None:
    # The server answers an identical create with the existing object (200), not a new one (201).
    pool = ("pool", "create", "cli-again", "--cidr", "10.203.0.0/30")
    assert ok(allot(cluster, workdir, *pool)).strip() == "ippool/cli-again created 10.203.0.0/30"
    assert ok(allot(cluster, workdir, *pool)).strip() == "ippool/cli-again unchanged (already exists) 10.203.0.0/30"
    claim = ("claim", "create", "cli-again", "--pool", "cli-again", "--as", "acme/web")
    assert ok(allot(cluster, workdir, *claim)).strip() == "ipclaim/cli-again created 10.203.0.0/32"
    repeated = ok(allot(cluster, workdir, *claim)).strip()
    assert repeated == "ipclaim/cli-again unchanged (already exists) 10.203.0.0/32"
    ok(allot(cluster, workdir, "claim", "delete", "cli-again", "--as", "acme/web"))
    ok(allot(cluster, workdir, "pool", "delete", "cli-again"))


def test_classes_and_watch(cluster: Cluster, workdir: Path) -> None:
    start = json.loads(ok(allot(cluster, workdir, "status", "-o", "json")))[0]["status"]["revision"]
    ok(allot(cluster, workdir, "class", "create", "cli-gold", "--family", "IPv4", "--max-prefix-length", "30"))
    assert ok(allot(cluster, workdir, "class", "delete", "cli-gold")).strip() == "ipclass/cli-gold deleted"
    watched = allot(
        cluster,
        workdir,
        "watch",
        "--kinds",
        "ipclasses",
        "--resource-version",
        str(start),
        "--count",
        "2",
        "-o",
        "json",
    )
    events = [json.loads(line) for line in ok(watched).splitlines()]
    assert [(event["type"], event["object"]["metadata"]["name"]) for event in events] == [
        ("ADDED", "cli-gold"),
        ("DELETED", "cli-gold"),
    ]
    # -l narrows a watch to objects with matching labels.
    labelled_from = json.loads(ok(allot(cluster, workdir, "status", "-o", "json")))[0]["status"]["revision"]
    ok(allot(cluster, workdir, "class", "create", "cli-tier-b", "--family", "IPv4", "--label", "tier=b"))
    ok(allot(cluster, workdir, "class", "create", "cli-tier-a", "--family", "IPv4", "--label", "tier=a"))
    since = str(labelled_from)
    watch_args = ("watch", "--kinds", "ipclasses", "-l", "tier=a", "--resource-version", since, "--count", "1")
    watched = allot(cluster, workdir, *watch_args, "-o", "json")
    assert [json.loads(line)["object"]["metadata"]["name"] for line in ok(watched).splitlines()] == ["cli-tier-a"]
    for name in ("cli-tier-a", "cli-tier-b"):
        ok(allot(cluster, workdir, "class", "delete", name))
    ok(allot(cluster, workdir, "class", "create", "cli-silver", "--family", "IPv6", "--default"))
    row = next(line for line in ok(allot(cluster, workdir, "class", "list")).splitlines() if "cli-silver" in line)
    assert "IPv6" in row and "yes" in row and "/0../128" in row, row
    # A platform pool backing only a restricted class is reserved for its org, and says so.
    restricted = ("--family", "IPv4", "--visibility", "restricted", "--allowed-org", "acme")
    ok(allot(cluster, workdir, "class", "create", "cli-acme", *restricted))
    ok(allot(cluster, workdir, "pool", "create", "cli-acme-vips", "--cidr", "10.77.0.0/24", "--class", "cli-acme"))
    row = next(line for line in ok(allot(cluster, workdir, "pool", "list")).splitlines() if "cli-acme-vips" in line)
    assert "platform (acme)" in row, row
    assert "platform (acme)" in ok(allot(cluster, workdir, "pool", "get", "cli-acme-vips"))
    ok(allot(cluster, workdir, "pool", "delete", "cli-acme-vips"))
    ok(allot(cluster, workdir, "class", "delete", "cli-acme"))


def test_exit_codes_for_refusals_and_outages(cluster: Cluster, workdir: Path) -> None:
    bad_token = allot(cluster, workdir, "pool", "list", token="not-a-real-token-" + "x" * 30)
    assert "unauthorized" in failed(bad_token, cli.EXIT_UNAUTHORIZED)
    # The members answered: a wrong token is no outage, and status says so too.
    status = allot(cluster, workdir, "status", token="not-a-real-token-" + "x" * 30)
    assert "unauthorized" in failed(status, cli.EXIT_UNAUTHORIZED)
    invalid = allot(cluster, workdir, "pool", "create", "cli-bad", "--cidr", "10.202.0.0/33")
    assert "invalid" in failed(invalid, cli.EXIT_USAGE)
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    down = failed(
        allot(cluster, workdir, "pool", "list", "--deadline", "1", env={"ALLOT_ENDPOINTS": dead}), cli.EXIT_UNAVAILABLE
    )
    assert "unavailable" in down and "(x" in down, "repeated failures are summarised, not listed"
    assert "is the cluster running" in down, down
    no_token = allot(cluster, workdir, "pool", "list", token="", env={"ALLOT_TOKEN_FILE": ""})
    assert "no token was given: pass --token" in failed(no_token, cli.EXIT_UNAUTHORIZED)
    usage = allot(cluster, workdir, "pool", "create", "x")
    assert usage.returncode == cli.EXIT_USAGE and "required" in usage.stderr


def test_node_label_and_taint(cluster: Cluster, workdir: Path) -> None:
    def node(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        return allot(cluster, workdir, "node", *args, token=token)

    def described(name: str) -> dict[str, Any]:
        answer: dict[str, Any] = json.loads(ok(node("get", name, "-o", "json")))
        return answer

    ok(allot(cluster, workdir, "pool", "create", "cli-node-pods", "--cidr", "10.206.0.0/16"))
    register = ("register", "cli-lt", "--cpu", "1", "--memory", "1Gi", "--pods", "4", "--pod-pool", "cli-node-pods")
    ok(node(*register, "--label", "disk=hdd"))
    hostname = {"kubernetes.io/hostname": "cli-lt"}  # a built-in label (statemachine/nodes.py)

    assert ok(node("label", "cli-lt", "rack=r1", "tier=")) == "node/cli-lt labeled rack=r1, tier=\n"
    refused = failed(node("label", "cli-lt", "disk=ssd", "rack=r2"), cli.EXIT_CONFLICT)
    assert refused == (
        "allot: node/cli-lt already has labels disk=hdd (not ssd), rack=r1 (not r2); pass --overwrite to change them"
    )
    assert described("cli-lt")["metadata"]["labels"] == {**hostname, "disk": "hdd", "rack": "r1", "tier": ""}, (
        "nothing was sent"
    )
    assert ok(node("label", "cli-lt", "disk=ssd", "rack-", "--overwrite")) == "node/cli-lt labeled disk=ssd, rack-\n"
    removed = node("label", "cli-lt", "tier-", "gone-")
    assert ok(removed) == "node/cli-lt unlabeled tier-\n"
    assert removed.stderr == "allot: node/cli-lt has no label gone\n", "a label that is not there: a note, as kubectl"
    assert ok(node("label", "cli-lt", "disk=ssd")) == "node/cli-lt unchanged\n", "the same value needs no --overwrite"
    assert described("cli-lt")["metadata"]["labels"] == {**hostname, "disk": "ssd"}

    added = ok(node("taint", "cli-lt", "dedicated=infra:NoSchedule", "spot:NoExecute"))
    assert added == "node/cli-lt tainted dedicated=infra:NoSchedule, spot:NoExecute (0 pods evicted)\n", added
    clash = failed(node("taint", "cli-lt", "dedicated=db:NoSchedule"), cli.EXIT_CONFLICT)
    assert clash == (
        "allot: node/cli-lt already has taint dedicated=infra:NoSchedule (not dedicated=db:NoSchedule) with the same "
        "key and effect; pass --overwrite to replace it"
    )
    assert ok(node("taint", "cli-lt", "dedicated=infra:NoSchedule")) == "node/cli-lt unchanged\n"
    replaced = ok(node("taint", "cli-lt", "dedicated=db:NoSchedule", "--overwrite", "--idempotency-key", "cli-lt-t1"))
    assert replaced == "node/cli-lt tainted dedicated=db:NoSchedule\n", replaced
    assert ok(node("taint", "cli-lt", "spot-")) == "node/cli-lt untainted spot:NoExecute-\n"
    missing = failed(node("taint", "cli-lt", "spot-"), cli.EXIT_NOT_FOUND)
    assert missing == "allot: node/cli-lt has no taint matching spot-", missing
    mixed = ok(node("taint", "cli-lt", "gpu=yes:NoSchedule", "dedicated:NoSchedule-"))
    assert mixed == "node/cli-lt modified gpu=yes:NoSchedule, dedicated=db:NoSchedule-\n", mixed
    as_json = json.loads(ok(node("taint", "cli-lt", "gpu=yes:NoSchedule-", "-o", "json")))
    assert as_json["metadata"]["name"] == "cli-lt" and as_json["spec"]["taints"] == []

    # --resource-version: only if the node is still as read (kubectl label --resource-version).
    version = described("cli-lt")["metadata"]["resourceVersion"]
    stale_label = failed(node("label", "cli-lt", "team=a", "--resource-version", str(version - 1)), cli.EXIT_CONFLICT)
    assert stale_label.startswith(
        f"allot: conflict: Node cli-lt changed since it was read: it is at resourceVersion {version}"
    )
    stale_taint = failed(node("taint", "cli-lt", "a:NoSchedule", "--resource-version", "1"), cli.EXIT_CONFLICT)
    assert (
        stale_taint == f"allot: node/cli-lt is at resourceVersion {version}, not 1: it changed since; nothing was sent"
    )
    assert described("cli-lt")["metadata"]["resourceVersion"] == version, "refused: nothing changed"
    assert ok(node("label", "cli-lt", "team=a", "--resource-version", str(version))) == "node/cli-lt labeled team=a\n"
    ok(node("label", "cli-lt", "team-"))

    bad_key = failed(node("label", "cli-lt", "bad key!=x"), cli.EXIT_USAGE)
    assert bad_key.startswith("allot: invalid: label key 'bad key!'"), bad_key
    assert "not_found" in failed(node("label", "cli-none", "a=b"), cli.EXIT_NOT_FOUND)
    member = cluster.tenant_tokens["acme/web"]
    assert "forbidden" in failed(node("taint", "cli-lt", "a:NoSchedule", token=member), cli.EXIT_UNAUTHORIZED)
    assert (
        described("cli-lt")["metadata"]["labels"] == {**hostname, "disk": "ssd"}
        and described("cli-lt")["spec"]["taints"] == []
    )
    ok(node("delete", "cli-lt"))
    ok(allot(cluster, workdir, "pool", "delete", "cli-node-pods"))


def test_label_of_claims_pools_and_classes(cluster: Cluster, workdir: Path) -> None:
    """`allot KIND label NAME KEY=VALUE|KEY-` on the IPAM kinds, as for nodes: the claim keeps its
    address, its allocation's labels follow, --overwrite and --resource-version as kubectl's."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return allot(cluster, workdir, *args)

    ok(run("pool", "create", "cli-lbl", "--cidr", "10.207.0.0/24", "--label", "site=ams"))
    created = json.loads(
        ok(run("claim", "create", "cli-lbl-1", "--pool", "cli-lbl", "-n", "team", "--as", "acme/web", "-o", "json"))
    )
    claim = ("claim", "label", "cli-lbl-1", "-n", "team", "--as", "acme/web")
    assert ok(run(*claim, "app=web", "tier=front")) == "ipclaim/cli-lbl-1 labeled app=web, tier=front\n"
    refused = failed(run(*claim, "app=api"), cli.EXIT_CONFLICT)
    assert refused == "allot: ipclaim/cli-lbl-1 already has label app=web (not api); pass --overwrite to change it"
    assert ok(run(*claim, "app=api", "tier-", "--overwrite")) == "ipclaim/cli-lbl-1 labeled app=api, tier-\n"
    got = json.loads(ok(run("claim", "get", "cli-lbl-1", "-n", "team", "--as", "acme/web", "-o", "json")))
    assert got["metadata"]["labels"] == {"app": "api"}
    assert got["status"]["allocatedCIDR"] == created["status"]["allocatedCIDR"], "the address stays"
    allocations = json.loads(ok(run("alloc", "list", "-n", "team", "--as", "acme/web", "-o", "json", "-l", "app=api")))
    assert [item["metadata"]["name"] for item in allocations["items"]] == ["cli-lbl-1"]
    version = got["metadata"]["resourceVersion"]
    stale = failed(run(*claim, "app=old", "--overwrite", "--resource-version", str(version - 1)), cli.EXIT_CONFLICT)
    assert stale.startswith(
        f"allot: conflict: IPClaim team/cli-lbl-1 changed since it was read: it is at resourceVersion {version}"
    )
    assert ok(run("pool", "label", "cli-lbl", "site-")) == "ippool/cli-lbl unlabeled site-\n"
    denied = failed(run("pool", "label", "cli-lbl", "x=y", "--as", "acme/web"), cli.EXIT_UNAUTHORIZED)
    assert "only an admin acting for the platform" in denied
    ok(run("priorityclass", "create", "cli-lbl-pc", "--value", "5"))
    platform = run("priorityclass", "label", "cli-lbl-pc", "team=sre", "--as", "acme/web")
    assert ok(platform) == "priorityclass/cli-lbl-pc labeled team=sre\n"
    assert "--as acme/web is ignored: priorityclass writes are the platform's" in platform.stderr, platform.stderr
    missing = failed(run("claim", "label", "cli-lbl-1", "a=b", "--as", "acme/web"), cli.EXIT_NOT_FOUND)
    assert "IPClaim cli-lbl-1 not found" in missing, "the default namespace holds no such claim"


def test_dry_run_writes_say_what_they_would_do_and_change_nothing(cluster: Cluster, workdir: Path) -> None:
    def run(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        return allot(cluster, workdir, *args, token=token)

    ok(run("pool", "create", "cli-dry", "--cidr", "10.208.0.0/31"))
    claim = ("claim", "create", "cli-dry-1", "--pool", "cli-dry", "--as", "acme/web")
    assert ok(run(*claim, "--dry-run")) == "ipclaim/cli-dry-1 created 10.208.0.0/32 (server dry run)\n"
    assert "not_found" in failed(run("claim", "get", "cli-dry-1", "--as", "acme/web"), cli.EXIT_NOT_FOUND)
    assert ok(run(*claim, "--dry-run=server")) == "ipclaim/cli-dry-1 created 10.208.0.0/32 (server dry run)\n"
    assert ok(run(*claim)) == "ipclaim/cli-dry-1 created 10.208.0.0/32\n"
    big = ("claim", "create", "cli-dry-2", "--pool", "cli-dry", "--prefix-length", "31", "--as", "acme/web")
    exhausted = failed(run(*big, "--dry-run"), cli.EXIT_NO_ROOM)
    assert exhausted.startswith("allot: pool_exhausted") and exhausted.endswith("(server dry run)"), exhausted
    assert ok(run("claim", "delete", "cli-dry-1", "--as", "acme/web", "--dry-run")).endswith(" (server dry run)\n")
    assert "10.208.0.0/32" in ok(run("claim", "get", "cli-dry-1", "--as", "acme/web"))

    # A label clash on an object the caller may not write: forbidden, not "pass --overwrite"
    # (which would only lead to forbidden).
    ok(run("priorityclass", "create", "cli-dry-pc", "--value", "7", "--label", "team=sre"))
    tenant = cluster.tenant_tokens["acme/web"]
    denied = failed(run("priorityclass", "label", "cli-dry-pc", "team=web", token=tenant), cli.EXIT_UNAUTHORIZED)
    assert "forbidden" in denied and "--overwrite" not in denied, denied
    clash = failed(run("priorityclass", "label", "cli-dry-pc", "team=web"), cli.EXIT_CONFLICT)
    assert "pass --overwrite" in clash, "the admin, who may write it, is told how"
    assert ok(run("priorityclass", "label", "cli-dry-pc", "team=web", "--overwrite", "--dry-run")) == (
        "priorityclass/cli-dry-pc labeled team=web (server dry run)\n"
    )
    assert '"team": "sre"' in ok(run("priorityclass", "get", "cli-dry-pc", "-o", "json"))
    ok(run("priorityclass", "delete", "cli-dry-pc"))
    ok(run("claim", "delete", "cli-dry-1", "--as", "acme/web"))
    ok(run("pool", "delete", "cli-dry"))


def test_token_from_files(cluster: Cluster, workdir: Path, tmp_path: Path) -> None:
    no_env = {"ALLOT_TOKEN": ""}
    as_tenant = allot(
        cluster,
        workdir,
        "claim",
        "list",
        "--token-file",
        str(cluster.token_file),
        "--token-name",
        "acme-web",
        env=no_env,
    )
    assert "cli-c2" in ok(as_tenant)
    local = tmp_path / "cwd"
    (local / ".allot").mkdir(parents=True)
    (local / ".allot" / "tokens.json").write_text(cluster.token_file.read_text())
    assert "cli-edge" in ok(allot(cluster, local, "pool", "list", env=no_env)), "allot up's token file is the default"


def test_readme_client_example_runs(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    text = README.read_text()
    section = text.split("## Client library and command line", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```py\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "the README's client section has one Python example"
    block = blocks[0]
    promised = [line.strip().removeprefix("# ") for line in block.splitlines() if line.strip().startswith("# ")]
    monkeypatch.setenv("ALLOT_ENDPOINTS", endpoints(cluster))
    monkeypatch.setenv("ALLOT_TOKEN", cluster.admin_token)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(block, str(README), "exec"), {})
    assert output.getvalue().splitlines() == promised


# ---- in-process: dispatch, token files, exit codes ------------------------------------------------


def test_allot_hands_only_operator_commands_to_the_client() -> None:
    assert cli.handles(["status"]) and cli.handles(["pool", "list"])
    assert cli.handles(["--endpoints", "h:1", "-o", "json", "claim", "get", "x"])
    assert cli.handles(["--token", "pool", "watch"]), "a global option's value is not the command"
    assert not cli.handles(["up"]) and not cli.handles(["serve", "--member-id", "m1"]) and not cli.handles([])
    assert not cli.handles(["--version"]) and not cli.handles(["bench", "apply"])
    for command in ("node", "pod", "service", "quota", "scheduler"):
        assert cli.handles(["--as", "acme/web", command, "list"]), command


def test_scheduling_option_formats() -> None:
    assert [cli.parse_cpu(text) for text in ("250m", "2", "0.5", "1.25", " 3000m ")] == [250, 2000, 500, 1250, 3000]
    assert [cli.parse_memory(text) for text in ("512Mi", "8Gi", "1G", "1.5Ki", "1000")] == [
        512 << 20,
        8 << 30,
        10**9,
        1536,
        1000,
    ]
    for parse, bad in (
        (cli.parse_cpu, "0.0005"),
        (cli.parse_cpu, "-1"),
        (cli.parse_cpu, "lots"),
        (cli.parse_memory, "1.5"),
    ):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)
    assert (cli.format_cpu(2000), cli.format_cpu(250), cli.format_memory(8 << 30), cli.format_memory(1000)) == (
        "2",
        "250m",
        "8Gi",
        "1000",
    )
    assert cli.parse_taint("gpu=true:NoSchedule") == {"key": "gpu", "value": "true", "effect": "NoSchedule"}
    assert cli.parse_taint("spot:NoExecute") == {"key": "spot", "value": "", "effect": "NoExecute"}
    assert cli.parse_toleration("gpu=true:NoSchedule") == {
        "key": "gpu",
        "operator": "Equal",
        "value": "true",
        "effect": "NoSchedule",
    }
    assert cli.parse_toleration("spot") == {"key": "spot", "operator": "Exists"}
    assert cli.parse_toleration(":NoExecute") == {"key": "", "operator": "Exists", "effect": "NoExecute"}
    assert cli.parse_toleration("node.kubernetes.io/unreachable:NoExecute@30") == {
        "key": "node.kubernetes.io/unreachable",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": 30,
    }
    with pytest.raises(argparse.ArgumentTypeError, match="must be a whole number"):
        cli.parse_toleration("spot:NoExecute@1.5")
    assert cli.parse_port("http=80/TCP") == {"name": "http", "port": 80, "protocol": "TCP"}
    assert cli.parse_port("53/UDP") == {"port": 53, "protocol": "UDP"}
    for parse_item, bad in ((cli.parse_taint, "gpu"), (cli.parse_port, "http"), (cli.parse_port, "=80")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_item(bad)
    parser = cli.build_parser()
    args = parser.parse_args(
        ["pod", "create", "p", "--cpu", "100m", "--node-selector", "zone=a", "--toleration", "spot", "--priority", "3"]
    )
    assert cli.pod_spec(args) == {
        "requests": {"cpuMillis": 100},
        "nodeSelector": {"zone": "a"},
        "tolerations": [{"key": "spot", "operator": "Exists"}],
        "priority": 3,
    }
    listing = parser.parse_args(["pod", "list", "--node", "n1", "--phase", "Pending", "--field-selector", "x=y"])
    assert cli._field_selector(listing) == "spec.nodeName=n1,status.phase=Pending,x=y"
    quota = parser.parse_args(["quota", "set", "acme/web", "--memory", "1Gi", "--addresses-by-class", "gold=2"])
    assert cli.quota_spec(quota) == {"memoryBytes": 1 << 30, "addressesByClass": {"gold": 2}}


def test_node_label_and_taint_arguments() -> None:
    assert [cli.parse_label_change(text) for text in ("disk=ssd", "tier=", "a=b=c", "old-")] == [
        ("disk", "ssd"),
        ("tier", ""),
        ("a", "b=c"),
        ("old", None),
    ]
    assert cli.label_patch(["disk=ssd", "old-", "disk=ssd"]) == {"disk": "ssd", "old": None}
    assert cli.parse_taint_change("gpu=true:NoSchedule") == Taint("gpu", "true", "NoSchedule")
    assert cli.parse_taint_change("spot:NoExecute") == Taint("spot", "", "NoExecute")
    assert cli.parse_taint_change("spot-") == cli.TaintRemoval("spot")
    assert cli.parse_taint_change("spot:NoExecute-") == cli.TaintRemoval("spot", None, "NoExecute")
    assert cli.parse_taint_change("gpu=true:NoSchedule-") == cli.TaintRemoval("gpu", "true", "NoSchedule")

    infra, spot = Taint("dedicated", "infra", "NoSchedule"), Taint("spot", "", "NoExecute")
    db, gpu = Taint("dedicated", "db", "NoSchedule"), Taint("gpu", "", "NoSchedule")

    def after(current: list[Taint], *texts: str, overwrite: bool = False) -> list[Taint]:
        return cli.taints_after("n", current, cli.taint_changes(texts), overwrite=overwrite)

    assert after([infra, spot], "dedicated=db:NoSchedule", overwrite=True) == [db, spot], "replaced in place"
    assert after([infra, spot], "dedicated=infra:NoSchedule") == [infra, spot], "the same taint: no change"
    assert after([infra, spot], "dedicated=x:NoExecute") == [infra, spot, Taint("dedicated", "x", "NoExecute")]
    evict = Taint("dedicated", "x", "NoExecute")
    assert after([infra, spot, evict], "dedicated-") == [spot], "KEY- removes the key's taints of both effects"
    assert after([infra, evict], "dedicated:NoSchedule-") == [evict], "KEY:EFFECT- removes that effect only"
    assert after([infra, spot], "spot-", "gpu:NoSchedule") == [infra, gpu]
    with pytest.raises(cli.Refused) as clash:
        after([infra], "dedicated=db:NoSchedule")
    assert clash.value.code == cli.EXIT_CONFLICT
    with pytest.raises(cli.Refused) as missing:
        after([infra], "dedicated=db:NoSchedule-")
    assert missing.value.code == cli.EXIT_NOT_FOUND and "has no taint matching dedicated=db:NoSchedule-" in str(
        missing.value
    )

    def run(*argv: str) -> tuple[int, str]:
        stderr = io.StringIO()
        # Nothing listens on port 1: bad input is refused before anything is sent.
        code = cli.main([*argv, "--endpoints", "http://127.0.0.1:1", "--token", "t"], io.StringIO(), stderr)
        return code, stderr.getvalue()

    for argv, message in (
        (("label", "n1", "=ssd"), "a label change is KEY=VALUE (set) or KEY- (remove), not '=ssd'"),
        (("label", "n1", "disk"), "a label change is KEY=VALUE (set) or KEY- (remove), not 'disk'"),
        (("label", "n1", "disk=ssd", "disk-"), "label disk is changed twice (disk=ssd and disk-); give it once"),
        (("taint", "n1", "gpu"), "a taint is KEY[=VALUE]:EFFECT (NoSchedule or NoExecute), not 'gpu'; KEY-, "),
        (("taint", "n1", "gpu:PreferNoSchedule"), "taint 'gpu:PreferNoSchedule': the effect is NoSchedule or "),
        (("taint", "n1", "gpu:Later-"), "taint 'gpu:Later-': the effect is NoSchedule or NoExecute, not 'Later'"),
        (("taint", "n1", ":NoSchedule-"), "a taint to remove is KEY-, KEY:EFFECT- or KEY=VALUE:EFFECT-, not"),
        (("taint", "n1", "a=1:NoSchedule", "a=2:NoSchedule"), "taint a:NoSchedule is given twice"),
        (("taint", "n1", "a=1:NoSchedule", "a-"), "taint a=1:NoSchedule is both added and removed (a-)"),
    ):
        code, error = run("node", *argv)
        assert code == cli.EXIT_USAGE and error.startswith(f"allot: {message}"), (argv, code, error)
        assert error.count("\n") == 1, error
    with pytest.raises(SystemExit) as nothing:
        cli.main(["node", "label", "n1"], io.StringIO(), io.StringIO())  # argparse: a change is required
    assert nothing.value.code == cli.EXIT_USAGE


class RacingNodes:
    """A node resource whose node another writer changes between each of our reads and writes,
    `races` times: the server's answer to a conditional update from a stale read."""

    def __init__(self, races: int, takes_preconditions: bool = True) -> None:
        self.takes_preconditions = takes_preconditions  # False: a server of an earlier build
        self.version = 10
        self.taints = [{"key": "other", "value": "", "effect": "NoSchedule"}]
        self.races = races
        self.writes: list[tuple[list[Taint], int | None, str | None]] = []

    def get(self, name: str) -> Node:
        node = {"metadata": {"name": name, "resourceVersion": self.version}, "spec": {"taints": self.taints}}
        return Node.parse({**node, "status": {}})

    def update(
        self, name: str, *, taints: list[Taint], idempotency_key: str | None, resource_version: int | None = None
    ) -> Node:
        self.writes.append((taints, resource_version, idempotency_key))
        if resource_version is not None and not self.takes_preconditions:
            raise errors.Invalid(
                "metadata has unknown field 'resourceVersion'; allowed: labels",
                details={"field": "metadata.resourceVersion"},
            )
        if self.races:  # the other writer: a taint of its own, and the node at a new version
            self.races -= 1
            self.taints = [*self.taints, {"key": f"race{self.races}", "value": "", "effect": "NoSchedule"}]
            self.version += 1
        if resource_version is not None and resource_version != self.version:
            raise errors.Conflict(f"Node {name} changed since it was read", details={"resourceVersion": self.version})
        self.taints = [{"key": taint.key, "value": taint.value, "effect": taint.effect} for taint in taints]
        self.version += 1
        return self.get(name)


class KeyReusedNodes(RacingNodes):
    """The server's answer to an idempotency key used before for another request."""

    def update(
        self, name: str, *, taints: list[Taint], idempotency_key: str | None, resource_version: int | None = None
    ) -> Node:
        self.writes.append((taints, resource_version, idempotency_key))
        raise errors.Conflict("request id k was already used for a different request", details={"requestId": "k"})


def test_node_taint_reads_again_after_a_conflict_and_keeps_the_other_writers_taints() -> None:
    def taint(nodes: RacingNodes, *argv: str) -> str:
        args = cli.build_parser().parse_args(["node", "taint", "n1", *argv])
        stdout = io.StringIO()
        assert cli.run_node_update(nodes, nodes, args, cli.Output("text", stdout)) == cli.EXIT_OK  # type: ignore[arg-type]
        return stdout.getvalue()

    nodes = RacingNodes(races=2)
    assert taint(nodes, "mine:NoExecute", "--idempotency-key", "k") == "node/n1 tainted mine:NoExecute\n"
    assert [key for _, _, key in nodes.writes] == ["k", "k.2", "k.3"], "each new attempt is a new write: a new key"
    assert [version for _, version, _ in nodes.writes] == [10, 11, 12], "each conditional on the version read"
    assert [taint.key for taint in nodes.writes[-1][0]] == ["other", "race1", "race0", "mine"], "no taint was lost"

    always_racing = RacingNodes(races=cli.taint_attempts_max)
    with pytest.raises(cli.Refused, match=f"changed {cli.taint_attempts_max} times between") as gave_up:
        taint(always_racing, "mine:NoExecute")
    assert gave_up.value.code == cli.EXIT_CONFLICT
    assert len(always_racing.writes) == cli.taint_attempts_max, "bounded"
    reused_key = KeyReusedNodes(races=0)
    with pytest.raises(errors.Conflict, match="already used"):
        taint(reused_key, "mine:NoExecute", "--idempotency-key", "k")
    assert len(reused_key.writes) == 1, "another conflict than a race is not retried"
    pinned = RacingNodes(races=1)
    with pytest.raises(errors.Conflict):
        taint(pinned, "mine:NoExecute", "--resource-version", "10")
    assert len(pinned.writes) == 1, "with --resource-version that version only: no second attempt"

    earlier_build = RacingNodes(races=0, takes_preconditions=False)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert taint(earlier_build, "mine:NoExecute", "--idempotency-key", "k") == "node/n1 tainted mine:NoExecute\n"
    assert [(version, key) for _, version, key in earlier_build.writes] == [(10, "k"), (None, "k.unconditional")]
    assert "takes no resourceVersion (an earlier build)" in stderr.getvalue(), stderr.getvalue()
    with pytest.raises(errors.Invalid):
        taint(RacingNodes(races=0, takes_preconditions=False), "mine:NoExecute", "--resource-version", "10")


def test_memory_with_an_unknown_unit_names_the_accepted_units() -> None:
    for text, unit in (("10Pi", "Pi"), ("4KB", "KB"), ("2 Ei", "Ei")):
        with pytest.raises(argparse.ArgumentTypeError) as refused:
            cli.parse_memory(text)
        message = str(refused.value)
        assert f"the unit {unit!r} is not supported" in message and "Ki Mi Gi Ti" in message, message
        assert "k M G T" in message and "not a number" not in message, message
    with pytest.raises(argparse.ArgumentTypeError, match="is not a number"):
        cli.parse_memory("lots")
    assert cli.parse_memory("1e3") == 1000, "an exponent is a number, not a unit"


def test_spec_json_conflicting_with_an_option_is_a_usage_error() -> None:
    def run(*argv: str) -> tuple[int, str]:
        stderr = io.StringIO()
        # Nothing listens on port 1: the command must fail before it sends anything.
        code = cli.main([*argv, "--endpoints", "http://127.0.0.1:1", "--token", "t"], io.StringIO(), stderr)
        return code, stderr.getvalue()

    code, error = run("pool", "create", "spx", "--cidr", "10.170.0.0/24", "--spec", '{"cidr": "10.171.0.0/24"}')
    assert code == cli.EXIT_USAGE, error
    assert (
        error
        == 'allot: spec.cidr is given twice: "10.170.0.0/24" by an option and "10.171.0.0/24" by --spec; give it once\n'
    )
    for argv, field in (
        (("claim", "create", "c", "--pool", "a", "--spec", '{"poolRef": "b"}'), "spec.poolRef"),
        (("class", "create", "g", "--family", "IPv4", "--spec", '{"ipFamily": "IPv6"}'), "spec.ipFamily"),
        (
            ("node", "register", "n", "--cpu", "4", "--spec", '{"capacity": {"cpuMillis": 1}}'),
            "spec.capacity.cpuMillis",
        ),
        (("pod", "create", "p", "--cpu", "1", "--spec", '{"requests": {"cpuMillis": 2}}'), "spec.requests.cpuMillis"),
        (("service", "create", "s", "--pool", "a", "--spec", '{"poolRef": "b"}'), "spec.poolRef"),
        (("quota", "set", "acme", "--pods", "3", "--spec", '{"pods": 4}'), "spec.pods"),
    ):
        code, error = run(*argv)
        assert code == cli.EXIT_USAGE and f"allot: {field} is given twice" in error, (argv, code, error)

    parser = cli.build_parser()
    same = parser.parse_args(["pool", "create", "p", "--cidr", "10.0.0.0/24", "--spec", '{"cidr": "10.0.0.0/24"}'])
    assert cli.pool_spec(same) == {"cidr": "10.0.0.0/24"}, "the same value twice is no conflict"
    nested = parser.parse_args(["pod", "create", "p", "--cpu", "1", "--spec", '{"requests": {"memoryBytes": 64}}'])
    assert cli.pod_spec(nested) == {"requests": {"cpuMillis": 1000, "memoryBytes": 64}}, "both halves are kept"


def test_timeout_and_deadline_mistakes_name_the_flags() -> None:
    def run(*argv: str) -> tuple[int, str]:
        stderr = io.StringIO()
        # Nothing listens on port 1: a usage error is found before anything is sent.
        code = cli.main(
            [*argv, "--endpoints", "http://127.0.0.1:1", "--token", "t", "-o", "json"], io.StringIO(), stderr
        )
        return code, stderr.getvalue()

    for argv, message in (
        (("--timeout", "-1", "status"), "--timeout must be more than 0 seconds, not -1"),
        (("status", "--timeout", "0"), "--timeout must be more than 0 seconds, not 0"),
        (("pool", "list", "--deadline", "-0.5"), "--deadline must be more than 0 seconds, not -0.5"),
        (("--deadline", "0", "status"), "--deadline must be more than 0 seconds, not 0"),
        (("status", "--timeout", "inf"), "--timeout must be a finite number of seconds, not inf"),
        (("status", "--deadline", "nan"), "--deadline must be a finite number of seconds, not nan"),
        (("status", "--timeout", "1e10"), "--timeout must be at most 86400 seconds (a day), not 1e+10"),
    ):
        assert run(*argv) == (cli.EXIT_USAGE, f"allot: {message}\n"), argv
    code, error = run("status", "--timeout", "0.5", "--deadline", "1")  # accepted: the command runs
    assert code == cli.EXIT_UNAVAILABLE, error


def test_every_error_class_has_an_exit_code() -> None:
    expected: dict[str, int] = {
        "not_found": cli.EXIT_NOT_FOUND,
        "already_exists": cli.EXIT_CONFLICT,
        "conflict": cli.EXIT_CONFLICT,
        "pool_exhausted": cli.EXIT_NO_ROOM,
        "quota_exceeded": cli.EXIT_NO_ROOM,
        "unschedulable": cli.EXIT_NO_ROOM,
        "no_leader": cli.EXIT_UNAVAILABLE,
        "overloaded": cli.EXIT_UNAVAILABLE,
        "unavailable": cli.EXIT_UNAVAILABLE,
        "not_ready": cli.EXIT_UNAVAILABLE,
        "timeout": cli.EXIT_UNAVAILABLE,
        "outcome_unknown": cli.EXIT_OUTCOME_UNKNOWN,
        "unauthorized": cli.EXIT_UNAUTHORIZED,
        "forbidden": cli.EXIT_UNAUTHORIZED,
        "invalid": cli.EXIT_USAGE,
    }
    for code, cls in errors.ERROR_CLASSES.items():
        assert cli.exit_code_for(cls("m")) == expected.get(code, cli.EXIT_ERROR), code
    assert cli.exit_code_for(errors.ProtocolError("m")) == cli.EXIT_ERROR


def test_token_file_formats(tmp_path: Path) -> None:
    document: dict[str, Any] = {
        "tokens": [
            {"token": "member-token", "name": "acme-web", "role": "member", "org": "acme", "project": "web"},
            {"token": "admin-token", "name": "admin", "role": "admin"},
        ]
    }
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(document))
    assert cli._read_token_file(path, None) == "admin-token"
    assert cli._read_token_file(path, "acme-web") == "member-token"
    with pytest.raises(cli.UsageError, match="has no entry named 'acme/web'; its entries are named acme-web, admin"):
        cli._read_token_file(path, "acme/web")
    plain = tmp_path / "plain"
    plain.write_text("\n  plain-token  \nignored\n")
    assert cli._read_token_file(plain, None) == "plain-token"
    plain.write_text("")
    with pytest.raises(cli.UsageError, match="empty"):
        cli._read_token_file(plain, None)


def test_generated_tokens_pass_as_a_command_line_value() -> None:
    # A bare urlsafe token starts with "-" one time in 64, and `--token -Xy...` then fails to
    # parse; CI once failed on exactly that with a token from `allot up`.
    for _ in range(500):
        token = new_token()
        assert cli.build_parser().parse_args(["--token", token, "status"]).token == token


def test_token_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file_token = tmp_path / "token"
    file_token.write_text("from-file")
    monkeypatch.chdir(tmp_path)  # no ./.allot here
    parser = cli.build_parser()

    def resolved(*argv: str, environ: dict[str, str] | None = None) -> str | None:
        return cli.resolve_token(parser.parse_args([*argv, "status"]), environ or {})

    assert resolved("--token", "flag", "--token-file", str(file_token), environ={"ALLOT_TOKEN": "env"}) == "flag"
    assert resolved("--token-file", str(file_token), environ={"ALLOT_TOKEN": "env"}) == "from-file"
    assert resolved(environ={"ALLOT_TOKEN": "env", "ALLOT_TOKEN_FILE": str(file_token)}) == "env"
    assert resolved(environ={"ALLOT_TOKEN_FILE": str(file_token)}) == "from-file"
    assert resolved() is None
    (tmp_path / ".allot").mkdir()
    (tmp_path / ".allot" / "tokens.json").write_text(
        json.dumps({"tokens": [{"token": "local-admin", "role": "admin"}]})
    )
    assert resolved() == "local-admin"
    with pytest.raises(cli.UsageError, match="cannot read"):
        resolved("--token-file", str(tmp_path / "absent"))


def test_help_lists_the_operator_commands() -> None:
    output = io.StringIO()
    with contextlib.redirect_stdout(output), pytest.raises(SystemExit) as exited:
        node_cli_main(["--help"])
    assert exited.value.code == 0 and "allot pool create|list|get|delete" in output.getvalue()
    assert (
        "allot pod create|list|get|delete" in output.getvalue() and "allot scheduler get|set|retry" in output.getvalue()
    )
    assert "allot node register|list|get|delete|cordon|uncordon|drain|label|taint|heartbeat" in output.getvalue()
