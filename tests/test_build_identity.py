"""Build ids (node/build_identity.py) and the log entry format that carries them (node/raft.py).

The multi-process tests of what a member does with an entry of another build are in
tests/test_build_gate.py."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import cbor2
import pytest
from pysyncobj import FAIL_REASON

from client.cli import _mixed_builds
from client.models import MemberReport, MemberStatus
from node.build_identity import BUILD_ID_CHARS, PROJECT_ROOT, SOURCE_PACKAGES, build_id, compute_build_id
from node.member import BuildsUnheardError, WritesPausedError
from node.raft import DecodedBatch, decode_batch, encode_batch
from node.replicated import ReplicatedMember, peer_build_fresh_s


def copy_sources(destination: Path) -> Path:
    for package in (*SOURCE_PACKAGES, "client"):
        shutil.copytree(PROJECT_ROOT / package, destination / package, ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def test_the_build_id_is_the_sources_hash(tmp_path: Path) -> None:
    own = build_id()
    assert len(own) == BUILD_ID_CHARS and int(own, 16) >= 0
    assert compute_build_id(copy_sources(tmp_path / "same")) == own  # a copy of the same sources


@pytest.mark.parametrize("edited", ["statemachine/machine.py", "node/store.py", "node/cli.py"])
def test_any_change_to_the_server_sources_is_another_build(tmp_path: Path, edited: str) -> None:
    root = copy_sources(tmp_path / "edited")
    with (root / edited).open("a") as source:
        source.write("# one more line\n")
    assert compute_build_id(root) != build_id()


def test_a_new_server_module_is_another_build(tmp_path: Path) -> None:
    root = copy_sources(tmp_path / "added")
    (root / "statemachine" / "extra.py").write_text("RULE = 1\n")
    assert compute_build_id(root) != build_id()


def test_the_client_library_is_not_part_of_the_build(tmp_path: Path) -> None:
    """Clients never apply entries: a client-only change leaves a cluster one build."""
    root = copy_sources(tmp_path / "client-only")
    with (root / "client" / "cli.py").open("a") as source:
        source.write("# one more line\n")
    assert compute_build_id(root) == build_id()


def test_an_entry_names_its_build_and_proposer() -> None:
    envelopes = [b"\x01", b"\x02\x03"]
    assert decode_batch(encode_batch(envelopes, build="b" * 16, proposer="m2")) == DecodedBatch(
        envelopes, None, "b" * 16, "m2"
    )
    assert decode_batch(encode_batch(envelopes, 7, build="b" * 16, proposer="m1")) == DecodedBatch(
        envelopes, 7, "b" * 16, "m1"
    )


def test_entries_of_earlier_builds_decode_without_a_build() -> None:
    """Journals written before entries were stamped: a bare list, or a fenced map."""
    assert decode_batch(cbor2.dumps([b"\x01"])) == DecodedBatch([b"\x01"], None, None, None)
    fenced = cbor2.dumps({"leaderTerm": 3, "envelopes": [b"\x01"]})
    assert decode_batch(fenced) == DecodedBatch([b"\x01"], 3, None, None)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({"build": "b", "envelopes": [b"\x01"]}, "a batch map holds build, proposer, envelopes and leaderTerm"),
        ({"build": 5, "proposer": "m1", "envelopes": [b"\x01"]}, "build and proposer are strings"),
        ({"build": "b", "proposer": "m1", "envelopes": [b"\x01"], "leaderTerm": -1}, "non-negative"),
        ({"build": "b", "proposer": "m1", "envelopes": ["text"]}, "envelope byte strings"),
        ({"build": "b", "proposer": "m1", "envelopes": [b"\x01"], "extra": 1}, "not ['build', 'envelopes'"),
    ],
)
def test_a_malformed_entry_is_refused(batch: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        decode_batch(cbor2.dumps(batch))


def test_allot_status_warns_when_members_run_different_builds() -> None:
    def report(member_id: str, build: str | None) -> MemberReport:
        raw = {"memberId": member_id, "members": ["m1", "m2", "m3"]}
        if build is not None:
            raw["buildId"] = build
        return MemberReport(f"http://{member_id}", MemberStatus.parse(raw), True, None)

    assert _mixed_builds([report("m1", "a" * 16), report("m2", "a" * 16)]) is None
    parsed = MemberStatus.parse({"memberId": "m1", "quiesced": True, "otherBuilds": {"m3": "b" * 16}})
    assert parsed.quiesced is True and parsed.other_builds == {"m3": "b" * 16}
    assert _mixed_builds([report("m1", None), report("m2", None)]) is None  # all from before build ids
    earlier = _mixed_builds([report("m1", "a" * 16), report("m2", None)])
    assert earlier is not None and "m2 runs a build from before build ids" in earlier
    mixed = _mixed_builds(
        [report("m1", "a" * 16), report("m2", "b" * 16), MemberReport("http://m3", None, None, "down")]
    )
    assert mixed is not None
    assert f"m1 runs {'a' * 16}, m2 runs {'b' * 16}" in mixed and "README, Upgrading" in mixed


def test_a_peer_of_another_build_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """Keep-alives carry each member's build (`ReplicatedMember._note_peer_build`): a member
    names a peer of another build in its log before any entry of that build reaches it."""
    member = SimpleNamespace(
        raft=SimpleNamespace(build_id="a" * 16),
        config=SimpleNamespace(members={"m1": "127.0.0.1:1", "m2": "127.0.0.1:2"}),
        _peer_builds_reported={},
        _peer_builds={},
    )
    with caplog.at_level(logging.ERROR, logger="allot.member"):
        for _ in range(3):
            ReplicatedMember._note_peer_build(member, "m2", "b" * 16)  # type: ignore[arg-type]
        ReplicatedMember._note_peer_build(member, "m1", "a" * 16)  # type: ignore[arg-type]  # the same build
        ReplicatedMember._note_peer_build(member, "m9", "c" * 16)  # type: ignore[arg-type]  # not a member
        ReplicatedMember._note_peer_build(member, "m2", "d" * 16)  # type: ignore[arg-type]  # m2 again, rebuilt
        ReplicatedMember._note_peer_build(member, "m2", "a" * 16)  # type: ignore[arg-type]  # back on this build
        ReplicatedMember._note_peer_build(member, "m2", "d" * 16)  # type: ignore[arg-type]  # and off it again
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 3, messages
    assert messages[0].startswith(f"member m2 runs build {'b' * 16}, this member build {'a' * 16}")
    assert messages[1].startswith(f"member m2 runs build {'d' * 16}")
    assert messages[2].startswith(f"member m2 runs build {'d' * 16}")
    assert member._peer_builds["m2"][0] == "d" * 16 and "m9" not in member._peer_builds


def test_hidden_files_are_not_modules(tmp_path: Path) -> None:
    """An editor's lock file (`.#raft.py`, a dangling link) neither breaks nor changes the id."""
    root = copy_sources(tmp_path / "editing")
    (root / "node" / ".#raft.py").symlink_to(tmp_path / "no-such-file")
    assert compute_build_id(root) == build_id()


