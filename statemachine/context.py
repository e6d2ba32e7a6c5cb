"""What a handler works with while applying one command: the overlay, the envelope, the clock,
the command's revision, deterministic uids, and the event log."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from statemachine import keys
from statemachine.codec import Envelope, dump_record, loads
from statemachine.view import Overlay, ReadView

ADDED: Final = "ADDED"
MODIFIED: Final = "MODIFIED"
DELETED: Final = "DELETED"

# An object's (record, event) encodings, for objects stored in a compact form (claims.py).
Encoder = Callable[[dict[str, Any]], tuple[bytes, bytes]]

events_max = 100_000  # revisions whose watch events are retained; older ones answer `gone`


@dataclass(init=False)
class Meta:
    """The singleton record at `meta`."""

    # A hand-written __init__, which mypyc compiles (see addresses.Block).
    revision: int  # bumped once by every command that changes state (etcd's revision)
    clock_ms: int  # max of every applied envelope's timestamp: time never runs backwards
    index: int  # (index, position) of the last applied envelope
    position: int
    events: int  # revisions retained in the event log (one record per revision)
    compacted_revision: int  # events at or below this revision have been dropped
    dedup_records: int
    dedup_oldest_ms: int  # no dedup record was written before this: lets apply skip the
    # expiry seek until the oldest record can have expired

    def __init__(
        self,
        revision: int = 0,
        clock_ms: int = 0,
        index: int = 0,
        position: int = -1,
        events: int = 0,
        compacted_revision: int = 0,
        dedup_records: int = 0,
        dedup_oldest_ms: int = 0,
    ) -> None:
        self.revision = revision
        self.clock_ms = clock_ms
        self.index = index
        self.position = position
        self.events = events
        self.compacted_revision = compacted_revision
        self.dedup_records = dedup_records
        self.dedup_oldest_ms = dedup_oldest_ms

    def to_plain(self) -> list[int]:
        # A flat list: the meta record is rewritten by every command.
        return [
            self.revision,
            self.clock_ms,
            self.index,
            self.position,
            self.events,
            self.compacted_revision,
            self.dedup_records,
            self.dedup_oldest_ms,
        ]

    @classmethod
    def load(cls, view: ReadView) -> Meta:
        raw = view.get(keys.META)
        if raw is None:
            return cls()
        return cls(*loads(raw))


def rfc3339(ts_ms: int) -> str:
    """UTC timestamp with second precision, computed with integers only (no clock, no datetime)."""
    return _rfc3339_seconds(ts_ms // 1000)


@lru_cache(maxsize=64)  # a pure function of its argument: caching cannot change a result
def _rfc3339_seconds(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hour, rest = divmod(rest, 3600)
    minute, second = divmod(rest, 60)
    # Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}Z"


class Context:
    def __init__(self, overlay: Overlay, envelope: Envelope, index: int, position: int, meta: Meta) -> None:
        self.ov = overlay
        self.envelope = envelope
        self.principal = envelope.principal
        self.index = index
        self.position = position
        # meta is read here, never kept: handlers cannot change it (the machine does, after them)
        self.now_ms = max(meta.clock_ms, envelope.ts_ms)
        self.revision = meta.revision + 1  # used only if the command changes something
        self.timestamp = rfc3339(self.now_ms)
        self._uids = 0
        # [type, kind, encoded object] (a pod's: and its selectable fields before the command),
        # in order; None where an object's events cancelled out (see _record_event).
        self.events: list[list[Any] | None] = []
        self._event_at: dict[bytes, int] = {}  # object key -> its event's place in self.events
        # id(object) -> (object, its encoding), to reuse the encoding for the dedup record. The
        # object is kept too, so its id cannot be reused by another object during the command.
        self._encoded: dict[int, tuple[dict[str, Any], bytes]] = {}

    def new_uid(self) -> bytes:
        """A uid from the log position: unique and the same on every replica."""
        self._uids += 1
        if self.index >= 1 << 48 or self.position >= 1 << 16 or self._uids >= 1 << 16:
            raise ValueError("log position out of the uid range")
        return self.index.to_bytes(6, "big") + self.position.to_bytes(2, "big") + self._uids.to_bytes(2, "big")

    def metadata(
        self,
        name: str,
        uid: bytes,
        labels: dict[str, str],
        namespace: str | None = None,
        org: str | None = None,
        project: str | None = None,
    ) -> dict[str, Any]:
        """An object's metadata: its name, the scope given (in this order), then the rest.
        (Named parameters, not **scope: the compiled build then calls it without building and
        parsing a map of keyword arguments.)"""
        meta: dict[str, Any] = {"name": name}
        if namespace is not None:
            meta["namespace"] = namespace
        if org is not None:
            meta["org"] = org
        if project is not None:
            meta["project"] = project
        meta["uid"] = format_uid(uid)
        meta["resourceVersion"] = self.revision
        meta["labels"] = labels
        meta["creationTimestamp"] = self.timestamp
        return meta

    def write_object(
        self,
        key: bytes,
        kind: str,
        obj: dict[str, Any],
        event_type: str,
        labels_before: dict[str, str] | None = None,
    ) -> bytes:
        """Store an API object and record its watch event. Returns the encoded object.
        `labels_before`: the object's labels before this command, when it changed them."""
        obj["metadata"]["resourceVersion"] = self.revision
        raw = dump_record(obj)
        # Before the put: it may read the object as it was.
        self._record_event(key, event_type, kind, raw, labels_before)
        self.ov.put(key, raw)
        self._encoded[id(obj)] = (obj, raw)
        return raw

    def write_encoded(
        self,
        key: bytes,
        kind: str,
        obj: dict[str, Any],
        event_type: str,
        encode: Encoder,
        labels_before: dict[str, str] | None = None,
    ) -> None:
        """`write_object` for an object stored in a form of its own: `encode(obj)` gives the
        record and its event's encoding, once obj carries this command's revision."""
        obj["metadata"]["resourceVersion"] = self.revision
        record, event = encode(obj)
        self._record_event(key, event_type, kind, event, labels_before)
        self.ov.put(key, record)

    def delete_encoded(self, key: bytes, kind: str, obj: dict[str, Any], encode: Encoder) -> None:
        """`delete_object` for an object whose event has a form of its own (see write_encoded)."""
        obj["metadata"]["resourceVersion"] = self.revision
        self._record_event(key, DELETED, kind, encode(obj)[1])
        self.ov.delete(key)

    def delete_object(self, key: bytes, kind: str, obj: dict[str, Any]) -> None:
        obj["metadata"]["resourceVersion"] = self.revision
        raw = dump_record(obj)
        self._record_event(key, DELETED, kind, raw)
        self.ov.delete(key)
        self._encoded[id(obj)] = (obj, raw)

    def encoding_of(self, obj: dict[str, Any]) -> bytes:
        """The bytes this command stored for obj, or a fresh encoding of it."""
        known = self._encoded.get(id(obj))
        return known[1] if known is not None and known[0] is obj else dump_record(obj)

    def _record_event(
        self, key: bytes, event_type: str, kind: str, encoded: bytes, labels_before: dict[str, str] | None = None
    ) -> None:
        """Note the event of the object at key. One event per object and command, with the
        object as the command leaves it: a watcher never sees a state the object did not have at
        this revision (a drain that evicts a pod and then finds it unschedulable is one
        MODIFIED). ADDED then MODIFIED is ADDED; MODIFIED then DELETED is DELETED; ADDED then
        DELETED is nothing. A pod's first event, unless it is ADDED, also carries the pod's
        selectable fields (`pod_selected_fields`) as they were before the command: a watch with
        a field selector then tells a pod entering its selection (ADDED) or leaving it
        (DELETED) from one changing inside it, as Kubernetes does (queries.events_after). An
        object whose labels the command changed (a label patch, a quota set again, a retained
        allocation bound again) carries its labels before (a pod's after its fields), for a
        watch with a label selector likewise."""
        at = self._event_at.get(key)
        if at is not None:
            earlier = self.events[at]
            if earlier is not None and earlier[0] != DELETED:
                if earlier[0] == ADDED and event_type == DELETED:
                    self.events[at] = None
                    del self._event_at[key]
                else:
                    merged = ADDED if earlier[0] == ADDED else event_type
                    extras = list(earlier[3:])
                    # Labels changed by a later write of this command: a label-selector watch
                    # needs the labels the object had before the command (the earliest).
                    has_labels_before = any(isinstance(extra, dict) for extra in extras)
                    if merged == MODIFIED and labels_before is not None and not has_labels_before:
                        extras.append(labels_before)
                    self.events[at] = [merged, kind, encoded, *extras]
                return
        entry: list[Any] = [event_type, kind, encoded]
        if event_type != ADDED and key.startswith(keys.POD):
            before = self.ov.get(key)  # the command has not written the pod yet: no earlier event
            if before is not None:
                entry.append(pod_selected_fields(loads(before)))
                if labels_before is not None and event_type == MODIFIED:
                    entry.append(labels_before)
        elif labels_before is not None and event_type == MODIFIED:
            entry.append(labels_before)
        self._event_at[key] = len(self.events)
        self.events.append(entry)

    def write_events(self) -> bool:
        """Write this revision's events as one record; False when the command made none."""
        events = [event for event in self.events if event is not None]
        if not events:
            return False
        self.ov.put(keys.event_key(self.revision), dump_record(events))
        return True


def pod_selected_fields(pod: dict[str, Any]) -> list[Any]:
    """What a pod field selector can name (queries.parse_field_selector): [spec.nodeName, status.phase]."""
    return [pod["spec"].get("nodeName"), pod["status"].get("phase")]


def format_uid(uid: bytes) -> str:
    """Render a 10-byte uid as index-position-sequence hex groups (it comes from the log, not uuid4)."""
    text = uid.hex()
    return f"{text[:12]}-{text[12:16]}-{text[16:]}"


def parse_uid(text: str) -> bytes:
    return bytes.fromhex(text.replace("-", ""))
