"""Instructions per command as a member applies it, counted by valgrind: a figure that does not
drift with the machine's speed, for comparing two builds of the state machine.

    python -m bench.apply_instructions                 # pod.create (verified placement), claim.create
    python -m bench.apply_instructions --functions 30  # and where the instructions go, by function
    python -m bench.apply_instructions --scenario pods --commands 500

Wall-clock benchmarks on this shared 2-core machine move by up to 2x within minutes
(docs/benchmarks.md), so a 5 % change in apply cost cannot be read from them. Here each scenario
runs twice under `valgrind --tool=callgrind`: once applying N commands, once 2N, through
`LmdbStore.apply_entry` (16 envelopes to an entry, in a temporary store opened as a member
opens it). Both runs do the same setup, and encode every envelope of the larger run, so the
difference divided by N is one command's cost: decoding the envelope, applying it, the store's
writes, and its share of the entry's commit. Instructions are user space only (valgrind sees no
kernel time) and say nothing of cache misses; they track CPU time well for this
interpreter-bound work, not exactly. The state machine's build (compiled by `allot compile`,
or the sources) is printed; the per-function split names C functions, so it says most about
the compiled build. Needs valgrind (and callgrind_annotate for `--functions`); each scenario
takes a minute or two. Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from node.accelerate import build_state
from node.store import LmdbStore
from statemachine import Envelope, Ok, Principal, encode_envelope

ADMIN = Principal("bench", "", "", "admin")
TENANT = Principal("bench", "acme", "web", "member")
BASE_TS_MS = 1_767_225_600_000
ENTRY_COMMANDS = 16  # envelopes to a log entry, as under load
NODES = 1_000
POD_SPEC = {"requests": {"cpuMillis": 100, "memoryBytes": 128 << 20}}
NODE_CAPACITY = {"cpuMillis": 64_000, "memoryBytes": 256 << 30, "pods": 110}
SCENARIOS = ("pods", "claims")
DEFAULT_COMMANDS = {"pods": 1_000, "claims": 2_000}
child_timeout_s = 1_800.0  # a run under valgrind is ~50x slower than without; a hung one must end
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")
_FUNCTION_ROW = re.compile(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S+)")


def _setup_and_commands(scenario: str, total: int) -> tuple[list[list[bytes]], list[bytes]]:
    """(the setup's entries, `total` command envelopes), the same for any count applied."""
    timestamps = iter(range(BASE_TS_MS + 1, BASE_TS_MS + 10 + NODES + total))

    def envelope(principal: Principal, command_type: str, body: dict[str, Any], rid: str | None = None) -> bytes:
        return encode_envelope(Envelope(command_type, body, principal, rid, next(timestamps)))

    if scenario == "pods":
        setup = [[envelope(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.0.0.0/8"}})]]
        nodes = [
            envelope(
                ADMIN,
                "node.register",
                {
                    "name": f"node-{n:05d}",
                    "labels": {"zone": f"z{n % 3}"},
                    "spec": {"capacity": NODE_CAPACITY, "podPool": "pods"},
                },
            )
            for n in range(NODES)
        ]
        setup += [nodes[first : first + 100] for first in range(0, NODES, 100)]
        # Each pod carries a plan naming the next node in turn, as many proposers' plans spread pods.
        commands = [
            envelope(
                TENANT,
                "pod.create",
                {"name": f"b{n}", "spec": POD_SPEC, "plan": {"nodeName": f"node-{n % NODES:05d}"}},
                rid=f"b{n}",
            )
            for n in range(total)
        ]
        return setup, commands
    setup = [[envelope(ADMIN, "pool.create", {"name": "p", "spec": {"cidr": "10.0.0.0/8"}})]]
    commands = [
        envelope(TENANT, "claim.create", {"name": f"c{n}", "spec": {"poolRef": "p"}}, rid=f"rid-c{n}")
        for n in range(total)
    ]
    return setup, commands


def run_child(scenario: str, applied: int, total: int) -> None:
    """Apply the setup and the first `applied` of `total` commands (run under valgrind)."""
    setup, commands = _setup_and_commands(scenario, total)
    with tempfile.TemporaryDirectory(prefix="allot-instructions-") as directory:
        store = LmdbStore(directory, sync=False)  # as a member opens it
        try:
            entries = setup + [
                commands[first : min(first + ENTRY_COMMANDS, applied)] for first in range(0, applied, ENTRY_COMMANDS)
            ]
            for index, entry in enumerate(entries, start=1):
                outcomes = store.apply_entry(index, entry)
                refused = [outcome.result for outcome in outcomes or () if not isinstance(outcome.result, Ok)]
                if outcomes is None or refused:
                    raise SystemExit(f"{scenario}: a command was refused: {refused or 'entry not applied'}")
        finally:
            store.close()


def _count(scenario: str, applied: int, total: int, out_file: Path) -> int:
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out_file}",
        sys.executable,
        "-m",
        "bench.apply_instructions",
        "--child",
        scenario,
        str(applied),
        str(total),
    ]
    root = Path(__file__).resolve().parent.parent  # this tree's sources (and its compiled build)
    completed = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=child_timeout_s, check=False)
    found = _COLLECTED.search(completed.stderr)
    if completed.returncode != 0 or found is None:
        raise SystemExit(f"valgrind run failed (exit {completed.returncode}):\n{completed.stderr[-2000:]}")
    return int(found.group(1))


def _inclusive_by_function(out_file: Path) -> dict[str, int]:
    annotated = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out_file)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    functions: dict[str, int] = {}
    for line in annotated.splitlines():
        row = _FUNCTION_ROW.match(line)
        if row is None:
            continue
        name = row.group(2).rsplit(":", 1)[-1]
        # Recursive frames show up more than once (name'2): the outermost, largest, counts.
        functions[name] = max(functions.get(name, 0), int(row.group(1).replace(",", "")))
    return functions


