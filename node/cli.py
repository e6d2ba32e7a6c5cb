"""The `allot` command line: `allot up`, `allot serve`, `allot chaos`, `allot bench apply`; the operator
commands (`allot status`, `pool`, `claim`, `class`, `alloc`, `watch`, `node`, `pod`, `service`,
`quota`, `scheduler`: `client.cli.COMMANDS`) live in client/cli.py."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import ipam_apply
from chaos import runner as chaos_runner
from client import cli as client_cli
from node import cluster, compiled_build, config, server
from node.config import Timing


def _serve(args: argparse.Namespace) -> int:
    settings: dict[str, object] = {}
    if args.config:
        settings = dict(config.load_file(args.config))
        # Paths in a config file are relative to the file, wherever allot serve is started from.
        for key in ("dataDir", "secretFile", "tokenFile"):
            path_text = settings.get(key)
            if isinstance(path_text, str) and path_text and not Path(path_text).is_absolute():
                settings[key] = str(Path(args.config).parent / path_text)
    member_id = args.member_id or settings.get("memberId")
    members_text = args.members or settings.get("members")
    if not member_id or not members_text:
        raise config.ConfigError("give --member-id and --members (or a --config file with memberId and members)")
    if isinstance(members_text, str):
        members = config.parse_members(members_text)
    elif isinstance(members_text, dict):
        members = {str(key): str(value) for key, value in members_text.items()}
    else:
        raise config.ConfigError("members must be 'id=host:port,...' or a JSON object of id -> host:port")
    overrides: dict[str, float] = {}
    for field_name, (flag, config_key) in config.TIMING_FLAGS.items():
        value = _flag_value(args, flag)
        if value is None and settings.get(config_key) is not None:
            value = config.check_timing_value(settings[config_key], f"{config_key} in {args.config}")
        if value is not None:
            overrides[field_name] = value
    member_config = config.build(
        member_id=str(member_id),
        members=members,
        http_address=str(args.http or settings.get("http") or ""),
        data_dir=args.data_dir or str(settings.get("dataDir") or f".allot/{member_id}"),
        secret_file=args.secret_file or str(settings.get("secretFile") or ""),
        token_file=args.tokens or str(settings.get("tokenFile") or ""),
        timing=dataclasses.replace(Timing(), log_compaction_entries=args.snapshot_entries),
        timing_overrides=overrides,
    )
    return server.run(member_config)


def _flag_value(args: argparse.Namespace, flag: str) -> Any:
    """The value argparse stored for `flag` (`--node-grace-seconds`: args.node_grace_seconds)."""
    return getattr(args, flag.lstrip("-").replace("-", "_"))


def _add_timing_flags(parser: argparse.ArgumentParser) -> None:
    defaults = Timing()
    parser.add_argument(
        "--node-grace-seconds",
        type=float,
        help=f"a Ready node not heard from for this long becomes NotReady (default {defaults.node_grace_s:g}; "
        "env ALLOT_NODE_GRACE_SECONDS)",
    )
    parser.add_argument(
        "--pending-retry-seconds",
        type=float,
        help=f"while pods are pending, the leader sweeps the queue this often (default {defaults.pending_retry_s:g}; "
        "less often, up to once a minute, while sweeps bind nothing; env ALLOT_PENDING_RETRY_SECONDS)",
    )
    parser.add_argument(
        "--pod-eviction-seconds",
        type=float,
        help="a node NotReady for this long loses its pods that do not tolerate node.kubernetes.io/unreachable "
        f"(NoExecute); they go back to the queue (default {defaults.pod_eviction_s:g}; env ALLOT_POD_EVICTION_SECONDS)",
    )


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if client_cli.handles(arguments):
        return client_cli.main(arguments)
    parser = argparse.ArgumentParser(
        prog="allot",
        description="Allot: replicated IPAM and pod scheduling state store",
        epilog=client_cli.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"allot {metadata.version('allot')}")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start a local three-member cluster on 127.0.0.1 (foreground)")
    up.add_argument("--dir", default=".allot", help="data directory (default ./.allot)")
    up.add_argument("--http-port", type=int, default=8401, help="HTTP port of the first member (default 8401)")
    up.add_argument("--raft-port", type=int, default=7401, help="Raft port of the first member (default 7401)")
    up.add_argument("--tokens", help="use this token file instead of generating one")
    _add_timing_flags(up)

    serve = commands.add_parser("serve", help="run one member of a cluster")
    serve.add_argument("--config", help="JSON file with memberId, members, http, dataDir, secretFile, tokenFile")
    serve.add_argument("--member-id", help="this member's id, e.g. m1")
    serve.add_argument("--members", help="every member's Raft address: m1=host:port,m2=host:port,...")
    serve.add_argument("--http", help="HTTP listen address host:port")
    serve.add_argument("--data-dir", help="data directory (default .allot/<member-id>)")
    serve.add_argument("--secret-file", help="file holding the cluster secret (32+ characters)")
    serve.add_argument("--tokens", help="token file (JSON)")
    serve.add_argument(
        "--snapshot-entries",
        type=int,
        default=Timing().log_compaction_entries,
        help="log entries between snapshots (full dumps); default %(default)s",
    )
    _add_timing_flags(serve)

    commands.add_parser(
        "compile",
        help="compile the state machine with mypyc (about 1.5x cheaper applies; needs a C compiler)",
    )

    bench = commands.add_parser("bench", help="run a benchmark and print its numbers")
    bench.add_argument("suite", choices=("apply",), help="apply: in-process state machine throughput and costs")
    bench.add_argument("options", nargs=argparse.REMAINDER, help="passed to the suite (see its --help)")

    chaos = commands.add_parser(
        "chaos",
        add_help=False,
        help="run the chaos suite on a fresh local cluster: faults, workload, checks (see allot chaos --help)",
    )
    chaos.add_argument("options", nargs=argparse.REMAINDER, help="passed to the chaos runner")

    if arguments[:1] == ["chaos"]:
        # Its options go to the runner untouched (argparse.REMAINDER cannot start with a flag).
        return chaos_runner.main(arguments[1:])
    args = parser.parse_args(arguments)
    try:
        if args.command == "up":
            tokens = Path(args.tokens) if args.tokens else None
            given = {
                field_name: value
                for field_name, (flag, _) in config.TIMING_FLAGS.items()
                if (value := _flag_value(args, flag)) is not None
            }
            # Checked here, before anything is written under --dir; each member checks again.
            config.timing_with(config.timing_from_environment(Timing(), given=given.keys()), given)
            timing_flags = {config.TIMING_FLAGS[field_name][0]: value for field_name, value in given.items()}
            return cluster.up(Path(args.dir), args.http_port, args.raft_port, tokens, timing_flags)
        if args.command == "serve":
            return _serve(args)
        if args.command == "compile":
            return compiled_build.main([])
        ipam_apply.main(args.options)
        return 0
    except config.ConfigError as exc:
        print(f"allot {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
