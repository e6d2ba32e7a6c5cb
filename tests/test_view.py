"""The Overlay (pending writes merged over a read-only base) against a plain dict model, and
`prefix_end`.

The overlay is what every handler reads through while it applies a command, so a merge bug
here (a deleted key showing through, a pending key missing from a scan, a shadowed base value)
would make a handler see a state that never existed.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from node.memstore import MemoryStore
from statemachine.view import Overlay, prefix_end

# A small alphabet with the bytes at the edges, so keys collide, nest as prefixes of each other,
# and sit at both ends of the order.
_alphabet = st.sampled_from([b"\x00", b"a", b"b", b"\xfe", b"\xff"])
keys_ = st.lists(_alphabet, max_size=4).map(b"".join)
values = st.binary(max_size=3)
# ("put", key, value) or ("delete", key, None)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), keys_, values),
        st.tuples(st.just("delete"), keys_, st.none()),
    ),
    max_size=40,
)
ranges = st.lists(st.tuples(keys_, keys_), min_size=1, max_size=8)


def _model_after(base: dict[bytes, bytes], ops: list[tuple[str, bytes, bytes | None]]) -> dict[bytes, bytes]:
    model = dict(base)
    for op, key, value in ops:
        if op == "put":
            assert value is not None
            model[key] = value
        else:
            model.pop(key, None)
    return model


def _build(base: dict[bytes, bytes], ops: list[tuple[str, bytes, bytes | None]]) -> tuple[MemoryStore, Overlay]:
    store = MemoryStore()
    store.apply_writes(sorted(base.items()))
    overlay = Overlay(store)
    for op, key, value in ops:
        if op == "put":
            assert value is not None
            overlay.put(key, value)
        else:
            overlay.delete(key)
    return store, overlay


@settings(max_examples=300, deadline=None)
@given(base=st.dictionaries(keys_, values, max_size=20), ops=operations, scan_ranges=ranges)
@example(base={b"a": b"1"}, ops=[("delete", b"a", None)], scan_ranges=[(b"", b"\xff\xff\xff\xff\xff")])
@example(base={b"a": b"1"}, ops=[("put", b"a", b"2")], scan_ranges=[(b"a", b"b")])
@example(base={b"a": b"1", b"b": b"2"}, ops=[("put", b"ab", b"3")], scan_ranges=[(b"a", b"b"), (b"ab", b"ab")])
def test_overlay_matches_dict_model(
    base: dict[bytes, bytes],
    ops: list[tuple[str, bytes, bytes | None]],
    scan_ranges: list[tuple[bytes, bytes]],
) -> None:
    store, overlay = _build(base, ops)
    model = _model_after(base, ops)
    base_before = dict(store.items())

    universe = set(base) | {key for _, key, _ in ops} | {b"", b"zz", b"\xff" * 5}
    for key in universe:
        assert overlay.get(key) == model.get(key), key

    everything = list(overlay.scan(b"", b"\xff" * 8))
    assert everything == sorted(model.items())
    for start, end in scan_ranges:
        expected = [(key, value) for key, value in sorted(model.items()) if start <= key < end]
        assert list(overlay.scan(start, end)) == expected, (start, end)
        assert overlay.first(start, end) == (expected[0] if expected else None)

    # The pending writes, in key order, turn the base into the model; the base is untouched.
    assert dict(store.items()) == base_before
    writes = overlay.writes()
    assert [key for key, _ in writes] == sorted({key for _, key, _ in ops})
    store.apply_writes(writes)
    assert dict(store.items()) == model


def test_overlay_delete_then_put_and_put_then_delete() -> None:
    store = MemoryStore()
    store.apply_writes([(b"k", b"base"), (b"m", b"base")])
    overlay = Overlay(store)
    overlay.delete(b"k")
    assert overlay.get(b"k") is None
    assert list(overlay.scan(b"", b"z")) == [(b"m", b"base")]
    overlay.put(b"k", b"new")
    assert overlay.get(b"k") == b"new"
    overlay.put(b"n", b"pending")
    overlay.delete(b"n")
    assert overlay.get(b"n") is None
    assert list(overlay.scan(b"", b"z")) == [(b"k", b"new"), (b"m", b"base")]
    assert overlay.writes() == ((b"k", b"new"), (b"n", None))
    assert overlay.base is store


def test_empty_overlay_writes_nothing() -> None:
    store = MemoryStore()
    store.apply_writes([(b"a", b"1")])
    overlay = Overlay(store)
    assert overlay.writes() == ()
    assert list(overlay.scan(b"", b"b")) == [(b"a", b"1")]


def test_prefix_end_examples() -> None:
    assert prefix_end(b"ab") == b"ac"
    assert prefix_end(b"ev/") == b"ev0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"a\xfe\xff\xff") == b"a\xff"
    assert prefix_end(b"\x00") == b"\x01"


@settings(max_examples=500, deadline=None)
@given(prefix=keys_.filter(lambda p: p.rstrip(b"\xff") != b""), key=keys_)
@example(prefix=b"a\xff", key=b"a\xff\xff\xff")
@example(prefix=b"a\xff", key=b"b")
def test_prefix_end_bounds_exactly_the_keys_with_the_prefix(prefix: bytes, key: bytes) -> None:
    """[prefix, prefix_end(prefix)) holds exactly the keys that start with prefix.

    Prefixes made only of 0xff bytes have no finite end (every longer run of 0xff starts with
    them), so they are left out; the state machine's prefixes are ASCII.
    """
    end = prefix_end(prefix)
    assert key.startswith(prefix) == (prefix <= key < end)


def test_prefix_end_refuses_a_prefix_with_no_upper_bound() -> None:
    with pytest.raises(ValueError, match="no upper bound"):
        prefix_end(b"\xff\xff")