def test_missing_server_sources_are_an_error(tmp_path: Path) -> None:
    root = copy_sources(tmp_path / "broken")
    shutil.rmtree(root / "statemachine")
    with pytest.raises(RuntimeError, match=r"no Python modules in .*statemachine"):
        compute_build_id(root)


def test_a_member_proposes_only_while_a_majority_was_heard_on_its_build() -> None:
    """`ReplicatedMember._build_majority_check`: this member and the peers heard within
    `peer_build_fresh_s` naming its build must be a majority of the members."""
    now = time.monotonic()
    member = SimpleNamespace(
        raft=SimpleNamespace(build_id="a" * 16),
        config=SimpleNamespace(members={"m1": "127.0.0.1:1", "m2": "127.0.0.1:2", "m3": "127.0.0.1:3"}),
        member_id="m1",
        _peer_builds={},
    )
    member.other_builds = lambda: ReplicatedMember.other_builds(member)  # type: ignore[arg-type]
    member._own_build_has_majority = lambda: ReplicatedMember._own_build_has_majority(member)  # type: ignore[arg-type]

    def refusal() -> str | None:
        try:
            ReplicatedMember._build_majority_check(member)  # type: ignore[arg-type]
        except WritesPausedError as exc:
            return str(exc)
        return None

    assert "has not heard a majority" in (refusal() or "")  # just started: nobody heard yet
    member._peer_builds = {"m2": ("a" * 16, now)}
    assert refusal() is None  # m1 and m2: two of three
    member._peer_builds = {"m2": ("a" * 16, now - 2 * peer_build_fresh_s), "m3": ("a" * 16, now)}
    assert refusal() is None
    member._peer_builds = {"m2": ("a" * 16, now - 2 * peer_build_fresh_s)}  # heard too long ago
    assert "has not heard a majority" in (refusal() or "")
    member._peer_builds = {"m2": ("b" * 16, now), "m3": ("b" * 16, now)}  # outvoted
    refused = refusal() or ""
    assert f"m2 runs {'b' * 16}, m3 runs {'b' * 16}; member m1 runs {'a' * 16}" in refused
    assert "a majority does not run this member's" in refused
    member._peer_builds = {"m2": ("a" * 16, now), "m3": ("b" * 16, now)}  # the odd one is m3
    assert refusal() is None


