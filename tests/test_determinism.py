"""Determinism and exactly-once.

* The same log gives the same state digest and the same outcomes: twice in one process, and in
  fresh interpreters with different PYTHONHASHSEED values (a set or a str-keyed hash leaking
  into an order would show up there).
* Request-id dedup: a retry with the same id and command returns the first result and writes
  nothing; a different command under the id is `conflict`; records expire after
  `dedup_ttl_ms` of envelope time; the table stays within `dedup_records_max`.

This module doubles as the subprocess helper:

    python -m tests.test_determinism LOGFILE SEED STEPS

replays the envelopes in LOGFILE (a CBOR list of envelope bytes), regenerates the scenario for
SEED and STEPS, and prints a JSON summary of both.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from node.memstore import MemoryStore
from statemachine import Ok, Outcome, Principal, Rejected, apply, codec, keys, machine
from statemachine.context import Meta
from statemachine.invariants import check_invariants, digest
from tests.harness import ADMIN, Machine, admin_for, member, run_python

SCENARIO_SEED = 20260101
SCENARIO_STEPS = 450

TENANTS = [("acme", "web"), ("acme", "db"), ("globex", "api")]
CLAIM_NAMES = [f"c{number}" for number in range(40)]
POOL_REFS = ["core", "edge", "six", "lab", "team", "acme/web/team", "g6", "globex/api/g6", "missing"]
CLASS_NAMES = ["std", "v6", "keep", "gold", None]


# ---- a busy, varied command log --------------------------------------------------------------


def _setup(machine_: Machine) -> None:
    """Classes, root pools in two address spaces and both families, and tenant child pools."""
    machine_.ok(
        ADMIN,
        "class.create",
        {"name": "std", "spec": {"ipFamily": "IPv4", "isDefault": True, "allocation": {"minPrefixLength": 20}}},
    )
    machine_.ok(
        ADMIN,
        "class.create",
        {"name": "v6", "spec": {"ipFamily": "IPv6", "allocation": {"minPrefixLength": 48, "defaultPrefixLength": 64}}},
    )
    machine_.ok(ADMIN, "class.create", {"name": "keep", "spec": {"ipFamily": "IPv4", "reclaimPolicy": "Retain"}})
    machine_.ok(
        ADMIN,
        "class.create",
        {"name": "gold", "spec": {"ipFamily": "IPv4", "visibility": "restricted", "allowedOrgs": ["globex"]}},
    )
    machine_.ok(
        ADMIN,
        "pool.create",
        {
            "name": "core",
            "labels": {"tier": "core"},
            "spec": {"cidr": "10.0.0.0/16", "classNames": ["std", "keep"], "reserved": {"leading": 1, "trailing": 1}},
        },
    )
    machine_.ok(
        ADMIN,
        "pool.create",
        {
            "name": "edge",
            "spec": {
                "cidr": "10.1.0.0/22",
                "classNames": ["std", "gold"],
                "allocation": {"strategy": "best-fit"},
                "excluded": ["10.1.3.0/25"],
            },
        },
    )
    machine_.ok(ADMIN, "pool.create", {"name": "six", "spec": {"cidr": "2001:db8::/48", "classNames": ["v6"]}})
    machine_.ok(ADMIN, "pool.create", {"name": "lab", "spec": {"cidr": "10.0.0.0/24", "addressSpace": "lab"}})
    machine_.ok(
        admin_for("acme", "web"),
        "pool.create",
        {
            "name": "team",
            "spec": {"parentPool": "core", "prefixLength": 24, "visibility": "shared", "sharedWith": ["db"]},
        },
    )
    machine_.ok(
        admin_for("globex", "api"), "pool.create", {"name": "g6", "spec": {"parentPool": "six", "prefixLength": 56}}
    )


def _claim_body(rng: random.Random) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    source = rng.random()
    if source < 0.45:
        spec["poolRef"] = rng.choice(POOL_REFS)
    elif source < 0.8:
        class_name = rng.choice(CLASS_NAMES)
        if class_name is not None:
            spec["className"] = class_name
    size = rng.random()
    if size < 0.4:
        spec["prefixLength"] = rng.choice([16, 24, 26, 28, 30, 31, 32, 56, 64, 96, 120, 128])
    elif size < 0.5:
        spec["address"] = rng.choice(["10.0.0.7", "10.0.1.9", "10.1.0.3", "10.0.0.0", "2001:db8::5", "10.1.3.3"])
    elif size < 0.55:
        spec["cidr"] = rng.choice(["10.0.4.0/30", "10.1.2.0/28", "2001:db8:0:10::/64", "10.0.0.1/32"])
    if rng.random() < 0.2:
        spec["reclaimPolicy"] = rng.choice(["Delete", "Retain"])
    body: dict[str, Any] = {"name": rng.choice(CLAIM_NAMES), "spec": spec}
    if rng.random() < 0.3:
        body["namespace"] = rng.choice(["default", "prod"])
    if rng.random() < 0.5:
        body["labels"] = {"app": rng.choice(["web", "db", "cache"]), "step": str(rng.randrange(3))}
    return body


def _tenant(rng: random.Random) -> tuple[str, str]:
    return rng.choice(TENANTS)


def _step(
    machine_: Machine, rng: random.Random, step: int, sent: list[tuple[Principal, str, dict[str, Any], str]]
) -> None:
    org, project = _tenant(rng)
    who = member(org, project) if rng.random() < 0.8 else admin_for(org, project)
    roll = rng.random()
    rid = f"rid-{step}" if rng.random() < 0.3 else None
    advance_ms = rng.randrange(1, 5000)
    command: tuple[Principal, str, dict[str, Any]]
    if roll < 0.45:
        command = (who, "claim.create", _claim_body(rng))
    elif roll < 0.68:
        body: dict[str, Any] = {"name": rng.choice(CLAIM_NAMES)}
        if rng.random() < 0.3:
            body["namespace"] = rng.choice(["default", "prod"])
        command = (who, "claim.delete", body)
    elif roll < 0.74 and sent:
        previous = sent[rng.randrange(len(sent))]
        if rng.random() < 0.7:  # a retry: the same command under the same id
            command, rid = (previous[0], previous[1], previous[2]), previous[3]
        else:  # the id reused for something else: conflict while the record lives
            command, rid = (previous[0], "claim.delete", {"name": "c0"}), previous[3]
    elif roll < 0.8:
        parent = rng.choice(["core", "edge", "six", "team", "nope"])
        length = rng.choice([24, 26, 28, 60, 64]) if parent in ("six", "nope") or rng.random() < 0.3 else 28
        name = rng.choice(["t1", "t2", "t3"])
        spec: dict[str, Any] = {"parentPool": parent, "prefixLength": length}
        if rng.random() < 0.3:
            spec["visibility"] = "shared"
        command = (admin_for(org, project), "pool.create", {"name": name, "spec": spec})
    elif roll < 0.86:
        command = (
            rng.choice([who, admin_for(org, project), ADMIN]),
            "pool.delete",
            {"name": rng.choice(["t1", "t2", "t3", "core"])},
        )
    elif roll < 0.9:
        name = rng.choice(["extra", "extra6", "std"])
        family = "IPv6" if name == "extra6" else "IPv4"
        principal = ADMIN if rng.random() < 0.8 else who
        if rng.random() < 0.6:
            command = (principal, "class.create", {"name": name, "spec": {"ipFamily": family}})
        else:
            command = (principal, "class.delete", {"name": name})
    elif roll < 0.97:
        refusals: list[tuple[Principal, str, dict[str, Any]]] = [
            (ADMIN, "pool.create", {"name": "clash", "spec": {"cidr": "10.0.128.0/17"}}),
            (ADMIN, "pool.create", {"name": "bad", "spec": {"cidr": "10.0.0.1/16"}}),
            (who, "pool.create", {"name": "root", "spec": {"cidr": "172.16.0.0/12"}}),
            (who, "class.create", {"name": "mine", "spec": {"ipFamily": "IPv4"}}),
            (who, "claim.create", {"name": "Bad_Name", "spec": {}}),
            (ADMIN, "class.delete", {"name": "std"}),
        ]
        command = rng.choice(refusals)
    else:
        command = (who, "noop", {})
    principal, command_type, command_body = command
    machine_.run(principal, command_type, command_body, request_id=rid, advance_ms=advance_ms)
    if rid is not None and command_type != "noop":
        sent.append((principal, command_type, command_body, rid))


def build_scenario(seed: int = SCENARIO_SEED, steps: int = SCENARIO_STEPS, check_every_step: bool = False) -> Machine:
    """A Machine that has applied a deterministic, varied command log."""
    rng = random.Random(seed)
    machine_ = Machine(check_every_step=check_every_step)
    _setup(machine_)
    sent: list[tuple[Principal, str, dict[str, Any], str]] = []
    for step in range(steps):
        _step(machine_, rng, step, sent)
    return machine_


# ---- replay and summaries --------------------------------------------------------------------


def replay(log: list[bytes]) -> tuple[MemoryStore, list[Outcome]]:
    store = MemoryStore()
    outcomes = []
    for index, data in enumerate(log, start=1):
        outcome = apply(store, data, index)
        store.apply_writes(outcome.writes)
        outcomes.append(outcome)
    return store, outcomes


def outcome_plain(outcome: Outcome) -> list[Any]:
    result = outcome.result
    if isinstance(result, Ok):
        described: list[Any] = ["ok", result.value, result.created]
    else:
        described = ["rejected", result.code, result.message, result.details]
    return [*described, [list(write) for write in outcome.writes], outcome.revision]


def outcomes_digest(outcomes: list[Outcome]) -> str:
    return hashlib.sha256(codec.dumps([outcome_plain(outcome) for outcome in outcomes])).hexdigest()


def log_digest(log: list[bytes]) -> str:
    return hashlib.sha256(codec.dumps(log)).hexdigest()


def summary(log_file: Path, seed: int, steps: int) -> dict[str, str]:
    store, outcomes = replay(list(codec.loads(log_file.read_bytes())))
    regenerated = build_scenario(seed, steps)
    return {
        "replay_digest": digest(store),
        "replay_outcomes": outcomes_digest(outcomes),
        "scenario_log": log_digest(regenerated.log),
        "scenario_digest": regenerated.digest(),
    }


def main(argv: list[str]) -> int:
    log_file, seed, steps = Path(argv[0]), int(argv[1]), int(argv[2])
    print(json.dumps(summary(log_file, seed, steps), sort_keys=True))
    return 0


@pytest.fixture(scope="module")
def scenario() -> Machine:
    return build_scenario()


def test_scenario_is_varied(scenario: Machine) -> None:
    """The log exercises what determinism must hold for: every kind, refusals, IPv6, dedup."""
    _, outcomes = replay(scenario.log)
    envelopes = [codec.loads(data) for data in scenario.log]
    types = {envelope["type"] for envelope in envelopes}
    assert types >= {"pool.create", "pool.delete", "claim.create", "claim.delete", "class.create", "class.delete"}
    codes = {outcome.result.code for outcome in outcomes if isinstance(outcome.result, Rejected)}
    assert codes >= {"invalid", "not_found", "conflict", "forbidden", "already_exists"}, codes
    ok_count = sum(outcome.ok for outcome in outcomes)
    assert len(outcomes) >= 400
    assert 100 <= ok_count <= len(outcomes) - 100, ok_count
    assert any(outcome.ok and not outcome.writes for outcome in outcomes), "no dedup hits or idempotent creates"
    allocated = [
        outcome.result.value["status"]["allocatedCIDR"]
        for outcome in outcomes
        if isinstance(outcome.result, Ok) and outcome.result.value.get("kind") == "IPClaim"
    ]
    assert any(":" in cidr for cidr in allocated), "no IPv6 claims"
    assert any(":" not in cidr for cidr in allocated), "no IPv4 claims"
    check_invariants(scenario.store)


def test_replay_in_process_twice_is_identical(scenario: Machine) -> None:
    first_store, first_outcomes = replay(scenario.log)
    second_store, second_outcomes = replay(scenario.log)
    assert first_outcomes == second_outcomes
    assert digest(first_store) == digest(second_store) == scenario.digest()
    assert list(first_store.items()) == list(second_store.items())


def test_scenario_generation_is_deterministic(scenario: Machine) -> None:
    again = build_scenario()
    assert again.log == scenario.log
    assert again.digest() == scenario.digest()
    assert build_scenario(seed=SCENARIO_SEED + 1, steps=50).log != build_scenario(steps=50).log


def test_replay_across_hash_seeds(scenario: Machine, tmp_path: Path) -> None:
    log_file = tmp_path / "log.cbor"
    log_file.write_bytes(codec.dumps(scenario.log))
    _, outcomes = replay(scenario.log)
    expected = {
        "replay_digest": scenario.digest(),
        "replay_outcomes": outcomes_digest(outcomes),
        "scenario_log": log_digest(scenario.log),
        "scenario_digest": scenario.digest(),
    }
    results = {}
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        arguments = ["-m", "tests.test_determinism", str(log_file), str(SCENARIO_SEED), str(SCENARIO_STEPS)]
        results[hash_seed] = json.loads(run_python(arguments, env))
    assert results["0"] == results["12345"] == expected


def test_summary_notices_a_different_log(scenario: Machine, tmp_path: Path) -> None:
    """The subprocess comparison can fail: a log missing its last command summarises differently."""
    log_file = tmp_path / "log.cbor"
    log_file.write_bytes(codec.dumps(scenario.log[:-40]))
    assert summary(log_file, SCENARIO_SEED, 10)["replay_digest"] != scenario.digest()


# ---- exactly-once --------------------------------------------------------------------------

ACME = member("acme", "web")
GLOBEX = member("globex", "prod")


def _dedup_machine() -> Machine:
    machine_ = Machine()
    machine_.ok(ADMIN, "class.create", {"name": "std", "spec": {"ipFamily": "IPv4", "isDefault": True}})
    machine_.ok(ADMIN, "pool.create", {"name": "p1", "spec": {"cidr": "10.0.0.0/20", "classNames": ["std"]}})
    return machine_


def _dedup_keys(store: MemoryStore) -> list[bytes]:
    return [key for key, _ in store.scan(keys.DEDUP, keys.DEDUP + b"\xff")]


def _expiry_keys(store: MemoryStore) -> list[bytes]:
    return [key for key, _ in store.scan(keys.DEDUP_EXPIRY, keys.DEDUP_EXPIRY + b"\xff")]


def test_retry_with_same_id_returns_first_result_and_writes_nothing() -> None:
    machine_ = _dedup_machine()
    body = {"name": "c1", "spec": {"poolRef": "p1", "prefixLength": 30}}
    first = machine_.run(ACME, "claim.create", body, request_id="key-1")
    assert isinstance(first.result, Ok) and first.result.created
    before = machine_.digest()
    revision = Meta.load(machine_.store).revision
    # Something else happens in between; the retry still answers with the first result.
    machine_.ok(ACME, "claim.create", {"name": "c2", "spec": {"poolRef": "p1", "prefixLength": 30}})
    between = machine_.digest()
    assert between != before
    retry = machine_.run(ACME, "claim.create", body, request_id="key-1")
    assert retry.result == first.result
    assert retry.writes == ()
    assert retry.revision == revision + 1  # the state's revision now, not a new one
    assert machine_.digest() == between


DEDUP_COMMANDS: dict[str, tuple[Principal, str, dict[str, Any]]] = {
    "class.create": (ADMIN, "class.create", {"name": "extra", "spec": {"ipFamily": "IPv6"}}),
    "class.delete": (ADMIN, "class.delete", {"name": "spare"}),
    "pool.create": (ADMIN, "pool.create", {"name": "p2", "spec": {"cidr": "10.1.0.0/24"}}),
    "pool.create.child": (
        admin_for("acme", "web"),
        "pool.create",
        {"name": "kid", "spec": {"parentPool": "p1", "prefixLength": 28}},
    ),
    "pool.delete": (ADMIN, "pool.delete", {"name": "empty"}),
    "claim.create": (ACME, "claim.create", {"name": "c9", "labels": {"a": "b"}, "spec": {"prefixLength": 31}}),
    "claim.delete": (ACME, "claim.delete", {"name": "c0"}),
}


@pytest.mark.parametrize("command", list(DEDUP_COMMANDS.values()), ids=list(DEDUP_COMMANDS))
def test_every_command_type_dedups(command: tuple[Principal, str, dict[str, Any]]) -> None:
    principal, command_type, body = command
    machine_ = _dedup_machine()
    machine_.ok(ADMIN, "class.create", {"name": "spare", "spec": {"ipFamily": "IPv4"}})
    machine_.ok(ADMIN, "pool.create", {"name": "empty", "spec": {"cidr": "10.2.0.0/24"}})
    machine_.ok(ACME, "claim.create", {"name": "c0", "spec": {}})
    first = machine_.run(principal, command_type, body, request_id="once")
    assert isinstance(first.result, Ok) and first.writes
    before = machine_.digest()
    retry = machine_.run(principal, command_type, body, request_id="once")
    assert retry.result == first.result
    assert retry.writes == ()
    assert machine_.digest() == before
    # Without the id the command would not be a harmless repeat.
    assert machine_.run(principal, command_type, body).result != first.result


def test_retry_after_the_object_is_gone_still_returns_first_result() -> None:
    machine_ = _dedup_machine()
    body = {"name": "c1", "spec": {"poolRef": "p1"}}
    first = machine_.ok(ACME, "claim.create", body, request_id="key-1")
    machine_.ok(ACME, "claim.delete", {"name": "c1"})
    before = machine_.digest()
    retry = machine_.run(ACME, "claim.create", body, request_id="key-1")
    assert retry.result == Ok(first, True)
    assert retry.writes == ()
    assert machine_.digest() == before


def test_same_id_different_command_is_conflict() -> None:
    machine_ = _dedup_machine()
    machine_.ok(ACME, "claim.create", {"name": "c1", "spec": {}}, request_id="key-1")
    refusal = machine_.refused(ACME, "claim.create", {"name": "c2", "spec": {}}, request_id="key-1")
    assert refusal.code == "conflict"
    refusal = machine_.refused(ACME, "claim.delete", {"name": "c1"}, request_id="key-1")
    assert refusal.code == "conflict"
    # Another user of the same project reusing the key is a different command too.
    refusal = machine_.refused(
        member("acme", "web", "bob"), "claim.create", {"name": "c1", "spec": {}}, request_id="key-1"
    )
    assert refusal.code == "conflict"


def test_request_ids_are_scoped_to_the_tenant() -> None:
    machine_ = _dedup_machine()
    machine_.ok(ACME, "claim.create", {"name": "c1", "spec": {}}, request_id="key-1")
    other = machine_.run(member("globex", "api"), "claim.create", {"name": "c1", "spec": {}}, request_id="key-1")
    assert isinstance(other.result, Ok) and other.result.created and other.writes


def test_a_refusal_is_remembered_under_its_request_id() -> None:
    """The first answer for a request id is the answer, a refusal too: the same request
    delivered again after the state changed gets the refusal again and changes nothing (a copy
    held up in a paused member must not succeed after the client was told it failed)."""
    machine_ = _dedup_machine()
    body = {"name": "c1", "spec": {"poolRef": "later"}}
    assert machine_.refused(ACME, "claim.create", body, request_id="key-1").code == "not_found"
    assert len(_dedup_keys(machine_.store)) == 1
    machine_.ok(ADMIN, "pool.create", {"name": "later", "spec": {"cidr": "10.9.0.0/24"}})
    before = digest(machine_.store)
    retried = machine_.run(ACME, "claim.create", body, request_id="key-1")
    assert isinstance(retried.result, Rejected) and retried.result.code == "not_found"
    assert retried.writes == () and digest(machine_.store) == before
    assert machine_.refused(ACME, "claim.delete", {"name": "c1"}, request_id="key-1").code == "conflict"
    # A new request (a new id) is a new answer.
    assert machine_.ok(ACME, "claim.create", body, request_id="key-2")["status"]["pool"] == "later"
    # Without a request id a refusal writes nothing at all.
    refused = machine_.run(ACME, "claim.create", {"name": "c2", "spec": {"poolRef": "absent"}})
    assert isinstance(refused.result, Rejected) and refused.writes == ()


def test_dedup_record_expires_after_ttl_of_envelope_time() -> None:
    machine_ = _dedup_machine()
    ttl_ms = machine.dedup_ttl_ms
    body = {"name": "c1", "spec": {"poolRef": "p1"}}
    first = machine_.ok(ACME, "claim.create", body, request_id="key-1", advance_ms=1)
    machine_.ok(ACME, "claim.delete", {"name": "c1"}, advance_ms=1000)
    # Just inside the TTL (counted from when the record was written): the first result, no writes.
    inside = machine_.run(ACME, "claim.create", body, request_id="key-1", advance_ms=ttl_ms - 1000 - 1)
    assert inside.result == Ok(first, True)
    assert inside.writes == ()
    # Past the TTL the id is free again: the command runs afresh and makes a new claim.
    after = machine_.run(ACME, "claim.create", body, request_id="key-1", advance_ms=2)
    assert isinstance(after.result, Ok) and after.result.created and after.writes
    assert after.result.value["metadata"]["uid"] != first["metadata"]["uid"]
    # ... and a different command under the expired-then-reused id is a conflict again.
    assert machine_.refused(ACME, "claim.delete", {"name": "c1"}, request_id="key-1").code == "conflict"
    check_invariants(machine_.store)


def test_expiry_uses_envelope_time_not_log_position() -> None:
    """Many commands in a short time do not expire a record; a long gap does, whatever came between."""
    machine_ = _dedup_machine()
    body = {"name": "c1", "spec": {"poolRef": "p1"}}
    first = machine_.ok(ACME, "claim.create", body, request_id="key-1", advance_ms=1)
    for number in range(30):
        machine_.ok(ACME, "claim.create", {"name": f"x{number}", "spec": {}}, advance_ms=1)
    machine_.ok(ACME, "claim.delete", {"name": "c1"}, advance_ms=1)
    assert machine_.run(ACME, "claim.create", body, request_id="key-1", advance_ms=1).result == Ok(first, True)


def test_clock_never_runs_backwards_for_expiry() -> None:
    """An envelope stamped earlier than the state's clock is judged at the clock (max)."""
    machine_ = _dedup_machine()
    body = {"name": "c1", "spec": {"poolRef": "p1"}}
    machine_.ok(ACME, "claim.create", body, request_id="key-1", advance_ms=1)
    machine_.ok(ACME, "claim.delete", {"name": "c1"}, advance_ms=machine.dedup_ttl_ms + 10)
    # The proposer's stamp is from before the record was even written; the clock says expired.
    late = machine_.run(ACME, "claim.create", body, request_id="key-1", advance_ms=-(machine.dedup_ttl_ms + 100))
    assert isinstance(late.result, Ok) and late.result.created and late.writes
    assert late.result.value["metadata"]["creationTimestamp"] == "2026-01-01T00:15:02Z"


