"""The one entry point: `apply(view, envelope bytes, index, position) -> Outcome`.

This is the only place that switches on the command type. A command either succeeds, and its
writes (objects, allocator records, the watch events, the dedup record and the meta record)
are returned for the store to apply in one transaction, or it is refused with a `Rejected`
value and changes no object (it writes nothing at all, or, under a request id, only its dedup
record and the meta record: below). `apply` never raises for bad input; it raises
`InvariantViolation` only when the state is broken, and then the member must stop.

Exactly-once: when the envelope carries a request id, the first result is stored with a
digest of the command, a refusal as well as a success. The same id with the same command
returns that result again and writes nothing; with a different command it is `conflict`.
Records expire `dedup_ttl_ms` after they were written and at most `dedup_records_max` are kept
(oldest dropped first), but none is dropped before it is `dedup_window_min_ms` old: while the
table is full of younger ones, a request under a new id is refused `overloaded` (nothing
changes; it says when to retry). A write rate past `dedup_records_max / dedup_window_min_ms`
(3,333/s) is refused rather than allowed to forget a request id a client may still retry:
remembered ids are what make a retry safe (code review, 2026-12-08: a flood of cheap refused
requests by one tenant could push every other tenant's ids out within two minutes).

Refusals are remembered because the answer is what the client acts on: a claim refused with
`pool_exhausted` whose request is delivered again later (an attempt held up in a paused member,
then let go) must not allocate after the client was told it failed (the chaos suite found
exactly that when refusals were not remembered). Such a refusal writes only
the dedup record and the meta record: no revision, no event.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from statemachine import claims, classes, cluster, keys, pools, priorities, services
from statemachine.codec import Envelope, decode_envelope, dump_record, dumps, loads
from statemachine.context import Context, Meta, events_max
from statemachine.errors import CONFLICT, OVERLOADED, InvariantViolation, Rejected, invalid
from statemachine.view import Overlay, ReadView, Write

dedup_ttl_ms = 15 * 60 * 1000  # a client retries for seconds; fifteen minutes leaves ample room
dedup_records_max = 200_000
dedup_window_min_ms = 60_000  # twice the client's retry deadline (30 s): no id is forgotten sooner
_trim_per_command_max = 8  # expired records dropped per command: bounded work, and enough
# since each command adds at most one record

NOOP: Final = "noop"


@dataclass(init=False, unsafe_hash=True)
class Ok:
    # Final fields and a hand-written __init__: see addresses.Block.
    value: Final[dict[str, Any]]
    created: Final[bool]  # a new object was made (HTTP 201), rather than found or deleted

    def __init__(self, value: dict[str, Any], created: bool = False) -> None:
        self.value = value
        self.created = created


@dataclass(init=False, unsafe_hash=True)
class Outcome:
    result: Final[Ok | Rejected]
    writes: Final[tuple[Write, ...]]
    revision: Final[int]  # the state's revision once this command is applied
    replayed: Final[bool]  # the answer remembered under the request id, not a new application

    def __init__(self, result: Ok | Rejected, writes: tuple[Write, ...], revision: int, replayed: bool = False) -> None:
        self.result = result
        self.writes = writes
        self.revision = revision
        self.replayed = replayed

    @property
    def ok(self) -> bool:
        return isinstance(self.result, Ok)


Handler = Callable[[Context, dict[str, Any]], "tuple[dict[str, Any], bool] | dict[str, Any]"]

HANDLERS: Final[dict[str, Handler]] = {
    "pool.create": pools.create,
    "pool.delete": pools.delete,
    "pool.update": pools.update,
    "claim.create": claims.create,
    "claim.delete": claims.delete,
    "claim.update": claims.update,
    "class.create": classes.create,
    "class.delete": classes.delete,
    "class.update": classes.update,
    "quota.set": cluster.quota_set,
    "quota.delete": cluster.quota_delete,
    "node.register": cluster.node_register,
    "node.delete": cluster.node_delete,
    "node.condition": cluster.node_condition,
    "node.cordon": cluster.node_cordon,
    "node.uncordon": cluster.node_uncordon,
    "node.drain": cluster.node_drain,
    "node.update": cluster.node_update,
    "node.evict_unready": cluster.node_evict_unready,
    "node.evict_tainted": cluster.node_evict_tainted,
    "pod.create": cluster.pod_create,
    "pod.delete": cluster.pod_delete,
    "pod.update": cluster.pod_update,
    "service.create": services.create,
    "service.delete": services.delete,
    "service.update": services.update,
    "scheduler.configure": cluster.scheduler_configure,
    "scheduler.retry": cluster.scheduler_retry,
    "priorityclass.create": priorities.create,
    "priorityclass.delete": priorities.delete,
    "priorityclass.update": priorities.update,
}
COMMAND_TYPES = (*HANDLERS, NOOP)


PROPOSER_HINTS: Final = ("plan",)  # body fields a proposing member adds (pod.create's planned node)


def _digest_input(envelope: Envelope) -> list[Any]:
    principal = envelope.principal
    body = envelope.body
    for hint in PROPOSER_HINTS:  # a loop, not any(): no generator on every command's path
        if hint in body:
            body = {field: value for field, value in body.items() if field not in PROPOSER_HINTS}
            break
    return [envelope.type, body, principal.name, principal.org, principal.project, principal.role]


def command_digest(envelope: Envelope) -> bytes:
    """What a request id stands for. Proposer hints are left out: a client's retry through
    another member carries another plan, and is still the same request."""
    return hashlib.sha256(dumps(_digest_input(envelope))).digest()


def _decoded_command_digest(envelope: Envelope) -> bytes:
    """`command_digest` of an envelope that `decode_envelope` accepted. Its maps are in
    canonical key order (the bytes were checked to be canonical, and decoding keeps their
    order; dropping a hint keeps the rest in order), so insertion-order encoding gives the
    canonical bytes without canonical encoding's sorting. The one exception, a float in the
    body (canonical encoding shortens it), is refused by every handler before anything is
    remembered, so it can never match or be stored."""
    return hashlib.sha256(dump_record(_digest_input(envelope))).digest()


def apply(view: ReadView, data: bytes, index: int, position: int = 0) -> Outcome:
    """Apply one envelope; its writes include the meta record's."""
    return _apply_envelope(view, data, index, position, Meta.load(view), True)