def test_a_leader_refuses_forwarded_entries_of_another_build_only_while_its_own_has_a_majority() -> None:
    """`ReplicatedMember._refuses_forwarded_build`, asked by `AllotRaft._applyCommand` on the
    leader for each entry a follower forwards: an entry of another build (or of a build from
    before the stamp) is refused while a majority runs the leader's build, since that whole
    majority would stop at it. An outvoted leader refuses nothing: the entry is the majority's,
    and the leader is the one that stops at it."""
    now = time.monotonic()
    member = SimpleNamespace(
        raft=SimpleNamespace(build_id="a" * 16),
        config=SimpleNamespace(members={"m1": "127.0.0.1:1", "m2": "127.0.0.1:2", "m3": "127.0.0.1:3"}),
        _peer_builds={"m2": ("a" * 16, now), "m3": ("b" * 16, now)},
    )
    member._own_build_has_majority = lambda: ReplicatedMember._own_build_has_majority(member)  # type: ignore[arg-type]

    def refuses(build: str | None) -> bool:
        return ReplicatedMember._refuses_forwarded_build(member, build)  # type: ignore[arg-type]

    assert refuses("b" * 16) and refuses(None)
    assert not refuses("a" * 16)
    member._peer_builds = {"m2": ("b" * 16, now), "m3": ("b" * 16, now)}  # this leader is outvoted
    assert not refuses("b" * 16) and not refuses("a" * 16)
    member._peer_builds = {"m2": ("a" * 16, now - 2 * peer_build_fresh_s)}  # nobody heard lately
    assert not refuses("b" * 16)


def test_a_proposal_waits_briefly_for_a_majority_to_be_heard(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ReplicatedMember._proposable`: a member just started waits for its peers' keep-alives
    (up to `peer_build_wait_s`) instead of answering its first clients 503; a member whose
    build is outvoted is refused at once."""
    checks: list[int] = []

    def unheard_twice() -> None:
        checks.append(1)
        if len(checks) <= 2:
            raise BuildsUnheardError("not heard yet")

    member = SimpleNamespace(_enqueue_check=unheard_twice)
    asyncio.run(ReplicatedMember._proposable(member))  # type: ignore[arg-type]
    assert len(checks) == 3

    def never_heard() -> None:
        raise BuildsUnheardError("not heard")

    monkeypatch.setattr("node.replicated.peer_build_wait_s", 0.1)
    member = SimpleNamespace(_enqueue_check=never_heard)
    with pytest.raises(BuildsUnheardError):
        asyncio.run(ReplicatedMember._proposable(member))  # type: ignore[arg-type]

    def outvoted() -> None:
        checks.append(1)
        raise WritesPausedError("the members run different builds")

    checks.clear()
    member = SimpleNamespace(_enqueue_check=outvoted)
    with pytest.raises(WritesPausedError):
        asyncio.run(ReplicatedMember._proposable(member))  # type: ignore[arg-type]
    assert len(checks) == 1


def test_a_proposal_the_leader_denied_is_answered_writes_paused() -> None:
    """`ReplicatedMember._resolve`: REQUEST_DENIED (only `AllotRaft._applyCommand` answers it:
    the leader did not append this member's entry of another build) fails the batch's writes
    and reads with `WritesPausedError` (503 unavailable, nothing written), not the 504 that an
    outcome pysyncobj cannot vouch for gets."""

    async def resolve() -> tuple[BaseException | None, BaseException | None]:
        loop = asyncio.get_running_loop()
        writer, reader = loop.create_future(), loop.create_future()
        batch = SimpleNamespace(writers=[writer], readers=[reader])
        member = SimpleNamespace(_release=lambda _batch: None, member_id="m3", raft=SimpleNamespace(build_id="b" * 16))
        ReplicatedMember._resolve(member, batch, None, FAIL_REASON.REQUEST_DENIED)  # type: ignore[arg-type]
        return writer.exception(), reader.exception()

    written, read = asyncio.run(resolve())
    assert isinstance(written, WritesPausedError) and isinstance(read, WritesPausedError)
    assert "did not append this member's entry" in str(written) and "b" * 16 in str(written)