def test_expired_records_are_trimmed() -> None:
    machine_ = _dedup_machine()
    for number in range(20):
        machine_.ok(ACME, "claim.create", {"name": f"c{number}", "spec": {}}, request_id=f"key-{number}", advance_ms=1)
    assert len(_dedup_keys(machine_.store)) == 20
    machine_.run(ADMIN, "noop", {}, advance_ms=machine.dedup_ttl_ms + 1)
    for number in range(20):
        machine_.ok(ACME, "claim.create", {"name": f"later-{number}", "spec": {}}, advance_ms=1)
        if not _dedup_keys(machine_.store):
            break
    assert _dedup_keys(machine_.store) == []
    assert _expiry_keys(machine_.store) == []
    assert Meta.load(machine_.store).dedup_records == 0
    check_invariants(machine_.store)


def test_dedup_table_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    records_max = 5
    monkeypatch.setattr(machine, "dedup_records_max", records_max)
    monkeypatch.setattr(machine, "dedup_window_min_ms", 0)  # the order of eviction alone (see below)
    machine_ = _dedup_machine()
    assert machine.idempotency_window_ms(Meta.load(machine_.store)) == machine.dedup_ttl_ms, "not full: the TTL"
    for number in range(30):
        machine_.ok(ACME, "claim.create", {"name": f"c{number}", "spec": {}}, request_id=f"key-{number}", advance_ms=1)
        assert len(_dedup_keys(machine_.store)) <= records_max
        assert len(_expiry_keys(machine_.store)) == len(_dedup_keys(machine_.store))
        check_invariants(machine_.store)
    meta = Meta.load(machine_.store)
    assert meta.dedup_records == records_max
    # Full, the table keeps a request id for less than its TTL: the last five writes, 4 ms apart.
    assert machine.idempotency_window_ms(meta) == 4 < machine.dedup_ttl_ms
    remembered = {key.rsplit(b"/", 1)[1].decode() for key in _dedup_keys(machine_.store)}
    assert remembered == {f"key-{number}" for number in range(25, 30)}  # the oldest went first
    # The newest still dedups.
    retry = machine_.run(ACME, "claim.create", {"name": "c29", "spec": {}}, request_id="key-29")
    assert isinstance(retry.result, Ok) and retry.result.created and retry.writes == ()


