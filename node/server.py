"""`allot serve`: one Raft member with its HTTP API, until SIGTERM or SIGINT.

A member stopped by a signal exits with 128 + the signal's number (143 for SIGTERM), as a shell
reports it, so a supervisor (`allot up`) can tell it from a member that stopped by itself. One
started by `allot up` also stops when `allot up` is gone (`PARENT_ENV`): killed with SIGKILL,
or its terminal closed, it cannot stop its members, which run in their own sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from aiohttp import web

from node.config import (
    PARENT_ENV,
    ConfigError,
    MemberConfig,
    check_cluster_identity,
    parse_address,
    warn_if_secret_exposed,
)
from node.http import build_app
from node.replicated import ReplicatedMember
from node.store import StoreError
from node.tokens import TokenFileError, TokenStore

log = logging.getLogger("allot.server")

parent_check_s = 0.5


async def _stop_when_orphaned(parent_pid: int, stop: asyncio.Event) -> None:
    while os.getppid() == parent_pid:
        await asyncio.sleep(parent_check_s)
    log.warning("allot up (pid %d) is gone; stopping this member", parent_pid)
    stop.set()


async def serve(config: MemberConfig) -> int | None:
    """Serve until stopped; returns the number of the signal that stopped it (None: orphaned)."""
    try:
        tokens = TokenStore(config.token_file)
        member = ReplicatedMember(config)
    except (TokenFileError, StoreError) as exc:  # a bad token file, a data dir another member holds
        raise ConfigError(str(exc)) from None
    await member.start()
    app = build_app(member, tokens, collectors=[member.metrics])
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, port = parse_address(config.http_address, "HTTP address")
    await web.TCPSite(runner, host, port, shutdown_timeout=2.0).start()
    stop = asyncio.Event()
    stopped_by: list[int] = []
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        stopped_by.append(signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    watchdog: asyncio.Task[None] | None = None
    parent = os.environ.get(PARENT_ENV, "")
    if parent.isdigit():
        watchdog = asyncio.create_task(_stop_when_orphaned(int(parent), stop))
    log.info(
        "member %s serving HTTP on %s, Raft on %s, data in %s",
        config.member_id,
        config.http_address,
        config.raft_address,
        config.data_dir,
    )
    print(f"allot member {config.member_id}: http://{config.http_address} raft {config.raft_address}", flush=True)
    try:
        await stop.wait()
    finally:
        reason = f"on {signal.Signals(stopped_by[0]).name}" if stopped_by else "without its parent"
        log.info("member %s stopping %s", config.member_id, reason if stop.is_set() else "on an error")
        if watchdog is not None:
            watchdog.cancel()
        with contextlib.suppress(Exception):
            await runner.cleanup()
        await member.stop()
    return stopped_by[0] if stopped_by else None


def run(config: MemberConfig) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {config.member_id} %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    check_cluster_identity(config)
    warn_if_secret_exposed(config)
    stopped_by = asyncio.run(serve(config))
    return 128 + stopped_by if stopped_by is not None else 0