_SHOWN = re.compile(r"^CPyDef_|^(dumps|loads)$|^mdb_|^trans_|sha256|^PyObject_IsInstance$")


def measure(scenario: str, commands: int, functions: int) -> None:
    with tempfile.TemporaryDirectory(prefix="allot-callgrind-") as scratch:
        small, large = Path(scratch) / "small.out", Path(scratch) / "large.out"
        fewer = _count(scenario, commands, 2 * commands, small)
        more = _count(scenario, 2 * commands, 2 * commands, large)
        what = "pod.create, verified placement, 1,000 nodes" if scenario == "pods" else "claim.create, one /32"
        per_command = (more - fewer) / commands
        print(f"{what:<48} {per_command:>12,.0f} instructions per command (request id, {ENTRY_COMMANDS} to an entry)")
        if functions <= 0:
            return
        before, after = _inclusive_by_function(small), _inclusive_by_function(large)
        rows = sorted(((after[name] - before.get(name, 0)) / commands, name) for name in after if _SHOWN.search(name))
        for per_command, name in reversed(rows[-functions:]):
            print(f"    {per_command:>12,.0f}  {name}  (inclusive)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=SCENARIOS, action="append", help="default: every scenario")
    parser.add_argument("--commands", type=int, default=0, help="N (default: 1,000 pods, 2,000 claims)")
    parser.add_argument("--functions", type=int, default=0, help="also print the N most costly functions")
    parser.add_argument("--child", nargs=3, metavar=("SCENARIO", "APPLIED", "TOTAL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        scenario, applied, total = args.child
        run_child(scenario, int(applied), int(total))
        return 0
    if shutil.which("valgrind") is None or (args.functions and shutil.which("callgrind_annotate") is None):
        raise SystemExit("valgrind (with callgrind_annotate for --functions) is needed: apt-get install valgrind")
    print(f"# state machine: {build_state().reason}; Python {sys.version.split()[0]}")
    for scenario in args.scenario or SCENARIOS:
        measure(scenario, args.commands or DEFAULT_COMMANDS[scenario], args.functions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