def test_a_full_dedup_table_forgets_no_id_younger_than_the_minimum_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Code review, 2026-12-08: over its cap the table dropped its oldest record whatever its
    age, so a flood of cheap requests (another tenant's, refused ones included) pushed out ids
    written seconds before; a retry of a claim refused pool_exhausted, delivered after the pool
    had room again, then allocated although its client had been told it failed. A request
    under a new id is now refused `overloaded` (nothing written) while the oldest record is
    younger than dedup_window_min_ms."""
    monkeypatch.setattr(machine, "dedup_records_max", 3)
    window_ms = machine.dedup_window_min_ms
    machine_ = Machine()
    machine_.ok(ADMIN, "pool.create", {"name": "tiny", "spec": {"cidr": "10.9.0.0/32"}})
    machine_.ok(ADMIN, "pool.create", {"name": "wide", "spec": {"cidr": "10.10.0.0/24"}})
    machine_.ok(ACME, "claim.create", {"name": "holder", "spec": {"poolRef": "tiny"}})
    body = {"name": "late", "spec": {"poolRef": "tiny"}}
    refused = machine_.refused(ACME, "claim.create", body, request_id="key-late", advance_ms=1)
    assert refused.code == "pool_exhausted"
    for number in range(2):  # the table is full: key-late and two more
        flood_body = {"name": f"x{number}", "spec": {"poolRef": "wide"}}
        machine_.ok(GLOBEX, "claim.create", flood_body, request_id=f"flood-{number}", advance_ms=1)
    before = Meta.load(machine_.store)
    flood_body = {"name": "x", "spec": {"poolRef": "wide"}}
    flood = machine_.run(GLOBEX, "claim.create", flood_body, request_id="flood-2", advance_ms=1)
    assert isinstance(flood.result, Rejected) and flood.result.code == "overloaded", flood.result
    assert flood.writes == (), "nothing written, not even a dedup record"
    assert 0 < flood.result.details["retryAfterMillis"] <= window_ms
    assert Meta.load(machine_.store).dedup_records == before.dedup_records == 3
    assert machine.idempotency_window_ms(before) == window_ms, "full: the guaranteed minimum"
    # The pool has room again; the late retry still gets the refusal it was first given.
    machine_.ok(ACME, "claim.delete", {"name": "holder"}, advance_ms=1)
    again = machine_.run(ACME, "claim.create", body, request_id="key-late", advance_ms=1)
    assert isinstance(again.result, Rejected) and again.result.code == "pool_exhausted" and again.replayed
    # Once the oldest id is old enough, a new id takes its place.
    later = machine_.run(GLOBEX, "claim.create", flood_body, request_id="flood-2", advance_ms=window_ms)
    assert isinstance(later.result, Ok) and later.result.created, later.result
    assert Meta.load(machine_.store).dedup_records == 3
    check_invariants(machine_.store)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


# ---- a scheduler workload ------------------------------------------------------------------------


def build_scheduler_scenario(seed: int = SCENARIO_SEED, steps: int = 300) -> Machine:
    """Nodes joining, failing, draining; pods of three tenants with quotas; services; sweeps."""
    rng = random.Random(seed)
    machine_ = Machine()
    machine_.ok(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.244.0.0/16"}})
    machine_.ok(ADMIN, "pool.create", {"name": "vips", "spec": {"cidr": "10.96.0.0/24"}})
    machine_.ok(ADMIN, "quota.set", {"name": "acme", "spec": {"cpuMillis": 12000, "pods": 30}})
    tenants = [member(org, project) for org, project in TENANTS]
    for step in range(steps):
        roll = rng.random()
        node = f"n{rng.randrange(6)}"
        who = rng.choice(tenants)
        if roll < 0.15:
            capacity = {"cpuMillis": rng.choice([2000, 4000]), "memoryBytes": 8 << 30, "pods": rng.randrange(1, 6)}
            labels = rng.choice([{}, {"disk": "ssd"}])
            machine_.run(
                ADMIN,
                "node.register",
                {"name": node, "labels": labels, "spec": {"capacity": capacity, "podPool": "pods"}},
            )
        elif roll < 0.25:
            action = rng.choice(["node.cordon", "node.uncordon", "node.drain", "node.delete"])
            machine_.run(ADMIN, action, {"name": node})
        elif roll < 0.3:
            machine_.run(ADMIN, "node.condition", {"name": node, "ready": rng.random() < 0.6})
        elif roll < 0.65:
            spec = {
                "requests": {"cpuMillis": rng.choice([100, 500, 1500, 3000])},
                "priority": rng.randrange(-1, 2),
                "nodeSelector": rng.choice([{}, {"disk": "ssd"}]),
            }
            body: dict[str, Any] = {"name": f"p{rng.randrange(30)}", "spec": spec}
            if rng.random() < 0.5:
                body["plan"] = {"nodeName": node}
            machine_.run(who, "pod.create", body, request_id=f"pod-{step}" if rng.random() < 0.3 else None)
        elif roll < 0.85:
            machine_.run(who, "pod.delete", {"name": f"p{rng.randrange(30)}"})
        elif roll < 0.92:
            machine_.run(
                who,
                rng.choice(["service.create", "service.delete"]),
                {"name": f"s{rng.randrange(4)}"} | ({"spec": {"poolRef": "vips"}} if rng.random() < 0.5 else {}),
            )
        elif roll < 0.96:
            machine_.run(ADMIN, "quota.set", {"name": "acme/web", "spec": {"cpuMillis": rng.choice([2000, 8000])}})
        else:
            machine_.run(ADMIN, "scheduler.retry", {"pods": rng.randrange(1, 8)})
    return machine_


def test_scheduler_workload_replays_identically(tmp_path: Path) -> None:
    scenario = build_scheduler_scenario()
    check_invariants(scenario.store)
    _, outcomes = replay(scenario.log)
    bound = sum(
        1
        for outcome in outcomes
        if isinstance(outcome.result, Ok) and outcome.result.value.get("status", {}).get("phase") == "Bound"
    )
    assert bound >= 10, "the workload binds too few pods to say much"
    first_store, first_outcomes = replay(scenario.log)
    assert digest(first_store) == scenario.digest()
    assert outcomes_digest(first_outcomes) == outcomes_digest(outcomes)
    log_file = tmp_path / "sched.cbor"
    log_file.write_bytes(codec.dumps(scenario.log))
    probe = (
        "import sys; from statemachine import codec; from tests.test_determinism import replay, outcomes_digest;"
        "from statemachine.invariants import digest;"
        f"store, outcomes = replay(list(codec.loads(open({str(log_file)!r}, 'rb').read())));"
        "print(digest(store), outcomes_digest(outcomes))"
    )
    for hash_seed in ("0", "4242"):
        printed = run_python(["-c", probe], {**os.environ, "PYTHONHASHSEED": hash_seed})
        assert printed.split() == [scenario.digest(), outcomes_digest(outcomes)]