def preview(view: ReadView, data: bytes) -> Outcome:
    """What applying one envelope to `view` now would answer, for a dry run: its writes are
    for nobody to make. Applied as the next entry after the last that wrote, so what the answer
    shows of that entry (the uid, the resourceVersion) is what it would have been, not a
    promise. A dry run carries no request id (the caller leaves it out): it neither reads nor
    takes the dedup record of a real write."""
    meta = Meta.load(view)
    return _apply_envelope(view, data, meta.index + 1, 0, meta, True)


class EntryApply:
    """The envelopes of one log entry, applied in order over one view that the caller updates
    with each outcome's writes before the next (as `LmdbStore.apply_entry` does inside its
    write transaction).

    The meta record is decoded once for the entry and carried from command to command in
    memory: the commands' writes leave it out, and `meta_write()` is its one write, for the
    caller to make after the last command. Every command reads the meta its predecessor left,
    as with `apply`, and the record written is the last writing command's, so the state ends
    the same, byte for byte, as applying each envelope with `apply` (tests/test_store.py
    compares). It saves each command a read, a decode, an encode and a write of the record."""

    def __init__(self, view: ReadView, index: int) -> None:
        self._view = view
        self._index = index
        self._meta = Meta.load(view)
        self._meta_changed = False

    def apply(self, data: bytes, position: int) -> Outcome:
        outcome = _apply_envelope(self._view, data, self._index, position, self._meta, False)
        if outcome.writes:  # only a command that writes changes meta (see _finish)
            self._meta_changed = True
        return outcome

    def meta_write(self) -> tuple[bytes, bytes] | None:
        """The meta record's write, when a command of the entry changed it."""
        if not self._meta_changed:
            return None
        return keys.META, dump_record(self._meta.to_plain())


def _apply_envelope(view: ReadView, data: bytes, index: int, position: int, meta: Meta, write_meta: bool) -> Outcome:
    if (index, position) <= (meta.index, meta.position):
        raise InvariantViolation(
            f"entry ({index}, {position}) applied after ({meta.index}, {meta.position}): "
            "the log was replayed over state that already holds it"
        )
    try:
        envelope = decode_envelope(data)
        return _apply(view, envelope, index, position, meta, write_meta)
    except Rejected as refusal:
        return Outcome(refusal, (), meta.revision)
    except InvariantViolation:
        raise
    except Exception as exc:  # a bug: every replica hits it alike, but state may be half-made
        raise InvariantViolation(f"unexpected {type(exc).__name__} while applying: {exc}") from exc


