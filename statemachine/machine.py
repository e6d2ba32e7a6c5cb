"""The one entry point: `apply(view, envelope bytes, index, position) -> Outcome`.

This is the only place that switches on the command type. A command either succeeds, and its
writes (objects, allocator records, the watch events, the dedup record and the meta record)
are returned for the store to apply in one transaction, or it is refused with a `Rejected`
value and writes nothing at all. `apply` never raises for bad input; it raises
`InvariantViolation` only when the state is broken, and then the member must stop.

Exactly-once: when the envelope carries a request id, the first successful result is stored
with a digest of the command. The same id with the same command returns that result again and
writes nothing; with a different command it is `conflict`. Records expire `dedup_ttl_ms` after
they were written and at most `dedup_records_max` are kept (oldest dropped first). Refused
commands are not recorded: they changed nothing, so running them again is harmless.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from statemachine import claims, classes, cluster, keys, pools, services
from statemachine.codec import Envelope, decode_envelope, dump_record, dumps, loads
from statemachine.context import Context, Meta, events_max
from statemachine.errors import CONFLICT, InvariantViolation, Rejected, invalid
from statemachine.view import Overlay, ReadView, Write

dedup_ttl_ms = 15 * 60 * 1000  # a client retries for seconds; fifteen minutes leaves ample room
dedup_records_max = 200_000
_trim_per_command_max = 8  # expired records dropped per command: bounded work, and enough
# since each command adds at most one record

NOOP = "noop"


@dataclass(frozen=True)
class Ok:
    value: dict[str, Any]
    created: bool = False  # a new object was made (HTTP 201), rather than found or deleted


@dataclass(frozen=True)
class Outcome:
    result: Ok | Rejected
    writes: tuple[Write, ...]
    revision: int  # the state's revision once this command is applied

    @property
    def ok(self) -> bool:
        return isinstance(self.result, Ok)


Handler = Callable[[Context, dict[str, Any]], "tuple[dict[str, Any], bool] | dict[str, Any]"]

HANDLERS: dict[str, Handler] = {
    "pool.create": pools.create,
    "pool.delete": pools.delete,
    "claim.create": claims.create,
    "claim.delete": claims.delete,
    "class.create": classes.create,
    "class.delete": classes.delete,
    "quota.set": cluster.quota_set,
    "quota.delete": cluster.quota_delete,
    "node.register": cluster.node_register,
    "node.delete": cluster.node_delete,
    "node.condition": cluster.node_condition,
    "node.cordon": cluster.node_cordon,
    "node.uncordon": cluster.node_uncordon,
    "node.drain": cluster.node_drain,
    "pod.create": cluster.pod_create,
    "pod.delete": cluster.pod_delete,
    "service.create": services.create,
    "service.delete": services.delete,
    "scheduler.configure": cluster.scheduler_configure,
    "scheduler.retry": cluster.scheduler_retry,
}
COMMAND_TYPES = (*HANDLERS, NOOP)


PROPOSER_HINTS = ("plan",)  # body fields a proposing member adds (pod.create's planned node)


def command_digest(envelope: Envelope) -> bytes:
    """What a request id stands for. Proposer hints are left out: a client's retry through
    another member carries another plan, and is still the same request."""
    principal = envelope.principal
    body = envelope.body
    if any(hint in body for hint in PROPOSER_HINTS):
        body = {field: value for field, value in body.items() if field not in PROPOSER_HINTS}
    plain = [envelope.type, body, principal.name, principal.org, principal.project, principal.role]
    return hashlib.sha256(dumps(plain)).digest()


def apply(view: ReadView, data: bytes, index: int, position: int = 0) -> Outcome:
    meta = Meta.load(view)
    if (index, position) <= (meta.index, meta.position):
        raise InvariantViolation(
            f"entry ({index}, {position}) applied after ({meta.index}, {meta.position}): "
            "the log was replayed over state that already holds it"
        )
    try:
        envelope = decode_envelope(data)
        return _apply(view, envelope, index, position, meta)
    except Rejected as refusal:
        return Outcome(refusal, (), meta.revision)
    except InvariantViolation:
        raise
    except Exception as exc:  # a bug: every replica hits it alike, but state may be half-made
        raise InvariantViolation(f"unexpected {type(exc).__name__} while applying: {exc}") from exc


def _apply(view: ReadView, envelope: Envelope, index: int, position: int, meta: Meta) -> Outcome:
    if envelope.type == NOOP:
        return Outcome(Ok({"revision": meta.revision}), (), meta.revision)
    handler = HANDLERS.get(envelope.type)
    if handler is None:
        raise invalid(f"unknown command type {envelope.type!r}; known: {', '.join(COMMAND_TYPES)}", "type")
    now_ms = max(meta.clock_ms, envelope.ts_ms)

    dedup_key: bytes | None = None
    digest = b""
    if envelope.request_id is not None:
        principal = envelope.principal
        dedup_key = keys.dedup_key(principal.org, principal.project, envelope.request_id)
        digest = command_digest(envelope)
        stored = view.get(dedup_key)
        if stored is not None:
            stored_digest, stored_ms, stored_created, stored_value = loads(stored)
            if now_ms - stored_ms <= dedup_ttl_ms:
                if stored_digest != digest:
                    raise Rejected(
                        CONFLICT,
                        f"request id {envelope.request_id!r} was already used for a different request; "
                        "use a new Idempotency-Key for a new request",
                        {"requestId": envelope.request_id},
                    )
                return Outcome(Ok(loads(stored_value), stored_created), (), meta.revision)

    overlay = Overlay(view)
    ctx = Context(overlay, envelope, index, position, meta)
    returned = handler(ctx, envelope.body)
    value, created = returned if isinstance(returned, tuple) else (returned, False)
    if overlay.has_writes:  # the command changed state: a new revision, with its events
        meta.revision = ctx.revision
        if ctx.write_events():
            meta.events += 1
            _trim_events(overlay, meta)
    if dedup_key is not None:
        # Remembered even when the command changed nothing (a claim that already existed):
        # the id is now taken, and a retry must get this same answer.
        _remember(overlay, meta, dedup_key, digest, now_ms, ctx.encoding_of(value), created)
    if not overlay.has_writes:
        return Outcome(Ok(value, created), (), meta.revision)
    meta.clock_ms = now_ms
    meta.index, meta.position = index, position
    _trim_dedup(overlay, meta, now_ms)
    overlay.put(keys.META, dump_record(meta.to_plain()))
    return Outcome(Ok(value, created), overlay.writes(), meta.revision)


def _trim_events(overlay: Overlay, meta: Meta) -> None:
    while meta.events > events_max:
        oldest = overlay.first(keys.EVENT, keys.EVENT_END)
        if oldest is None:
            raise InvariantViolation(f"meta counts {meta.events} event records but the log is empty")
        overlay.delete(oldest[0])
        meta.events -= 1
        meta.compacted_revision = max(meta.compacted_revision, keys.event_revision(oldest[0]))


def _remember(
    overlay: Overlay, meta: Meta, dedup_key: bytes, digest: bytes, now_ms: int, encoded_value: bytes, created: bool
) -> None:
    previous = overlay.get(dedup_key)
    if previous is not None:  # an expired record under the same id: replace it
        overlay.delete(keys.dedup_expiry_key(loads(previous)[1], dedup_key))
        meta.dedup_records -= 1
    if meta.dedup_records == 0:
        meta.dedup_oldest_ms = now_ms
    overlay.put(dedup_key, dump_record([digest, now_ms, created, encoded_value]))
    overlay.put(keys.dedup_expiry_key(now_ms, dedup_key), b"")
    meta.dedup_records += 1


def _trim_dedup(overlay: Overlay, meta: Meta, now_ms: int) -> None:
    if meta.dedup_records <= dedup_records_max and now_ms - meta.dedup_oldest_ms <= dedup_ttl_ms:
        return  # nothing can be due yet: no seek
    removed = 0
    while True:
        oldest = overlay.first(keys.DEDUP_EXPIRY, keys.DEDUP_EXPIRY_END)
        if oldest is None:
            meta.dedup_oldest_ms = now_ms
            return
        expiry_key = oldest[0]
        written_ms = int.from_bytes(expiry_key[len(keys.DEDUP_EXPIRY) : len(keys.DEDUP_EXPIRY) + 8], "big")
        meta.dedup_oldest_ms = written_ms
        over_limit = meta.dedup_records > dedup_records_max
        if not over_limit and (now_ms - written_ms <= dedup_ttl_ms or removed >= _trim_per_command_max):
            return
        overlay.delete(expiry_key)
        overlay.delete(expiry_key[len(keys.DEDUP_EXPIRY) + 8 :])
        meta.dedup_records -= 1
        removed += 1