def _apply(view: ReadView, envelope: Envelope, index: int, position: int, meta: Meta, write_meta: bool) -> Outcome:
    """Apply a decoded envelope, updating meta in place when (and only when) it writes."""
    if envelope.type == NOOP:
        return Outcome(Ok({"revision": meta.revision}), (), meta.revision)
    handler = HANDLERS.get(envelope.type)
    if handler is None:
        raise invalid(f"unknown command type {envelope.type!r}; known: {', '.join(COMMAND_TYPES)}", "type")
    now_ms = max(meta.clock_ms, envelope.ts_ms)

    dedup_key: bytes | None = None
    digest = b""
    expired_ms: int | None = None  # when the expired record under this request id was written
    if envelope.request_id is not None:
        principal = envelope.principal
        dedup_key = keys.dedup_key(principal.org, principal.project, envelope.request_id)
        digest = _decoded_command_digest(envelope)
        stored = view.get(dedup_key)
        if stored is not None:
            stored_digest, stored_ms, stored_created, stored_value, *stored_refusal = loads(stored)
            expired_ms = stored_ms
            if now_ms - stored_ms <= dedup_ttl_ms:
                if stored_digest != digest:
                    raise Rejected(
                        CONFLICT,
                        f"request id {envelope.request_id!r} was already used for a different request; "
                        "use a new Idempotency-Key for a new request",
                        {"requestId": envelope.request_id},
                    )
                if stored_refusal:
                    code, message, details = stored_refusal[0]
                    return Outcome(Rejected(code, message, details), (), meta.revision, replayed=True)
                answer = Ok(claims.decode_answer(loads(stored_value)), stored_created)
                return Outcome(answer, (), meta.revision, replayed=True)
        if expired_ms is None and meta.dedup_records >= dedup_records_max:
            # A new id takes a record, and the oldest goes to make room (_trim_dedup); it is
            # meta.dedup_oldest_ms old, exactly, while the table is full (each trim sets it).
            wait_ms = dedup_window_min_ms - (now_ms - meta.dedup_oldest_ms)
            if wait_ms > 0:
                raise Rejected(
                    OVERLOADED,
                    f"the request-id table is full ({dedup_records_max} ids written in the last "
                    f"{(now_ms - meta.dedup_oldest_ms) // 1000} s) and no id is forgotten before it is "
                    f"{dedup_window_min_ms // 1000} s old; nothing was done: retry in {-(-wait_ms // 1000)} s",
                    {"retryAfterMillis": wait_ms, "requestIdsMax": dedup_records_max},
                )

    overlay = Overlay(view)
    ctx = Context(overlay, envelope, index, position, meta)
    try:
        returned = handler(ctx, envelope.body)
    except Rejected as refusal:
        if dedup_key is None:
            raise
        # The handler's writes so far are dropped with its overlay (handlers never change meta:
        # the Context does not keep it); only the refusal is kept.
        overlay = Overlay(view)
        _remember(overlay, meta, dedup_key, digest, now_ms, b"", False, expired_ms, refusal)
        return Outcome(refusal, _finish(overlay, meta, now_ms, index, position, write_meta), meta.revision)
    value, created = returned if isinstance(returned, tuple) else (returned, False)
    if overlay.has_writes:  # the command changed state: a new revision, with its events
        meta.revision = ctx.revision
        if ctx.write_events():
            meta.events += 1
            _trim_events(overlay, meta)
    if dedup_key is not None:
        # Remembered even when the command changed nothing (a claim that already existed):
        # the id is now taken, and a retry must get this same answer.
        # A claim is remembered in its compact form (a third of the bytes; the dedup table
        # holds up to dedup_records_max of them), anything else as the encoding it was stored with.
        encoded = claims.compact_answer(value)
        if encoded is None:
            encoded = ctx.encoding_of(value)
        _remember(overlay, meta, dedup_key, digest, now_ms, encoded, created, expired_ms)
    if not overlay.has_writes:
        return Outcome(Ok(value, created), (), meta.revision)
    return Outcome(Ok(value, created), _finish(overlay, meta, now_ms, index, position, write_meta), meta.revision)


def _finish(
    overlay: Overlay, meta: Meta, now_ms: int, index: int, position: int, write_meta: bool
) -> tuple[Write, ...]:
    """Meta as a command that wrote something leaves it (its record among the writes when
    `write_meta`), then every write in order."""
    meta.clock_ms = now_ms
    meta.index, meta.position = index, position
    _trim_dedup(overlay, meta, now_ms)
    if write_meta:
        overlay.put(keys.META, dump_record(meta.to_plain()))
    return overlay.writes()


def _trim_events(overlay: Overlay, meta: Meta) -> None:
    while meta.events > events_max:
        oldest = overlay.first(keys.EVENT, keys.EVENT_END)
        if oldest is None:
            raise InvariantViolation(f"meta counts {meta.events} event records but the log is empty")
        overlay.delete(oldest[0])
        meta.events -= 1
        meta.compacted_revision = max(meta.compacted_revision, keys.event_revision(oldest[0]))


def _remember(
    overlay: Overlay,
    meta: Meta,
    dedup_key: bytes,
    digest: bytes,
    now_ms: int,
    encoded_value: bytes,
    created: bool,
    expired_ms: int | None,
    refusal: Rejected | None = None,
) -> None:
    # expired_ms comes from the lookup before the handler ran (handlers never write dedup
    # records), which saves reading and decoding the record a second time.
    if expired_ms is not None:  # an expired record under the same id: replace it
        overlay.delete(keys.dedup_expiry_key(expired_ms, dedup_key))
        meta.dedup_records -= 1
    if meta.dedup_records == 0:
        meta.dedup_oldest_ms = now_ms
    record: list[Any] = [digest, now_ms, created, encoded_value]
    if refusal is not None:  # a fifth field: the refusal to answer again
        record.append([refusal.code, refusal.message, refusal.details])
    overlay.put(dedup_key, dump_record(record))
    overlay.put(keys.dedup_expiry_key(now_ms, dedup_key), b"")
    meta.dedup_records += 1


def idempotency_window_ms(meta: Meta) -> int:
    """How far back a request id is still recognised: `dedup_ttl_ms`, or less while the table
    is full and its oldest records go before they expire (every write adds one)."""
    if meta.dedup_records < dedup_records_max:
        return dedup_ttl_ms
    return max(dedup_window_min_ms, min(dedup_ttl_ms, meta.clock_ms - meta.dedup_oldest_ms))


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
